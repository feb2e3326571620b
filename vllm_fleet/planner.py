"""Size a vLLM deployment for one GPU host: parallelism, limits and KV cache.

The planner runs on the Ansible controller. It reads a model's ``config.json``,
the weight size, the host's GPU facts (the ``vllm_gpu`` fact) and the user's
targets, and fills in every vLLM setting the user left unset, explaining each
choice in ``reasons``. Explicit values always win; when the model cannot run
as asked, :class:`PlanError` says by how many bytes and what would fit.

The memory model (weights, KV cache, activations, GPUs) is
:mod:`vllm_fleet.model_memory`; filling the vllm role's instances from a plan
is :mod:`vllm_fleet.planner_role`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from vllm_fleet.model_memory import (
    _DTYPE_BYTES,
    CONTEXT_STEP,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    KV_BLOCK_SIZE,
    LARGEST_TENSOR_PARALLEL,
    MIN_AUTO_MAX_MODEL_LEN,
    GiB,
    GpuSpec,
    ModelShape,
    PlanError,
    activation_peak_bytes,
    estimate_weight_bytes,
    gpu_spec,
    kv_bytes_per_token,
    kv_dtype_bytes,
    model_shape,
    non_torch_bytes,
    sequence_kv_bytes,
    valid_tensor_parallel_sizes,
    vllm_default_limits,
)

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


