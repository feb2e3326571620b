"""bench/wire.py: time inside the gateway from a tcpdump capture."""

import pytest

from vllm_fleet.lab import wire

VIP, NODE, CLIENT, PEER = "172.31.250.100", "172.31.250.12", "172.31.250.11", "172.31.250.11"


def seg(t, src, dst, length, iface="eth0", way="In"):
    """One line as `tcpdump -nn -tt -r` prints a Linux cooked v2 capture."""
    return (f"{t:.6f} {iface}  {way}  IP {src[0]}.{src[1]} > {dst[0]}.{dst[1]}: Flags [P.], "
            f"seq 1:{length + 1}, ack 1, win 64, length {length}")


def capture(forward_delay, burst=False):
    """Two sequential streamed requests through nginx on NODE: the first to its
    own vLLM, the second to the peer's over a reused upstream connection, with
    health checks and ACKs in between.  nginx forwards each upstream segment
    `forward_delay` s later, or (burst) holds them all until the last."""
    front, c1, c2 = (VIP, 443), (CLIENT, 40001), (CLIENT, 40002)
    up1, local = (NODE, 51000), (NODE, 8000)
    up2, peer = (NODE, 51002), (PEER, 8000)
    lines = [seg(0.500, (NODE, 52000), local, 90, "lo"),        # health check GET
             seg(0.501, local, (NODE, 52000), 150, "lo"),
             seg(0.900, c1, front, 517), seg(0.905, front, c1, 875, way="Out"),  # TLS handshake
             seg(1.000, c1, front, 229),                          # the request
             seg(1.002, up1, local, 313, "lo"), seg(1.0021, up1, local, 107, "lo"),
             seg(1.003, c1, front, 0)]                            # a bare ACK
    replies = [1.010 + 0.02 * i for i in range(5)]
    for i, t in enumerate(replies):
        lines.append(seg(t, local, up1, 260, "lo"))
        out = replies[-1] + forward_delay if burst else t + forward_delay
        lines.append(seg(out + 0.000001 * i, front, c1, 290, way="Out"))
    lines += [seg(2.000, c2, front, 229),
              seg(2.0005, up2, peer, 420, way="Out"),
              seg(2.100, peer, up2, 260), seg(2.100 + forward_delay, front, c2, 290, way="Out"),
              seg(2.200, peer, up2, 260), seg(2.200 + forward_delay, front, c2, 290, way="Out")]
    return "\n".join(lines) + "\nnot a packet line\n"


def test_parse_keeps_data_segments_in_time_order():
    segments = wire.parse(capture(0.001))
    assert all(s.length > 0 for s in segments)
    assert [s.t for s in segments] == sorted(s.t for s in segments)
    assert segments[0].src == (NODE, 52000) and segments[0].dst == (NODE, 8000)


def test_residence_pairs_requests_and_measures_forwarding():
    result = wire.residence(wire.parse(capture(0.001)), VIP)
    assert result["request_ms"] == pytest.approx([2.0, 0.5])
    assert result["first_ms"] == pytest.approx([1.0, 1.0], abs=0.01)  # the first token segments
    # 5 replies on the first stream, 2 on the second; the health check is not one.
    assert len(result["chunk_ms"]) == 7
    assert max(result["chunk_ms"]) == pytest.approx(1.0, abs=0.01)
    # The first stream's first token came 28 ms after nginx sent the request
    # on (its head at 8 ms), then one segment every 20 ms; the second stream has
    # too few segments to tell a head from tokens.
    assert result["backend_ms"] == pytest.approx([28.0], abs=0.01)
    assert result["upstream_chunk_ms"] == pytest.approx([20.0], abs=0.01)


def test_a_buffering_proxy_shows_up():
    result = wire.residence(wire.parse(capture(0.001, burst=True)), VIP)
    # The first token waited until the last one arrived (3 x 20 ms later).
    assert result["first_ms"][0] == pytest.approx(61.0, abs=0.1)
    assert wire.summary(result["chunk_ms"])["max"] > 80


def test_summary():
    s = wire.summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["n"], s["median"], s["max"]) == (5, 3.0, 5.0)
