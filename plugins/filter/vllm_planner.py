"""Jinja filters around :mod:`vllm_fleet.planner` (runs on the controller).

``{{ model_config | vllm_plan(ansible_facts['vllm_gpu'], targets={...}, weight_bytes=...) }}``
returns the plan dict; a model that cannot fit fails the task with the planner's
message (bytes needed vs available and what would fit).

``{{ safetensors_index | vllm_weight_bytes }}`` reads ``metadata.total_size`` from a
``model.safetensors.index.json``; given a list of file sizes it sums them.

The vllm role uses the instance-level pair:
``{{ vllm_instances | vllm_plan_unset(_vllm_engine_args, vllm_extra_args) }}`` names the
instances that leave a planned engine argument unset;
``{{ vllm_instances | vllm_plan_instances(_vllm_engine_args, vllm_extra_args, gpu_facts, config, ...) }}``
plans them (see :func:`vllm_fleet.planner.plan_instances`; a model that cannot fit is
reported in ``errors``, so the role can fail with the host and instance named), and
``{{ vllm_instances | vllm_plan_apply(plan) }}`` adds the planned values to each
instance's ``args``.
"""
from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

try:
    from vllm_fleet.engine_config import instance_config
    from vllm_fleet.planner import (
        PlanError,
        apply_plan,
        plan,
        plan_instances,
        unset_args,
        weight_bytes_from_file_sizes,
        weight_bytes_from_safetensors_index,
    )
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


def _merged(instances, engine_args, extra_args):
    return [
        {
            "name": inst["name"],
            "args": instance_config(inst, engine_args, extra_args),
            "cuda_visible_devices": inst.get("cuda_visible_devices"),
        }
        for inst in instances
    ]


def vllm_plan_unset(instances, engine_args, extra_args=None):
    """Names of the instances whose merged engine arguments leave a planned one unset."""
    _require_planner()
    return [inst["name"] for inst in _merged(instances, engine_args, extra_args) if unset_args(inst["args"])]


def vllm_plan_instances(
    instances,
    engine_args,
    extra_args,
    gpu_facts,
    config,
    weight_bytes=None,
    hf_quant_config=None,
    model_name=None,
    concurrency=None,
    weight_source=None,
):
    """Plan the role's instances; see :func:`vllm_fleet.planner.plan_instances`."""
    _require_planner()
    try:
        return plan_instances(
            _merged(instances, engine_args, extra_args),
            gpu_facts,
            config,
            weight_bytes=weight_bytes,
            hf_quant_config=hf_quant_config,
            model_name=model_name,
            concurrency=concurrency,
            weight_source=weight_source,
        )
    except PlanError as error:  # the model itself is unusable (config.json, targets)
        return {"instances": [], "errors": [str(error)], "advice": None, "report": [str(error)]}


def vllm_plan_apply(instances, planned):
    """``instances`` with the planned values added to each one's ``args`` (explicit values kept)."""
    _require_planner()
    return apply_plan(instances, planned)


class FilterModule:
    """vLLM sizing filters."""

    def filters(self):
        return {
            "vllm_plan": vllm_plan,
            "vllm_weight_bytes": vllm_weight_bytes,
            "vllm_plan_unset": vllm_plan_unset,
            "vllm_plan_instances": vllm_plan_instances,
            "vllm_plan_apply": vllm_plan_apply,
        }
