"""The vLLM planner against published measurements and real model configs.

Published figures: llm-d-benchmark, config_explorer/empirical-vllm-memory-results.md
(vLLM v0.11 on one H100 80GB HBM3, gpu_memory_utilization 0.9, max_model_len 16000,
vLLM's default max_num_seqs=1024 / max_num_batched_tokens=8192). GPU facts come from
the nvidia-smi output recorded on an H100 (tests/fixtures/nvidia-smi), configs from
tests/fixtures/models (sources in the SOURCES.md next to them).
"""

import json
from pathlib import Path

import pytest
from vllm_fleet import gpu_facts as gpu

from tests.helpers.plugins import ansible_filter
from vllm_fleet import model_memory
from vllm_fleet.model_memory import GiB, PlanError
from vllm_fleet.planner import plan

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


def config(model):
    return json.loads((FIXTURES / "models" / model / "config.json").read_text())


def facts(card="h100-sxm5-80gb", count=1):
    (recorded,) = gpu.parse_query_gpu_csv((FIXTURES / "nvidia-smi" / (card + ".query-gpu.csv")).read_text())
    return gpu.summarize([dict(recorded, index=index) for index in range(count)])


def shape(model, **kwargs):
    return model_memory.model_shape(config(model), **kwargs)


FP8_QUANT = json.loads((FIXTURES / "models" / "Llama-3.1-70B-Instruct-FP8" / "hf_quant_config.json").read_text())

# model, tp, loaded weights (GiB), activation peak (GiB), available KV cache (GiB); extra plan() kwargs
PUBLISHED = [
    ("Meta-Llama-3.1-8B", 1, 14.99, 4.76, 51.38, {}),
    ("Qwen3-32B", 1, 61.03, 5.64, 4.45, {}),
    ("Qwen3-32B", 2, 61.03, 5.64, 34.49, {}),
    ("Qwen3-0.6B", 1, 1.12, 5.56, 64.45, {}),
    ("gpt-oss-20b", 1, 13.47, 7.38, 50.28, {}),
    # measured on RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic; same architecture as this config
    ("Llama-3.1-70B-Instruct-FP8", 2, 67.72, 4.84, 32.00, {"hf_quant_config": FP8_QUANT}),
]
H100_TARGETS = {"max_model_len": 16000}


# --------------------------------------------------------------------------
# Published measurements (goal: KV cache within +-5 %)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("model, tp, weights, activation, kv, extra", PUBLISHED)
def test_kv_cache_matches_published_measurement(model, tp, weights, activation, kv, extra):
    result = plan(
        config(model),
        facts(count=tp),
        weight_bytes=int(weights * GiB),
        targets=dict(H100_TARGETS, tensor_parallel_size=tp),
        **extra,
    )
    assert result["kv_cache_bytes_per_gpu"] / GiB == pytest.approx(kv, rel=0.05)
    assert result["activation_peak_bytes"] / GiB == pytest.approx(activation, rel=0.02)
    assert result["max_num_seqs"] == 1024 and result["max_num_batched_tokens"] == 8192  # vLLM's H100 defaults


@pytest.mark.parametrize("model, tp, weights, activation, kv, extra", [p for p in PUBLISHED if p[0] != "gpt-oss-20b"])
def test_kv_cache_from_estimated_weights(model, tp, weights, activation, kv, extra):
    result = plan(config(model), facts(count=tp), targets=dict(H100_TARGETS, tensor_parallel_size=tp), **extra)
    assert result["weight_bytes"] / GiB == pytest.approx(weights, rel=0.01)
    assert result["kv_cache_bytes_per_gpu"] / GiB == pytest.approx(kv, rel=0.05)


def test_reasons_show_the_budget():
    result = plan(config("Meta-Llama-3.1-8B"), facts(), weight_bytes=int(14.99 * GiB), targets=H100_TARGETS)
    assert result["gpu_memory_bytes"] / GiB == pytest.approx(79.18, abs=0.005)
    assert any("51.39 GiB per GPU = 79.18 GiB x 0.90" in reason for reason in result["reasons"])


# --------------------------------------------------------------------------
# KV bytes per token
# --------------------------------------------------------------------------


def test_kv_bytes_per_token():
    llama = shape("Meta-Llama-3.1-8B")
    assert model_memory.kv_bytes_per_token(llama, 2) == 131072  # 2 x 32 layers x 8 heads x 128 x 2 bytes
    assert model_memory.kv_bytes_per_token(llama, 1) == 65536  # fp8 KV cache halves it
    qwen = shape("Qwen3-32B")
    assert model_memory.kv_bytes_per_token(qwen, 2) == 262144
    assert model_memory.kv_bytes_per_token(qwen, 2, tp=2) == 131072
    assert model_memory.kv_bytes_per_token(qwen, 2, tp=8) == 32768


