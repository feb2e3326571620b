"""Failover: the VIP moves when the master's nginx or keepalived goes away
(its own vLLM going away only lowers its priority), nginx and keepalived
come back by themselves after a crash, and requests through the VIP succeed
again.  Runs last (it disturbs the cluster) and leaves every service running
again, with the VIP on exactly one node."""
import json
import re
import time

import requests

from conftest import BASE, LAB, MODEL, NODES, completion, playbook, recap, secret, sh, vip_holders, wait_for
from vllm_fleet.lab.cluster import LabError

MOVE_TIMEOUT = 20
# Streamed 64-token completions through the VIP (about 1 s each here).
STREAMS = 40
# Goals of issue 16: a node whose own vLLM is down but whose nginx reaches a
# vLLM elsewhere takes the VIP when the master's nginx dies, and the VIP
# serves again within this many seconds of the kill.
DOUBLE_FAULT_GOAL_S = 3.0
# nginx killed on the holder: back by itself, or the VIP on the peer.
NGINX_KILL_GOAL_S = 5.0
# systemd-analyze security: the edge units' exposure goals.
EXPOSURE_GOALS = {"nginx.service": 3.0, "keepalived.service": 5.0}


def serves(api, alice):
    try:
        return completion(api, alice, max_tokens=1).status_code == 200
    except requests.RequestException:
        return False


def other(node):
    return next(n for n in ("cluster-node1", "cluster-node2") if n != node)


def restore(node):
    # A unit that hit its start limit refuses `start` until reset.
    sh(node, "systemctl reset-failed nginx keepalived vllm@default; systemctl start nginx keepalived vllm@default")
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


def settled():
    """The VIP holder when exactly one node holds it and the other is BACKUP."""
    holders = vip_holders()
    return len(holders) == 1 and is_backup(other(holders[0])) and holders[0]


def answers_quickly():
    """One 1-token completion through the VIP with a 1 s timeout (a request
    sent to a node that just lost the VIP must not hang the test), as the
    load client (alice's 10/s limit would answer 429 to a tight poll)."""
    session = requests.Session()
    session.verify = str(LAB / "pki" / "ca.crt")
    session.trust_env = False
    try:
        return session.post(f"{BASE}/v1/completions", timeout=1,
                            headers={"Authorization": f"Bearer {secret('client-lab-load')}"},
                            json={"model": MODEL, "prompt": "ping", "max_tokens": 1}).status_code == 200
    except requests.RequestException:
        return False
    finally:
        session.close()


def journal_cursor(node):
    return (sh(node, "journalctl -n 1 --show-cursor --no-pager").stdout.strip().splitlines()[-1]
            .removeprefix("-- cursor: "))


def keepalived_log(node, cursor):
    return sh(node, f"journalctl -u keepalived --after-cursor '{cursor}' --no-pager --output cat").stdout


def priority_and_penalty(node):
    """The node's configured VRRP priority and its local vLLM check's penalty."""
    conf = sh(node, "cat /etc/keepalived/keepalived.conf").stdout
    priority = int(re.search(r"^\s*priority (\d+)$", conf, re.M).group(1))
    penalty = int(re.search(r"^\s*weight -(\d+)$", conf, re.M).group(1))
    return priority, penalty


def wait_for_priority(node, cursor, old, new):
    """Wait until keepalived on node logs its effective priority going from old to new."""
    wait_for(lambda: f"Changing effective priority from {old} to {new}" in keepalived_log(node, cursor), MOVE_TIMEOUT)


def nginx_state(node):
    out = sh(node, "systemctl show -p ActiveState -p MainPID -p NRestarts nginx").stdout
    return dict(line.split("=", 1) for line in out.split())


def exposure(node, unit):
    out = sh(node, f"systemd-analyze security --no-pager {unit}", check=False).stdout
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", out)
    assert found, f"{node}: systemd-analyze security {unit}:\n{out[-2000:]}"
    return float(found.group(1))


def vrrp_scheduling(node):
    """The VRRP process's scheduling class and real-time priority, e.g. ['RR', '10']."""
    main = sh(node, "systemctl show --property MainPID --value keepalived").stdout.strip()
    child = sh(node, f"pgrep --parent {main} --newest").stdout.strip()
    return sh(node, f"ps -o cls=,rtprio= -p {child}").stdout.split()


