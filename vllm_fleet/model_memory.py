"""What a model needs in GPU memory: its shape, its weights and vLLM's memory model.

Read from a model's ``config.json`` (and ``hf_quant_config.json``) and the
host's ``vllm_gpu`` fact; :mod:`vllm_fleet.planner` plans with these numbers.

Memory model (per GPU, as vLLM v0.11's profiler budgets it)::

    kv_cache = usable * gpu_memory_utilization
               - weights / tensor_parallel_size
               - activation_peak
               - non_torch

* ``usable`` is what CUDA can allocate: nvidia-smi's ``memory.used + memory.free``
  (an H100 80GB HBM3 reports 81559 MiB total, 479 MiB reserved, 81081 MiB usable
  = 79.18 GiB, the figure vLLM logs).
* ``activation_peak`` is the torch memory peak of vLLM's profiling run. In v0.11
  it is dominated by the dummy sampler pass over ``min(max_num_seqs,
  max_num_batched_tokens)`` rows of full-vocabulary float32 logits (with the
  top-k/top-p temporaries), plus the forward pass's hidden states::

      activation_peak = 38.2 B * rows * vocab_size + 2.69 B * max_num_batched_tokens * hidden_size

  Both constants are a least-squares fit to the peaks measured on an H100 by
  llm-d-benchmark's config explorer (``config_explorer/empirical-vllm-memory-
  results.md``, vLLM v0.11, defaults max_num_seqs=1024, max_num_batched_tokens=8192):
  Llama-3.1-8B 4.76 GiB, Llama-3.3-70B-FP8 (TP2) 4.84, Qwen3-0.6B 5.56,
  Qwen3-32B (TP1 and TP2) 5.64, gpt-oss-20b 7.38; the fit reproduces each within
  0.1 %. The peak does not shrink with tensor parallelism (logits are gathered).
  The multimodal Mistral-Small-3.2 measured 2.12 GiB where the formula says
  4.9 GiB; for such models the estimate errs on the safe side.
* ``non_torch`` (NCCL, CUDA context not seen by torch): measured 0.13 GiB at TP=1
  and 0.54-0.55 GiB at TP=2; the TP=2 figure is used for every TP > 1.

KV bytes per token = 2 (K and V) x layers x KV heads x head_dim x dtype bytes
(Llama-3.1-8B in BF16: 131072). Under tensor parallelism each rank holds
``kv_heads / tp`` heads, or one replicated head when ``tp > kv_heads``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

GiB = 1 << 30

SAMPLER_BYTES_PER_LOGIT = 38.2
FORWARD_BYTES_PER_TOKEN_HIDDEN = 2.69
NON_TORCH_BYTES_SINGLE_GPU = int(0.13 * GiB)
NON_TORCH_BYTES_MULTI_GPU = int(0.55 * GiB)
#: Share of nvidia-smi's memory.total the driver keeps, used only when the facts
#: carry neither used+free nor memory.reserved. Recorded reservations: H200 0.4 %,
#: H100 0.6 %, A100 80GB 1.1 %, L40S 1.3 %, RTX 4080 SUPER 2.7 % (RTX 2080 SUPER 5 %).
DEFAULT_RESERVED_FRACTION = 0.03
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
KV_BLOCK_SIZE = 16
#: When max_model_len is left to the planner it may shorten the model's native
#: context to fit the expected concurrency, but not below this.
MIN_AUTO_MAX_MODEL_LEN = 4096
CONTEXT_STEP = 1024
LARGEST_TENSOR_PARALLEL = 64

_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "bf16": 2, "fp16": 2}
_KV_CACHE_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1}
#: Bytes per quantized weight, scales included, by quantization method.
_QUANT_BYTES = {
    "fp8": 1.0,
    "fbgemm_fp8": 1.0,
    "int8": 1.0,
    "w8a8": 1.0,
    "mxfp4": 4.25 / 8,  # 4-bit values + one 8-bit scale per 32
    "nvfp4": 4.5 / 8,  # 4-bit values + one 8-bit scale per 16
}
_GROUPED_INT_METHODS = ("awq", "awq_marlin", "gptq", "gptq_marlin", "marlin")

class PlanError(ValueError):
    """The model cannot run as asked; the message carries the numbers."""


class CannotPlan(PlanError):
    """The planner cannot size this model or host (a shape, quantization or GPU
    state it does not model); not a verdict on whether the model fits."""


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs from a model's config.json."""

    name: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    checkpoint_dtype: str
    dtype: str
    dtype_bytes: int
    sliding_window: int | None
    sliding_layers: int
    quantization: str | None
    quant_bytes: float | None
    embedding_params: int
    linear_params: int
    quantizable_params: int
    other_params: int