def test_kv_heads_replicate_beyond_their_count():
    small = shape("Qwen3-0.6B")  # 16 attention heads, 8 KV heads
    assert 16 in model_memory.valid_tensor_parallel_sizes(small, 16)
    assert model_memory.kv_heads_per_gpu(small, 16) == 1
    assert model_memory.kv_bytes_per_token(small, 2, tp=16) == model_memory.kv_bytes_per_token(small, 2, tp=8)


def test_sliding_window_layers_cap_their_kv():
    oss = shape("gpt-oss-20b")  # 12 of 24 layers attend over a 128-token window
    assert (oss.sliding_layers, oss.sliding_window) == (12, 128)
    full = model_memory.kv_bytes_per_token(oss, 2) * 16000
    assert model_memory.sequence_kv_bytes(oss, 2, 1, 16000) == pytest.approx(full / 2, rel=0.01)
    dense = shape("Qwen3-32B")  # sliding_window null, use_sliding_window false
    assert dense.sliding_layers == 0


def test_kv_cache_fp8_doubles_capacity():
    auto = plan(config("Meta-Llama-3.1-8B"), facts(), targets=H100_TARGETS)
    fp8 = plan(config("Meta-Llama-3.1-8B"), facts(), targets=dict(H100_TARGETS, kv_cache_dtype="fp8"))
    assert fp8["kv_bytes_per_token"] == auto["kv_bytes_per_token"] // 2
    assert fp8["kv_cache_tokens"] == pytest.approx(2 * auto["kv_cache_tokens"], rel=0.001)


# --------------------------------------------------------------------------
# Model shapes and weights
# --------------------------------------------------------------------------


def test_multimodal_text_config():
    vl = shape("Qwen3-VL-8B-Instruct")
    assert (vl.num_layers, vl.num_attention_heads, vl.num_kv_heads, vl.head_dim) == (36, 32, 8, 128)
    assert vl.dtype == "bfloat16" and vl.max_position_embeddings == 262144
    assert vl.other_params > 300e6  # the vision tower is counted


def test_moe_weights_count_every_expert():
    mixtral = shape("Mixtral-8x7B-v0.1")
    params = model_memory.estimate_weight_bytes(mixtral) / mixtral.dtype_bytes
    assert params == pytest.approx(46.7e9, rel=0.01)  # Mixtral 8x7B: 46.7B parameters
    assert model_memory.kv_bytes_per_token(mixtral, 2) == 131072  # experts do not touch the KV cache


def test_quantized_weights():
    bf16 = model_memory.estimate_weight_bytes(shape("Qwen3-32B"))
    fp8 = model_memory.estimate_weight_bytes(shape("Qwen3-32B-FP8"))
    assert shape("Qwen3-32B-FP8").quantization == "fp8"
    assert 0.5 < fp8 / bf16 < 0.53  # linear layers in 1 byte, embeddings stay 16-bit
    # No real AWQ config.json was found (see models/SOURCES.md): this one is Qwen3-32B's
    # with the quantization_config block an AutoAWQ export writes.
    awq = dict(config("Qwen3-32B"), quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128})
    int4 = model_memory.estimate_weight_bytes(model_memory.model_shape(awq))
    assert 0.27 < int4 / bf16 < 0.30
    gguf = dict(config("Qwen3-32B"), quantization_config={"quant_method": "gguf"})
    with pytest.raises(PlanError, match="weight_bytes"):
        model_memory.model_shape(gguf)


def test_float32_checkpoints_run_in_16_bit():
    fp32 = dict(config("Qwen3-0.6B"), torch_dtype="float32")
    assert model_memory.model_shape(fp32).dtype_bytes == 2
    assert model_memory.model_shape(fp32, dtype="float32").dtype_bytes == 4
    result = plan(fp32, facts(), weight_bytes=4 * GiB)
    assert result["weight_bytes"] == 2 * GiB
    assert any("float32 checkpoint" in reason for reason in result["reasons"])


def test_weight_bytes_helpers():
    assert (
        model_memory.weight_bytes_from_safetensors_index({"metadata": {"total_size": 16060522496}, "weight_map": {}})
        == 16060522496
    )
    assert model_memory.weight_bytes_from_file_sizes([4976698672, 4999802720, 4915916176, 1168138808]) == 16060556376
    with pytest.raises(PlanError):
        model_memory.weight_bytes_from_safetensors_index({"weight_map": {}})


def test_not_a_language_model():
    with pytest.raises(PlanError, match="num_hidden_layers"):
        model_memory.model_shape({"model_type": "vit"})
    with pytest.raises(PlanError, match="latent attention"):
        model_memory.model_shape(dict(config("Qwen3-32B"), kv_lora_rank=512))