def test_keepalived_keeps_the_vip_while_the_nodes_serve(api, alice):
    """Under streamed load every vLLM engine keeps both cores busy.  A keepalived
    ranked only by its nice value then waited seconds for a CPU ("A thread timer
    expired 3.2 seconds ago"), and one whose syslog() queue (10 datagrams in a
    container) was full blocked behind a busy journald; either way it missed its
    adverts and lost the VIP although healthy.  In real time, logging without
    blocking, it keeps its timing and the VIP stays put."""
    for node in NODES:
        assert vrrp_scheduling(node) == ["RR", "10"], node
    # The tests before this one restart vLLM; start from a settled pair.
    wait_for(lambda: len(vip_holders()) == 1 and is_backup(other(vip_holders()[0])), MOVE_TIMEOUT * 3)
    master = vip_holders()[0]
    cursors = {node: sh(node, "journalctl -n 1 --show-cursor --no-pager").stdout.strip().splitlines()[-1]
               .removeprefix("-- cursor: ") for node in NODES}
    for _ in range(STREAMS):
        with api.post(f"{BASE}/v1/completions", headers=alice, stream=True, timeout=60,
                      json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 64,
                            "stream": True, "ignore_eos": True}) as reply:
            assert reply.status_code == 200
            assert any(line == b"data: [DONE]" for line in reply.iter_lines())
    assert vip_holders() == [master]
    for node in NODES:
        journal = sh(node, f"journalctl -u keepalived --after-cursor '{cursors[node]}' --no-pager --output cat").stdout
        late = [line for line in journal.splitlines() if "timer expired" in line or "STATE" in line]
        assert not late, f"{node}: {late}"


def test_edge_units_are_sandboxed():
    """systemd-analyze security of nginx and keepalived within their goals,
    and the running daemons inside that sandbox (a mount namespace of their
    own, no new privileges), not only their unit files."""
    for node in NODES:
        for unit, goal in EXPOSURE_GOALS.items():
            level = exposure(node, unit)
            assert level <= goal, f"{node}: {unit} exposure {level} > {goal}"
            pid = sh(node, f"systemctl show -p MainPID --value {unit}").stdout.strip()
            assert pid != "0", f"{node}: {unit} is not running"
            namespaces = sh(node, f"readlink /proc/{pid}/ns/mnt /proc/1/ns/mnt").stdout.split()
            assert namespaces[0] != namespaces[1], f"{node}: {unit} runs outside its sandbox"
            assert "NoNewPrivs:\t1" in sh(node, f"cat /proc/{pid}/status").stdout, f"{node}: {unit}"


def test_stopping_vllm_on_the_master_only_lowers_its_priority(api, alice):
    """The master's own vLLM down: its nginx forwards to the peer's vLLM, so it
    keeps the VIP (nopreempt) with its priority lowered by the penalty, and
    never goes to FAULT for it."""
    master, _ = wait_for(settled, MOVE_TIMEOUT * 3)
    priority, penalty = priority_and_penalty(master)
    cursor = journal_cursor(master)
    try:
        sh(master, "systemctl stop vllm@default")
        wait_for_priority(master, cursor, priority, priority - penalty)
        wait_for(lambda: serves(api, alice), MOVE_TIMEOUT)
        time.sleep(3)
        assert vip_holders() == [master]
        assert "FAULT" not in keepalived_log(master, cursor)
    finally:
        restore(master)
    wait_for_priority(master, cursor, priority - penalty, priority)
    assert vip_holders() == [master]


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


def test_killing_nginx_on_the_master_brings_it_back(api, alice):
    """kill -9 of the holder's nginx master: systemd restarts it by itself
    (Restart=on-failure), and the VIP serves again within the goal, through
    the restarted nginx or through the peer if keepalived handed it over."""
    master, _ = wait_for(settled, MOVE_TIMEOUT * 3)
    before = nginx_state(master)
    assert before["ActiveState"] == "active" and before["MainPID"] != "0", before
    try:
        start = time.monotonic()
        sh(master, f"kill -9 {before['MainPID']}")
        # The workers may answer for a moment after their master died: the
        # gap is the longest time without an answer, from the kill on.
        answered = [start]
        while time.monotonic() - start < NGINX_KILL_GOAL_S * 2:
            if answers_quickly():
                answered.append(time.monotonic())
            time.sleep(0.1)
        gap = max(b - a for a, b in zip(answered, answered[1:] + [time.monotonic()]))
        after = nginx_state(master)
        assert after["ActiveState"] == "active" and after["MainPID"] not in ("0", before["MainPID"]), after
        assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
        assert gap <= NGINX_KILL_GOAL_S, f"no answer through the VIP for {gap:.1f} s after the kill"
    finally:
        restore(master)
    # Wherever it went, the VIP ends on one node, the other BACKUP.
    wait_for(settled, MOVE_TIMEOUT * 3)
    assert serves(api, alice)