@dataclass(frozen=True)
class GpuSpec:
    """The GPUs of one host, as far as sizing is concerned (smallest card wins)."""

    count: int
    memory_bytes: int
    name: str
    indices: tuple[int, ...]


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------


def weight_bytes_from_safetensors_index(index: Mapping[str, Any]) -> int:
    """Weight size from a ``model.safetensors.index.json`` (``metadata.total_size``)."""
    try:
        return int(index["metadata"]["total_size"])
    except (KeyError, TypeError, ValueError) as error:
        raise PlanError("safetensors index has no metadata.total_size") from error


def weight_bytes_from_file_sizes(sizes: Iterable[int]) -> int:
    """Weight size as the sum of the weight files' sizes (e.g. ``*.safetensors``)."""
    return sum(int(size) for size in sizes)


def _text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten multimodal configs: the language model's fields win, the rest fills in."""
    merged = dict(config)
    for key in ("text_config", "language_config", "llm_config"):
        nested = config.get(key)
        if isinstance(nested, Mapping):
            merged.update(nested)
            break
    return merged


def _quantization(
    config: Mapping[str, Any], hf_quant_config: Mapping[str, Any] | None
) -> tuple[str | None, float | None]:
    """Return (method, bytes per quantized weight) from config.json or hf_quant_config.json."""
    quant = config.get("quantization_config")
    if isinstance(quant, Mapping):
        method = str(quant.get("quant_method", "")).lower()
        if method in _GROUPED_INT_METHODS:
            bits = int(quant.get("bits", quant.get("w_bit", 4)))
            group = int(quant.get("group_size", quant.get("q_group_size", 128)) or 128)
            return method, bits / 8 + 2.5 / group  # fp16 scale + packed zero point per group
        if method == "compressed-tensors":
            return method, _compressed_tensors_bytes(quant)
        if method == "bitsandbytes":
            return method, 0.5 if quant.get("load_in_4bit") else 1.0
        if method in _QUANT_BYTES:
            return method, _QUANT_BYTES[method]
        raise CannotPlan("unknown quantization method %r in config.json; pass weight_bytes explicitly" % method)
    if isinstance(hf_quant_config, Mapping):
        algo = str(hf_quant_config.get("quantization", {}).get("quant_algo", "")).lower()
        if algo in _QUANT_BYTES:
            return "modelopt_" + algo, _QUANT_BYTES[algo]
        if algo:
            raise CannotPlan("unknown ModelOpt quant_algo %r; pass weight_bytes explicitly" % algo)
    return None, None


def _compressed_tensors_bytes(quant: Mapping[str, Any]) -> float:
    groups = quant.get("config_groups") or {}
    for group in groups.values():
        weights = group.get("weights") or {}
        if "num_bits" in weights:
            bits = int(weights["num_bits"])
            size = weights.get("group_size")
            return bits / 8 + (2 / int(size) if size else 0)
    raise CannotPlan("compressed-tensors config without weight num_bits; pass weight_bytes explicitly")


def _parameter_counts(
    cfg: Mapping[str, Any], hidden: int, heads: int, kv_heads: int, head_dim: int, vocab: int, layers: int
) -> tuple[int, int, int, int]:
    """Return (embedding, decoder linear, of which quantizable, other) parameter counts."""
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    if experts:
        expert_size = int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])
        mlp = experts * 3 * hidden * expert_size + hidden * experts
        shared = int(cfg.get("shared_expert_intermediate_size") or 0)
        mlp += 3 * hidden * shared
    else:
        mlp = 3 * hidden * int(cfg["intermediate_size"])
    tied = bool(cfg.get("tie_word_embeddings", False))
    embedding = vocab * hidden * (1 if tied else 2)
    linear = layers * (attention + mlp)
    # MXFP4 checkpoints (gpt-oss) leave attention in 16 bit and quantize only the experts.
    method = str((cfg.get("quantization_config") or {}).get("quant_method", "")).lower()
    quantizable = layers * mlp if method == "mxfp4" else linear
    vision = cfg.get("vision_config")
    other = layers * 2 * hidden + hidden
    if isinstance(vision, Mapping):
        v_hidden = int(vision.get("hidden_size") or 0)
        v_layers = int(vision.get("depth") or vision.get("num_hidden_layers") or 0)
        v_inter = int(vision.get("intermediate_size") or 4 * v_hidden)
        other += v_layers * (4 * v_hidden * v_hidden + 2 * v_hidden * v_inter)
    return embedding, linear, quantizable, other