# --------------------------------------------------------------------------
# Choosing the layout
# --------------------------------------------------------------------------


def test_small_model_gets_one_instance_per_gpu():
    result = plan(config("Meta-Llama-3.1-8B"), facts(count=8))
    assert result["tensor_parallel_size"] == 1
    assert result["instance_count"] == 8
    assert [i["cuda_visible_devices"] for i in result["instances"]] == [str(n) for n in range(8)]
    assert result["max_model_len"] == 131072
    assert any("8 instances of TP=1" in reason for reason in result["reasons"])


def test_tensor_parallel_when_one_gpu_is_not_enough():
    # Qwen3-32B: one H100 holds the weights but only ~18k tokens of KV cache.
    result = plan(config("Qwen3-32B"), facts(count=2))
    assert result["tensor_parallel_size"] == 2 and result["instance_count"] == 1
    assert result["instances"] == [{"cuda_visible_devices": "0,1", "gpu_indices": [0, 1]}]
    assert result["max_model_len"] == 40960
    assert any("TP=1 leave less than" in reason for reason in result["reasons"])


def test_replicas_of_tensor_parallel_groups():
    result = plan(config("Mixtral-8x7B-v0.1"), facts(count=4))
    assert result["tensor_parallel_size"] == 2
    assert [i["cuda_visible_devices"] for i in result["instances"]] == ["0,1", "2,3"]


# Mixtral-8x7B's ~87 GiB of bf16 weights do not fit one 80 GB H100; every other
# pair below fits.
TOO_BIG_FOR_H100S = {("Mixtral-8x7B-v0.1", 1)}


@pytest.mark.parametrize(
    "model",
    ["Meta-Llama-3.1-8B", "Qwen3-32B", "Qwen3-0.6B", "Mixtral-8x7B-v0.1", "gpt-oss-20b", "Qwen3-VL-8B-Instruct"],
)
@pytest.mark.parametrize("count", [1, 2, 3, 4, 8])
def test_tensor_parallel_size_divides_heads(model, count):
    cfg = config(model)
    if (model, count) in TOO_BIG_FOR_H100S:
        with pytest.raises(PlanError, match=f"does not fit on {count} x NVIDIA H100"):
            plan(cfg, facts(count=count), targets={"max_model_len": 8192})
        return
    result = plan(cfg, facts(count=count), targets={"max_model_len": 8192})
    heads = model_memory.model_shape(cfg).num_attention_heads
    assert heads % result["tensor_parallel_size"] == 0
    assert result["instance_count"] * result["tensor_parallel_size"] <= count


def test_concurrency_sets_max_num_seqs_and_may_shorten_context():
    result = plan(config("Meta-Llama-3.1-8B"), facts(count=8), targets={"concurrency": 64})
    assert result["tensor_parallel_size"] == 1 and result["instance_count"] == 8
    assert result["max_num_seqs"] == 8  # 64 spread over 8 instances
    assert result["max_model_len"] < 131072
    assert result["host_max_concurrency_at_max_model_len"] >= 64
    assert result["activation_peak_bytes"] < 0.2 * GiB  # small batch limit, small sampler peak
    assert any("longest that fits" in reason for reason in result["reasons"])


def test_vllm_defaults_depend_on_the_card():
    l40s = plan(config("Meta-Llama-3.1-8B"), facts("l40s"), targets={"max_model_len": 8192})
    assert (l40s["max_num_batched_tokens"], l40s["max_num_seqs"]) == (2048, 256)
    h100 = plan(config("Meta-Llama-3.1-8B"), facts("h100-sxm5-80gb"), targets={"max_model_len": 8192})
    assert (h100["max_num_batched_tokens"], h100["max_num_seqs"]) == (8192, 1024)
    # vLLM keeps the small defaults on the A100 80GB (its PR #17885 measured a regression)
    a100 = model_memory.GpuSpec(count=1, memory_bytes=81049 * 1024 * 1024, name="NVIDIA A100-SXM4-80GB", indices=(0,))
    assert model_memory.vllm_default_limits(a100) == (2048, 256)


def test_explicit_values_always_win():
    targets = {
        "tensor_parallel_size": 2,
        "instances": 1,
        "max_model_len": 4096,
        "max_num_seqs": 48,
        "max_num_batched_tokens": 4096,
        "gpu_memory_utilization": 0.8,
        "kv_cache_dtype": "fp8",
    }
    result = plan(config("Meta-Llama-3.1-8B"), facts(count=8), targets=targets)
    assert result["tensor_parallel_size"] == 2 and result["instance_count"] == 1
    assert result["instances"] == [{"cuda_visible_devices": "0,1", "gpu_indices": [0, 1]}]
    assert result["max_model_len"] == 4096 and result["max_num_seqs"] == 48
    assert result["max_num_batched_tokens"] == 4096
    assert result["gpu_memory_utilization"] == 0.8 and result["kv_cache_dtype"] == "fp8"
    assert sum("as given" in reason for reason in result["reasons"]) == len(targets)
    assert any("6 GPU(s) stay unused" in reason for reason in result["reasons"])


