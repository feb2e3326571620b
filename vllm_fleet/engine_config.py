"""Build one vLLM instance's engine arguments from the role's variables.

vLLM's ``--config`` file takes long option names as keys.  Operators write
them with underscores or dashes; everything is normalised to dashes so a
per-instance override always replaces the role-wide value it means to.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def normalise_key(key: str) -> str:
    """``max_model_len`` / ``--max-model-len`` -> ``max-model-len``."""
    return str(key).strip().lstrip("-").replace("_", "-")


def instance_config(
    instance: Mapping[str, Any],
    engine_args: Mapping[str, Any],
    extra_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge role-wide engine args, pass-through args and the instance's own.

    Later layers win: ``engine_args`` (the role's named variables; ``None``
    means "leave it to vLLM" and is dropped), then ``extra_args`` (passed
    through untouched, unknown keys included), then ``instance['args']``.
    """
    merged: dict[str, Any] = {}
    for layer in (engine_args, extra_args or {}, instance.get("args") or {}):
        for key, value in layer.items():
            merged[normalise_key(key)] = value
    return {key: value for key, value in merged.items() if value is not None}


def path_ancestors(path: str) -> list[str]:
    """``/srv/vllm/models`` -> ``['/', '/srv', '/srv/vllm', '/srv/vllm/models']``."""
    parts = [p for p in str(path).split("/") if p]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
