"""Filters of the lab's Molecule playbooks; thin wrappers over ``vllm_fleet.lab``."""
from __future__ import annotations

from vllm_fleet.lab import platforms


class FilterModule:
    def filters(self):
        return {"vllm_fleet_lab_platform": platforms.complete, "vllm_fleet_lab_host": platforms.lab_host}
