"""bench/cluster.py: the failover gap from an open-loop poller's records."""

import pytest

from bench import cluster

T0 = 100.0


def polls(answers):
    """One poll every 50 ms from T0 - 0.5 s: answers maps a poll's index
    (0 = the first one sent at T0) to (seconds to answer, status); the others
    answer 200 in 10 ms."""
    rows = []
    for i in range(-10, 60):
        sent = T0 + i * 0.05
        took, status = answers.get(i, (0.01, 200))
        rows.append((sent, sent + took, status))
    return rows


def stranded(first, last):
    return {i: (1.0, 0) for i in range(first, last + 1)}


def test_no_failed_poll_leaves_only_the_polling_interval():
    result = cluster.gap(polls({}), T0, 3.0)
    assert result[1:] == (0, 0, 60)
    assert result[0] == pytest.approx(0.05)


def test_stranded_polls_do_not_hold_back_the_answers_after_them():
    # The VIP moves at T0 + 0.2 s: the polls sent in the next 100 ms go to
    # the old holder and wait out their 1 s timeout; the next one succeeds.
    result = cluster.gap(polls(stranded(4, 6)), T0, 3.0)
    assert result[1:] == (3, 3, 60)
    assert result[0] == pytest.approx(0.36 - 0.16)


def test_a_fault_that_takes_effect_gradually_is_timed_from_the_last_answer():
    # A node freezing over 100 ms: the first poll after the fault hangs on a
    # frozen nginx worker, the next still gets an answer, then nothing until
    # the peer takes over at T0 + 1.7 s.
    result = cluster.gap(polls({0: (1.0, 0), **stranded(2, 33)}), T0, 3.0)
    assert result[1:] == (33, 33, 60)
    assert result[0] == pytest.approx(1.71 - 0.06)


def test_a_fast_failure_counts_and_is_not_a_timeout():
    # A reset on a pooled connection fails at once; the answers around it
    # keep coming, so the gap stays about one polling interval.
    result = cluster.gap(polls({2: (0.002, 0), 3: (0.002, 0)}), T0, 3.0)
    assert result[1:] == (2, 0, 60)
    assert result[0] == pytest.approx(0.2 - 0.05)


def test_failures_before_the_fault_are_not_counted():
    result = cluster.gap(polls(stranded(-6, -4)), T0, 3.0)
    assert result[1:] == (0, 0, 60)


def test_a_rate_limited_poller_is_refused():
    with pytest.raises(SystemExit, match="rate-limited"):
        cluster.gap(polls({2: (0.001, 429)}), T0, 3.0)


def test_no_recovery_within_the_window_is_refused():
    with pytest.raises(SystemExit, match="no successful answer"):
        cluster.gap(polls(stranded(5, 59)), T0, 3.0)


@pytest.fixture()
def commands(monkeypatch):
    """The commands the fault cases would run on the nodes, in order (no Docker)."""
    ran = []
    monkeypatch.setattr(cluster, "sh", lambda node, cmd, stdin=None: ran.append((node, cmd)) or "")
    monkeypatch.setattr(cluster, "wait_ready", lambda node: ran.append((node, "wait_ready")))
    monkeypatch.setattr(cluster.time, "sleep", lambda seconds: ran.append(("sleep", seconds)))
    return ran


def case(fragment):
    (name,) = [name for name in cluster.fault_cases() if fragment in name]
    return cluster.fault_cases()[name]


def test_nginx_kill_sends_sigkill_to_the_master_of_the_holder_only(commands):
    fault, undo = case("nginx master SIGKILL")
    fault("cluster-node1")
    assert len(commands) == 1
    node, cmd = commands[0]
    assert node == "cluster-node1"
    assert "MainPID" in cmd and "nginx" in cmd and "kill -9" in cmd
    # Never `kill -9 0` (the whole process group) when nginx is down.
    assert '[ "$pid" != 0 ]' in cmd
    undo("cluster-node1")
    assert commands[-1] == ("cluster-node1", "systemctl reset-failed nginx; systemctl start nginx")


def test_double_fault_kills_the_other_nodes_vllm_then_the_holders_nginx(commands):
    fault, undo = case("double fault")
    fault("cluster-node1")
    assert [c[0] for c in commands] == ["cluster-node2", "sleep", "cluster-node1"]
    assert commands[0][1] == "systemctl kill --signal=SIGKILL vllm@default"
    assert commands[1] == ("sleep", cluster.DOUBLE_FAULT_DELAY)
    assert "kill -9" in commands[2][1] and "nginx" in commands[2][1]
    commands.clear()
    undo("cluster-node1")
    # nginx back on the holder, then the other node's vLLM, ready again.
    assert commands == [("cluster-node1", "systemctl reset-failed nginx; systemctl start nginx"),
                        ("cluster-node2", "systemctl reset-failed vllm@default; systemctl start vllm@default"),
                        ("cluster-node2", "wait_ready")]


def test_each_new_case_can_be_run_alone_with_only():
    names = list(cluster.fault_cases())
    for fragment in ("nginx master", "double fault"):
        assert len([n for n in names if fragment in n]) == 1, fragment
