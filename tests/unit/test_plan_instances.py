"""How the vllm role applies the planner to its instances (vllm_fleet.planner_role.plan_instances,
apply_plan, visible_gpu_facts, and the filters around them)."""

import json
from pathlib import Path

import pytest
from vllm_fleet import gpu_facts as gpu

from tests.helpers.plugins import ansible_filter
from vllm_fleet import planner_role
from vllm_fleet.model_memory import GiB, PlanError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ROOT = Path(__file__).resolve().parents[2]
LLAMA_8B = json.loads((FIXTURES / "models" / "Meta-Llama-3.1-8B" / "config.json").read_text())
QWEN_06B = json.loads((FIXTURES / "models" / "Qwen3-0.6B" / "config.json").read_text())
MIXTRAL = json.loads((FIXTURES / "models" / "Mixtral-8x7B-v0.1" / "config.json").read_text())


def h100s(count=1):
    (recorded,) = gpu.parse_query_gpu_csv((FIXTURES / "nvidia-smi" / "h100-sxm5-80gb.query-gpu.csv").read_text())
    return gpu.summarize([dict(recorded, index=index, uuid="GPU-%d" % index) for index in range(count)])


def instance(name="default", args=None, devices=None):
    return {"name": name, "args": args or {}, "cuda_visible_devices": devices}


def test_only_unset_arguments_are_filled():
    given = {"max-model-len": 16384, "gpu-memory-utilization": 0.5, "enable-prefix-caching": True}
    result = planner_role.plan_instances([instance(args=given)], h100s(), LLAMA_8B, weight_bytes=int(14.96 * GiB))
    (entry,) = result["instances"]
    assert entry["unset"] == ["tensor-parallel-size", "max-num-seqs", "max-num-batched-tokens"]
    assert entry["fill"] == {"tensor-parallel-size": 1, "max-num-seqs": 1024, "max-num-batched-tokens": 8192}
    assert result["errors"] == [] and result["advice"] is None
    assert "gpu_memory_utilization=0.50 as given" in entry["reasons"]


def test_apply_keeps_explicit_values():
    instances = [{"name": "a", "port": 8000, "args": {"max_model_len": 4096}}, {"name": "b", "port": 8001}]
    planned = {"instances": [{"name": "a", "fill": {"max-num-seqs": 64}}, {"name": "b", "fill": {}}]}
    assert planner_role.apply_plan(instances, planned) == [
        {"name": "a", "port": 8000, "args": {"max-num-seqs": 64, "max_model_len": 4096}},
        {"name": "b", "port": 8001},
    ]
    assert planner_role.apply_plan(instances, {}) == instances


def test_nothing_unset_nothing_planned():
    args = dict.fromkeys(planner_role.PLANNED_ARGS, 1)
    result = planner_role.plan_instances([instance(args=args)], h100s(), MIXTRAL)  # would not fit: never asked
    assert result["errors"] == [] and result["instances"][0]["fill"] == {}
    assert "nothing to plan" in result["report"][0]


def test_too_big_is_an_error_with_numbers():
    result = planner_role.plan_instances([instance()], h100s(), MIXTRAL)
    (error,) = result["errors"]
    assert error.startswith("vllm@default: ") and "does not fit on 1 x NVIDIA H100 80GB HBM3" in error
    assert "but 71.26 GiB is available" in error and "What would fit: tensor_parallel_size=2" in error


def test_small_model_on_many_gpus_is_advice_not_a_new_layout():
    result = planner_role.plan_instances([instance()], h100s(8), QWEN_06B)
    (entry,) = result["instances"]
    assert entry["fill"]["tensor-parallel-size"] == 1
    assert "7 GPU(s) stay unused by this instance (see the advice below)" in entry["reasons"]
    advice = result["advice"]
    assert advice["instance_count"] == 8 and advice["cuda_visible_devices"] == [str(i) for i in range(8)]
    assert "does not change the instance layout" in advice["message"]
    assert result["report"][-1].startswith("ADVICE (not applied): ")


def test_pinned_instances_are_planned_on_their_own_gpus_and_get_no_advice():
    instances = [instance("a", devices="0,1"), instance("b", devices="GPU-2,GPU-3")]
    result = planner_role.plan_instances(instances, h100s(4), MIXTRAL)
    assert [entry["fill"]["tensor-parallel-size"] for entry in result["instances"]] == [2, 2]
    assert result["advice"] is None


