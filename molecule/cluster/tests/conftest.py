"""Shared helpers for the cluster scenario's tests.

The tests are a client on this machine (the Docker host reaches the lab
network directly) talking to the VIP over TLS verified against the lab CA,
plus `docker exec` into the nodes to look at what they did.  Keys are read
from the lab's generated secrets and only ever put in request headers.
"""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import time
import urllib.parse

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[3]
LAB = pathlib.Path(os.environ.get("VLLM_FLEET_LAB_DIR", ROOT / ".lab"))
NODES = {"cluster-node1": "172.31.250.11", "cluster-node2": "172.31.250.12"}
VIP = "172.31.250.100"
BASE = f"https://{VIP}"
MODEL = "tiny-llama"


def secret(name: str) -> str:
    return (LAB / "secrets" / name).read_text().split()[0]


def sh(node: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", "exec", node, "sh", "-c", command], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{node}: {command}: rc={proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


MONITORING = "cluster-mon"
_HTTP_GET = ("import sys, urllib.request; "
             "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())")


def http_get_json(node: str, url: str, **params: str) -> dict:
    """GET a loopback-only HTTP API of a lab host (Prometheus, Alertmanager)
    from inside it, with the host's own Python (the monitoring host has no curl)."""
    if params:
        url += "?" + urllib.parse.urlencode(params)
    return json.loads(sh(node, f"python3 -c {shlex.quote(_HTTP_GET)} {shlex.quote(url)}").stdout)


def prometheus(path: str, **params: str) -> dict:
    """Prometheus's HTTP API on the monitoring host: prometheus("query", query="up")."""
    return http_get_json(MONITORING, f"http://127.0.0.1:9090/api/v1/{path}", **params)


def vip_holders() -> list[str]:
    return [n for n in NODES if VIP in sh(n, "ip -4 -o addr show").stdout]


def wait_for(predicate, timeout: float, interval: float = 0.1):
    """Poll until predicate() is truthy; bounded in time. Returns (value, seconds)."""
    start = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def ca() -> str:
    return str(LAB / "pki" / "ca.crt")


@pytest.fixture(scope="session")
def alice() -> dict:
    return {"Authorization": f"Bearer {secret('client-lab-alice')}"}


@pytest.fixture(scope="session")
def bob() -> dict:
    return {"Authorization": f"Bearer {secret('client-lab-bob')}"}


@pytest.fixture()
def api(ca):
    session = requests.Session()
    session.verify = ca
    # REQUESTS_CA_BUNDLE in the environment would override verify=.
    session.trust_env = False
    yield session
    session.close()


def completion(session, headers, prompt="Hello fleet", max_tokens=8, **extra):
    return session.post(f"{BASE}/v1/completions", headers=headers, timeout=30,
                        json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, **extra})


def access_log(node: str) -> list[dict]:
    out = sh(node, "cat /var/log/nginx/vllm-access.json 2>/dev/null || true").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def scenario_inventory() -> pathlib.Path:
    """Molecule's inventory directory of this scenario (with the lab group_vars linked)."""
    if os.environ.get("MOLECULE_INVENTORY_FILE"):
        return pathlib.Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    found = sorted(pathlib.Path.home().glob(".ansible/tmp/molecule.*.cluster/inventory/ansible_inventory.yml"),
                   key=lambda p: p.stat().st_mtime)
    assert found, "no Molecule inventory for the cluster scenario"
    return found[-1].parent


def playbook(path: str, *args: str, inventories: tuple[str, ...] = (), timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run a playbook of the project against this scenario's hosts, as an operator would.

    The inventory is Molecule's (with the lab group_vars linked in), plus any
    extra inventory files given; ansible.cfg is the project's.
    """
    inventory = scenario_inventory()
    cmd = ["ansible-playbook", str(ROOT / path), "-i", str(inventory)]
    for extra in inventories:
        cmd += ["-i", extra]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=timeout)


def recap(out: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    found = {}
    for line in out.split("PLAY RECAP")[-1].splitlines():
        parts = line.split(":", 1)
        if len(parts) == 2 and "ok=" in parts[1]:
            found[parts[0].strip()] = {k: int(v) for k, v in (kv.split("=") for kv in parts[1].split())}
    return found


def vllm_started_at(node: str) -> str:
    """When systemd last started the node's vLLM (changes on every restart)."""
    return sh(node, "systemctl show -p ActiveEnterTimestampMonotonic --value vllm@default.service").stdout.strip()
