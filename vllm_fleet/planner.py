"""Size a vLLM deployment for one GPU host: parallelism, limits and KV cache.

The planner runs on the Ansible controller. It reads a model's ``config.json``,
the weight size, the host's GPU facts (the ``vllm_gpu`` fact) and the user's
targets, and fills in every vLLM setting the user left unset, explaining each
choice in ``reasons``. Explicit values always win; when the model cannot run
as asked, :class:`PlanError` says by how many bytes and what would fit.

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

import math
from dataclasses import asdict, dataclass, field
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

TARGET_KEYS = (
    "max_model_len",
    "concurrency",
    "gpu_memory_utilization",
    "tensor_parallel_size",
    "instances",
    "max_num_seqs",
    "max_num_batched_tokens",
    "kv_cache_dtype",
    "dtype",
)


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


@dataclass
class Plan:
    """The planner's answer; :func:`plan` returns it as a dict."""

    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_dtype: str
    instance_count: int
    instances: list[dict[str, Any]]
    kv_bytes_per_token: int
    kv_bytes_per_token_per_gpu: int
    kv_cache_bytes_per_gpu: int
    kv_cache_tokens: int
    max_concurrency_at_max_model_len: float
    host_max_concurrency_at_max_model_len: float
    weight_bytes: int
    weight_bytes_per_gpu: int
    activation_peak_bytes: int
    non_torch_bytes: int
    gpu_memory_bytes: int
    gpu_count: int
    gpu_name: str
    reasons: list[str] = field(default_factory=list)


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


# --------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """One candidate deployment and its per-GPU memory budget."""

    tp: int
    instances: int
    concurrency: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    weights: int
    activation: int
    non_torch: int
    budget: int
    kv_per_gpu: int
    kv_per_token: int
    needed_kv: int

    @property
    def fits(self) -> bool:
        return self.kv_per_gpu >= self.needed_kv and self.kv_per_gpu > 0

    @property
    def tokens(self) -> int:
        if self.kv_per_gpu <= 0:
            return 0
        blocks = self.kv_per_gpu // (self.kv_per_token * KV_BLOCK_SIZE)
        return blocks * KV_BLOCK_SIZE


def _gib(value: float) -> str:
    return "%.2f GiB" % (value / GiB)


def _pow2_ceil(value: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, value))))


