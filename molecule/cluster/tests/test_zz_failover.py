"""Failover: the VIP moves when the master's vLLM or keepalived goes away,
and requests through the VIP succeed again.  Runs last (it disturbs the
cluster) and leaves every service running again."""
import time

import requests

from conftest import completion, playbook, sh, vip_holders, wait_for

MOVE_TIMEOUT = 20


def serves(api, alice):
    try:
        return completion(api, alice, max_tokens=1).status_code == 200
    except requests.RequestException:
        return False


def other(node):
    return next(n for n in ("cluster-node1", "cluster-node2") if n != node)


def restore(node):
    sh(node, "systemctl start keepalived vllm@default")
    sh(node, ". /etc/vllm/default.env && export VLLM_API_KEY && /opt/vllm/venv/bin/python /opt/vllm/wait-ready "
             "vllm@default.service http://$(hostname -i | awk '{print $1}'):8000 tiny-llama 300")


def fault_moves_the_vip(api, alice, command):
    """Run `command` on the VIP holder; the peer must take the VIP and serve."""
    master = vip_holders()[0]
    sh(master, command)
    wait_for(lambda: vip_holders() == [other(master)], MOVE_TIMEOUT)
    wait_for(lambda: serves(api, alice), MOVE_TIMEOUT)
    return master


def is_backup(node):
    prom = sh(node, "cat /var/lib/prometheus/node-exporter/vllm_fleet_vrrp.prom").stdout
    # FAULT also exports master=0: BACKUP is the state after recovery.
    return 'vllm_fleet_vrrp_master{vrrp_instance="VI_vllm"} 0' in prom and 'state="BACKUP"' in prom


def test_stopping_vllm_on_the_master_moves_the_vip(api, alice):
    master = fault_moves_the_vip(api, alice, "systemctl stop vllm@default")
    restore(master)
    # nopreempt (the default): once healthy again the old master stays BACKUP.
    wait_for(lambda: is_backup(master), 30)
    time.sleep(5)
    assert vip_holders() == [other(master)]


def test_stopping_keepalived_on_the_master_moves_the_vip(api, alice):
    restore(fault_moves_the_vip(api, alice, "systemctl stop keepalived"))


def test_killing_keepalived_on_the_master_moves_the_vip(api, alice):
    master = vip_holders()[0]
    sh(master, "systemctl kill --signal=SIGKILL keepalived")
    # The killed daemon leaves its VIP behind until systemd restarts it.
    wait_for(lambda: other(master) in vip_holders(), MOVE_TIMEOUT)
    wait_for(lambda: serves(api, alice), MOVE_TIMEOUT)
    # A killed keepalived leaves its VIP behind; systemd restarts it and the
    # restarted daemon (BACKUP, nopreempt) removes the stale address.
    restore(master)
    wait_for(lambda: vip_holders() == [other(master)], MOVE_TIMEOUT)
    assert serves(api, alice)


def test_with_preempt_the_higher_priority_node_takes_the_vip_back(api, alice):
    """failover_preempt=true: the first node (highest priority) reclaims the VIP
    once it is healthy again.  The default (nopreempt) is restored afterwards."""
    run = playbook("site.yml", "--tags", "failover", "-e", "failover_preempt=true")
    assert run.returncode == 0, run.stdout[-3000:]
    try:
        if vip_holders() != ["cluster-node1"]:
            # Hand the VIP to node1 first: with preempt, stopping node2's
            # keepalived moves it and node2 does not take it back.
            restore(fault_moves_the_vip(api, alice, "systemctl stop keepalived"))
        assert vip_holders() == ["cluster-node1"]
        fault_moves_the_vip(api, alice, "systemctl stop keepalived")
        sh("cluster-node1", "systemctl start keepalived")
        wait_for(lambda: vip_holders() == ["cluster-node1"], MOVE_TIMEOUT)
        wait_for(lambda: serves(api, alice), MOVE_TIMEOUT)
    finally:
        run = playbook("site.yml", "--tags", "failover")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "nopreempt" in sh("cluster-node1", "cat /etc/keepalived/keepalived.conf").stdout
