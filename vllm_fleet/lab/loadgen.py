#!/usr/bin/env python3
"""A bounded client load through the lab VIP (TLS, lab CA, the lab-load key).

Used by the day-2 tests (molecule/cluster/tests/test_rollout.py) and the
benches.  Each worker sends non-streaming completions one after another, each
on a fresh connection: a client that reuses an idle keep-alive connection can
race the server closing it (nginx closes idle connections on reload), a
client-side artefact this load is not meant to count.  Load is bounded by a
deadline and a request cap, whichever comes first.

    python -m vllm_fleet.lab.loadgen --seconds 30 --workers 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from dataclasses import dataclass, field

import requests

from vllm_fleet.lab.cluster import CA, VIP, secret, sh


@dataclass
class Result:
    started: float
    seconds: float
    status: int | None
    error: str | None = None


@dataclass
class Load:
    """Start with .start(), stop with .stop(); .results holds every request."""

    url: str = f"https://{VIP}/v1/completions"
    workers: int = 2
    deadline: float = 900.0
    max_requests: int = 20000
    pause: float = 0.05
    model: str = "tiny-llama"
    max_tokens: int = 8
    results: list[Result] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._headers = {"Authorization": f"Bearer {secret('client-lab-load')}", "Connection": "close"}
        self._ca = str(CA)

    def _worker(self, index: int) -> None:
        end = time.monotonic() + self.deadline
        body = {"model": self.model, "prompt": f"Load {index}", "max_tokens": self.max_tokens}
        while not self._stop.is_set() and time.monotonic() < end:
            with self._lock:
                if len(self.results) >= self.max_requests:
                    return
            t0 = time.monotonic()
            try:
                with requests.Session() as session:
                    session.trust_env = False
                    r = session.post(self.url, json=body, headers=self._headers, verify=self._ca, timeout=60)
                    error = None if r.status_code == 200 else r.text[:200]
                    result = Result(t0, time.monotonic() - t0, r.status_code, error)
            except requests.RequestException as exc:
                result = Result(t0, time.monotonic() - t0, None, f"{type(exc).__name__}: {exc}"[:200])
            with self._lock:
                self.results.append(result)
            self._stop.wait(self.pause)

    def start(self) -> "Load":
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wait(self) -> dict:
        """Let the workers run to their own bound (deadline or request cap)."""
        for t in self._threads:
            t.join(timeout=self.deadline + 90)
        return self.stop()

    def stop(self) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)
        return self.summary()

    def summary(self, since: float | None = None, until: float | None = None) -> dict:
        with self._lock:
            chosen = [r for r in self.results
                      if (since is None or r.started >= since) and (until is None or r.started < until)]
        failed = [r for r in chosen if r.status != 200]
        latencies = sorted(r.seconds for r in chosen if r.status == 200)
        return {
            "sent": len(chosen),
            "ok": len(latencies),
            "failed": len(failed),
            "errors": sorted({f"{r.status}: {r.error}" for r in failed})[:5],
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3) if latencies else None,
            "max_s": round(latencies[-1], 3) if latencies else None,
        }


@dataclass
class ServiceWatch:
    """Each node's time out of service during a rollout, watched from outside.

    Every ``interval`` seconds: is the node drained on any gateway (its flag in
    the gateways' /var/lib/vllm-fleet/drained), and does its vLLM answer
    /health (curl on the node, to its own address)?  ``summary()`` gives per
    node the seconds out of rotation (drained, first to last), the seconds
    vLLM did not answer (its stop and start), and what is left of the first
    once the second is taken out: the rollout's own overhead for that node.
    """

    nodes: dict[str, str]
    gateways: list[str]
    port: int = 8000
    interval: float = 1.0
    events: list[tuple[float, str, bool, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            drained = set()
            for gateway in self.gateways:
                drained |= set(sh(gateway, "ls /var/lib/vllm-fleet/drained 2>/dev/null", check=False).stdout.split())
            for node, address in self.nodes.items():
                healthy = sh(node, f"curl -sf -m 2 -o /dev/null http://{address}:{self.port}/health", check=False).returncode == 0
                self.events.append((now, node, node in drained, healthy))
            self._stop.wait(self.interval)

    def start(self) -> "ServiceWatch":
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.summary()

    def summary(self) -> dict:
        out = {}
        for node in self.nodes:
            mine = [(t, d, h) for t, n, d, h in self.events if n == node]
            drained = [t for t, d, _ in mine if d]
            down = [t for t, _, h in mine if not h]
            span = (drained[-1] - drained[0] + self.interval) if drained else 0.0
            dark = (down[-1] - down[0] + self.interval) if down else 0.0
            out[node] = {"out_of_rotation_s": round(span, 1), "vllm_down_s": round(dark, 1),
                         "overhead_s": round(span - dark, 1),
                         "down_while_in_rotation": any(not h and not d for _, d, h in mine)}
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    load = Load(workers=args.workers, deadline=args.seconds).start()
    time.sleep(args.seconds)
    print(json.dumps(load.stop(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
