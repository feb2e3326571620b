"""The gateway mtail program against the access-log contract.

The gateway role's nginx writes /var/log/nginx/vllm-access.json, one JSON
object per line (time_iso8601, request_id, client, status, method, uri,
request_time, upstream_*, bytes_sent).  The program the monitoring role ships
is rendered with the role's defaults and run by Debian's mtail (on the
controller: add `mtail` to .ci/run's packages) in one-shot mode over sample
lines; the counts it exports are what the GatewayHigh5xxRatio alert and the
dashboard read.  mtail missing is a failure, not a skip.
"""
from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import pytest

from test_monitoring_rules import INVENTORY, ROLE, render

ROLE_TEMPLATES = ROLE / "templates"

LINES = [
    # key order as nginx's log_format may write it; numbers unquoted (escape=json with $status in a number slot)
    {"time_iso8601": "2026-11-22T10:00:00+00:00", "request_id": "a1", "client": "team-a", "status": 200,
     "method": "POST", "uri": "/v1/completions", "request_time": 0.42, "upstream_addr": "10.0.10.11:8000",
     "upstream_status": "200", "upstream_response_time": "0.410", "bytes_sent": 812},
    {"time_iso8601": "2026-11-22T10:00:01+00:00", "request_id": "a2", "client": "team-a", "status": 200,
     "method": "POST", "uri": "/v1/chat/completions", "request_time": 3.1, "upstream_addr": "10.0.10.12:8000",
     "upstream_status": "200", "upstream_response_time": "3.095", "bytes_sent": 4096},
    # upstream failure: 502 with upstream_status 502 (must count once, as 5xx)
    {"time_iso8601": "2026-11-22T10:00:02+00:00", "request_id": "b1", "client": "team-b", "status": 502,
     "method": "POST", "uri": "/v1/completions", "request_time": 60.001, "upstream_addr": "10.0.10.12:8000",
     "upstream_status": "502", "upstream_response_time": "60.000", "bytes_sent": 150},
    # rejected key: no client name, never reached an upstream
    {"time_iso8601": "2026-11-22T10:00:03+00:00", "request_id": "c1", "client": "", "status": 401,
     "method": "GET", "uri": "/v1/models", "request_time": 0.001, "upstream_addr": "",
     "upstream_status": "", "upstream_response_time": "", "bytes_sent": 180},
    # rate limited
    {"time_iso8601": "2026-11-22T10:00:04+00:00", "request_id": "b2", "client": "team-b", "status": 429,
     "method": "POST", "uri": "/v1/completions", "request_time": 0.002, "upstream_addr": "",
     "upstream_status": "", "upstream_response_time": "", "bytes_sent": 190},
]


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> pathlib.Path:
    out = render(tmp_path_factory.mktemp("mtail"), INVENTORY)
    prog_dir = out / "progs"
    prog_dir.mkdir()
    shutil.copy(out / "vllm-fleet-gateway.mtail", prog_dir / "vllm-fleet-gateway.mtail")
    return prog_dir


def run_mtail(program: pathlib.Path, lines: list[str], tmp: pathlib.Path) -> dict[str, float]:
    tool = shutil.which("mtail")
    assert tool, "mtail not found: install Debian's `mtail` package on the controller; this test must not be skipped"
    log = tmp / "vllm-access.json"
    log.write_text("".join(line + "\n" for line in lines))
    proc = subprocess.run([tool, "--one_shot", "--one_shot_format", "prometheus", "--logtostderr", "--port", "0",
                           "--progs", str(program), "--logs", str(log)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = {}
    for line in proc.stdout.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            samples[re.sub(r',?prog="[^"]*"', "", series).replace("{,", "{")] = float(value)
    return samples


def test_program_compiles(program):
    tool = shutil.which("mtail")
    assert tool, "mtail not found: install Debian's `mtail` package on the controller"
    proc = subprocess.run([tool, "--compile_only", "--port", "0", "--logtostderr", "--progs", str(program)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_requests_by_status_class_and_client(program, tmp_path):
    samples = run_mtail(program, [json.dumps(line) for line in LINES], tmp_path)
    counts = {k: v for k, v in samples.items() if k.startswith("vllm_fleet_gateway_requests_total")}
    assert counts == {
        'vllm_fleet_gateway_requests_total{client="",status_class="4xx"}': 1,
        'vllm_fleet_gateway_requests_total{client="team-a",status_class="2xx"}': 2,
        'vllm_fleet_gateway_requests_total{client="team-b",status_class="4xx"}': 1,
        'vllm_fleet_gateway_requests_total{client="team-b",status_class="5xx"}': 1,
    }


def test_request_time_histogram(program, tmp_path):
    samples = run_mtail(program, [json.dumps(line) for line in LINES], tmp_path)
    assert samples['vllm_fleet_gateway_request_duration_seconds_count{client="team-a"}'] == 2
    assert samples['vllm_fleet_gateway_request_duration_seconds_sum{client="team-a"}'] == pytest.approx(3.52)
    assert samples['vllm_fleet_gateway_request_duration_seconds_bucket{client="team-a",le="0.5"}'] == 1
    assert samples['vllm_fleet_gateway_request_duration_seconds_bucket{client="team-a",le="5"}'] == 2
    # team-b: a 429 in 2 ms and a 502 after 60.001 s
    assert samples['vllm_fleet_gateway_request_duration_seconds_bucket{client="team-b",le="60"}'] == 1
    assert samples['vllm_fleet_gateway_request_duration_seconds_bucket{client="team-b",le="120"}'] == 2


def test_quoted_numbers_and_key_order_do_not_matter(program, tmp_path):
    """nginx's escape=json writes variables as strings unless the format leaves
    them unquoted; the program reads both, in any key order."""
    line = ('{"status":"503","request_time":"1.500","client":"team-c","time_iso8601":"2026-11-22T10:00:05+00:00",'
            '"upstream_status":"503","uri":"/v1/completions"}')
    samples = run_mtail(program, [line], tmp_path)
    assert samples['vllm_fleet_gateway_requests_total{client="team-c",status_class="5xx"}'] == 1
    assert samples['vllm_fleet_gateway_request_duration_seconds_sum{client="team-c"}'] == 1.5


def test_lines_that_are_not_requests_are_ignored(program, tmp_path):
    samples = run_mtail(program, ["", "not json", '{"upstream_status":"502","client":"x"}'], tmp_path)
    assert not [k for k in samples if k.startswith("vllm_fleet_gateway_requests_total")]


def test_the_validator_the_role_installs_refuses_a_broken_program(program, tmp_path):
    """check-mtail (validate: of the program task) compiles the temporary file
    under a *.mtail name: mtail would silently skip any other name."""
    text = (ROLE_TEMPLATES / "usr" / "local" / "libexec" / "vllm-fleet-monitoring" / "check-mtail.j2").read_text()
    script = tmp_path / "check-mtail"
    script.write_text("\n".join(line for line in text.splitlines() if "ansible_managed" not in line) + "\n")
    script.chmod(0o755)
    assert shutil.which("mtail"), "mtail not found: install Debian's `mtail` package on the controller"
    good = tmp_path / "tmpgood"          # no .mtail suffix, as the template module names it
    good.write_text((program / "vllm-fleet-gateway.mtail").read_text())
    bad = tmp_path / "tmpbad"
    bad.write_text("counter x\n/unclosed( {\n  x++\n}\n")
    ok = subprocess.run([str(script), str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "Loaded program check.mtail" in ok.stderr, ok.stderr
    assert subprocess.run([str(script), str(bad)], capture_output=True).returncode != 0
