"""Jinja filters around :mod:`vllm_fleet.planner` (runs on the controller).

``{{ model_config | vllm_plan(ansible_facts['vllm_gpu'], targets={...}, weight_bytes=...) }}``
returns the plan dict; a model that cannot fit fails the task with the planner's
message (bytes needed vs available and what would fit).

``{{ safetensors_index | vllm_weight_bytes }}`` reads ``metadata.total_size`` from a
``model.safetensors.index.json``; given a list of file sizes it sums them.
"""
from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

try:
    from vllm_fleet.planner import PlanError, plan, weight_bytes_from_file_sizes, weight_bytes_from_safetensors_index
except ImportError as error:  # the package is not installed in the controller's Python
    PLANNER_IMPORT_ERROR = error
else:
    PLANNER_IMPORT_ERROR = None


def _require_planner():
    if PLANNER_IMPORT_ERROR is not None:
        raise AnsibleFilterError(
            "the vllm_fleet package is not importable (%s); run 'pip install -e .' in the "
            "vllm-fleet checkout with the Python that runs ansible" % PLANNER_IMPORT_ERROR
        )


def vllm_plan(config, gpu_facts, targets=None, weight_bytes=None, hf_quant_config=None, model_name=None):
    """Plan a vLLM deployment; see :func:`vllm_fleet.planner.plan`."""
    _require_planner()
    try:
        return plan(
            config,
            gpu_facts,
            weight_bytes=weight_bytes,
            targets=targets,
            hf_quant_config=hf_quant_config,
            model_name=model_name,
        )
    except PlanError as error:
        raise AnsibleFilterError(str(error)) from error


def vllm_weight_bytes(source):
    """Weight bytes from a safetensors index (mapping) or a list of file sizes."""
    _require_planner()
    try:
        if isinstance(source, Mapping):
            return weight_bytes_from_safetensors_index(source)
        return weight_bytes_from_file_sizes(source)
    except (PlanError, TypeError, ValueError) as error:
        raise AnsibleFilterError("vllm_weight_bytes: %s" % error) from error


class FilterModule:
    """vLLM sizing filters."""

    def filters(self):
        return {"vllm_plan": vllm_plan, "vllm_weight_bytes": vllm_weight_bytes}
