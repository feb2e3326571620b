#!/usr/bin/env python3
"""Rolling restart of the two-node cluster lab under load.

    molecule converge -s cluster && python bench/rollout.py [--runs 3] [--baseline 30]

Each run: bench/loadgen.py sends non-streaming 8-token completions through the
VIP (2 workers, fresh TLS connection per request) for --baseline seconds, then
`ansible-playbook playbooks/upgrade.yml -e upgrade_restart=true` restarts
both vLLM nodes one at a time while the load goes on, and loadgen.ServiceWatch
watches each node from outside (drained on a gateway? /health answering?).
Reports per run the requests sent and failed during the rollout, p50/p99/max
latency before and during it, the rollout's wall time, and per node the
seconds out of rotation, the seconds its vLLM was down, and the rest (the
rollout's own overhead for that node); then medians over the runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from vllm_fleet.lab.cluster import NODES, ROOT, scenario_inventory
from vllm_fleet.lab.loadgen import Load, ServiceWatch


def inventory() -> str:
    """The cluster scenario's inventory as Molecule wrote it (with the lab group_vars)."""
    return str(scenario_inventory())


def one_run(inv: str, baseline: float) -> dict:
    load = Load(workers=2, deadline=1800).start()
    time.sleep(baseline)
    watch = ServiceWatch(NODES, list(NODES)).start()
    t0 = time.monotonic()
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    run = subprocess.run(["ansible-playbook", str(ROOT / "playbooks" / "upgrade.yml"), "-i", inv,
                          "-e", "upgrade_restart=true", "--limit", "cluster-node1,cluster-node2"],
                         capture_output=True, text=True, env=env)
    t1 = time.monotonic()
    load.stop()
    service = watch.stop()
    if run.returncode != 0:
        sys.exit(f"upgrade.yml failed:\n{run.stdout[-3000:]}")
    return {"before": load.summary(until=t0), "during": load.summary(since=t0, until=t1), "seconds": t1 - t0,
            "service": service}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", type=float, default=30)
    args = parser.parse_args()
    inv = inventory()
    runs = []
    print(f"{'run':>4} {'rollout s':>10} {'sent':>6} {'failed':>7} {'p50 before':>11} {'p99 before':>11} "
          f"{'p50 during':>11} {'p99 during':>11} {'max during':>11}")
    for i in range(args.runs):
        r = one_run(inv, args.baseline)
        runs.append(r)
        b, d = r["before"], r["during"]
        print(f"{i + 1:>4} {r['seconds']:>10.1f} {d['sent']:>6} {d['failed']:>7} {b['p50_s']:>11} {b['p99_s']:>11} "
              f"{d['p50_s']:>11} {d['p99_s']:>11} {d['max_s']:>11}", flush=True)
        for error in d["errors"]:
            print(f"     failed: {error}", flush=True)
        for node, sv in r["service"].items():
            print(f"     {node}: out of rotation {sv['out_of_rotation_s']} s, vLLM down {sv['vllm_down_s']} s, "
                  f"overhead {sv['overhead_s']} s, down while in rotation: {sv['down_while_in_rotation']}", flush=True)

    def med(key, part):
        return statistics.median(r[part][key] for r in runs)
    print(f"\nmedian over {len(runs)} runs: rollout {statistics.median(r['seconds'] for r in runs):.1f} s, "
          f"sent {med('sent', 'during')}, failed {med('failed', 'during')} (total {sum(r['during']['failed'] for r in runs)}), "
          f"p99 before {med('p99_s', 'before')} s, p99 during {med('p99_s', 'during')} s, "
          f"max during {max(r['during']['max_s'] for r in runs)} s")
    for node in NODES:
        print(f"{node}: median out of rotation {statistics.median(r['service'][node]['out_of_rotation_s'] for r in runs)} s, "
              f"vLLM down {statistics.median(r['service'][node]['vllm_down_s'] for r in runs)} s, "
              f"overhead {statistics.median(r['service'][node]['overhead_s'] for r in runs)} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
