"""Backups and the restore drill, on one cluster node.

Back up now (playbooks/backup.yml) with a marker file among the backed-up
configuration that no role can render, record the sha256, mode and owner of
every file in the snapshot's paths, then destroy the node's container and
create it again from the bare image under the same inventory name.  The drill
compares the files right after the restore step (playbooks/restore.yml with
restore_converge=false), before any role runs, and requires 0 differences;
the same comparison on the rebuilt host before the restore must find the
differences (the drill can fail).  Then restore.yml runs the roles: the
packages arrive after their restored configuration, and the node must serve
again.  The node is one that does not hold the VIP, so clients never notice.
The repository is /srv/backup/restic, shared by the nodes (a directory of this
machine mounted into each, as NFS would be).
"""
from __future__ import annotations

import json
import re
import secrets
import time

import pytest
import requests

import subprocess

from conftest import NODES, completion, playbook, recap, secret, sh, vip_holders, wait_for

TOOL = "/usr/local/libexec/vllm-fleet/vllm-fleet-backup"
TEXTFILE = "/var/lib/prometheus/node-exporter"
JOURNAL_DIR = "/var/lib/vllm-fleet-backup/journal"
# Backed up with the node's configuration, written by no role: only a restore brings it back.
MARKER = "/etc/nginx/vllm-fleet/restore-drill-marker"

# sha256, mode and owner of every file, and the target of every link, under the given paths.
# Owners by name, or (numeric=True) by uid:gid: what restic restores, before
# the roles have created the service users and groups on a rebuilt host.
FINGERPRINT = r"""
find "$@" \( -type f -o -type l \) -print 2>/dev/null | sort | while read -r f; do
  if [ -L "$f" ]; then printf '%s link:%s %s\n' "$f" "$(readlink "$f")" "$(stat -c "$OWNER" "$f")"
  else printf '%s %s %s %s\n' "$f" "$(sha256sum < "$f" | cut -c1-64)" "$(stat -c %a "$f")" "$(stat -c "$OWNER" "$f")"; fi
done
"""


def fingerprint(node: str, paths: list[str], numeric: bool = False) -> dict[str, str]:
    quoted = " ".join(f"'{p}'" for p in paths)
    owner = "%u:%g" if numeric else "%U:%G"
    out = sh(node, f"OWNER='{owner}'; set -- {quoted}; {FINGERPRINT}").stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def metric(node: str, name: str, file: str = "vllm_fleet_backup.prom") -> float:
    text = sh(node, f"cat {TEXTFILE}/{file}").stdout
    values = [float(line.split()[1]) for line in text.splitlines() if line.split(" ")[0] == name]
    assert values, f"{name} not in {file}:\n{text}"
    return values[0]


def healthy(node: str, api, alice) -> bool:
    address = NODES[node]
    units = sh(node, "systemctl is-active nginx keepalived vllm@default.service", check=False).stdout.split()
    if units != ["active"] * 3:
        return False
    if sh(node, f"curl -sf -o /dev/null http://{address}:8000/health", check=False).returncode != 0:
        return False
    try:
        # Through the restored node's own nginx (the lab certificate names every gateway address) ...
        direct = api.post(f"https://{address}/v1/completions", headers=alice, timeout=30,
                          json={"model": "tiny-llama", "prompt": "restored", "max_tokens": 4})
        # ... and through the VIP.
        return direct.status_code == 200 and completion(api, alice, max_tokens=4).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def node() -> str:
    holders = vip_holders()
    assert len(holders) == 1, holders
    return next(n for n in NODES if n not in holders)


def differences(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple]:
    return {p: (before[p], after.get(p)) for p in before if after.get(p) != before[p]}


def rebuild(node: str) -> None:
    """Destroy the node's container and create it again, bare, with the same
    name and address (playbooks/lab/containers.yml, which makes the lab's containers)."""
    subprocess.run(["docker", "rm", "-f", node], check=True, capture_output=True)
    run = playbook("playbooks/lab/containers.yml", "--limit", f"localhost,{node}", "-e", "lab_network=vllm-fleet-cluster",
                   "-e", "lab_subnet=172.31.250.0/24", "-e", json.dumps({"lab_hosts": [node]}))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    # What `make lab` gives a new container too: a real-time budget for keepalived.
    run = playbook("playbooks/lab/realtime.yml", "--limit", node)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert sh(node, "test -e /etc/nginx || test -e /opt/vllm", check=False).returncode == 1, "not a bare host"


@pytest.fixture(scope="module")
def backup(node) -> dict:
    """Back up now, as an operator would; the result the tool recorded."""
    sh(node, f"umask 077 && printf '%s\\n' {secrets.token_hex(16)} > {MARKER}")
    started = time.time()
    run = playbook("playbooks/backup.yml", "--limit", node)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    result = json.loads(sh(node, "cat /var/lib/vllm-fleet-backup/last.json").stdout)
    assert f"snapshot {result['snapshot_id']}" in run.stdout
    result["started"] = started
    return result


def test_timers_are_scheduled(node):
    for timer in ("vllm-fleet-backup.timer", "vllm-fleet-backup-check.timer"):
        assert sh(node, f"systemctl is-enabled {timer}").stdout.strip() == "enabled"
        assert sh(node, f"systemctl is-active {timer}").stdout.strip() == "active"
    assert sh(node, "systemctl show -p Persistent --value vllm-fleet-backup.timer").stdout.strip() == "yes"