class _Planner:
    def __init__(self, shape: ModelShape, gpus: GpuSpec, weights: int, targets: Mapping[str, Any]):
        self.shape = shape
        self.gpus = gpus
        self.weights = weights
        self.targets = targets
        self.kv_cache_dtype = str(targets.get("kv_cache_dtype") or "auto")
        self.kv_bytes = kv_dtype_bytes(shape, self.kv_cache_dtype)
        self.utilization = float(targets.get("gpu_memory_utilization") or DEFAULT_GPU_MEMORY_UTILIZATION)
        if not 0 < self.utilization <= 1:
            raise PlanError("gpu_memory_utilization must be in (0, 1], got %s" % self.utilization)
        self.concurrency = int(targets.get("concurrency") or 1)
        if self.concurrency < 1:
            raise PlanError("concurrency must be at least 1, got %d" % self.concurrency)
        self.default_batched, self.default_seqs = vllm_default_limits(gpus)
        self.instances = int(targets.get("instances") or 0)
        if self.instances < 0 or self.instances > gpus.count:
            raise PlanError("instances=%d: this host has %d GPU(s)" % (self.instances, gpus.count))

    def layout(self, tp: int, max_model_len: int, weights: int | None = None, kv_bytes: int | None = None) -> _Layout:
        instances = self.instances or max(1, self.gpus.count // tp)
        concurrency = math.ceil(self.concurrency / instances)
        if self.targets.get("max_num_seqs"):
            seqs = int(self.targets["max_num_seqs"])
        elif self.targets.get("concurrency"):
            seqs = min(self.default_seqs, _pow2_ceil(concurrency))
        else:
            seqs = self.default_seqs
        batched = int(self.targets.get("max_num_batched_tokens") or max(self.default_batched, seqs))
        if batched < seqs:
            raise PlanError("max_num_batched_tokens=%d is below max_num_seqs=%d; vLLM refuses that" % (batched, seqs))
        weights_total = self.weights if weights is None else weights
        per_gpu_weights = math.ceil(weights_total / tp)
        activation = activation_peak_bytes(self.shape, seqs, batched)
        overhead = non_torch_bytes(tp)
        budget = int(self.gpus.memory_bytes * self.utilization)
        kv_bytes = self.kv_bytes if kv_bytes is None else kv_bytes
        return _Layout(
            tp=tp,
            instances=instances,
            concurrency=concurrency,
            max_model_len=max_model_len,
            max_num_seqs=seqs,
            max_num_batched_tokens=batched,
            weights=per_gpu_weights,
            activation=activation,
            non_torch=overhead,
            budget=budget,
            kv_per_gpu=budget - per_gpu_weights - activation - overhead,
            kv_per_token=kv_bytes_per_token(self.shape, kv_bytes, tp),
            needed_kv=concurrency * sequence_kv_bytes(self.shape, kv_bytes, tp, max_model_len),
        )

    def longest_fitting_len(self, layout: _Layout) -> int:
        """Longest max_model_len (a multiple of CONTEXT_STEP) that fits ``layout``."""
        length = (self.shape.max_position_embeddings // CONTEXT_STEP) * CONTEXT_STEP
        while length >= CONTEXT_STEP:
            if self.layout(layout.tp, length).fits:
                return length
            length -= CONTEXT_STEP
        return 0

    def candidates(self) -> list[int]:
        upper = self.gpus.count // max(1, self.instances)
        explicit = self.targets.get("tensor_parallel_size")
        if explicit:
            tp = int(explicit)
            if tp not in valid_tensor_parallel_sizes(self.shape, tp):
                raise PlanError(
                    "tensor_parallel_size=%d does not divide the %d attention heads / %d KV heads of %s"
                    % (tp, self.shape.num_attention_heads, self.shape.num_kv_heads, self.shape.name)
                )
            if tp > upper:
                raise PlanError(
                    "tensor_parallel_size=%d x %d instance(s) needs %d GPUs; this host has %d"
                    % (tp, max(1, self.instances), tp * max(1, self.instances), self.gpus.count)
                )
            return [tp]
        return valid_tensor_parallel_sizes(self.shape, upper)

    def fail(self, layout: _Layout) -> PlanError:
        shape = self.shape
        needed = layout.weights + layout.activation + layout.non_torch + layout.needed_kv
        lines = [
            "%s does not fit on %d x %s (%s usable each, gpu_memory_utilization %.2f) with "
            "tensor_parallel_size=%d, max_model_len=%d and %d concurrent sequence(s) per instance: "
            "it needs %s per GPU (weights %s + activation peak %s + non-torch %s + KV cache %s) "
            "but %s is available."
            % (
                shape.name,
                self.gpus.count,
                self.gpus.name,
                _gib(self.gpus.memory_bytes),
                self.utilization,
                layout.tp,
                layout.max_model_len,
                layout.concurrency,
                _gib(needed),
                _gib(layout.weights),
                _gib(layout.activation),
                _gib(layout.non_torch),
                _gib(layout.needed_kv),
                _gib(layout.budget),
            )
        ]
        options = []
        bigger = [
            tp
            for tp in valid_tensor_parallel_sizes(shape, LARGEST_TENSOR_PARALLEL)
            if tp > layout.tp and self.layout(tp, layout.max_model_len).fits
        ]
        if bigger:
            options.append("tensor_parallel_size=%d (%d GPUs of this size)" % (bigger[0], bigger[0]))
        if shape.quant_bytes is None and shape.dtype_bytes > 1:
            fp8 = self.weights // shape.dtype_bytes
            if self.layout(layout.tp, layout.max_model_len, weights=fp8).fits:
                options.append("an FP8-quantized checkpoint (weights ~%s in total)" % _gib(fp8))
        length = self.longest_fitting_len(layout)
        if length:
            options.append("max_model_len <= %d at tensor_parallel_size=%d" % (length, layout.tp))
        if (
            self.kv_cache_dtype == "auto"
            and self.kv_bytes > 1
            and self.layout(layout.tp, layout.max_model_len, kv_bytes=1).fits
        ):
            options.append(
                "kv_cache_dtype=fp8 (KV per token %d -> %d bytes)"
                % (kv_bytes_per_token(shape, self.kv_bytes), kv_bytes_per_token(shape, 1))
            )
        per_sequence = layout.needed_kv // layout.concurrency
        if layout.concurrency > 1 and layout.kv_per_gpu >= per_sequence > 0:
            options.append(
                "at most %d concurrent sequences per instance (%d asked)"
                % (layout.kv_per_gpu // per_sequence, layout.concurrency)
            )
        lines.append("What would fit: " + ("; ".join(options) if options else "nothing on this host") + ".")
        return PlanError(" ".join(lines))

    def choose(self) -> tuple[_Layout, list[str]]:
        shape = self.shape
        reasons: list[str] = []
        asked_len = self.targets.get("max_model_len")
        native = shape.max_position_embeddings
        if asked_len and int(asked_len) > native:
            raise PlanError(
                "max_model_len=%d exceeds the %d tokens %s supports (max_position_embeddings / rope scaling)"
                % (int(asked_len), native, shape.name)
            )
        length = int(asked_len) if asked_len else native
        candidates = self.candidates()
        layouts = [self.layout(tp, length) for tp in candidates]
        chosen = next((layout for layout in layouts if layout.fits), None)
        if chosen is None and not asked_len:
            for layout in layouts:
                shorter = self.longest_fitting_len(layout)
                if shorter >= MIN_AUTO_MAX_MODEL_LEN:
                    chosen = self.layout(layout.tp, shorter)
                    reasons.append(
                        "max_model_len=%d: the native %d tokens do not fit %d concurrent sequence(s) per "
                        "instance at any tensor parallel size on this host; %d is the longest that fits at TP=%d"
                        % (shorter, native, layout.concurrency, shorter, layout.tp)
                    )
                    break
        if chosen is None:
            raise self.fail(layouts[-1])
        if asked_len:
            reasons.append("max_model_len=%d as given" % chosen.max_model_len)
        elif not reasons:
            reasons.append("max_model_len=%d: the model's native context" % chosen.max_model_len)
        reasons.extend(self.explain(chosen, layouts))
        return chosen, reasons

    def explain(self, chosen: _Layout, layouts: Sequence[_Layout]) -> list[str]:
        reasons = []
        if self.targets.get("tensor_parallel_size"):
            reasons.append("tensor_parallel_size=%d as given" % chosen.tp)
        else:
            smaller = [layout.tp for layout in layouts if layout.tp < chosen.tp]
            why = (
                "; TP=%s leave less than %d x %d tokens of KV cache per instance"
                % ("/".join(str(tp) for tp in smaller), chosen.concurrency, chosen.max_model_len)
                if smaller
                else ""
            )
            reasons.append(
                "tensor_parallel_size=%d: the smallest size that divides the %d attention heads and holds the "
                "weights (%s per GPU) plus %d x %d tokens of KV cache%s"
                % (
                    chosen.tp,
                    self.shape.num_attention_heads,
                    _gib(chosen.weights),
                    chosen.concurrency,
                    chosen.max_model_len,
                    why,
                )
            )
        if self.instances:
            reasons.append("instances=%d as given" % chosen.instances)
        elif chosen.instances > 1:
            reasons.append(
                "%d instances of TP=%d behind the load balancer: independent replicas scale better than "
                "tensor parallelism across all %d GPUs once a replica fits"
                % (chosen.instances, chosen.tp, self.gpus.count)
            )
        idle = self.gpus.count - chosen.instances * chosen.tp
        if idle > 0:
            reasons.append(
                "%d GPU(s) stay unused: %d does not divide into TP=%d groups" % (idle, self.gpus.count, chosen.tp)
            )
        if self.targets.get("gpu_memory_utilization"):
            reasons.append("gpu_memory_utilization=%.2f as given" % self.utilization)
        else:
            reasons.append(
                "gpu_memory_utilization=%.2f: vLLM's default, leaves room for CUDA graphs" % self.utilization
            )
        if self.targets.get("max_num_seqs"):
            reasons.append("max_num_seqs=%d as given" % chosen.max_num_seqs)
        elif self.targets.get("concurrency") and chosen.max_num_seqs < self.default_seqs:
            saved = (
                activation_peak_bytes(self.shape, self.default_seqs, chosen.max_num_batched_tokens) - chosen.activation
            )
            reasons.append(
                "max_num_seqs=%d: covers the expected %d concurrent sequences per instance; staying below "
                "vLLM's default %d shrinks the sampler's profiling peak by %s, which goes to the KV cache"
                % (chosen.max_num_seqs, chosen.concurrency, self.default_seqs, _gib(saved))
            )
        else:
            reasons.append("max_num_seqs=%d: vLLM's default for this GPU" % chosen.max_num_seqs)
        if self.targets.get("max_num_batched_tokens"):
            reasons.append("max_num_batched_tokens=%d as given" % chosen.max_num_batched_tokens)
        else:
            reasons.append(
                "max_num_batched_tokens=%d: vLLM's chunked-prefill default for this GPU" % chosen.max_num_batched_tokens
            )
        if self.targets.get("kv_cache_dtype"):
            reasons.append("kv_cache_dtype=%s as given" % self.kv_cache_dtype)
        else:
            reasons.append("kv_cache_dtype=auto: the KV cache is kept in %s" % self.shape.dtype)
        reasons.append(
            "KV cache %s per GPU = %s x %.2f - weights %s - activation peak %s - non-torch %s"
            % (
                _gib(chosen.kv_per_gpu),
                _gib(self.gpus.memory_bytes),
                self.utilization,
                _gib(chosen.weights),
                _gib(chosen.activation),
                _gib(chosen.non_torch),
            )
        )
        return reasons


def _targets(targets: Mapping[str, Any] | None) -> dict[str, Any]:
    given = {key: value for key, value in dict(targets or {}).items() if value is not None}
    unknown = sorted(set(given) - set(TARGET_KEYS))
    if unknown:
        raise PlanError("unknown target(s) %s; known: %s" % (", ".join(unknown), ", ".join(TARGET_KEYS)))
    return given


def plan(
    config: Mapping[str, Any],
    gpu_facts: Mapping[str, Any],
    weight_bytes: int | None = None,
    targets: Mapping[str, Any] | None = None,
    hf_quant_config: Mapping[str, Any] | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Plan a vLLM deployment of the model in ``config`` on the host in ``gpu_facts``.

    ``weight_bytes`` is the checkpoint size (see :func:`weight_bytes_from_safetensors_index`);
    when absent it is estimated from the config. ``targets`` may set any of
    :data:`TARGET_KEYS`; whatever is set is used as is. ``hf_quant_config`` is a
    ModelOpt ``hf_quant_config.json``; ``model_name`` only labels messages.
    """
    wanted = _targets(targets)
    shape = model_shape(config, hf_quant_config, wanted.get("dtype"), model_name)
    gpus = gpu_spec(gpu_facts)
    reasons = []
    if weight_bytes is None:
        weights = estimate_weight_bytes(shape)
        quantized = ", %s-quantized" % shape.quantization if shape.quantization else ""
        reasons.append(
            "weights estimated from config.json at %s (%s%s); pass weight_bytes from the safetensors "
            "index for the exact size" % (_gib(weights), shape.dtype, quantized)
        )
    else:
        weights = int(weight_bytes)
        if _DTYPE_BYTES.get(shape.checkpoint_dtype) == 4 and shape.dtype_bytes == 2 and shape.quantization is None:
            weights //= 2
            reasons.append("float32 checkpoint runs in %s: weights %s in GPU memory" % (shape.dtype, _gib(weights)))
    planner = _Planner(shape, gpus, weights, wanted)
    chosen, layout_reasons = planner.choose()
    reasons.extend(layout_reasons)
    groups = [gpus.indices[i * chosen.tp : (i + 1) * chosen.tp] for i in range(chosen.instances)]
    full_token = kv_bytes_per_token(shape, planner.kv_bytes)
    seq = sequence_kv_bytes(shape, planner.kv_bytes, chosen.tp, chosen.max_model_len)
    concurrency = round(chosen.kv_per_gpu / seq, 2) if seq else 0.0
    result = Plan(
        tensor_parallel_size=chosen.tp,
        gpu_memory_utilization=planner.utilization,
        max_model_len=chosen.max_model_len,
        max_num_seqs=chosen.max_num_seqs,
        max_num_batched_tokens=chosen.max_num_batched_tokens,
        kv_cache_dtype=planner.kv_cache_dtype,
        instance_count=chosen.instances,
        instances=[
            {"cuda_visible_devices": ",".join(str(index) for index in group), "gpu_indices": list(group)}
            for group in groups
        ],
        kv_bytes_per_token=full_token,
        kv_bytes_per_token_per_gpu=chosen.kv_per_token,
        kv_cache_bytes_per_gpu=chosen.kv_per_gpu,
        kv_cache_tokens=chosen.tokens,
        max_concurrency_at_max_model_len=concurrency,
        host_max_concurrency_at_max_model_len=round(concurrency * chosen.instances, 2),
        weight_bytes=weights,
        weight_bytes_per_gpu=chosen.weights,
        activation_peak_bytes=chosen.activation,
        non_torch_bytes=chosen.non_torch,
        gpu_memory_bytes=gpus.memory_bytes,
        gpu_count=gpus.count,
        gpu_name=gpus.name,
        reasons=reasons,
    )
    return asdict(result)


# --------------------------------------------------------------------------
# The vllm role: fill an instance's unset engine arguments
# --------------------------------------------------------------------------

#: Engine arguments the role fills from the plan when an instance leaves them
#: unset (vLLM's long option names, as the instance config spells them), and the
#: planner's name for each.
PLANNED_ARGS = {
    "tensor-parallel-size": "tensor_parallel_size",
    "gpu-memory-utilization": "gpu_memory_utilization",
    "max-model-len": "max_model_len",
    "max-num-seqs": "max_num_seqs",
    "max-num-batched-tokens": "max_num_batched_tokens",
}
#: Engine arguments the planner takes as given when the instance sets them.
_GIVEN_ARGS = {**PLANNED_ARGS, "kv-cache-dtype": "kv_cache_dtype", "dtype": "dtype"}


def unset_args(args: Mapping[str, Any]) -> list[str]:
    """The :data:`PLANNED_ARGS` an instance's merged engine arguments leave unset."""
    return [key for key in PLANNED_ARGS if args.get(key) is None]


def visible_gpu_facts(facts: Mapping[str, Any], cuda_visible_devices: Any) -> dict[str, Any]:
    """The ``vllm_gpu`` fact narrowed to a ``CUDA_VISIBLE_DEVICES`` list (indices or UUIDs).

    Empty or ``None`` keeps every GPU. A device the host does not have is a
    :class:`PlanError` naming the ones it has.
    """
    wanted = [part.strip() for part in str(cuda_visible_devices or "").split(",") if part.strip()]
    if not wanted:
        return dict(facts)
    gpus = list(facts.get("gpus") or [])
    chosen = []
    for device in wanted:
        match = next((gpu for gpu in gpus if device in (str(gpu.get("index")), str(gpu.get("uuid")))), None)
        if match is None:
            raise PlanError(
                "cuda_visible_devices=%s names GPU %s; this host has GPU(s) %s"
                % (cuda_visible_devices, device, ", ".join(str(gpu.get("index")) for gpu in gpus) or "none")
            )
        chosen.append(match)
    return dict(facts, gpus=chosen, count=len(chosen))


def _given_targets(args: Mapping[str, Any]) -> dict[str, Any]:
    return {target: args[key] for key, target in _GIVEN_ARGS.items() if args.get(key) is not None}


def plan_instances(
    instances: Sequence[Mapping[str, Any]],
    gpu_facts: Mapping[str, Any],
    config: Mapping[str, Any],
    weight_bytes: int | None = None,
    hf_quant_config: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    concurrency: int | None = None,
    weight_source: str | None = None,
) -> dict[str, Any]:
    """Plan every instance of one host; the vllm role's view of :func:`plan`.

    ``instances`` are ``{name, args, cuda_visible_devices}`` with ``args`` the
    instance's merged engine arguments (dashed keys, unset ones absent or None).
    Whatever an instance sets is passed to the planner as given; only the
    :data:`PLANNED_ARGS` it leaves unset are returned, in ``fill``. An instance
    with ``cuda_visible_devices`` is planned on those GPUs alone; the others
    share the host's GPUs. ``concurrency`` is the host's expected concurrent
    sequences (split over the sharing instances).

    The instance layout is never changed: when the planner would lay this host
    out differently (typically one instance per GPU for a small model on a
    multi-GPU host), that is returned as ``advice`` for the operator.

    Returns ``{instances: [{name, unset, fill, reasons, error, summary}],
    errors: [...], advice: None | {...}, report: [lines for the play output]}``;
    a model that cannot fit is an ``error`` carrying the planner's numbers, not
    an exception. A model or host the planner does not model (:class:`CannotPlan`:
    multi-head latent attention, an unknown quantization, MIG slices...) is left
    unplanned, which the instance's ``summary`` says; vLLM then decides.
    """
    shared = [inst for inst in instances if not inst.get("cuda_visible_devices")]
    results = []
    for inst in instances:
        name = str(inst.get("name"))
        args = dict(inst.get("args") or {})
        unset = unset_args(args)
        entry: dict[str, Any] = {"name": name, "unset": unset, "fill": {}, "reasons": [], "error": None, "summary": ""}
        results.append(entry)
        if not unset:
            entry["summary"] = "vllm@%s: every planned argument is set; nothing to plan" % name
            continue
        targets = _given_targets(args)
        targets["instances"] = 1
        if concurrency:
            targets["concurrency"] = math.ceil(int(concurrency) / max(1, len(instances)))
        devices = inst.get("cuda_visible_devices")
        try:
            facts = visible_gpu_facts(gpu_facts, devices)
            if not devices and len(shared) > 1:
                # Instances without their own GPUs split the host's GPUs evenly.
                gpus = list(facts.get("gpus") or [])
                if len(shared) > len(gpus):
                    raise PlanError(
                        "%d instances share this host's %d GPU(s) (none sets cuda_visible_devices): give each "
                        "instance its own GPUs with cuda_visible_devices, or set the engine arguments explicitly"
                        % (len(shared), len(gpus))
                    )
                facts = dict(facts, gpus=gpus[: len(gpus) // len(shared)], count=len(gpus) // len(shared))
            result = plan(config, facts, weight_bytes, targets, hf_quant_config, model_name)
        except CannotPlan as error:
            entry["summary"] = "vllm@%s: not planned (%s); its unset sizing arguments are left to vLLM" % (name, error)
            continue
        except PlanError as error:
            entry["error"] = "vllm@%s: %s" % (name, error)
            continue
        entry["fill"] = {key: result[target] for key, target in PLANNED_ARGS.items() if key in unset}
        layout = "one instance on %s: vllm_instances decides the layout" % (
            "GPU(s) " + str(devices) if devices else "%d of the host's GPU(s)" % result["gpu_count"]
        )
        idle = result["gpu_count"] - result["tensor_parallel_size"]
        reasons = [
            layout
            if reason.startswith("instances=")
            else "%d GPU(s) stay unused by this instance (see the advice below)" % idle
            if reason.endswith("groups") and "stay unused" in reason
            else reason
            for reason in result["reasons"]
        ]
        if weight_bytes is not None and weight_source:
            reasons.insert(0, "weights %s: %s" % (_gib(int(weight_bytes)), weight_source))
        entry["reasons"] = reasons
        entry["kv_cache_tokens"] = result["kv_cache_tokens"]
        entry["max_concurrency_at_max_model_len"] = result["max_concurrency_at_max_model_len"]
        chosen = ", ".join("%s=%s" % (key, value) for key, value in entry["fill"].items())
        given = ", ".join("%s=%s" % (key, args[key]) for key in PLANNED_ARGS if key not in unset)
        entry["summary"] = "vllm@%s on %s: planned %s%s; KV cache %d tokens, %.2f sequences of max-model-len" % (
            name,
            "GPU(s) " + str(devices) if devices else "%d x %s" % (result["gpu_count"], result["gpu_name"]),
            chosen,
            "; given " + given if given else "",
            result["kv_cache_tokens"],
            result["max_concurrency_at_max_model_len"],
        )
    errors = [entry["error"] for entry in results if entry["error"]]
    advice = None
    if not errors:
        advice = _layout_advice(instances, gpu_facts, config, weight_bytes, hf_quant_config, model_name, concurrency)
    report = []
    for entry in results:
        report.append(entry["error"] or entry["summary"])
        report.extend("  - " + reason for reason in entry["reasons"])
    if advice:
        report.append("ADVICE (not applied): " + advice["message"])
    return {"instances": results, "errors": errors, "advice": advice, "report": report}


def _layout_advice(instances, gpu_facts, config, weight_bytes, hf_quant_config, model_name, concurrency):
    """The planner's own instance layout for the whole host, when it differs from ``instances``.

    Only offered where it is meaningful: more than one GPU, and no instance pins
    its GPUs (an operator who laid GPUs out by hand has decided).
    """
    if len(gpu_facts.get("gpus") or []) < 2 or any(inst.get("cuda_visible_devices") for inst in instances):
        return None
    first = dict(instances[0].get("args") or {}) if instances else {}
    targets = _given_targets(first)
    targets.pop("tensor_parallel_size", None)
    if concurrency:
        targets["concurrency"] = int(concurrency)
    try:
        result = plan(config, gpu_facts, weight_bytes, targets, hf_quant_config, model_name)
    except PlanError:
        return None
    if result["instance_count"] == len(instances):
        return None
    groups = [group["cuda_visible_devices"] for group in result["instances"]]
    return {
        "instance_count": result["instance_count"],
        "tensor_parallel_size": result["tensor_parallel_size"],
        "cuda_visible_devices": groups,
        "message": (
            "the planner would serve this host's %d GPUs as %d instance(s) of tensor_parallel_size=%d "
            "(cuda_visible_devices %s); vllm_instances defines %d. The role does not change the instance "
            "layout: to follow this advice, define one vllm_instances entry per group, each with its "
            "cuda_visible_devices and its own port."
            % (
                len(gpu_facts["gpus"]),
                result["instance_count"],
                result["tensor_parallel_size"],
                " / ".join(groups),
                len(instances),
            )
        ),
    }


def apply_plan(instances: Sequence[Mapping[str, Any]], planned: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """``instances`` with each one's planned values added to its ``args``.

    Only values the instance left unset are ever planned, so nothing the user
    set is replaced; an instance the plan does not name is returned unchanged.
    """
    fills = {entry["name"]: entry.get("fill") or {} for entry in (planned or {}).get("instances") or []}
    result = []
    for inst in instances:
        fill = fills.get(str(inst.get("name"))) or {}
        if fill:
            inst = dict(inst, args={**fill, **dict(inst.get("args") or {})})
        result.append(dict(inst))
    return result
