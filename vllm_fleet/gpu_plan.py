"""Print this machine's GPU facts and a vLLM plan for a model, as JSON.

Meant for a real GPU host, to check the facts parser and the planner against
the hardware (and, when PyTorch is installed, the usable-memory figure against
``torch.cuda.mem_get_info``). Needs neither vLLM nor Ansible, nor an install:
run it from the root of a checkout (Python imports the package from there).

    python3 -m vllm_fleet.gpu_plan                        # Llama-3.1-8B fixture
    python3 -m vllm_fleet.gpu_plan path/to/config.json --weights path/to/model.safetensors.index.json \
        --target max_model_len=16000 --target concurrency=32
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from vllm_fleet import gpu_facts as gpu
from vllm_fleet import model_memory, planner

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "tests" / "fixtures" / "models" / "Meta-Llama-3.1-8B" / "config.json"


def run(argv):
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    return completed.returncode, completed.stdout, completed.stderr


def collect(backend):
    nvml = gpu.import_nvml() if backend in ("auto", "nvml") else None
    if backend == "nvml" and nvml is None:
        sys.exit("backend nvml: nvidia-ml-py (pynvml) is not importable")
    if nvml is not None:
        return gpu.collect_with_nvml(nvml, nvswitch_count=gpu.count_nvswitches(gpu.read_pci_devices()))
    return gpu.collect_with_nvidia_smi(run, shutil.which("nvidia-smi"))


def torch_memory():
    """``(free, total)`` per device from PyTorch, or None without torch/CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    result = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        result.append({"index": index, "free_bytes": free, "total_bytes": total})
    return result


def weight_bytes(path):
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        return model_memory.weight_bytes_from_file_sizes(f.stat().st_size for f in path.glob("*.safetensors"))
    return model_memory.weight_bytes_from_safetensors_index(json.loads(path.read_text()))


def parse_target(text):
    key, _, value = text.partition("=")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            continue
    return key, value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="model config.json")
    parser.add_argument("--weights", help="model.safetensors.index.json, or a directory of *.safetensors")
    parser.add_argument("--hf-quant-config", help="ModelOpt hf_quant_config.json")
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="planner target, e.g. max_model_len=16000 (repeatable)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "nvidia-smi", "nvml"),
        default="auto",
        help="auto uses NVML when nvidia-ml-py is importable, else nvidia-smi",
    )
    args = parser.parse_args()

    facts = collect(args.backend)
    report = {"facts": facts, "torch": torch_memory()}
    config_path = Path(args.config)
    quant = json.loads(Path(args.hf_quant_config).read_text()) if args.hf_quant_config else None
    try:
        report["plan"] = planner.plan(
            json.loads(config_path.read_text()),
            facts,
            weight_bytes=weight_bytes(args.weights),
            targets=dict(parse_target(item) for item in args.target),
            hf_quant_config=quant,
            model_name=config_path.parent.name,
        )
    except model_memory.PlanError as error:
        report["plan_error"] = str(error)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if "plan" in report else 1


if __name__ == "__main__":
    sys.exit(main())
