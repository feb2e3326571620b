"""The monitoring role's preflight rules, through the real playbooks/preflight.yml.

Hosts on this machine (local connection, --check as a safety net): one valid
monitoring + vLLM node and, in the same run, one host per bad value.  Each bad
host must be rejected with its own message (host, variable, value, what is
allowed), the good host must pass every check (the control), and the gate
must stop the run.  A second run shows a remote Prometheus refusing a vLLM
node on loopback.
"""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
# One valid host for every preflight test, defined in tests/preflight.
from test_preflight import base_vars


def primary_address() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))
        return sock.getsockname()[0]


def node_vars(tmp: pathlib.Path, address: str) -> dict:
    """The preflight tests' valid host, listening on the given address."""
    return {**base_vars(tmp), "vllm_listen_address": address}


def run_preflight(tmp: pathlib.Path, hosts: dict, monitoring: list[str], vllm: list[str]):
    inventory = {"all": {"hosts": hosts, "children": {
        "monitoring": {"hosts": {h: None for h in monitoring}},
        "vllm_nodes": {"hosts": {h: None for h in vllm}}}}}
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_CACHE_PLUGIN": "memory",
           "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.default"}
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp / "hosts.yml"),
         "--check", "playbooks/preflight.yml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return result, result.stdout + result.stderr


BAD = {
    "bad-timeout": ({"monitoring_scrape_timeout": "20s"},
                    ["monitoring_scrape_timeout=20s", "the timeout at most the scrape interval"]),
    "bad-duration": ({"monitoring_alert_instance_down_for": "2 minutes"},
                     ["monitoring_alert_instance_down_for=2 minutes", "must be a Prometheus duration"]),
    "bad-window": ({"monitoring_alert_rate_window": "30s"},
                   ["monitoring_alert_rate_window=30s", "at least four scrape intervals"]),
    "bad-ratio": ({"monitoring_alert_kv_cache_usage_threshold": 95},
                  ["monitoring_alert_kv_cache_usage_threshold=95", "a fraction in (0, 1]"]),
    "bad-quota-ratio": ({"monitoring_alert_token_quota_ratio": 1.5},
                        ["monitoring_alert_token_quota_ratio=1.5", "a fraction in (0, 1]"]),
    "bad-route": ({"monitoring_alertmanager_receivers": [{"name": "oncall"}],
                   "monitoring_alertmanager_route": {"receiver": "nobody"}},
                  ["monitoring_alertmanager_route.receiver=nobody", "must be one of them"]),
    "bad-ports": ({"monitoring_node_exporter_port": 9113},
                  ["monitoring_node_exporter_port=9113", "each must be a distinct TCP port"]),
    "bad-mode": ({"monitoring_mode": "both"}, ["monitoring_mode must be one of: server, files, got: both"]),
}


def test_each_bad_value_is_named_and_the_run_stops(tmp_path):
    address = primary_address()
    hosts = {"good-node": node_vars(tmp_path, address)}
    for name, (bad, _) in BAD.items():
        hosts[name] = {**node_vars(tmp_path, address), **bad}
    result, out = run_preflight(tmp_path, hosts, monitoring=list(hosts), vllm=list(hosts))
    assert result.returncode != 0, out[-4000:]
    for name, (_, fragments) in BAD.items():
        failed = [line for line in out.splitlines()
                  if line.startswith((f"fatal: [{name}]", f"failed: [{name}]", f"[ERROR]: Task failed: Action failed: [{name}]"))]
        assert failed, f"{name} was not rejected:\n{out[-4000:]}"
        for fragment in fragments:
            assert fragment in "\n".join(failed), f"{fragment!r} not in {failed}"
    assert '"msg": "[good-node]' not in out, out[-4000:]
    assert "no host was changed" in out
    assert not (tmp_path / "state").exists()


def test_a_remote_prometheus_refuses_a_vllm_node_on_loopback(tmp_path):
    address = primary_address()
    hosts = {"mon": node_vars(tmp_path, address), "node-lo": node_vars(tmp_path, "127.0.0.1")}
    result, out = run_preflight(tmp_path, hosts, monitoring=["mon"], vllm=["node-lo"])
    assert result.returncode != 0, out[-4000:]
    assert "[mon] vllm_listen_address of node-lo (127.0.0.1) is a loopback address" in out, out[-4000:]

