#!/usr/bin/env python3
"""`systemd-analyze security` exposure of every unit vllm-fleet installs or configures.

    .venv/bin/python bench/exposure.py CONTAINER [CONTAINER ...]

Reads each running lab container (a converged `cluster`
scenario) and prints one row per unit found there, with the container it was
read in: 0 is fully sandboxed, 10 is not at all (systemd's "UNSAFE" starts at
9.6).  Units the project only runs as one-shot jobs are listed too.
"""
from __future__ import annotations

import re
import subprocess
import sys

# What the roles install or configure (with a drop-in); vllm@.service is per instance.
UNITS = [
    "vllm@default.service",
    "nginx.service",
    "keepalived.service",
    "vllm-fleet-firewall.service",
    "vllm-fleet-backup.service",
    "vllm-fleet-backup-check.service",
    "prometheus.service",
    "prometheus-alertmanager.service",
    "prometheus-blackbox-exporter.service",
    "prometheus-node-exporter.service",
    "prometheus-nginx-exporter.service",
    "mtail.service",
    "nvidia-persistenced.service",
]


def exposure(container: str, unit: str) -> str | None:
    loaded = subprocess.run(["docker", "exec", container, "systemctl", "show", "-p", "LoadState", "--value", unit],
                            capture_output=True, text=True).stdout.strip()
    if loaded != "loaded":
        return None
    out = subprocess.run(["docker", "exec", container, "systemd-analyze", "security", "--no-pager", unit],
                         capture_output=True, text=True).stdout
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\S+)", out)
    return f"{match.group(1)} {match.group(2)}" if match else None


def main(containers: list[str]) -> int:
    if not containers:
        print(__doc__, file=sys.stderr)
        return 2
    print("| unit | exposure | read in |")
    print("|---|---|---|")
    for unit in UNITS:
        for container in containers:
            value = exposure(container, unit)
            if value:
                print(f"| `{unit}` | {value} | {container} |")
                break
        else:
            print(f"| `{unit}` | not installed in {', '.join(containers)} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
