"""Filters of playbooks/benchmark.yml; thin wrappers over ``vllm_fleet.benchmark``."""
from __future__ import annotations

from vllm_fleet import benchmark


class FilterModule:
    def filters(self):
        return {
            "vllm_fleet_benchmark_runs": benchmark.runs,
            "vllm_fleet_benchmark_slo_args": benchmark.slo_args,
        }
