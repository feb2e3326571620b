"""Filters of the monitoring role; thin wrappers over ``vllm_fleet.monitoring``."""
from __future__ import annotations

from vllm_fleet.monitoring import (
    duration_seconds,
    fs_types_exclude,
    host_targets,
    hostport,
    inventory_entries,
    is_duration,
    is_loopback,
    vllm_target_conflicts,
    vllm_targets,
)


class FilterModule:
    def filters(self):
        return {
            "monitoring_duration_seconds": duration_seconds,
            "monitoring_hostport": hostport,
            "monitoring_inventory": inventory_entries,
            "monitoring_vllm_targets": vllm_targets,
            "monitoring_vllm_target_conflicts": vllm_target_conflicts,
            "monitoring_host_targets": host_targets,
            "monitoring_fs_types_exclude": fs_types_exclude,
            "monitoring_is_duration": is_duration,
            "monitoring_is_loopback": is_loopback,
        }
