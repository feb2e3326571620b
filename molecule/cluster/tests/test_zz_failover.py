"""Failover: the VIP moves when the master's vLLM or keepalived goes away,
and requests through the VIP succeed again.  Runs last (it disturbs the
cluster) and leaves every service running again."""
import time

import requests

from conftest import BASE, completion, sh, vip_holders, wait_for

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


def test_stopping_vllm_on_the_master_moves_the_vip(api, alice):
    master = vip_holders()[0]
    sh(master, "systemctl stop vllm@default")
    wait_for(lambda: vip_holders() == [other(master)], MOVE_TIMEOUT)
    wait_for(lambda: serves(api, alice), MOVE_TIMEOUT)
    restore(master)
    # nopreempt (the default): the recovered node does not take the VIP back.
    wait_for(lambda: "vllm_fleet_vrrp_master" in sh(master, "cat /var/lib/prometheus/node-exporter/vllm_fleet_vrrp.prom").stdout, 10)
    time.sleep(5)
    assert vip_holders() == [other(master)]


def test_stopping_keepalived_on_the_master_moves_the_vip(api, alice):
    master = vip_holders()[0]
    sh(master, "systemctl stop keepalived")
    wait_for(lambda: vip_holders() == [other(master)], MOVE_TIMEOUT)
    wait_for(lambda: serves(api, alice), MOVE_TIMEOUT)
    restore(master)


def test_killing_keepalived_on_the_master_moves_the_vip(api, alice):
    master = vip_holders()[0]
    sh(master, "systemctl kill --signal=SIGKILL keepalived")
    wait_for(lambda: other(master) in vip_holders(), MOVE_TIMEOUT)
    wait_for(lambda: serves(api, alice), MOVE_TIMEOUT)
    # A killed keepalived leaves its VIP behind; systemd restarts it and the
    # restarted daemon (BACKUP, nopreempt) removes the stale address.
    restore(master)
    wait_for(lambda: vip_holders() == [other(master)], MOVE_TIMEOUT)
    assert serves(api, alice)
