"""The vllm role's side of the planner: its variables in, the planner's answers out.

The role keeps instances as ``{name, port, args, cuda_visible_devices}`` and
engine arguments in three layers (named variables, ``vllm_extra_args``, the
instance's ``args``).  These functions merge the layers once per instance
(:func:`vllm_fleet.engine_config.instance_config`) and call the planner
(:mod:`vllm_fleet.planner`); ``plugins/filter/planner.py`` exposes them to
Jinja and turns ``PlanError`` into Ansible's filter error.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from vllm_fleet.engine_config import instance_config, normalise_key
from vllm_fleet.model_memory import (
    CannotPlan,
    PlanError,
    weight_bytes_from_file_sizes,
    weight_bytes_from_safetensors_index,
)
from vllm_fleet.planner import _gib, plan



# --------------------------------------------------------------------------
# Fill an instance's unset engine arguments
# --------------------------------------------------------------------------

#: Engine arguments the role fills from the plan when an instance leaves them
#: unset (vLLM's long option names, as the instance config spells them), and the
#: planner's name for each.
PLANNED_ARGS = {
    "tensor-parallel-size": "tensor_parallel_size",
    "gpu-memory-utilization": "gpu_memory_utilization",
    "max-model-len": "max_model_len",
    "max-num-seqs": "max_num_seqs",
    "max-num-batched-tokens": "max_num_batched_tokens",
}
#: Engine arguments the planner takes as given when the instance sets them.
_GIVEN_ARGS = {**PLANNED_ARGS, "kv-cache-dtype": "kv_cache_dtype", "dtype": "dtype"}


def unset_args(args: Mapping[str, Any]) -> list[str]:
    """The :data:`PLANNED_ARGS` an instance's merged engine arguments leave unset."""
    return [key for key in PLANNED_ARGS if args.get(key) is None]


def visible_gpu_facts(facts: Mapping[str, Any], cuda_visible_devices: Any) -> dict[str, Any]:
    """The ``vllm_gpu`` fact narrowed to a ``CUDA_VISIBLE_DEVICES`` list (indices or UUIDs).

    Empty or ``None`` keeps every GPU. A device the host does not have is a
    :class:`PlanError` naming the ones it has.
    """
    wanted = [part.strip() for part in str(cuda_visible_devices or "").split(",") if part.strip()]
    if not wanted:
        return dict(facts)
    gpus = list(facts.get("gpus") or [])
    chosen = []
    for device in wanted:
        match = next((gpu for gpu in gpus if device in (str(gpu.get("index")), str(gpu.get("uuid")))), None)
        if match is None:
            raise PlanError(
                "cuda_visible_devices=%s names GPU %s; this host has GPU(s) %s"
                % (cuda_visible_devices, device, ", ".join(str(gpu.get("index")) for gpu in gpus) or "none")
            )
        chosen.append(match)
    return dict(facts, gpus=chosen, count=len(chosen))


def _given_targets(args: Mapping[str, Any]) -> dict[str, Any]:
    return {target: args[key] for key, target in _GIVEN_ARGS.items() if args.get(key) is not None}