def model_shape(
    config: Mapping[str, Any],
    hf_quant_config: Mapping[str, Any] | None = None,
    dtype: str | None = None,
    name: str | None = None,
) -> ModelShape:
    """Extract a :class:`ModelShape` from ``config.json`` (and ``hf_quant_config.json``).

    ``dtype`` is vLLM's ``--dtype``: ``None``/"auto" runs a float32 checkpoint in
    16 bit, as vLLM does.
    """
    cfg = _text_config(config)
    try:
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        vocab = int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError) as error:
        raise CannotPlan("config.json lacks %s; is this a decoder-only language model?" % error) from error
    if cfg.get("kv_lora_rank"):
        raise CannotPlan("multi-head latent attention (kv_lora_rank) is not modelled by this planner")
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    checkpoint_dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or config.get("torch_dtype") or "bfloat16")
    runtime_dtype = checkpoint_dtype if dtype in (None, "auto") else dtype
    if runtime_dtype not in _DTYPE_BYTES:
        raise CannotPlan("unsupported dtype %r" % runtime_dtype)
    dtype_bytes = _DTYPE_BYTES[runtime_dtype]
    if dtype in (None, "auto") and dtype_bytes == 4:
        runtime_dtype, dtype_bytes = "bfloat16", 2
    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, Sequence) and not isinstance(layer_types, str):
        sliding_layers = sum(1 for kind in layer_types if kind == "sliding_attention")
    elif window and cfg.get("use_sliding_window", True):
        sliding_layers = layers
    else:
        sliding_layers = 0
    method, quant_bytes = _quantization(cfg, hf_quant_config)
    embedding, linear, quantizable, other = _parameter_counts(cfg, hidden, heads, kv_heads, head_dim, vocab, layers)
    architectures = config.get("architectures") or [config.get("model_type", "model")]
    return ModelShape(
        name=name or str(architectures[0]),
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        vocab_size=vocab,
        max_position_embeddings=_context_limit(cfg),
        checkpoint_dtype=checkpoint_dtype,
        dtype=runtime_dtype,
        dtype_bytes=dtype_bytes,
        sliding_window=int(window) if window and sliding_layers else None,
        sliding_layers=sliding_layers,
        quantization=method,
        quant_bytes=quant_bytes,
        embedding_params=embedding,
        linear_params=linear,
        quantizable_params=quantizable,
        other_params=other,
    )


def _context_limit(cfg: Mapping[str, Any]) -> int:
    limit = int(cfg.get("max_position_embeddings") or 2048)
    scaling = cfg.get("rope_scaling")
    if isinstance(scaling, Mapping) and scaling.get("original_max_position_embeddings"):
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind in ("yarn", "dynamic", "linear") and scaling.get("factor"):
            limit = max(limit, int(scaling["original_max_position_embeddings"] * float(scaling["factor"])))
    return limit


def estimate_weight_bytes(shape: ModelShape) -> int:
    """Weight bytes from the parameter count, the dtype and the quantization.

    Embeddings, norms and unquantized layers stay in the model dtype. Within
    0.3 % of the loaded size vLLM logs for Llama-3.1-8B (14.99 GiB) and
    Qwen3-32B (61.03 GiB), and of Llama-3.3-70B-FP8 (67.72 GiB).
    """
    dense = shape.embedding_params + shape.other_params + shape.linear_params - shape.quantizable_params
    if shape.quant_bytes is None:
        return (dense + shape.quantizable_params) * shape.dtype_bytes
    return int(dense * shape.dtype_bytes + shape.quantizable_params * shape.quant_bytes)


# --------------------------------------------------------------------------
# Memory model
# --------------------------------------------------------------------------


