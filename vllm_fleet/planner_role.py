"""The vllm role's side of the planner: its variables in, the planner's answers out.

The role keeps instances as ``{name, port, args, cuda_visible_devices}`` and
engine arguments in three layers (named variables, ``vllm_extra_args``, the
instance's ``args``).  These functions merge the layers once per instance
(:func:`vllm_fleet.engine_config.instance_config`) and call the planner
(:mod:`vllm_fleet.planner`); ``plugins/filter/planner.py`` exposes them to
Jinja and turns ``PlanError`` into Ansible's filter error.
"""
from __future__ import annotations

from collections.abc import Mapping

from vllm_fleet.engine_config import instance_config, normalise_key
from vllm_fleet.planner import (
    PlanError,
    apply_plan,
    plan_instances,
    unset_args,
    weight_bytes_from_file_sizes,
    weight_bytes_from_safetensors_index,
)


def weight_bytes(source):
    """Weight bytes from a safetensors index (mapping) or a list of file sizes."""
    if isinstance(source, Mapping):
        return weight_bytes_from_safetensors_index(source)
    return weight_bytes_from_file_sizes(source)


def merged_instances(instances, engine_args, extra_args):
    """Each instance with its final engine arguments (the three layers merged)."""
    return [
        {
            "name": inst["name"],
            "args": instance_config(inst, engine_args, extra_args),
            "cuda_visible_devices": inst.get("cuda_visible_devices"),
        }
        for inst in instances
    ]


def unplanned(instances, engine_args, extra_args=None):
    """Names of the instances whose merged engine arguments leave a planned one unset."""
    return [inst["name"] for inst in merged_instances(instances, engine_args, extra_args or {})
            if unset_args(inst["args"])]


def plan_role_instances(instances, engine_args, extra_args, gpu_facts, config, weight_bytes=None,
                        hf_quant_config=None, model_name=None, concurrency=None, weight_source=None):
    """Plan the role's instances (see :func:`vllm_fleet.planner.plan_instances`).

    A model the planner cannot use at all (config.json, targets) is reported
    in ``errors`` like one that does not fit, so the role names host and instance.
    """
    try:
        return plan_instances(
            merged_instances(instances, engine_args, extra_args or {}),
            gpu_facts,
            config,
            weight_bytes=weight_bytes,
            hf_quant_config=hf_quant_config,
            model_name=model_name,
            concurrency=concurrency,
            weight_source=weight_source,
        )
    except PlanError as error:
        return {"instances": [], "errors": [str(error)], "advice": None, "report": [str(error)]}


def apply(instances, planned):
    """``instances`` with the planned values added to each one's ``args`` (explicit values kept)."""
    return apply_plan(instances, planned)


def final_instances(instances, engine_args, extra_args, planned=None):
    """Each instance with its final engine arguments, in one pass: what the template writes.

    The three layers (the role's named variables, ``vllm_extra_args``, the
    instance's ``args``) are merged once (:func:`instance_config`), then the
    planner's values fill only what is still unset.  Each entry keeps the
    instance's own fields and gets ``args`` (final, keys in vLLM's dashed
    spelling), ``given`` (keys the operator set) and ``planned`` (keys the
    planner filled), so a config file and a report can tell them apart.
    """
    fills = {str(entry["name"]): entry.get("fill") or {} for entry in (planned or {}).get("instances") or []}
    result = []
    for inst in instances:
        given = instance_config(inst, engine_args, extra_args or {})
        fill = {}
        for key, value in (fills.get(str(inst.get("name"))) or {}).items():
            name = normalise_key(key)
            if name not in given and value is not None:
                fill[name] = value
        result.append({**inst, "args": dict(sorted({**given, **fill}.items())),
                       "given": sorted(given), "planned": sorted(fill)})
    return result
