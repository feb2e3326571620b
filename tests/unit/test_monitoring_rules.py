"""The monitoring role's alert rules, Prometheus config and dashboard.

One ansible-playbook run renders the role's templates with its defaults (and
vars/main.yml) against a small inventory, exactly as the role would on a
monitoring host; then promtool, from Debian's `prometheus` package on the
controller, checks the rule files and the config and runs the promtool unit
tests in roles/monitoring/tests/promtool.  promtool missing is a failure,
not a skip: these tests are the only place the gateway, failover, backup,
certificate and GPU alerts are exercised before the roles feeding them exist.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "monitoring"
PROMTOOL_TESTS = ROLE / "tests" / "promtool"
RULE_TEMPLATES = sorted((ROLE / "templates" / "etc" / "prometheus" / "rules").glob("*.rules.yml.j2"))
DASHBOARD = ROLE / "files" / "grafana" / "vllm-fleet.json"
RUNBOOK = ROOT / "docs" / "runbook.md"
ANSIBLE_PLAYBOOK = pathlib.Path(sys.executable).parent / "ansible-playbook"

# A fleet of two GPU nodes (one with two instances, one with DCGM), a gateway
# and a monitoring host; nothing is contacted (facts are not gathered).
INVENTORY = {
    "all": {
        "hosts": {"mon1": {"ansible_connection": "local", "ansible_host": "10.0.0.5",
                           "ansible_python_interpreter": sys.executable}},
        "children": {
            "monitoring": {"hosts": {"mon1": None}},
            "vllm_nodes": {"hosts": {
                "gpu1": {"ansible_host": "10.0.0.11", "vllm_listen_address": "10.0.0.11",
                         "vllm_model": {"name": "llama-3.1-8b"}, "monitoring_dcgm_enabled": True},
                "gpu2": {"ansible_host": "10.0.0.12", "vllm_listen_address": "10.0.0.12",
                         "vllm_model": {"name": "llama-3.1-8b"}, "vllm_served_model_name": "llama",
                         "vllm_instances": [{"name": "a", "port": 8000}, {"name": "b", "port": 8001}]},
            }},
            "vllm_gateways": {"hosts": {"gw1": {"ansible_host": "10.0.0.21"}}},
        },
    },
}

# Templates are rendered with the template lookup into one fact and written
# out by Python: a module run per file would cost seconds each.
PLAYBOOK = """\
- hosts: mon1
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
    - {role}/vars/main.yml
  vars:
    role_path: {role}
    templates: {role}/templates
  tasks:
    - name: Read the inventory once, as the role's preflight does
      ansible.builtin.set_fact:
        _monitoring_inventory: "{{{{ _monitoring_inventory }}}}"
    - name: Render every rule file
      ansible.builtin.set_fact:
        __out: >-
          {{{{ __out | default({{}}) | combine({{'rules/' ~ item ~ '.rules.yml':
               lookup('ansible.builtin.template', templates ~ '/etc/prometheus/rules/' ~ item ~ '.rules.yml.j2')}}) }}}}
      loop: "{{{{ _monitoring_rule_files }}}}"
    - name: Render the file_sd files the inventory asks for
      ansible.builtin.set_fact:
        __out: "{{{{ __out | combine({{'file_sd/' ~ item.name ~ '.json': item.groups | to_nice_json(indent=2)}}) }}}}"
      loop: "{{{{ _monitoring_file_sd | selectattr('enabled') }}}}"
    - name: Render the configs
      ansible.builtin.set_fact:
        __out: "{{{{ __out | combine({{item.dest: lookup('ansible.builtin.template', templates ~ '/' ~ item.src)}}) }}}}"
      loop:
        - {{src: etc/prometheus/prometheus.yml.j2, dest: prometheus.yml}}
        - {{src: etc/prometheus/vllm-fleet.scrape.yml.j2, dest: vllm-fleet.scrape.yml}}
        - {{src: etc/prometheus/alertmanager.yml.j2, dest: alertmanager.yml}}
        - {{src: etc/prometheus/blackbox.yml.j2, dest: blackbox.yml}}
        - {{src: etc/mtail/vllm-fleet-gateway.mtail.j2, dest: vllm-fleet-gateway.mtail}}
    - name: Hand the rendered files to the test
      ansible.builtin.copy:
        content: "{{{{ __out | to_json }}}}"
        dest: "{out}/rendered.json"
        mode: "0644"
