"""Filters used by the vllm-fleet roles; thin wrappers over ``vllm_fleet``."""
from __future__ import annotations

from vllm_fleet import engine_config, requirements


def _lines(value):
    return value.splitlines() if isinstance(value, str) else list(value)


def pip_unmet(installed, wanted):
    """Pins of ``wanted`` not satisfied by ``installed`` (pip freeze)."""
    return requirements.unmet(_lines(installed), _lines(wanted))


class FilterModule:
    def filters(self):
        return {
            "vllm_instance_config": engine_config.instance_config,
            "vllm_path_ancestors": engine_config.path_ancestors,
            "vllm_pip_unmet": pip_unmet,
        }