def plan_instances(
    instances: Sequence[Mapping[str, Any]],
    gpu_facts: Mapping[str, Any],
    config: Mapping[str, Any],
    weight_bytes: int | None = None,
    hf_quant_config: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    concurrency: int | None = None,
    weight_source: str | None = None,
) -> dict[str, Any]:
    """Plan every instance of one host; the vllm role's view of :func:`plan`.

    ``instances`` are ``{name, args, cuda_visible_devices}`` with ``args`` the
    instance's merged engine arguments (dashed keys, unset ones absent or None).
    Whatever an instance sets is passed to the planner as given; only the
    :data:`PLANNED_ARGS` it leaves unset are returned, in ``fill``. An instance
    with ``cuda_visible_devices`` is planned on those GPUs alone; the others
    share the host's GPUs. ``concurrency`` is the host's expected concurrent
    sequences (split over the sharing instances).

    The instance layout is never changed: when the planner would lay this host
    out differently (typically one instance per GPU for a small model on a
    multi-GPU host), that is returned as ``advice`` for the operator.

    Returns ``{instances: [{name, unset, fill, reasons, error, summary}],
    errors: [...], advice: None | {...}, report: [lines for the play output]}``;
    a model that cannot fit is an ``error`` carrying the planner's numbers, not
    an exception. A model or host the planner does not model (:class:`CannotPlan`:
    multi-head latent attention, an unknown quantization, MIG slices...) is left
    unplanned, which the instance's ``summary`` says; vLLM then decides.
    """
    shared = [inst for inst in instances if not inst.get("cuda_visible_devices")]
    results = []
    for inst in instances:
        name = str(inst.get("name"))
        args = dict(inst.get("args") or {})
        unset = unset_args(args)
        entry: dict[str, Any] = {"name": name, "unset": unset, "fill": {}, "reasons": [], "error": None, "summary": ""}
        results.append(entry)
        if not unset:
            entry["summary"] = "vllm@%s: every planned argument is set; nothing to plan" % name
            continue
        targets = _given_targets(args)
        targets["instances"] = 1
        if concurrency:
            targets["concurrency"] = math.ceil(int(concurrency) / max(1, len(instances)))
        devices = inst.get("cuda_visible_devices")
        try:
            facts = visible_gpu_facts(gpu_facts, devices)
            if not devices and len(shared) > 1:
                # Instances without their own GPUs split the host's GPUs evenly.
                gpus = list(facts.get("gpus") or [])
                if len(shared) > len(gpus):
                    raise PlanError(
                        "%d instances share this host's %d GPU(s) (none sets cuda_visible_devices): give each "
                        "instance its own GPUs with cuda_visible_devices, or set the engine arguments explicitly"
                        % (len(shared), len(gpus))
                    )
                facts = dict(facts, gpus=gpus[: len(gpus) // len(shared)], count=len(gpus) // len(shared))
            result = plan(config, facts, weight_bytes, targets, hf_quant_config, model_name)
        except CannotPlan as error:
            entry["summary"] = "vllm@%s: not planned (%s); its unset sizing arguments are left to vLLM" % (name, error)
            continue
        except PlanError as error:
            entry["error"] = "vllm@%s: %s" % (name, error)
            continue
        entry["fill"] = {key: result[target] for key, target in PLANNED_ARGS.items() if key in unset}
        layout = "one instance on %s: vllm_instances decides the layout" % (
            "GPU(s) " + str(devices) if devices else "%d of the host's GPU(s)" % result["gpu_count"]
        )
        idle = result["gpu_count"] - result["tensor_parallel_size"]
        reasons = [
            layout
            if reason.startswith("instances=")
            else "%d GPU(s) stay unused by this instance (see the advice below)" % idle
            if reason.endswith("groups") and "stay unused" in reason
            else reason
            for reason in result["reasons"]
        ]
        if weight_bytes is not None and weight_source:
            reasons.insert(0, "weights %s: %s" % (_gib(int(weight_bytes)), weight_source))
        entry["reasons"] = reasons
        entry["kv_cache_tokens"] = result["kv_cache_tokens"]
        entry["max_concurrency_at_max_model_len"] = result["max_concurrency_at_max_model_len"]
        chosen = ", ".join("%s=%s" % (key, value) for key, value in entry["fill"].items())
        given = ", ".join("%s=%s" % (key, args[key]) for key in PLANNED_ARGS if key not in unset)
        entry["summary"] = "vllm@%s on %s: planned %s%s; KV cache %d tokens, %.2f sequences of max-model-len" % (
            name,
            "GPU(s) " + str(devices) if devices else "%d x %s" % (result["gpu_count"], result["gpu_name"]),
            chosen,
            "; given " + given if given else "",
            result["kv_cache_tokens"],
            result["max_concurrency_at_max_model_len"],
        )
    errors = [entry["error"] for entry in results if entry["error"]]
    advice = None
    if not errors:
        advice = _layout_advice(instances, gpu_facts, config, weight_bytes, hf_quant_config, model_name, concurrency)
    report = []
    for entry in results:
        report.append(entry["error"] or entry["summary"])
        report.extend("  - " + reason for reason in entry["reasons"])
    if advice:
        report.append("ADVICE (not applied): " + advice["message"])
    return {"instances": results, "errors": errors, "advice": advice, "report": report}


def _layout_advice(instances, gpu_facts, config, weight_bytes, hf_quant_config, model_name, concurrency):
    """The planner's own instance layout for the whole host, when it differs from ``instances``.

    Only offered where it is meaningful: more than one GPU, and no instance pins
    its GPUs (an operator who laid GPUs out by hand has decided).
    """
    if len(gpu_facts.get("gpus") or []) < 2 or any(inst.get("cuda_visible_devices") for inst in instances):
        return None
    first = dict(instances[0].get("args") or {}) if instances else {}
    targets = _given_targets(first)
    targets.pop("tensor_parallel_size", None)
    if concurrency:
        targets["concurrency"] = int(concurrency)
    try:
        result = plan(config, gpu_facts, weight_bytes, targets, hf_quant_config, model_name)
    except PlanError:
        return None
    if result["instance_count"] == len(instances):
        return None
    groups = [group["cuda_visible_devices"] for group in result["instances"]]
    return {
        "instance_count": result["instance_count"],
        "tensor_parallel_size": result["tensor_parallel_size"],
        "cuda_visible_devices": groups,
        "message": (
            "the planner would serve this host's %d GPUs as %d instance(s) of tensor_parallel_size=%d "
            "(cuda_visible_devices %s); vllm_instances defines %d. The role does not change the instance "
            "layout: to follow this advice, define one vllm_instances entry per group, each with its "
            "cuda_visible_devices and its own port."
            % (
                len(gpu_facts["gpus"]),
                result["instance_count"],
                result["tensor_parallel_size"],
                " / ".join(groups),
                len(instances),
            )
        ),
    }


def apply_plan(instances: Sequence[Mapping[str, Any]], planned: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """``instances`` with each one's planned values added to its ``args``.

    Only values the instance left unset are ever planned, so nothing the user
    set is replaced; an instance the plan does not name is returned unchanged.
    """
    fills = {entry["name"]: entry.get("fill") or {} for entry in (planned or {}).get("instances") or []}
    result = []
    for inst in instances:
        fill = fills.get(str(inst.get("name"))) or {}
        if fill:
            inst = dict(inst, args={**fill, **dict(inst.get("args") or {})})
        result.append(dict(inst))
    return result


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
    """Plan the role's instances (see :func:`plan_instances`).

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
