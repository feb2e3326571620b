"""Time a request spends inside the gateway, from a packet capture taken in
the VIP holder's network namespace (bench/cluster.py runs tcpdump there).

The client-side figures of bench/cluster.py include whatever delays the
client and the backend see; on the 2-core lab that is mostly CPU scheduling.
The capture isolates nginx: every segment's arrival and departure on both of
its legs, stamped by the same kernel clock.

    request_ms   last client segment of the request -> nginx sends it upstream
    first_ms     first data segment of the response  -> nginx sends it on
                 (vLLM sends the response head first, on its own)
    chunk_ms     each upstream data segment          -> next segment to the client
    backend_ms   request sent upstream               -> first data segment back
    upstream_chunk_ms  the backend's own time per segment on each stream
                 (the backend's share, for comparison with a direct client)

Input is `tcpdump -nn -tt -r FILE` text (any interface, Linux cooked v2).
Requests are sequential (one stream at a time), which makes the pairing of a
client connection with its upstream request unambiguous.
"""
from __future__ import annotations

import dataclasses
import re
import statistics

LINE = re.compile(r"^(?P<t>\d+\.\d+)\s+\S+\s+\S+\s+IP (?P<src>\S+)\.(?P<sport>\d+) > "
                  r"(?P<dst>\S+)\.(?P<dport>\d+): Flags \[[^\]]*\].*length (?P<len>\d+)")


@dataclasses.dataclass(frozen=True)
class Segment:
    t: float
    src: tuple[str, int]
    dst: tuple[str, int]
    length: int


def parse(text: str) -> list[Segment]:
    """Data segments (length > 0) in time order."""
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m and int(m["len"]) > 0:
            out.append(Segment(float(m["t"]), (m["src"], int(m["sport"])), (m["dst"], int(m["dport"])),
                               int(m["len"])))
    return sorted(out, key=lambda s: s.t)


def residence(segments: list[Segment], vip: str, tls_port: int = 443, upstream_port: int = 8000,
              min_request: int = 250) -> dict[str, list[float]]:
    """Per request and per response segment, milliseconds spent in the proxy.

    An upstream request is a segment of at least `min_request` bytes to the
    backend port (health checks are smaller).  Its client connection is the
    one whose last segment to the VIP came just before it."""
    front = (vip, tls_port)
    upstream = [s for s in segments if s.dst[1] == upstream_port and s.length >= min_request]
    result: dict[str, list[float]] = {"request_ms": [], "first_ms": [], "chunk_ms": [], "backend_ms": [],
                                      "upstream_chunk_ms": []}
    for i, req in enumerate(upstream):
        end = upstream[i + 1].t if i + 1 < len(upstream) else float("inf")
        inbound = [s for s in segments if s.dst == front and s.t <= req.t]
        if not inbound:
            continue
        client = inbound[-1].src
        result["request_ms"].append((req.t - inbound[-1].t) * 1000)
        replies = [s for s in segments if s.src == req.dst and s.dst == req.src and req.t < s.t < end]
        outbound = [s for s in segments if s.src == front and s.dst == client and s.t >= req.t]
        # vLLM sends the response head on its own, then one segment per chunk.
        if len(replies) > 2:
            result["backend_ms"].append((replies[1].t - req.t) * 1000)
            result["upstream_chunk_ms"].append((replies[-1].t - replies[1].t) / (len(replies) - 2) * 1000)
        for n, reply in enumerate(replies):
            sent = next((s.t for s in outbound if s.t >= reply.t), None)
            if sent is None:
                continue
            delay = (sent - reply.t) * 1000
            result["chunk_ms"].append(delay)
            if n == 1:
                result["first_ms"].append(delay)
    return result


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(ordered), "median": statistics.median(ordered),
            "p99": ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))],
            "max": ordered[-1]}
