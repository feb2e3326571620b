"""Day-2 rollouts under load: a rolling restart of the vLLM nodes with
playbooks/upgrade.yml, then a third node added to the running cluster with
site.yml.  A bounded client (bench/loadgen.py) sends non-streaming
completions through the VIP the whole time; no request may fail.

Runs after test_gateway.py (which expects exactly two backends) and before
test_zz_failover.py.
"""
from __future__ import annotations

import os
import sys
import time

import pytest

from conftest import ROOT, NODES, access_log, playbook, sh, vip_holders, vllm_started_at

sys.path.insert(0, str(ROOT / "bench"))
from loadgen import Load  # noqa: E402

NODE3 = ("cluster-node3", "172.31.250.13")

# The two tests under load are opt-in (VLLM_FLEET_LOAD_TESTS=1): together they
# take 26 min 20 s here (2026-11-23, 0 failed of 1879 and of 1410 requests),
# and CI's full run already takes 37 minutes of its hour.  They used to lose a
# request now and then to a VIP move while keepalived could not run; see
# failover_realtime_priority and the README (How to test).
under_load = pytest.mark.skipif(os.environ.get("VLLM_FLEET_LOAD_TESTS") != "1",
                                reason="opt-in: VLLM_FLEET_LOAD_TESTS=1 (about half an hour on a 2-core machine)")


def report(name: str, summary: dict) -> None:
    print(f"{name}: {summary}")


@under_load
def test_rolling_restart_under_load_loses_no_request():
    before = {node: vllm_started_at(node) for node in NODES}
    holder = vip_holders()
    load = Load(workers=2, deadline=1200, pause=0.5).start()
    time.sleep(3)
    run = playbook("playbooks/upgrade.yml", "-e", "upgrade_restart=true", "--limit", ",".join(NODES))
    summary = load.stop()
    report("rolling restart", summary)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    # Both nodes really restarted, one after the other.
    after = {node: vllm_started_at(node) for node in NODES}
    assert all(after[n] != before[n] for n in NODES), (before, after)
    assert summary["sent"] >= 20, summary
    assert summary["failed"] == 0, summary
    # The VIP did not move, nothing is left drained or in maintenance.
    assert vip_holders() == holder
    for node in NODES:
        assert sh(node, "ls /var/lib/vllm-fleet/drained").stdout.strip() == ""
        assert " down;" not in sh(node, "cat /etc/nginx/conf.d/vllm-fleet.conf").stdout
        assert sh(node, "test -e /run/vllm-fleet/maintenance", check=False).returncode == 1


def test_upgrade_refuses_to_drain_the_last_serving_node():
    """With node2's vLLM down, draining node1 would leave nothing to serve."""
    sh("cluster-node2", "systemctl stop vllm@default.service")
    try:
        run = playbook("playbooks/upgrade.yml", "--limit", "cluster-node1")
        assert run.returncode != 0
        assert "no other vLLM instance answers /health" in run.stdout, run.stdout[-3000:]
        assert sh("cluster-node1", "ls /var/lib/vllm-fleet/drained").stdout.strip() == ""
    finally:
        sh("cluster-node2", "systemctl start vllm@default.service")
        sh("cluster-node2", ". /etc/vllm/default.env && export VLLM_API_KEY && /opt/vllm/venv/bin/python "
           "/opt/vllm/wait-ready vllm@default.service http://172.31.250.12:8000 tiny-llama 600")


@pytest.fixture(scope="module")
def node3_inventory(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inventory") / "node3.yml"
    path.write_text("vllm_nodes:\n  hosts:\n    cluster-node3:\n")
    return str(path)


@under_load
def test_adding_a_node_under_load_loses_no_request_and_restarts_nothing(node3_inventory):
    before = {node: vllm_started_at(node) for node in NODES}
    nginx_pid = {node: sh(node, "systemctl show -p MainPID --value nginx").stdout.strip() for node in NODES}
    load = Load(workers=1, deadline=1800, pause=0.5).start()
    run = playbook("site.yml", "--limit", f"{NODE3[0]}:vllm_gateways", inventories=(node3_inventory,))
    summary = load.stop()
    report("add a node", summary)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert summary["failed"] == 0, summary
    assert summary["sent"] >= 20, summary
    # Running nodes were not restarted; the gateways reloaded, not restarted.
    assert {node: vllm_started_at(node) for node in NODES} == before
    assert {node: sh(node, "systemctl show -p MainPID --value nginx").stdout.strip() for node in NODES} == nginx_pid
    for node in NODES:
        assert f"server {NODE3[1]}:8000 " in sh(node, "cat /etc/nginx/conf.d/vllm-fleet.conf").stdout
    # The new node then takes its share.
    holder = vip_holders()[0]
    seen = len(access_log(holder))
    more = Load(workers=2, max_requests=30, deadline=120).start().wait()
    assert more["failed"] == 0, more
    used = {e["upstream_addr"] for e in access_log(holder)[seen:] if e["uri"] == "/v1/completions"}
    assert f"{NODE3[1]}:8000" in used, used
