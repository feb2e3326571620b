"""Filters of the nvidia_driver role; thin wrappers over ``vllm_fleet.nvidia_driver``."""
from __future__ import annotations

from vllm_fleet.nvidia_driver import (
    nvidia_driver_hold_candidates,
    nvidia_driver_hold_changes,
    nvidia_driver_key_fingerprints,
    nvidia_driver_module_plan,
    nvidia_driver_not_installed,
    nvidia_driver_pci_summary,
    nvidia_driver_skip_reasons,
    nvidia_driver_versioned,
)


class FilterModule:
    """Filters of the nvidia_driver role."""

    def filters(self):
        return {
            "nvidia_driver_pci_summary": nvidia_driver_pci_summary,
            "nvidia_driver_skip_reasons": nvidia_driver_skip_reasons,
            "nvidia_driver_module_plan": nvidia_driver_module_plan,
            "nvidia_driver_hold_candidates": nvidia_driver_hold_candidates,
            "nvidia_driver_hold_changes": nvidia_driver_hold_changes,
            "nvidia_driver_versioned": nvidia_driver_versioned,
            "nvidia_driver_not_installed": nvidia_driver_not_installed,
            "nvidia_driver_key_fingerprints": nvidia_driver_key_fingerprints,
        }
