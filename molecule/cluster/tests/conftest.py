"""Shared helpers for the cluster scenario's tests.

The tests are a client on this machine (the Docker host reaches the lab
network directly) talking to the VIP over TLS verified against the lab CA,
plus `docker exec` into the nodes to look at what they did.  Keys are read
from the lab's generated secrets and only ever put in request headers.
"""
from __future__ import annotations

import json

import pytest
import requests

# The lab's facts and how to reach it: one module shared with bench/.
from vllm_fleet.lab.cluster import (  # noqa: F401 - the tests import these names from here
    BASE, CA, LAB, MODEL, MONITORING, NODES, ROOT, SPARE, VIP, http_get_json, playbook, prometheus, recap,
    scenario_inventory, secret, sh, vip_holders, wait_for,
)


@pytest.fixture(scope="session")
def ca() -> str:
    return str(CA)


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








def vllm_started_at(node: str) -> str:
    """When systemd last started the node's vLLM (changes on every restart)."""
    return sh(node, "systemctl show -p ActiveEnterTimestampMonotonic --value vllm@default.service").stdout.strip()
