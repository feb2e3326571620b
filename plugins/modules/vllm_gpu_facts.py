#!/usr/bin/python
"""Report the host's NVIDIA GPUs as the ``vllm_gpu`` fact (read-only)."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_gpu_facts
short_description: Report a host's NVIDIA GPUs as the C(vllm_gpu) fact
description:
  - Runs C(nvidia-smi --query-gpu ... --format=csv) (or NVML through nvidia-ml-py)
    and reports GPU count, names, total/free/usable memory, driver and CUDA versions,
    compute capability, MIG and persistence mode, NVLink and NVSwitch presence.
  - Never fails because of the GPUs themselves. A host without a driver, a driver
    without a GPU, a driver/library version mismatch or a GPU that fell off the bus
    is reported in C(state) and C(message).
  - Read-only; it changes nothing on the host.
options:
  nvidia_smi_path:
    description:
      - Path of C(nvidia-smi). Looked up on C(PATH) when not given.
    type: path
  backend:
    description:
      - C(nvidia-smi) parses the CLI, C(nvml) uses the C(pynvml) module from
        nvidia-ml-py. C(auto) uses nvidia-smi and falls back to NVML only when
        nvidia-smi is missing and nvidia-ml-py is importable.
    type: str
    choices: [auto, nvidia-smi, nvml]
    default: auto
  topology:
    description:
      - Also probe NVLink (C(nvidia-smi topo -m), C(nvidia-smi nvlink -s)) and
        count NVSwitch chips on the PCI bus (sysfs).
    type: bool
    default: true
notes:
  - Supports check mode; the module only reads.
  - Drivers older than R510 lack some query fields (C(compute_cap), C(memory.reserved));
    they are dropped and reported as null.
author:
  - vllm-fleet contributors
"""

EXAMPLES = r"""
- name: Gather GPU facts
  vllm_gpu_facts:

- name: Stop early on a broken driver
  ansible.builtin.assert:
    that: ansible_facts['vllm_gpu']['state'] in ['ok', 'no_driver']
    fail_msg: "{{ inventory_hostname }}: {{ ansible_facts['vllm_gpu']['message'] }}"

- name: Size vLLM for this host
  ansible.builtin.set_fact:
    __vllm_plan: "{{ __vllm_model_config | vllm_plan(ansible_facts['vllm_gpu'], targets={'max_model_len': 16384}) }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: complex
  contains:
    vllm_gpu:
      description: GPU inventory of the host.
      returned: always
      type: complex
      contains:
        state:
          description: C(ok), C(no_driver), C(no_gpu), C(driver_library_mismatch), C(gpu_lost) or C(error).
          type: str
          sample: ok
        message:
          description: What is wrong and what to do, empty when C(state) is C(ok).
          type: str
          sample: ""
        source:
          description: C(nvidia-smi) or C(nvml).
          type: str
        count:
          description: Number of GPUs.
          type: int
          sample: 8
        names:
          description: Product name of each GPU.
          type: list
          elements: str
          sample: ["NVIDIA H100 80GB HBM3"]
        memory_total_bytes:
          description: Board memory of each GPU as nvidia-smi reports it.
          type: list
          elements: int
          sample: [85520809984]
        memory_free_bytes:
          description: Free memory of each GPU.
          type: list
          elements: int
        memory_usable_bytes:
          description: Memory CUDA can allocate on each GPU (used + free; total minus the driver's reservation).
          type: list
          elements: int
          sample: [85019590656]
        driver_version:
          description: NVIDIA driver version.
          type: str
          sample: "590.48.01"
        cuda_version:
          description: Highest CUDA version the driver supports.
          type: str
          sample: "13.1"
        compute_capability:
          description: Lowest compute capability on the host.
          type: str
          sample: "9.0"
        mig_enabled:
          description: Whether any GPU is in MIG mode.
          type: bool
        persistence_mode:
          description: Whether every GPU has persistence mode enabled.
          type: bool
        nvlink:
          description: Whether any GPU has an active NVLink.
          type: bool
        nvswitch:
          description: Whether the GPUs sit on an NVSwitch fabric.
          type: bool
        nvswitch_count:
          description: NVSwitch chips found on the PCI bus.
          type: int
        fabric_manager_required:
          description: Whether nvidia-fabricmanager must run for NVLink to work (NVSwitch systems).
          type: bool
        fabric_ready:
          description: Whether every GPU finished fabric registration (Hopper and newer); null when unknown.
          type: bool
        gpus:
          description: Per-GPU details (index, name, uuid, pci_bus_id, memory_*_bytes, driver_version,
            compute_capability, mig_enabled, persistence_mode, fabric_state, fabric_status).
          type: list
          elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vllm_fleet.gpu_facts import (
    collect_with_nvidia_smi,
    collect_with_nvml,
    count_nvswitches,
    import_nvml,
    read_pci_devices,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            nvidia_smi_path=dict(type="path"),
            backend=dict(type="str", default="auto", choices=["auto", "nvidia-smi", "nvml"]),
            topology=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    backend = module.params["backend"]
    nvidia_smi = module.params["nvidia_smi_path"] or module.get_bin_path("nvidia-smi")
    nvml = import_nvml() if backend == "nvml" or (backend == "auto" and not nvidia_smi) else None

    if backend == "nvml" and nvml is None:
        module.fail_json(msg="backend=nvml needs the nvidia-ml-py package (pynvml) on the managed node")
    if nvml is not None:
        nvswitches = count_nvswitches(read_pci_devices()) if module.params["topology"] else 0
        facts = collect_with_nvml(nvml, nvswitch_count=nvswitches)
    else:

        def run(argv):
            return module.run_command(argv, check_rc=False)

        facts = collect_with_nvidia_smi(run, nvidia_smi, topology=module.params["topology"])
    module.exit_json(changed=False, ansible_facts={"vllm_gpu": facts})


if __name__ == "__main__":
    main()
