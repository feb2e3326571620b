"""The cluster scenario (molecule/cluster), as bench/ and its tests reach it.

The Docker host reaches the lab network directly: clients talk to the VIP over
TLS verified against the lab CA, and ``docker exec`` looks inside the hosts.
Secrets are read from the lab's generated files and only ever put in request
headers or on stdin.
"""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys
import time
import urllib.parse

#: The checkout (vllm_fleet is installed from it in editable mode).
ROOT = pathlib.Path(__file__).resolve().parents[2]
LAB = pathlib.Path(os.environ.get("VLLM_FLEET_LAB_DIR", ROOT / ".lab"))
#: The two vLLM nodes, which are also the gateways sharing the VIP.
NODES = {"cluster-node1": "172.31.250.11", "cluster-node2": "172.31.250.12"}
#: The spare (base role only) that the day-2 tests add as a vLLM node.
SPARE = ("cluster-node3", "172.31.250.13")
MONITORING = "cluster-mon"
VIP = "172.31.250.100"
BASE = f"https://{VIP}"
MODEL = "tiny-llama"
CA = LAB / "pki" / "ca.crt"


class LabError(AssertionError):
    """A command in the lab failed (an AssertionError, so a test reports it as a failure)."""


def secret(name: str) -> str:
    return (LAB / "secrets" / name).read_text().split()[0]


def sh(node: str, command: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` with sh inside a lab container."""
    if stdin is None:  # no -i: docker must not read this process's own stdin
        proc = subprocess.run(["docker", "exec", node, "sh", "-c", command], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
    else:
        proc = subprocess.run(["docker", "exec", "-i", node, "sh", "-c", command], input=stdin,
                              capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"{node}: {command}: rc={proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def output(node: str, command: str, stdin: str | None = None) -> str:
    """``sh(...).stdout``: what a bench reads from a host."""
    return sh(node, command, stdin=stdin).stdout


_HTTP_GET = ("import sys, urllib.request; "
             "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())")


def http_get_json(node: str, url: str, **params: str) -> dict:
    """GET a loopback-only HTTP API of a lab host (Prometheus, Alertmanager)
    from inside it, with the host's own Python (the monitoring host has no curl)."""
    if params:
        url += "?" + urllib.parse.urlencode(params)
    return json.loads(output(node, f"python3 -c {shlex.quote(_HTTP_GET)} {shlex.quote(url)}"))


def prometheus(path: str, **params: str) -> dict:
    """Prometheus's HTTP API on the monitoring host: prometheus("query", query="up")."""
    return http_get_json(MONITORING, f"http://127.0.0.1:9090/api/v1/{path}", **params)


def vip_holders() -> list[str]:
    return [n for n in NODES if VIP in output(n, "ip -4 -o addr show")]


def holder() -> str:
    """The node holding the VIP (the first, should two claim it)."""
    holders = vip_holders()
    if not holders:
        raise LabError(f"no node holds the VIP {VIP}")
    return holders[0]


def wait_for(predicate, timeout: float, interval: float = 0.1):
    """Poll until predicate() is truthy; bounded in time. Returns (value, seconds)."""
    start = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise LabError(f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_ready(node: str, timeout: int = 300) -> None:
    """Wait until the node's default vLLM instance serves (the role's own wait-ready script)."""
    output(node, ". /etc/vllm/default.env && export VLLM_API_KEY && /opt/vllm/venv/bin/python /opt/vllm/wait-ready "
                 f"vllm@default.service http://{NODES.get(node, SPARE[1])}:8000 {MODEL} {timeout}")


def scenario_inventory() -> pathlib.Path:
    """Molecule's inventory directory of the cluster scenario (with the lab group_vars linked)."""
    if os.environ.get("MOLECULE_INVENTORY_FILE"):
        return pathlib.Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    found = sorted(pathlib.Path.home().glob(".ansible/tmp/molecule.*.cluster/inventory/ansible_inventory.yml"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise LabError("no Molecule inventory of the cluster scenario: run `molecule converge -s cluster` first")
    return found[-1].parent


def playbook(path: str, *args: str, inventories: tuple[str, ...] = (), timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run a playbook of the project against the scenario's hosts, as an operator would.

    The inventory is Molecule's (with the lab group_vars linked in), plus any
    extra inventory files given; ansible.cfg is the project's.
    """
    cmd = [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), str(ROOT / path), "-i", str(scenario_inventory())]
    for extra in inventories:
        cmd += ["-i", extra]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def recap(out: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    found = {}
    for line in out.split("PLAY RECAP")[-1].splitlines():
        parts = line.split(":", 1)
        if len(parts) == 2 and "ok=" in parts[1]:
            found[parts[0].strip()] = {k: int(v) for k, v in (kv.split("=") for kv in parts[1].split())}
    return found