def test_instances_without_devices_split_the_gpus():
    result = planner_role.plan_instances([instance("a"), instance("b")], h100s(4), MIXTRAL)
    assert [entry["fill"]["tensor-parallel-size"] for entry in result["instances"]] == [2, 2]
    crowded = planner_role.plan_instances([instance("a"), instance("b")], h100s(1), LLAMA_8B)
    assert "2 instances share this host's 1 GPU(s)" in crowded["errors"][0]


def test_concurrency_is_split_over_the_instances():
    result = planner_role.plan_instances(
        [instance("a", devices="0"), instance("b", devices="1")], h100s(2), LLAMA_8B, concurrency=64,
        weight_bytes=int(14.96 * GiB))
    assert [entry["fill"]["max-num-seqs"] for entry in result["instances"]] == [32, 32]


def test_visible_gpu_facts():
    facts = h100s(4)
    narrowed = planner_role.visible_gpu_facts(facts, "3, GPU-1")
    assert narrowed["count"] == 2 and [g["index"] for g in narrowed["gpus"]] == [3, 1]
    assert planner_role.visible_gpu_facts(facts, None) == facts
    with pytest.raises(PlanError, match="names GPU 7; this host has GPU"):
        planner_role.visible_gpu_facts(facts, "7")


def test_filters_merge_the_role_variables():
    filters = {name: ansible_filter(name) for name in ("vllm_plan_unset", "vllm_plan_instances", "vllm_plan_apply")}
    engine = {"tensor-parallel-size": None, "max-model-len": 8192, "gpu-memory-utilization": None}
    instances = [{"name": "default", "port": 8000, "args": {"gpu_memory_utilization": 0.8}}]
    assert filters["vllm_plan_unset"](instances, engine, {}) == ["default"]
    planned = filters["vllm_plan_instances"](instances, engine, {"max_num_seqs": 16}, h100s(), LLAMA_8B)
    (entry,) = planned["instances"]
    assert entry["fill"] == {"tensor-parallel-size": 1, "max-num-batched-tokens": 8192}
    (applied,) = filters["vllm_plan_apply"](instances, planned)
    assert applied["args"] == {"tensor-parallel-size": 1, "max-num-batched-tokens": 8192, "gpu_memory_utilization": 0.8}


def test_a_model_the_planner_does_not_model_is_left_to_vllm():
    result = planner_role.plan_instances([instance()], h100s(), {"architectures": ["Unknown"]})
    assert result["errors"] == [] and result["instances"][0]["fill"] == {}
    assert "not planned (config.json lacks" in result["report"][0]
    assert "left to vLLM" in result["report"][0]
    mig = dict(h100s(), mig_enabled=True)
    assert "not planned (MIG mode" in planner_role.plan_instances([instance()], mig, LLAMA_8B)["report"][0]


def test_final_instances_merge_once_and_tell_planned_from_given():
    from vllm_fleet.planner_role import final_instances
    engine = {"tensor-parallel-size": None, "max-model-len": 8192, "gpu-memory-utilization": None}
    instances = [{"name": "chat", "port": 8000, "args": {"gpu_memory_utilization": 0.8}},
                 {"name": "other", "port": 8001}]
    planned = {"instances": [{"name": "chat", "fill": {"tensor-parallel-size": 1, "gpu-memory-utilization": 0.5}},
                             {"name": "other", "fill": {"max_num_seqs": 4}}]}
    chat, other = final_instances(instances, engine, {"seed": 1}, planned)
    # Explicit values win over the plan; None means "left to vLLM" and is dropped.
    assert chat["args"] == {"gpu-memory-utilization": 0.8, "max-model-len": 8192, "seed": 1, "tensor-parallel-size": 1}
    assert chat["given"] == ["gpu-memory-utilization", "max-model-len", "seed"]
    assert chat["planned"] == ["tensor-parallel-size"]
    assert chat["port"] == 8000 and chat["name"] == "chat"
    assert other["args"]["max-num-seqs"] == 4 and other["planned"] == ["max-num-seqs"]
    # Through Ansible's filter loader, as the role calls it.
    assert ansible_filter("vllm_instances_final")(instances, engine, {}, None)[1]["planned"] == []
