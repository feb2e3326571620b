#!/usr/bin/env python3
"""Failover gap and proxy overhead in the two-node cluster lab.

    molecule converge -s cluster && python bench/cluster.py [--runs N] [--requests N]

Failover gap: a client on the Docker host sends a poll to the VIP every 50 ms,
each on a thread of its own whether or not the ones before have answered
(1-token completion, TLS, lab CA, the lab-load client's key, 1 s timeout), for
12 s after the fault; the gap is the longest time without a successful answer,
from the last one before the fault on: the time from the fault to the first
successful answer after it, counted from when the fault took effect.  Failed
polls that got no answer at all within their 1 s are counted apart: requests
stranded on the old holder.  Faults, each repeated --runs times on
whichever node holds the VIP, and undone before the next run:
  - node freeze (`docker pause`: nginx, keepalived and vLLM stop at once) - hard
  - vLLM killed with SIGKILL (the VIP stays: the holder's nginx forwards
    to the other node's vLLM; the holder's priority drops)                 - hard
  - keepalived killed with SIGKILL                                          - hard
  - keepalived stopped (SIGTERM, as `systemctl stop`; priority-0 advert)   - graceful
  - nginx master killed with SIGKILL (systemd restarts it; the VIP moves
    if keepalived's check fails twice first)                                - hard
  - double fault: vLLM killed with SIGKILL on the other node, then 2 s
    later the holder's nginx master (the other node, its own vLLM down,
    must still take the VIP: its nginx reaches the holder's vLLM)          - hard

Proxy overhead (measured twice in one run: with the gateway's token
accounting on, then off, then on again): from inside cluster-node1, --requests streamed 64-token
completions in batches of 10, alternately through the VIP (TLS, nginx,
internal key swap) and directly to a vLLM (the VIP holder's nginx upstream
servers, one request each in turn, as nginx spreads the VIP's requests); medians of the time to first
token (the clock starts once the connection, and TLS, is up) and of each
stream's mean time per chunk (first to last chunk / chunks - 1), and how
many streams arrived in one burst (every chunk in one read).  While the VIP
batches run, tcpdump in the VIP holder's network namespace records both of
nginx's legs; bench/wire.py turns that into the time each request and each
response segment spent inside nginx (needs tcpdump on this host).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests

from vllm_fleet.lab import wire
from vllm_fleet.lab.cluster import CA, LAB, NODES, ROOT, VIP, holder, secret, wait_ready
from vllm_fleet.lab.cluster import output as sh


class Poller:
    """Sends a poll to the VIP every 50 ms, each on a thread of its own, whether
    or not the polls before it have answered (an open-loop client, as a
    fleet's many clients are): a poll stranded on the old holder waits for its
    own 1 s timeout without holding back the next.  Records (sent, answered,
    HTTP status or 0 for no answer) per poll."""

    def __init__(self) -> None:
        # The lab's load client: 20 polls/s would pass lab-alice's 10/s limit,
        # and a 429 would count as part of the gap.
        self.headers = {"Authorization": f"Bearer {secret('client-lab-load')}"}
        self.results: list[tuple[float, float, int]] = []
        self.lock = threading.Lock()
        self.local = threading.local()
        self.sessions: list[requests.Session] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=32)
        self.stop = threading.Event()

    def _session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            session = requests.Session()
            session.verify = str(CA)
            session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify=
            self.local.session = session
            with self.lock:
                self.sessions.append(session)
        return self.local.session

    def poll_once(self, sent: float) -> None:
        session = self._session()
        try:
            status = session.post(f"https://{VIP}/v1/completions", headers=self.headers, timeout=1,
                                  json={"model": "tiny-llama", "prompt": "ping", "max_tokens": 1}).status_code
        except requests.RequestException:
            # A dead connection from the pool must not poison the next poll.
            session.close()
            status = 0
        with self.lock:
            self.results.append((sent, time.monotonic(), status))

    def run(self) -> None:
        due = time.monotonic()
        while not self.stop.is_set():
            self.pool.submit(self.poll_once, time.monotonic())
            due += 0.05
            self.stop.wait(max(0.0, due - time.monotonic()))
        self.pool.shutdown(wait=True)
        for session in self.sessions:
            session.close()


def measure_gap(fault, undo, window: float = 12.0) -> tuple[float, int, int, int]:
    """Poll for `window` seconds after the fault; see gap()."""
    poller = Poller()
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    fault()
    time.sleep(window)
    poller.stop.set()
    thread.join()
    undo()
    return gap(poller.results, t0, window)


def gap(results: list[tuple[float, float, int]], t0: float, window: float) -> tuple[float, int, int, int]:
    """(gap, failed, timed_out, sent) from the polls (sent, answered, status)
    around a fault at t0.  gap = the longest time without a successful answer,
    from the last one before the fault to the end of the window: the time
    from the fault to the first successful answer after it, measured from
    when the fault took effect (a `docker pause` freezes a node's processes
    over some 100 ms, and an answer may still come out in between).  failed =
    polls sent after t0 that got no 200; timed_out = those of them that got
    no answer at all within their 1 s (stranded on the old holder)."""
    after = sorted(r for r in results if t0 <= r[0] <= t0 + window)
    if any(status == 429 for _, _, status in after):
        sys.exit("the poller was rate-limited (429): its client's limit must exceed 20 requests/s")
    failures = [(sent, answered) for sent, answered, status in after if status != 200]
    timed_out = sum(1 for sent, answered in failures if answered - sent >= 0.99)
    answers = sorted(answered for _, answered, status in results if status == 200)
    before = [a for a in answers if a < t0]
    answers = [a for a in answers if before and a >= before[-1] or a >= t0]
    if failures and (not answers or answers[-1] < failures[-1][0]):
        sys.exit(f"no successful answer within {window} s of the fault")
    longest = max((b - a for a, b in zip(answers, answers[1:])), default=0.0)
    return longest, len(failures), timed_out, len(after)


def docker_pause(node: str) -> None:
    """`docker pause` (cgroup freezer); it fails now and then with 'unable to
    freeze' on this machine's cgroup v1, so it is retried."""
    for _ in range(10):
        if subprocess.run(["docker", "pause", node], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    sys.exit(f"docker pause {node} kept failing")


def other(node: str) -> str:
    return next(n for n in NODES if n != node)


def kill_vllm(node: str) -> None:
    sh(node, "systemctl kill --signal=SIGKILL vllm@default")


def start_vllm(node: str) -> None:
    sh(node, "systemctl reset-failed vllm@default; systemctl start vllm@default")
    wait_ready(node)


def kill_nginx(node: str) -> None:
    """SIGKILL to the nginx master only, as a crash would; systemd then ends its
    workers and restarts the unit (Restart=on-failure)."""
    sh(node, 'pid=$(systemctl show --property MainPID --value nginx); [ "$pid" != 0 ] && kill -9 "$pid"')


def start_nginx(node: str) -> None:
    """nginx restarts by itself; this only covers one that ran into its start limit."""
    sh(node, "systemctl reset-failed nginx; systemctl start nginx")


DOUBLE_FAULT_DELAY = 2.0


def double_fault(node: str) -> None:
    """vLLM SIGKILL on the node that does not hold the VIP and, while it
    restarts, nginx SIGKILL on the holder (`node`)."""
    kill_vllm(other(node))
    time.sleep(DOUBLE_FAULT_DELAY)
    kill_nginx(node)


def undo_double_fault(node: str) -> None:
    start_nginx(node)
    start_vllm(other(node))


def fault_cases() -> dict:
    """name -> (fault, undo), each called with the node holding the VIP."""
    return {
        "node freeze (docker pause)": (docker_pause,
                                       lambda n: subprocess.run(["docker", "unpause", n], check=True,
                                                                stdout=subprocess.DEVNULL)),
        "vLLM SIGKILL": (kill_vllm, start_vllm),
        "keepalived SIGKILL": (lambda n: sh(n, "systemctl kill --signal=SIGKILL keepalived"),
                               lambda n: sh(n, "systemctl start keepalived")),
        # SIGTERM is what `systemctl stop` sends; sent directly because the stop
        # job took systemd in the lab containers 0.3-0.8 s to start, time in
        # which nothing had failed yet.
        "keepalived stop (graceful)": (lambda n: sh(n, "systemctl kill --signal=SIGTERM keepalived"),
                                       lambda n: sh(n, "systemctl start keepalived")),
        "nginx master SIGKILL": (kill_nginx, start_nginx),
        f"double fault (vLLM SIGKILL on the other node, nginx SIGKILL on the holder {DOUBLE_FAULT_DELAY:.0f} s later)":
            (double_fault, undo_double_fault),
    }


def failover(runs: int, only: str | None = None) -> dict[str, list[tuple[float, int, int, int]]]:
    gaps: dict[str, list[tuple[float, int, int, int]]] = {}
    for name, (fault, undo) in fault_cases().items():
        if only and only not in name:
            continue
        for i in range(runs):
            node = holder()
            gap, failed, timed_out, sent = measure_gap(lambda: fault(node), lambda: undo(node))
            gaps.setdefault(name, []).append((gap, failed, timed_out, sent))
            print(f"{name} run {i + 1}: gap {gap:.3f} s, {failed}/{sent} failed ({timed_out} timed out) in 12 s "
                  f"(VIP was on {node})", file=sys.stderr)
            time.sleep(3)
    return gaps


def capture_start(node: str) -> tuple[subprocess.Popen, str]:
    """tcpdump in `node`'s network namespace (run from this host: the node has none)."""
    if not shutil.which("tcpdump"):
        sys.exit("tcpdump is needed on this host for the in-gateway figures: apt-get install tcpdump")
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", node], check=True,
                         capture_output=True, text=True).stdout.strip()
    path = tempfile.mkstemp(suffix=".pcap")[1]
    proc = subprocess.Popen(["nsenter", "-t", pid, "-n", "tcpdump", "-i", "any", "-nn", "-s", "128", "-w", path,
                             "tcp port 443 or tcp port 8000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc, path


def capture_stop(proc: subprocess.Popen, path: str) -> str:
    time.sleep(0.5)
    proc.terminate()
    proc.wait()
    text = subprocess.run(["tcpdump", "-nn", "-tt", "-r", path], capture_output=True, text=True).stdout
    os.unlink(path)
    return text


def overhead(requests_n: int) -> tuple[dict[str, dict], dict[str, list[float]]]:
    client = (ROOT / "bench" / "stream_client.py").read_text()
    sh("cluster-node1", "cat > /tmp/stream_client.py", stdin=client)
    sh("cluster-node1", "cat > /tmp/lab-ca.crt", stdin=CA.read_text())
    via, direct = "via VIP (nginx, TLS)", "direct to vLLM"
    # nginx spreads the VIP's requests over its backends; the direct path
    # takes turns over the same ones, so both sides meet the same backends.
    samples: dict[str, list[dict]] = {via: [], direct: []}
    inside: dict[str, list[float]] = {"request_ms": [], "first_ms": [], "chunk_ms": [], "backend_ms": [],
                                      "upstream_chunk_ms": []}
    gateway = holder()
    backends = re.findall(r"^\s*server (\S+:\d+) ", sh(gateway, "cat /etc/nginx/conf.d/vllm-fleet.conf"), re.M)
    for batch in range(requests_n // 10):
        proc, path = capture_start(gateway)
        out = sh("cluster-node1", f"python3 /tmp/stream_client.py https://{VIP}/v1/completions /tmp/lab-ca.crt 10 64",
                 stdin=secret("client-lab-load") + "\n")
        for key, values in wire.residence(wire.parse(capture_stop(proc, path)), VIP).items():
            inside[key] += values
        samples[via] += [json.loads(line) for line in out.splitlines()]
        # One backend per request, in turn, starting where the batch before left off.
        k = batch % len(backends)
        urls = ",".join(f"http://{b}/v1/completions" for b in backends[k:] + backends[:k])
        out = sh("cluster-node1", f"python3 /tmp/stream_client.py {urls} /tmp/lab-ca.crt 10 64",
                 stdin=secret("vllm_api_key") + "\n")
        samples[direct] += [json.loads(line) for line in out.splitlines()]
    result = {}
    for name, rows in samples.items():
        failed = [r for r in rows if not r["ok"]]
        rows = [r for r in rows if r["ok"]]
        result[name] = {
            "n": len(rows),
            "failed": len(failed),
            "failed_detail": sorted({(r["status"], r["chunks"]) for r in failed}),
            "ttft_ms": statistics.median(r["ttft"] for r in rows) * 1000,
            "interval_ms": statistics.median(r["interval"] for r in rows if r["interval"] is not None) * 1000,
            # Streams whose chunks all arrived in one read (held back somewhere
            # on the way), and answers vLLM sent as a single chunk.
            "one_burst": sum(1 for r in rows if r["interval"] is not None and r["interval"] < 0.0001),
            "one_chunk": sum(1 for r in rows if r["interval"] is None),
        }
    return result, inside


def set_accounting(on: bool) -> None:
    """Converge the gateways' configuration with token accounting on (the
    inventory as it is) or off.  Off, the lab's clients with a token ceiling or
    quota are left out (preflight refuses them without accounting): the extra
    vars go through a 0600 file, never the command line."""
    inventory = sorted(pathlib.Path.home().glob(".ansible/tmp/molecule.*.cluster/inventory/ansible_inventory.yml"),
                       key=lambda p: p.stat().st_mtime)[-1].parent
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), str(ROOT / "site.yml"), "-i", str(inventory),
           "--tags", "gateway_configure", "--limit", "vllm_gateways"]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "VLLM_FLEET_LAB_DIR": str(LAB)}
    with tempfile.TemporaryDirectory() as tmp:
        if not on:
            extra = pathlib.Path(tmp) / "accounting-off.json"
            extra.touch(mode=0o600)
            extra.write_text(json.dumps({"gateway_token_accounting": False, "gateway_api_clients": [
                {"name": name, "key": secret(f"client-{name}"), "rate": 200, "burst": 200, "max_streams": 32}
                for name in ("lab-alice", "lab-load")]}))
            cmd += ["-e", f"@{extra}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"setting gateway_token_accounting={on} failed:\n{proc.stdout[-3000:]}")
    config = sh(holder(), "cat /etc/nginx/conf.d/vllm-fleet.conf")
    assert ("body_filter_by_lua_block" in config) == on, "the gateway's accounting did not change"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--only", help="run only the failover cases whose name contains this")
    args = parser.parse_args()

    over, inside, off = {}, {}, {}
    if args.requests:
        # Token accounting on (the default) and off, in the same run.
        over, inside = overhead(args.requests)
        set_accounting(False)
        try:
            off, _ = overhead(args.requests)
        finally:
            set_accounting(True)
    gaps = failover(args.runs, args.only)

    print("| failover fault | runs | median gap s | max gap s | failed / sent in the 12 s after the fault "
          "| of the failed, no answer in 1 s |")
    print("|---|---|---|---|---|---|")
    for name, rows in gaps.items():
        values = [row[0] for row in rows]
        print(f"| {name} | {len(rows)} | {statistics.median(values):.2f} | {max(values):.2f} | "
              f"{sum(row[1] for row in rows)} / {sum(row[3] for row in rows)} | {sum(row[2] for row in rows)} |")
    if not over:
        return 0
    print()
    print("| path | streamed requests ok | failed | median TTFT ms | median mean inter-chunk ms | in one burst "
          "| sent as one chunk |")
    print("|---|---|---|---|---|---|---|")
    for label, rows in (("token accounting on", over), ("token accounting off", off)):
        for name, row in rows.items():
            print(f"| {name}, {label} | {row['n']} | {row['failed']} {row['failed_detail'] or ''} | "
                  f"{row['ttft_ms']:.1f} | {row['interval_ms']:.2f} | {row['one_burst']} | {row['one_chunk']} |")
    print()
    for label, rows in (("accounting on", over), ("accounting off", off)):
        direct, proxy = rows["direct to vLLM"], rows["via VIP (nginx, TLS)"]
        allowance = max(5.0, 0.05 * direct["ttft_ms"])
        print(f"{label}: TTFT via proxy {proxy['ttft_ms']:.1f} ms vs budget {direct['ttft_ms'] + allowance:.1f} ms "
              f"(direct + max(5 ms, 5%)); cadence ratio (direct/proxy inter-chunk) "
              f"{direct['interval_ms'] / proxy['interval_ms']:.2f} (goal >= 0.9)")
    direct = over["direct to vLLM"]
    allowance = max(5.0, 0.05 * direct["ttft_ms"])
    print()
    print("| inside the gateway (tcpdump on the VIP holder) | n | median ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    labels = {"request_ms": "request: last client segment -> sent upstream",
              "first_ms": "first token segment: upstream -> client",
              "chunk_ms": "every response segment: upstream -> client",
              "backend_ms": "(vLLM: request sent upstream -> first token back)",
              "upstream_chunk_ms": "(vLLM: mean time per segment, per stream)"}
    for key, label in labels.items():
        if inside.get(key):
            row = wire.summary(inside[key])
            print(f"| {label} | {row['n']} | {row['median']:.3f} | {row['p99']:.3f} | {row['max']:.3f} |")
    if inside.get("request_ms") and inside.get("first_ms"):
        added = statistics.median(inside["request_ms"]) + statistics.median(inside["first_ms"])
        print()
        print(f"nginx adds {added:.3f} ms to the time to first token (medians, request + first segment) "
              f"vs the allowance of {allowance:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