def test_the_backup_holds_the_configuration(node, backup):
    for path in ["/etc/vllm", "/etc/nginx", "/etc/keepalived", "/etc/systemd/system/vllm@.service",
                 "/srv/vllm/models/tiny-llama.manifest.json", JOURNAL_DIR]:
        assert path in backup["paths"], backup["paths"]
    # Model weights only when asked for; the repository password never.
    assert "/srv/vllm/models" not in backup["paths"] and "/etc/vllm-fleet/backup" not in backup["paths"]
    listing = sh(node, f"{TOOL} restic ls --json {backup['snapshot_id']}").stdout
    names = {json.loads(line).get("path") for line in listing.splitlines()[1:] if line.strip()}
    assert "/etc/nginx/vllm-fleet/server.key" in names
    assert not [n for n in names if n and n.startswith("/etc/vllm-fleet/backup")]
    assert [n for n in names if n and n.startswith(JOURNAL_DIR + "/vllm@")], "no journal export of vLLM"


def test_metrics_report_the_backup(node, backup):
    assert metric(node, "vllm_fleet_backup_last_success_timestamp_seconds") >= backup["started"] - 5
    assert metric(node, "vllm_fleet_backup_last_run_success") == 1
    assert metric(node, "vllm_fleet_backup_snapshot_size_bytes") == backup["size_bytes"] > 0
    assert metric(node, "vllm_fleet_backup_duration_seconds") > 0
    assert sh(node, f"stat -c %a {TEXTFILE}/vllm_fleet_backup.prom").stdout.strip() == "644"


def test_the_repository_is_shared_and_snapshots_carry_the_inventory_name(node, backup):
    other = next(n for n in NODES if n != node)
    snaps = json.loads(sh(other, f"{TOOL} restic snapshots --json --host {node}").stdout)
    assert backup["snapshot_id"] in [s["short_id"] for s in snaps]
    assert {s["hostname"] for s in snaps} == {node}
    # Initialised once: hosts that found it uninitialised together did not each
    # write a master key (a race that leaves a repository nobody can open).
    keys = json.loads(sh(other, f"{TOOL} restic key list --json").stdout)
    assert len(keys) == 1, keys


def test_the_repository_check_passes(node, backup):
    sh(node, "systemctl start vllm-fleet-backup-check.service")
    assert metric(node, "vllm_fleet_backup_check_success", "vllm_fleet_backup_check.prom") == 1


def test_the_password_is_in_no_argv_log_or_world_readable_file(node, backup):
    password = secret("backup_password")
    assert sh(node, "stat -c '%a %U' /etc/vllm-fleet/backup/password /etc/vllm-fleet/backup/restic.env").stdout.split() \
        == ["600", "root", "600", "root"]
    assert password not in sh(node, "journalctl --no-pager -o cat").stdout
    assert password not in sh(node, "cat /etc/vllm-fleet/backup/config.json /etc/systemd/system/vllm-fleet-backup*").stdout


def test_the_units_are_sandboxed(node):
    out = sh(node, "systemd-analyze security --no-pager vllm-fleet-backup.service").stdout
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    assert exposure <= 2.5, out[-2000:]


def test_restore_drill_onto_a_rebuilt_host(node, backup, api, alice):
    paths = [p for p in backup["paths"] if p != JOURNAL_DIR]
    before = fingerprint(node, paths)
    as_restored = fingerprint(node, paths, numeric=True)
    assert len(before) > 10 and "/etc/vllm/default.yaml" in before and MARKER in before

    rebuild(node)
    # The drill without its restore step fails: the comparison finds what is missing.
    skipped = differences(as_restored, fingerprint(node, paths, numeric=True))
    assert MARKER in skipped and "/etc/vllm/default.yaml" in skipped, skipped
    print(f"without the restore step: {len(skipped)} of {len(before)} files differ")

    # The restore step alone, then the comparison, before any role runs.
    run = playbook("playbooks/restore.yml", "--limit", node, "-e", "restore_converge=false")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert f"[{node}] snapshot {backup['snapshot_id']} of {node}" in run.stdout
    restored = re.search(r'"restored: \[(.*?)\]"', run.stdout).group(1)
    assert f"'{MARKER}'" in restored
    assert differences(as_restored, fingerprint(node, paths, numeric=True)) == {}
    assert sh(node, "test -e /usr/sbin/nginx", check=False).returncode == 1, "a role ran"

    # Then the roles: packages after their restored configuration, and the node serves.
    started = time.monotonic()
    run = playbook("playbooks/restore.yml", "--limit", node)
    out = run.stdout
    assert run.returncode == 0, out[-6000:] + run.stderr[-2000:]
    assert recap(out)[node]["failed"] == 0
    assert "duplicate default server" not in out
    assert sh(node, "test -e /usr/sbin/policy-rc.d", check=False).returncode == 1, "the start hold was left behind"
    wait_for(lambda: healthy(node, api, alice), 180, interval=2)
    print(f"restore and roles on the rebuilt host: {time.monotonic() - started:.0f} s to serving")
    # What the roles render equals what was backed up, owners by name now; the marker is
    # untouched.  Two records are the roles' own and are written again on a new host: the
    # model manifest (when the model was staged) and the instance's applied fingerprint.
    rewritten = {"/etc/vllm/default.applied", "/srv/vllm/models/tiny-llama.manifest.json"}
    after = differences({p: v for p, v in before.items() if p not in rewritten}, fingerprint(node, paths))
    assert after == {}, after
    assert fingerprint(node, [MARKER]) == {MARKER: before[MARKER]}
    wait_for(lambda: len(vip_holders()) == 1, 30)