"""


def render(tmp: pathlib.Path, inventory: dict, extra: dict | None = None) -> pathlib.Path:
    """Render the role's templates for ``inventory`` into ``tmp``; returns it."""
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp / "render.yml").write_text(PLAYBOOK.format(role=ROLE, out=tmp))
    # Extra vars: above vars_files, so they override the defaults as inventory would.
    extra_vars = {"monitoring_rules_dir": str(tmp / "rules"), "monitoring_file_sd_dir": str(tmp / "file_sd"),
                  **(extra or {})}
    (tmp / "extra.json").write_text(json.dumps(extra_vars))
    (tmp / "ansible.cfg").write_text("[defaults]\ninject_facts_as_vars = false\nretry_files_enabled = false\n")
    env = {**os.environ, "ANSIBLE_FILTER_PLUGINS": str(ROOT / "plugins" / "filter"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CONFIG": str(tmp / "ansible.cfg")}
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(tmp / "hosts.yml"), str(tmp / "render.yml"),
                           "-e", f"@{tmp / 'extra.json'}"],
                          cwd=tmp, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for name, text in json.loads((tmp / "rendered.json").read_text()).items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text if text.endswith("\n") else text + "\n")
    return tmp


def promtool(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, ("promtool not found: install Debian's `prometheus` package on the controller "
                  "(.ci/run installs it); these tests must not be skipped")
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> pathlib.Path:
    return render(tmp_path_factory.mktemp("monitoring"), INVENTORY, {
        "monitoring_tls_probe_targets": ["llm.example.com:443"],
        "monitoring_alertmanager_receivers": [{"name": "oncall",
                                               "webhook_configs": [{"url": "http://127.0.0.1:5001/"}]}],
    })


def _alerts(rules_dir: pathlib.Path) -> dict[str, dict]:
    alerts = {}
    for path in sorted(rules_dir.glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    alerts[rule["alert"]] = {**rule, "file": path.name}
    return alerts


# --- rules -------------------------------------------------------------------------

def test_every_rule_file_passes_promtool_check_rules(rendered):
    assert len(RULE_TEMPLATES) == len(list((rendered / "rules").glob("*.rules.yml"))) == 7
    for path in sorted((rendered / "rules").glob("*.rules.yml")):
        result = promtool("check", "rules", str(path), cwd=rendered)
        assert result.returncode == 0, f"{path.name}: {result.stdout}{result.stderr}"


def test_promtool_unit_tests_pass(rendered):
    tests = sorted(PROMTOOL_TESTS.glob("*.test.yml"))
    assert tests, "no promtool tests found"
    work = rendered / "promtool"
    shutil.copytree(rendered / "rules", work)
    for test in tests:
        shutil.copy(test, work / test.name)
    result = promtool("test", "rules", *[t.name for t in tests], cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests), result.stdout


def test_every_alert_has_a_firing_and_a_quiet_promtool_case(rendered):
    firing, quiet = set(), set()
    for test in PROMTOOL_TESTS.glob("*.test.yml"):
        for case in yaml.safe_load(test.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts(rendered / "rules"))
    assert alerts - firing == set(), "alerts with no promtool case expecting them to fire"
    assert alerts - quiet == set(), "alerts with no promtool case expecting them not to fire"
    assert (firing | quiet) - alerts == set(), "promtool cases for alerts that do not exist"


def test_the_issue_s_alerts_exist(rendered):
    assert set(_alerts(rendered / "rules")) >= {
        "VllmInstanceDown", "VllmRequestsWaiting", "VllmKvCacheFull", "VllmTimeToFirstTokenHigh",
        "VllmEndToEndLatencyHigh", "VllmPreemptions", "VllmEngineWedged", "NodeDown", "NodeModelDiskFull",
        "GpuTemperatureHigh", "GpuMemoryNearlyFull", "GpuXidError", "VrrpNoMaster", "VrrpMultipleMasters",
        "VrrpStateChanged", "BackupStale", "CertificateExpiringSoon", "GatewayHigh5xxRatio"}


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_is_annotated_and_links_to_its_runbook_section(rendered):
    anchors = {_anchor(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    for name, rule in _alerts(rendered / "rules").items():
        notes = rule.get("annotations", {})
        assert notes.get("summary") and notes.get("description"), name
        assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, name
        url = notes.get("runbook_url", "")
        assert url.startswith("docs/runbook.md#"), (name, url)
        assert url.split("#", 1)[1] in anchors, f"{name}: {url} has no section in docs/runbook.md"


def test_uses_current_vllm_metric_names(rendered):
    text = "\n".join(p.read_text() for p in (rendered / "rules").glob("*.yml")) + DASHBOARD.read_text()
    # Renamed in vLLM V1 (gpu_cache_usage_perc -> kv_cache_usage_perc) or
    # counters without _total: none of the old names may remain.
    for old in ("vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc", "vllm:time_per_output_token_seconds",
                "vllm:num_preemptions{", "vllm:num_preemptions[", "vllm:generation_tokens[",
                "vllm:prompt_tokens[", "vllm:request_success{"):
        assert old not in text, old


def test_every_threshold_variable_reaches_a_rule():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    templates = "\n".join(p.read_text() for p in RULE_TEMPLATES)
    unused = [name for name in defaults if name.startswith("monitoring_alert_") and name not in templates]
    assert unused == []


def test_rules_follow_the_inventory(tmp_path):
    """Thresholds are inventory variables: a changed value lands in the rule."""
    out = render(tmp_path, INVENTORY, {"monitoring_alert_kv_cache_usage_threshold": 0.9,
                                       "monitoring_alert_instance_down_for": "45s"})
    alerts = _alerts(out / "rules")
    assert alerts["VllmKvCacheFull"]["expr"].rstrip().endswith("> 0.9")
    assert alerts["VllmInstanceDown"]["for"] == "45s"


# --- targets and configs ---------------------------------------------------------------

def _sd(rendered: pathlib.Path, job: str) -> list[dict]:
    return json.loads((rendered / "file_sd" / f"{job}.json").read_text())


def test_targets_come_from_the_inventory(rendered):
    assert _sd(rendered, "vllm") == [
        {"targets": ["10.0.0.11:8000"], "labels": {"node": "gpu1", "instance_name": "default", "model": "llama-3.1-8b"}},
        {"targets": ["10.0.0.12:8000"], "labels": {"node": "gpu2", "instance_name": "a", "model": "llama"}},
        {"targets": ["10.0.0.12:8001"], "labels": {"node": "gpu2", "instance_name": "b", "model": "llama"}},
    ]
    assert [g["targets"] for g in _sd(rendered, "node")] == [
        ["10.0.0.11:9100"], ["10.0.0.12:9100"], ["10.0.0.21:9100"], ["10.0.0.5:9100"]]
    assert _sd(rendered, "nginx") == [{"targets": ["10.0.0.21:9113"], "labels": {"node": "gw1"}}]
    assert _sd(rendered, "mtail") == [{"targets": ["10.0.0.21:3903"], "labels": {"node": "gw1"}}]
    # The gateway's own /metrics, on the gateway role's metrics listener (its default port).
    assert _sd(rendered, "gateway") == [{"targets": ["10.0.0.21:8081"], "labels": {"node": "gw1"}}]
    assert _sd(rendered, "dcgm") == [{"targets": ["10.0.0.11:9400"], "labels": {"node": "gpu1"}}]


def test_adding_a_node_to_the_inventory_adds_its_targets(tmp_path):
    bigger = json.loads(json.dumps(INVENTORY))
    bigger["all"]["children"]["vllm_nodes"]["hosts"]["gpu3"] = {
        "ansible_host": "10.0.0.13", "vllm_listen_address": "10.0.0.13", "vllm_model": {"name": "llama-3.1-8b"}}
    out = render(tmp_path, bigger)
    vllm = {g["targets"][0]: g["labels"]["node"] for g in _sd(out, "vllm")}
    assert vllm["10.0.0.13:8000"] == "gpu3"
    assert len(vllm) == 4
    assert ["10.0.0.13:9100"] in [g["targets"] for g in _sd(out, "node")]


def test_gateway_metrics_target_follows_the_gateway_role(tmp_path):
    """gateway_metrics_port from the inventory, and the address nginx's metrics
    listener binds (the default IPv4 address), not monitoring_address."""
    moved = json.loads(json.dumps(INVENTORY))
    moved["all"]["children"]["vllm_gateways"]["hosts"]["gw1"].update(
        {"gateway_metrics_port": 8082, "monitoring_address": "192.168.50.21"})
    out = render(tmp_path, moved, {"monitoring_mode": "files"})
    assert _sd(out, "gateway") == [{"targets": ["10.0.0.21:8082"], "labels": {"node": "gw1"}}]
    assert _sd(out, "nginx") == [{"targets": ["192.168.50.21:9113"], "labels": {"node": "gw1"}}]
    scrape = yaml.safe_load((out / "vllm-fleet.scrape.yml").read_text())
    assert [j["job_name"] for j in scrape["scrape_configs"]] == ["vllm", "node", "nginx", "mtail", "gateway", "dcgm"]


def test_a_fleet_without_gateways_or_gpus_gets_no_such_jobs(tmp_path):
    small = {"all": {"hosts": {"mon1": INVENTORY["all"]["hosts"]["mon1"]},
                     "children": {"monitoring": {"hosts": {"mon1": None}},
                                  "vllm_nodes": {"hosts": {"mon1": None}}}}}
    out = render(tmp_path, small)
    assert sorted(p.name for p in (out / "file_sd").iterdir()) == ["node.json", "vllm.json"]
    # The vllm role's defaults apply to what the inventory leaves unset.
    assert _sd(out, "vllm") == [{"targets": ["127.0.0.1:8000"],
                                 "labels": {"node": "mon1", "instance_name": "default", "model": ""}}]
    jobs = [j["job_name"] for j in yaml.safe_load((out / "prometheus.yml").read_text())["scrape_configs"]]
    assert jobs == ["prometheus", "vllm", "node"]
    assert "alerting" not in yaml.safe_load((out / "prometheus.yml").read_text())


def test_prometheus_config_passes_promtool_check_config(rendered):
    config = yaml.safe_load((rendered / "prometheus.yml").read_text())
    assert [j["job_name"] for j in config["scrape_configs"]] == [
        "prometheus", "vllm", "node", "nginx", "mtail", "gateway", "dcgm", "blackbox-tls"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    result = promtool("check", "config", str(rendered / "prometheus.yml"), cwd=rendered)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 rule files found" in result.stdout


def test_scrape_config_file_for_an_existing_prometheus_passes_promtool(rendered):
    result = promtool("check", "config", str(rendered / "vllm-fleet.scrape.yml"), cwd=rendered)
    assert result.returncode == 0, result.stdout + result.stderr


def test_file_sd_validator_refuses_a_broken_file(tmp_path):
    """The check-file-sd script the role installs (validate: of the file_sd task)."""
    text = (ROLE / "templates" / "usr" / "local" / "libexec" / "vllm-fleet-monitoring" / "check-file-sd.j2").read_text()
    script = tmp_path / "check-file-sd"
    script.write_text("\n".join(line for line in text.splitlines() if "ansible_managed" not in line) + "\n")
    script.chmod(0o755)
    tool = shutil.which("promtool")
    assert tool, "promtool not found: install Debian's `prometheus` package on the controller"
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(json.dumps([{"targets": ["10.0.0.11:8000"], "labels": {"node": "gpu1"}}]))
    bad.write_text(json.dumps([{"targets": ["10.0.0.11:8000"], "labels": {"not a label": "x"}}]))
    assert subprocess.run([str(script), tool, str(good)], capture_output=True).returncode == 0
    assert subprocess.run([str(script), tool, str(bad)], capture_output=True).returncode != 0


def test_alertmanager_config_routes_to_the_first_receiver(rendered):
    config = yaml.safe_load((rendered / "alertmanager.yml").read_text())
    assert config["route"]["receiver"] == "oncall"
    assert config["receivers"][0]["name"] == "oncall"
    assert config["inhibit_rules"][0]["equal"] == ["node"]


# --- dashboard ---------------------------------------------------------------------

def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_parse(tmp_path):
    """Every panel query, with Grafana's variables substituted, parses as PromQL
    (a one-rule file through promtool check rules)."""
    exprs = _dashboard_exprs()
    assert len(exprs) >= 30
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e.replace("$__rate_interval", "1m").replace("$node", ".*")
                                                 .replace("$instance_name", ".*")}
        for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "dashboard.rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_covers_the_issue_s_panels():
    dash = json.loads(DASHBOARD.read_text())
    exprs = "\n".join(_dashboard_exprs())
    for metric in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                   "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                   "vllm:e2e_request_latency_seconds_bucket", "vllm:prompt_tokens_total",
                   "vllm:generation_tokens_total", "vllm:num_preemptions_total", "DCGM_FI_DEV_GPU_UTIL",
                   "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_GPU_TEMP", "nginx_http_requests_total",
                   'status_class="5xx"', "vllm_fleet_vrrp_master", "vllm_fleet_gateway_tokens_total",
                   "vllm_fleet_gateway_token_quota_used_tokens"):
        assert metric in exprs, metric
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "node", "instance_name"}
