#!/usr/bin/env python3
"""Backup duration, restore duration and snapshot size in the cluster lab.

    molecule converge -s cluster && .venv/bin/python bench/backup.py [--runs N] [--playbook-runs N] [--node NAME]

On one node (default: the one not holding the VIP), --runs times:
  - backup: `systemctl start vllm-fleet-backup.service` (journal export,
    restic backup, forget --prune, metrics), wall time seen from here, plus the
    size of the snapshot (files in it) and what it added to the repository;
  - restore (tool): delete the node's vLLM, nginx and keepalived configuration,
    then `vllm-fleet-backup restore` (stage the latest snapshot, copy back what
    is missing or differs), wall time; every deleted file must come back.
Then --playbook-runs times the whole `playbooks/restore.yml --limit NODE`
(preflight, restore, site.yml's roles for the node), after the same deletion.
Prints a Markdown table of medians.  Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from vllm_fleet.lab.cluster import NODES, VIP, playbook
from vllm_fleet.lab.cluster import output as sh

TOOL = "/usr/local/libexec/vllm-fleet/vllm-fleet-backup"
DELETE = "rm -rf /etc/vllm /etc/nginx/conf.d/vllm-fleet.conf /etc/nginx/vllm-fleet /etc/keepalived/keepalived.conf"
CONFIG = "/etc/vllm /etc/nginx /etc/keepalived"


def timed(fn) -> tuple[float, object]:
    start = time.monotonic()
    result = fn()
    return time.monotonic() - start, result


def fingerprint(node: str) -> str:
    return sh(node, f"find {CONFIG} -type f -exec sha256sum {{}} + | sort")


def restore_playbook(node: str) -> None:
    proc = playbook("playbooks/restore.yml", "--limit", node, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"restore.yml failed:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")


def row(name: str, values: list[float], unit: str, note: str = "", fmt: str = "{:.1f}") -> str:
    cells = [fmt.format(v) for v in (statistics.median(values), min(values), max(values))]
    return f"| {name} | {len(values)} | {cells[0]} {unit} | {cells[1]} {unit} | {cells[2]} {unit} | {note} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--playbook-runs", type=int, default=1)
    parser.add_argument("--node", choices=sorted(NODES))
    args = parser.parse_args()
    node = args.node or next(n for n in NODES if VIP not in sh(n, "ip -4 -o addr show"))

    backup_s, tool_s, size, added, files, restore_s, playbook_s = [], [], [], [], [], [], []
    for i in range(args.runs):
        seconds, _ = timed(lambda: sh(node, "systemctl start vllm-fleet-backup.service"))
        last = json.loads(sh(node, "cat /var/lib/vllm-fleet-backup/last.json"))
        backup_s.append(seconds)
        tool_s.append(last["duration_seconds"])
        size.append(last["size_bytes"] / 1024)
        added.append(last["added_bytes"] / 1024)
        files.append(last["files"])

        before = fingerprint(node)
        sh(node, DELETE)
        seconds, out = timed(lambda: sh(node, f"{TOOL} restore"))
        report = json.loads(out)
        if fingerprint(node) != before:
            sys.exit(f"run {i + 1}: the restored files differ from the backed-up ones")
        restore_s.append(seconds)
        print(f"run {i + 1}: backup {backup_s[-1]:.1f} s ({size[-1]:.0f} KiB, +{added[-1]:.0f} KiB), "
              f"restore {seconds:.1f} s ({len(report['restored'])} restored)", file=sys.stderr)

    for i in range(args.playbook_runs):
        sh(node, DELETE)
        seconds, _ = timed(lambda: restore_playbook(node))
        playbook_s.append(seconds)
        print(f"restore.yml run {i + 1}: {seconds:.1f} s", file=sys.stderr)

    print(f"Node {node}; repository /srv/backup/restic (local path, shared).")
    print()
    print("| measurement | runs | median | min | max | note |")
    print("|---|---|---|---|---|---|")
    print(row("backup (`systemctl start vllm-fleet-backup`)", backup_s, "s",
              "journal export, restic backup, forget --prune, metrics"))
    print(row("backup, as the tool measured it", tool_s, "s", "vllm_fleet_backup_duration_seconds"))
    print(row("snapshot size", size, "KiB", f"{statistics.median(files):.0f} files (configuration, manifests, journal)",
              "{:.0f}"))
    print(row("added to the repository per backup", added, "KiB", "deduplicated, compressed", "{:.0f}"))
    print(row("restore (tool: stage + copy back)", restore_s, "s",
              "after deleting /etc/vllm, the nginx site + keys, keepalived.conf; sha256 identical"))
    if playbook_s:
        print(row("restore.yml --limit node", playbook_s, "s", "preflight, restore, site.yml's roles for the node"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
