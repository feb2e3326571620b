"""The vllm role serving the lab's tiny model under real systemd.

Runs inside the converged container through testinfra's docker backend.
The internal API key is read from the root-only EnvironmentFile inside the
container and handed to curl on stdin, so it is never on a command line.
The cluster scenario runs this same file on its first node (its verifier's
additional_files_or_dirs), so the address is read from the instance's config
rather than assumed.
"""
import json
import os
import re
import shlex


# The scenario's first node: default-node1, or cluster-node1 when the cluster scenario runs this file.
testinfra_hosts = [f"docker://{os.environ.get('MOLECULE_SCENARIO_NAME', 'default')}-node1"]

UNIT = "vllm@default.service"
MODEL = "tiny-llama"
AUTH = ". /etc/vllm/default.env && printf 'Authorization: Bearer %s' \"$VLLM_API_KEY\" | "


def address(host):
    """The address the instance listens on, from its `vllm serve --config` file."""
    return re.search(r"^host: (\S+)$", host.file("/etc/vllm/default.yaml").content_string, re.M).group(1)


def curl(host, path, *, key=False, data=None):
    """(status, body) of a request from inside the node."""
    body = f"-H 'Content-Type: application/json' --data {shlex.quote(json.dumps(data))}" if data else ""
    cmd = f"curl -sS -o /tmp/body -w '%{{http_code}}' {'-H @-' if key else ''} {body} http://{address(host)}:8000{path}"
    out = host.run("sh -c " + shlex.quote((AUTH if key else "") + cmd))
    assert out.rc == 0, out.stderr
    return int(out.stdout), host.file("/tmp/body").content_string


def test_unit_is_active_and_runs_as_vllm(host):
    assert host.service(UNIT).is_running
    assert host.service(UNIT).is_enabled
    pid = host.run(f"systemctl show -p MainPID --value {UNIT}").stdout.strip()
    assert host.run(f"ps -o user= -p {pid}").stdout.strip() == "vllm"


def test_listens_only_on_the_configured_address(host):
    assert host.socket(f"tcp://{address(host)}:8000").is_listening
    listeners = host.run("ss -Htln 'sport = :8000'").stdout.split("\n")
    addresses = {line.split()[3] for line in listeners if line.strip()}
    assert addresses == {f"{address(host)}:8000"}


def test_health(host):
    assert curl(host, "/health")[0] == 200


def test_models_needs_the_internal_key(host):
    assert curl(host, "/v1/models")[0] == 401
    status, body = curl(host, "/v1/models", key=True)
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == [MODEL]


def test_completion_returns_generated_tokens(host):
    status, body = curl(host, "/v1/completions", key=True,
                        data={"model": MODEL, "prompt": "Hello fleet", "max_tokens": 16, "temperature": 0})
    assert status == 200, body
    reply = json.loads(body)
    assert reply["usage"]["completion_tokens"] == 16
    assert reply["choices"][0]["text"]


def test_metrics_expose_the_scheduler_gauges(host):
    status, body = curl(host, "/metrics")
    assert status == 200
    assert re.search(r"^vllm:num_requests_running\{", body, re.M)


def test_model_matches_its_manifest(host):
    manifest = json.loads(host.file(f"/srv/vllm/models/{MODEL}.manifest.json").content_string)
    assert manifest["files"], "empty manifest"
    for rel, entry in manifest["files"].items():
        assert host.file(f"/srv/vllm/models/{MODEL}/{rel}").sha256sum == entry["sha256"], rel


def test_secrets_stay_off_command_lines_and_out_of_world_readable_files(host):
    env = host.file("/etc/vllm/default.env")
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    key = re.search(r"^VLLM_API_KEY=(.+)$", env.content_string, re.M).group(1)
    assert len(key) >= 32
    cmdlines = host.run("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    assert "vllm.entrypoints" in cmdlines
    assert key not in cmdlines
    assert key not in host.file("/etc/vllm/default.yaml").content_string
    assert key not in host.run(f"journalctl -u {UNIT} --no-pager -o cat").stdout


def test_unit_is_hardened(host):
    out = host.run(f"systemd-analyze security --no-pager {UNIT}").stdout
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= 3.0, out


def test_vllm_cannot_rewrite_its_code_or_config(host):
    for path in ("/opt/vllm/venv/bin/python", "/etc/vllm/default.yaml", f"/srv/vllm/models/{MODEL}/config.json"):
        assert host.run(f"runuser -u vllm -- test -w {path}").rc != 0, path


def test_service_survives_a_restart(host):
    host.run_test(f"systemctl restart {UNIT}")
    ready = host.run(f"sh -c '. /etc/vllm/default.env && export VLLM_API_KEY && "
                     f"/opt/vllm/venv/bin/python /opt/vllm/wait-ready {UNIT} http://{address(host)}:8000 {MODEL} 300'")
    assert ready.rc == 0, ready.stdout
    status, body = curl(host, "/v1/completions", key=True,
                        data={"model": MODEL, "prompt": "again", "max_tokens": 4})
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 4
