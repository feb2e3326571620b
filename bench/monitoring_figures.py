#!/usr/bin/env python3
"""The monitoring figures of the lab, as markdown tables for the README.

    molecule test -s cluster             # its verify writes .lab/figures/monitoring.json
    python bench/monitoring_figures.py   # prints the tables

The cluster verify (molecule/cluster/tests/test_monitoring.py) evaluates every alert expression and
dashboard query through Prometheus's HTTP API against the live stack of one
lab host (vLLM, node_exporter, nginx exporter, mtail, VRRP and backup
textfile metrics, blackbox TLS probe), times VllmInstanceDown from `systemctl stop` to firing, and
reads Prometheus's own scrape and rule-evaluation durations
(scrape_duration_seconds, prometheus_target_interval_length_seconds,
prometheus_rule_group_last_duration_seconds).  This script only formats them.
"""
from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIGURES = ROOT / ".lab" / "figures" / "monitoring.json"


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def main() -> int:
    if not FIGURES.exists():
        print(f"{FIGURES.relative_to(ROOT)} not found: run `molecule test -s cluster` first", file=sys.stderr)
        return 1
    data = json.loads(FIGURES.read_text())
    s = data["summary"]
    print("| checked against the live lab | count | with live sources | returning data |")
    print("|---|---|---|---|")
    alerts_live = s["alerts_with_live_sources"]
    print(f"| alert expressions | {s['alerts_checked']} | {alerts_live} (every metric found) | "
          f"{s.get('inner_vectors_checked', 0)} inner vectors (without the threshold), each returning series |")
    print(f"| dashboard queries (+ template variables) | {s['queries_checked']} | {s['queries_with_live_sources']} | "
          f"{s['queries_returning_data']} |")
    print()
    reasons = s["not_deployed_reasons"]
    by_source: dict[str, list[str]] = {}
    for name, sources in s["alerts_not_deployed_here"].items():
        for source in sources:
            by_source.setdefault(source, []).append(name)
    print("| not deployed in the lab | alerts | reason |")
    print("|---|---|---|")
    for source, names in sorted(by_source.items()):
        print(f"| {source} | {', '.join(sorted(names))} | {reasons[source]} |")
    print()
    print("| Prometheus in the lab | value |")
    print("|---|---|")
    for job, value in sorted(data["scrape_duration_seconds"].items()):
        print(f"| scrape duration, job {job} (avg over 1 min) | {ms(value)} ms |")
    for interval, value in sorted(data["scrape_interval_p99_seconds"].items()):
        print(f"| actual scrape interval p99 (configured {interval}) | {value:.3f} s |")
    groups = data["rule_group_last_duration_seconds"]
    for group, value in sorted(groups.items()):
        print(f"| rule group {group.split(';')[-1]} last evaluation | {ms(value)} ms |")
    print(f"| all {len(groups)} rule groups, one evaluation | {ms(sum(groups.values()))} ms |")
    for name, seconds in sorted(data.get("faults_to_firing_seconds", {}).items()):
        print(f"| {name}: faults (vLLM stopped on both nodes, nginx on one gateway) to firing | {seconds} s |")
    if "certificate_expiring_seconds_after_the_run" in data:
        print(f"| CertificateExpiringSoon: end of the run that served a 7-day certificate to firing | "
              f"{data['certificate_expiring_seconds_after_the_run']} s |")
    if "backup_stale_seconds_to_firing_after_reload" in data:
        print(f"| BackupStale: rule reload (3-minute bound) to firing | "
              f"{data['backup_stale_seconds_to_firing_after_reload']} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