def test_double_fault_the_vip_goes_to_the_node_that_can_serve(api, alice):
    """Issue 16's double fault: the backup's vLLM is killed and, while it
    restarts, so is the master's nginx.  The backup's own vLLM is down but its
    nginx reaches the master's vLLM, so it takes the VIP (it used to sit in
    FAULT for its own vLLM: 13-42 s without an answer).  The master's nginx is
    kept down after the kill (its restart by itself is the test above), so the
    VIP has to move."""
    master, _ = wait_for(settled, MOVE_TIMEOUT * 3)
    backup = other(master)
    priority, penalty = priority_and_penalty(backup)
    cursor = journal_cursor(backup)
    try:
        sh(backup, "systemctl kill --signal=SIGKILL vllm@default")
        # vLLM restarts after RestartSec (10 s) and loads for longer than that.
        wait_for_priority(backup, cursor, priority, priority - penalty)
        assert "FAULT" not in keepalived_log(backup, cursor)
        health = f"curl -fsS -o /dev/null --max-time 1 http://{NODES[backup]}:8000/health"
        assert sh(backup, health, check=False).returncode != 0, "the backup's vLLM was back before the second fault"
        pid = nginx_state(master)["MainPID"]
        assert pid != "0", f"{master}: nginx is not running"
        start = time.monotonic()
        sh(master, f"kill -9 {pid}; systemctl stop nginx")
        wait_for(answers_quickly, MOVE_TIMEOUT)
        took = time.monotonic() - start
        assert took <= DOUBLE_FAULT_GOAL_S, f"no answer through the VIP for {took:.1f} s after the nginx kill"
        wait_for(lambda: vip_holders() == [backup], MOVE_TIMEOUT)
        log = keepalived_log(backup, cursor)
        assert "Entering MASTER STATE" in log and "FAULT" not in log, log[-2000:]
    finally:
        restore(master)
        restore(backup)
    wait_for(settled, MOVE_TIMEOUT * 3)
    assert serves(api, alice)


def test_with_preempt_the_higher_priority_node_takes_the_vip_back(api, alice):
    """failover_preempt=true: the first node (highest priority) reclaims the VIP
    once it is healthy again.  The default (nopreempt) is restored afterwards."""
    run = playbook("site.yml", "--tags", "failover", "-e", "failover_preempt=true")
    assert run.returncode == 0, run.stdout[-3000:]
    cursors = {node: journal_cursor(node) for node in ("cluster-node1", "cluster-node2")}

    def node1_takes_the_vip():
        # A check of node1's that failed for a moment (its vLLM slow to
        # answer on a busy machine) lowers its priority and node2 may win an
        # election meanwhile; with preempt node1 must take the VIP back once
        # healthy, and that is what is asserted.
        try:
            wait_for(lambda: vip_holders() == ["cluster-node1"], MOVE_TIMEOUT)
        except LabError:
            logs = "\n".join(f"--- {node}:\n{keepalived_log(node, cursor)[-3000:]}" for node, cursor in cursors.items())
            raise AssertionError(f"the VIP stayed on {vip_holders()}:\n{logs}") from None

    try:
        if vip_holders() != ["cluster-node1"]:
            # Hand the VIP to node1 first: with preempt, stopping node2's
            # keepalived moves it and node2 does not take it back.
            restore(fault_moves_the_vip(api, alice, "systemctl stop keepalived"))
        node1_takes_the_vip()
        fault_moves_the_vip(api, alice, "systemctl stop keepalived")
        sh("cluster-node1", "systemctl start keepalived")
        node1_takes_the_vip()
        wait_for(lambda: serves(api, alice), MOVE_TIMEOUT)
    finally:
        run = playbook("site.yml", "--tags", "failover")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "nopreempt" in sh("cluster-node1", "cat /etc/keepalived/keepalived.conf").stdout


def test_preflight_refuses_a_gateway_whose_syslog_queue_is_short(tmp_path):
    """keepalived logs through syslog(); with the kernel's default queue of 10
    a busy journald blocks it and it misses its adverts.  The gateways here got
    512 with their containers; cluster-node3 did not, and as a gateway it must
    be refused before anything changes, naming the value and the fix."""
    spare = "cluster-node3"
    assert int(sh(spare, "cat /proc/sys/net/unix/max_dgram_qlen").stdout) < 512
    inventory = tmp_path / "gateway.yml"
    inventory.write_text(f"vllm_gateways:\n  hosts:\n    {spare}:\n")
    run = playbook("playbooks/preflight.yml", "--limit", spare, "-e", json.dumps({"failover_realtime_priority": 0}),
                   inventories=(str(inventory),))
    assert run.returncode != 0
    qlen = sh(spare, "cat /proc/sys/net/unix/max_dgram_qlen").stdout.strip()
    assert f"[{spare}] net.unix.max_dgram_qlen={qlen}: keepalived needs at least 512" in " ".join(run.stdout.split())
    assert recap(run.stdout)[spare]["changed"] == 0
    assert sh(spare, "test -e /etc/keepalived", check=False).returncode == 1