def kv_dtype_bytes(shape: ModelShape, kv_cache_dtype: str) -> int:
    if kv_cache_dtype == "auto":
        return shape.dtype_bytes
    if kv_cache_dtype in _KV_CACHE_DTYPE_BYTES:
        return _KV_CACHE_DTYPE_BYTES[kv_cache_dtype]
    raise CannotPlan("unsupported kv_cache_dtype %r (use auto or fp8)" % kv_cache_dtype)


def kv_heads_per_gpu(shape: ModelShape, tp: int) -> int:
    return max(1, shape.num_kv_heads // tp)


def kv_bytes_per_token(shape: ModelShape, kv_bytes: int, tp: int = 1, layers: int | None = None) -> int:
    """KV-cache bytes one token occupies on one GPU (``tp=1``: the whole model)."""
    count = shape.num_layers if layers is None else layers
    return 2 * count * kv_heads_per_gpu(shape, tp) * shape.head_dim * kv_bytes


def sequence_kv_bytes(shape: ModelShape, kv_bytes: int, tp: int, length: int) -> int:
    """KV bytes per GPU for one sequence of ``length`` tokens (sliding windows capped)."""
    full = kv_bytes_per_token(shape, kv_bytes, tp, shape.num_layers - shape.sliding_layers) * length
    if not shape.sliding_layers:
        return full
    window = min(length, shape.sliding_window or length)
    return full + kv_bytes_per_token(shape, kv_bytes, tp, shape.sliding_layers) * window


def activation_peak_bytes(shape: ModelShape, max_num_seqs: int, max_num_batched_tokens: int) -> int:
    rows = min(max_num_seqs, max_num_batched_tokens)
    return int(
        SAMPLER_BYTES_PER_LOGIT * rows * shape.vocab_size
        + FORWARD_BYTES_PER_TOKEN_HIDDEN * max_num_batched_tokens * shape.hidden_size
    )


def non_torch_bytes(tp: int) -> int:
    return NON_TORCH_BYTES_SINGLE_GPU if tp == 1 else NON_TORCH_BYTES_MULTI_GPU


def vllm_default_limits(gpu: GpuSpec) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM's API server picks for ``gpu``."""
    if gpu.memory_bytes >= 70 * GiB and "a100" not in gpu.name.lower():
        return 8192, 1024
    return 2048, 256


def valid_tensor_parallel_sizes(shape: ModelShape, upper: int) -> list[int]:
    """TP sizes vLLM accepts: they divide the attention heads, and the KV heads
    divide evenly or replicate evenly across ranks."""
    return [
        tp
        for tp in range(1, upper + 1)
        if shape.num_attention_heads % tp == 0 and (shape.num_kv_heads % tp == 0 or tp % shape.num_kv_heads == 0)
    ]


# --------------------------------------------------------------------------
# GPUs
# --------------------------------------------------------------------------


def gpu_spec(facts: Mapping[str, Any]) -> GpuSpec:
    """Read the ``vllm_gpu`` fact (see ``vllm_fleet_gpu.summarize``)."""
    if facts.get("state", "ok") != "ok":
        raise CannotPlan("GPU facts report state %r: %s" % (facts.get("state"), facts.get("message", "")))
    gpus = list(facts.get("gpus") or [])
    if not gpus:
        raise CannotPlan("GPU facts list no GPU; nothing to plan for")
    if facts.get("mig_enabled") or any(gpu.get("mig_enabled") for gpu in gpus):
        raise CannotPlan(
            "MIG mode is enabled on this host; vLLM would run on MIG slices, which this "
            "planner does not size. Disable MIG (nvidia-smi -mig 0) or size the slice by hand."
        )
    sizes = []
    for gpu in gpus:
        usable = gpu.get("memory_usable_bytes")
        if usable is None:
            total = gpu.get("memory_total_bytes")
            if total is None:
                raise CannotPlan("GPU %s reports no memory size" % gpu.get("index"))
            usable = int(total * (1 - DEFAULT_RESERVED_FRACTION))
        sizes.append(int(usable))
    smallest = min(range(len(gpus)), key=lambda i: sizes[i])
    indices = tuple(int(gpu["index"]) if gpu.get("index") is not None else i for i, gpu in enumerate(gpus))
    return GpuSpec(
        count=len(gpus),
        memory_bytes=sizes[smallest],
        name=str(gpus[smallest].get("name") or "GPU"),
        indices=indices,
    )