# --------------------------------------------------------------------------
# When it does not fit
# --------------------------------------------------------------------------


def test_error_gives_numbers_and_alternatives():
    with pytest.raises(PlanError) as raised:
        plan(config("Qwen3-32B"), facts(), targets={"max_model_len": 32000}, model_name="Qwen3-32B")
    message = str(raised.value)
    assert "Qwen3-32B does not fit on 1 x NVIDIA H100 80GB HBM3" in message
    assert "needs 74.61 GiB per GPU" in message and "but 71.26 GiB is available" in message
    assert "weights 61.02 GiB" in message and "KV cache 7.81 GiB" in message
    assert "tensor_parallel_size=2" in message
    assert "FP8-quantized checkpoint" in message
    assert "max_model_len <= 17408" in message
    assert "kv_cache_dtype=fp8" in message


def test_error_when_weights_alone_exceed_the_host():
    with pytest.raises(PlanError) as raised:
        plan(config("Llama-3.1-70B-Instruct-FP8"), facts("l40s", 2), targets={"max_model_len": 8192})
    message = str(raised.value)
    assert "weights 65.71 GiB" in message  # no hf_quant_config given: estimated in BF16
    assert "tensor_parallel_size=4" in message or "tensor_parallel_size=8" in message
    assert "max_model_len <=" not in message  # no context length helps


def test_error_suggests_fewer_sequences():
    with pytest.raises(PlanError, match=r"at most \d+ concurrent sequences per instance \(400 asked\)"):
        plan(config("Meta-Llama-3.1-8B"), facts(), targets={"max_model_len": 16384, "concurrency": 400})


@pytest.mark.parametrize(
    "targets, words",
    [
        ({"max_model_len": 65536}, "exceeds the 40960 tokens"),
        ({"tensor_parallel_size": 3}, "does not divide the 64 attention heads"),
        ({"tensor_parallel_size": 4}, "needs 4 GPUs; this host has 2"),
        ({"instances": 3}, "this host has 2 GPU(s)"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization must be in (0, 1]"),
        ({"max_num_seqs": 512, "max_num_batched_tokens": 256}, "below max_num_seqs"),
        ({"kv_cache_dtype": "int4"}, "unsupported kv_cache_dtype"),
        ({"context": 8192}, "unknown target(s) context"),
    ],
)
def test_invalid_targets(targets, words):
    with pytest.raises(PlanError) as raised:
        plan(config("Qwen3-32B"), facts(count=2), targets=targets)
    assert words in str(raised.value)


def test_gpu_facts_must_be_usable():
    broken = gpu.summarize([], state=gpu.GpuState("driver_library_mismatch", "Reboot."))
    with pytest.raises(PlanError, match="driver_library_mismatch"):
        plan(config("Qwen3-0.6B"), broken)
    mig = gpu.summarize(gpu.parse_query_gpu_csv((FIXTURES / "nvidia-smi" / "h100-mig.query-gpu.csv").read_text()))
    with pytest.raises(PlanError, match="MIG mode is enabled"):
        plan(config("Qwen3-0.6B"), mig)


def test_total_memory_only_assumes_a_driver_reservation():
    (card,) = gpu.parse_query_gpu_csv((FIXTURES / "nvidia-smi" / "rtx-4090-2x.query-gpu.csv").read_text())[:1]
    spec = model_memory.gpu_spec(gpu.summarize([card]))
    assert spec.memory_bytes == int(24564 * 1024 * 1024 * (1 - model_memory.DEFAULT_RESERVED_FRACTION))


# --------------------------------------------------------------------------
# The Ansible filter wraps the planner
# --------------------------------------------------------------------------


def test_filter_plugin_turns_plan_errors_into_filter_errors():
    errors = pytest.importorskip("ansible.errors")
    filters = {name: ansible_filter(name) for name in ("vllm_plan", "vllm_weight_bytes")}
    assert filters["vllm_plan"](config("Qwen3-0.6B"), facts())["tensor_parallel_size"] == 1
    assert filters["vllm_weight_bytes"]({"metadata": {"total_size": 42}}) == 42
    assert filters["vllm_weight_bytes"]([1, 2, 3]) == 6
    with pytest.raises(errors.AnsibleFilterError, match="does not fit"):
        filters["vllm_plan"](config("Qwen3-32B"), facts(), targets={"max_model_len": 32000})
