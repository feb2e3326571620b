#!/usr/bin/env python3
"""Measurements of the lab, printed as a table of medians (not timed tests).

    python bench/run.py [--scenario cluster|default] [--runs N] [--restarts N]

1. fresh converge of a Molecule scenario (new containers: OS packages, venv
   from the wheelhouse, model, units, first starts; `cluster`, the default, is
   the 2-node lab with its gateways, VIP, spare and monitoring host; `default`
   is one vLLM node) vs an idempotent re-run of the same converge (changed=0
   on every host is asserted), and the re-run's share of the fresh one;
2. the venv install from the wheelhouse (the pip task's own time, read from
   the profile_tasks callback);
3. vLLM start-to-healthy: `systemctl restart` until /health answers and
   /v1/models lists the model, measured by the role's wait-ready script.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NO_COLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
SCENARIO = "cluster"


def node() -> str:
    return f"{SCENARIO}-node1"


def molecule(action: str) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run([str(BIN / "molecule"), action, "-s", SCENARIO], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"molecule {action} failed:\n{out[-3000:]}")
    return elapsed, out


def recap_changed(out: str) -> int:
    """changed= summed over every host of the run's recaps."""
    return sum(int(n) for n in re.findall(r"^\W*\S+\s*:\s*ok=\d+\s+changed=(\d+)", out, re.M))


def task_seconds(out: str, task: str) -> float | None:
    """Duration of one task from the profile_tasks summary (e.g. '---- 95.12s')."""
    match = re.search(re.escape(task) + r"\s*-+\s*([0-9.]+)s", out)
    return float(match.group(1)) if match else None


def start_to_healthy() -> float:
    # The instance's own listen address (the cluster's nodes listen on their lab address).
    cmd = (". /etc/vllm/default.env && export VLLM_API_KEY && host=$(sed -n 's/^host: //p' /etc/vllm/default.yaml) && "
           "systemctl restart vllm@default && /opt/vllm/venv/bin/python /opt/vllm/wait-ready vllm@default.service "
           "\"http://$host:8000\" tiny-llama 600")
    start = time.monotonic()
    proc = subprocess.run(["docker", "exec", node(), "sh", "-c", cmd], capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"restart failed: {proc.stdout}{proc.stderr}")
    return elapsed


def row(name: str, values: list[float], note: str = "") -> str:
    med = statistics.median(values)
    return (f"| {name} | {len(values)} | {med:.1f} | {min(values):.1f} | {max(values):.1f} | {note} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["cluster", "default"], default="cluster")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="leave the last converged lab up (for tests)")
    args = parser.parse_args()
    global SCENARIO
    SCENARIO = args.scenario

    fresh, rerun, pip = [], [], []
    for i in range(args.runs):
        molecule("destroy")
        molecule("create")
        if SCENARIO == "cluster":
            molecule("prepare")  # the lab's secrets, PKI and real-time budget (not timed)
        seconds, out = molecule("converge")
        fresh.append(seconds)
        if (t := task_seconds(out, "Install | Install vLLM into the venv")) is not None:
            pip.append(t)
        seconds, out = molecule("converge")
        if recap_changed(out) != 0:
            sys.exit(f"re-run {i} was not idempotent:\n{out[-3000:]}")
        rerun.append(seconds)
        print(f"run {i + 1}: fresh {fresh[-1]:.1f} s, re-run {rerun[-1]:.1f} s", file=sys.stderr)

    healthy = [start_to_healthy() for _ in range(args.restarts)]
    if not args.keep:
        molecule("destroy")

    ratio = statistics.median(rerun) / statistics.median(fresh)
    print("| measurement | runs | median s | min s | max s | note |")
    print("|---|---|---|---|---|---|")
    print(row("fresh converge (create excluded)", fresh))
    print(row("idempotent re-run", rerun, f"changed=0; {ratio:.0%} of fresh (goal <= 25%)"))
    if pip:
        print(row("venv install from wheelhouse (pip)", pip, "149 pinned wheels, --no-deps"))
    print(row("vLLM restart to healthy", healthy, "/health 200 and /v1/models lists the model"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
