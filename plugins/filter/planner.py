"""Jinja filters around :mod:`vllm_fleet.planner` and :mod:`vllm_fleet.planner_role` (controller side).

``{{ model_config | vllm_plan(ansible_facts['vllm_gpu'], targets={...}, weight_bytes=...) }}``
returns the plan dict; a model that cannot fit fails the task with the planner's
message (bytes needed vs available and what would fit).

``{{ safetensors_index | vllm_weight_bytes }}`` reads ``metadata.total_size`` from a
``model.safetensors.index.json``; given a list of file sizes it sums them.

The vllm role uses the instance-level filters: ``vllm_plan_unset`` names the
instances that leave a planned engine argument unset, ``vllm_plan_instances``
plans them (a model that cannot fit is reported in ``errors``) and
``vllm_plan_apply`` adds the planned values to each instance's ``args``.
"""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

try:
    from vllm_fleet import planner_role
    from vllm_fleet.planner import PlanError, plan
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
        return plan(config, gpu_facts, weight_bytes=weight_bytes, targets=targets,
                    hf_quant_config=hf_quant_config, model_name=model_name)
    except PlanError as error:
        raise AnsibleFilterError(str(error)) from error


def vllm_weight_bytes(source):
    _require_planner()
    try:
        return planner_role.weight_bytes(source)
    except (PlanError, TypeError, ValueError) as error:
        raise AnsibleFilterError("vllm_weight_bytes: %s" % error) from error


def _wrap(function):
    def filter_(*args, **kwargs):
        _require_planner()
        return function(*args, **kwargs)
    filter_.__doc__ = function.__doc__
    return filter_


class FilterModule:
    """vLLM sizing filters."""

    def filters(self):
        return {
            "vllm_plan": vllm_plan,
            "vllm_weight_bytes": vllm_weight_bytes,
            "vllm_plan_unset": _wrap(lambda *a, **k: planner_role.unplanned(*a, **k)),
            "vllm_plan_instances": _wrap(lambda *a, **k: planner_role.plan_role_instances(*a, **k)),
            "vllm_plan_apply": _wrap(lambda *a, **k: planner_role.apply(*a, **k)),
            "vllm_instances_final": _wrap(lambda *a, **k: planner_role.final_instances(*a, **k)),
        }
