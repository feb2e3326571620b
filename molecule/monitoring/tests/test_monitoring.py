"""Prometheus (monitoring role) watching the real stack of one lab host.

Runs inside the converged container through testinfra's docker backend.  The
host is a vLLM node, the only gateway (nginx, keepalived holding the VIP), the
monitoring host and a backup client, so every source the rules read is live:
vLLM, node_exporter, the nginx exporter and mtail, the VRRP and backup
textfile metrics and the blackbox TLS probe of the VIP's name.  Completions
go straight to vLLM (the internal key read from the root-only EnvironmentFile
and handed to curl on stdin) and through the gateway with a client key; a
backup and the repository check run once.  Then every alert expression
Prometheus loaded and every query of the dashboard is evaluated through the
HTTP API: each must parse, and each must find data for every selector.
Only DCGM cannot run here (NOT_DEPLOYED, with the reason); a selector of its
that finds data means the list is stale and fails the test.  Last, vLLM is
stopped and VllmInstanceDown must fire within its `for` plus two scrape
intervals.

Figures (counts, scrape and rule-evaluation durations, time to fire) are
printed and written to .lab/figures/monitoring.json (bench/monitoring_figures.py
prints them as the README table).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
PROM = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
NODE_ADDRESS = "172.31.251.11"  # lab_address (host_vars); vllm_listen_address follows it
VLLM = f"http://{NODE_ADDRESS}:8000"
UNIT = "vllm@default.service"
MODEL = "tiny-llama"
AUTH = ". /etc/vllm/default.env && printf 'Authorization: Bearer %s' \"$VLLM_API_KEY\" | "
DASHBOARD = "/var/lib/grafana/dashboards/vllm-fleet/vllm-fleet.json"
FIGURES = ROOT / ".lab" / "figures" / "monitoring.json"
COMPLETIONS = 6
GATEWAY = "https://vllm.lab.internal"
LAB_CA = "/etc/vllm-fleet-lab-ca.crt"
CLIENT_KEY = ROOT / ".lab" / "secrets" / "client-lab-alice"

# Where each metric comes from, by name; `up` by its job matcher.
SOURCES = [
    (r"^vllm:", "vllm"),
    (r"^(node_|vllm_fleet_model_dir_info$)", "node_exporter"),
    (r"^(prometheus_|ALERTS$|scrape_)", "prometheus"),
    (r"^(nginx_|vllm_fleet_gateway_)", "gateway"),
    (r"^vllm_fleet_vrrp_", "failover"),
    (r"^vllm_fleet_backup_", "backup"),
    (r"^probe_", "blackbox"),
    (r"^DCGM_", "dcgm"),
]
UP_JOBS = {"vllm": "vllm", "node": "node_exporter", "prometheus": "prometheus", "nginx": "gateway",
           "mtail": "gateway", "gateway": "gateway", "dcgm": "dcgm", "blackbox-tls": "blackbox"}

# Sources that write no series in this scenario, and why.
NOT_DEPLOYED = {
    "dcgm": "no NVIDIA GPU in a container: NVIDIA's DCGM exporter cannot run here (monitoring_dcgm_enabled: false)",
}

FIGURES_DATA: dict = {}


# --- helpers -------------------------------------------------------------------------

def curl_json(host, url: str, *params: str) -> dict:
    args = " ".join(f"--data-urlencode {shlex.quote(p)}" for p in params)
    out = host.run(f"curl -sS -G {args} {url}")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def query(host, expr: str) -> dict:
    return curl_json(host, f"{PROM}/api/v1/query", f"query={expr}")


def series(host, expr: str) -> list:
    answer = query(host, expr)
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def completion(host, prompt: str, max_tokens: int) -> dict:
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    cmd = (f"curl -sS -o /tmp/body -w '%{{http_code}}' -H @- -H 'Content-Type: application/json' "
           f"--data {shlex.quote(body)} {VLLM}/v1/completions")
    out = host.run(f"sh -c {shlex.quote(AUTH + cmd)}")
    assert out.rc == 0 and out.stdout == "200", (out.stdout, out.stderr, host.file("/tmp/body").content_string)
    return json.loads(host.file("/tmp/body").content_string)


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d)", duration))


_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                 "bottomk", "topk", "quantile"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_OPERATORS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


def selectors(expr: str) -> list[str]:
    """The vector selectors of a PromQL expression (``name{matchers}``), in order.

    A small tokenizer, enough for the role's rules and dashboard: it skips
    strings, ranges ``[...]``, numbers, functions and aggregations (a name
    followed by ``(``), and the label lists of by/without/on/ignoring/group_*.
    """
    found, i, n = [], 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if expr[j] == "\\" else 1
            i = j + 1
        elif c == "[":
            i = expr.index("]", i) + 1
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            while i < n and (expr[i].isalnum() or expr[i] in "._" or (expr[i] in "+-" and expr[i - 1] in "eE")):
                i += 1
        elif c.isalpha() or c in "_:":
            j = i
            while j < n and (expr[j].isalnum() or expr[j] in "_:"):
                j += 1
            word, k = expr[i:j], j
            while k < n and expr[k].isspace():
                k += 1
            nxt = expr[k] if k < n else ""
            if word in _GROUPING and nxt == "(":
                i = expr.index(")", k) + 1
            elif nxt == "(" or word.lower() in _OPERATORS or word in _AGGREGATIONS:
                i = j
            elif nxt == "{":
                end = _close_brace(expr, k)
                found.append(word + expr[k:end + 1])
                i = end + 1
            else:
                found.append(word)
                i = j
        elif c == "{":
            end = _close_brace(expr, i)
            found.append(expr[i:end + 1])
            i = end + 1
        else:
            i += 1
    return found


def _close_brace(expr: str, start: int) -> int:
    i = start + 1
    while expr[i] != "}":
        if expr[i] in "\"'`":
            quote, i = expr[i], i + 1
            while expr[i] != quote:
                i += 2 if expr[i] == "\\" else 1
        i += 1
    return i


def source_of(selector: str) -> str:
    name = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", selector)
    name = name.group(0) if name else ""
    if name == "up":
        job = re.search(r'job\s*=\s*"([^"]+)"', selector)
        return UP_JOBS.get(job.group(1), "prometheus") if job else "prometheus"
    for pattern, source in SOURCES:
        if re.search(pattern, name):
            return source
    raise AssertionError(f"no known source for {selector!r}: add it to SOURCES")


def grafana_vars(expr: str) -> str:
    return (expr.replace("$__rate_interval", "1m").replace("$node", ".*").replace("$instance_name", ".*"))


def check(host, expr: str, *, whole_must_return: bool) -> dict:
    """Parse ``expr`` through the API and look up each of its selectors."""
    answer = query(host, expr)
    assert answer["status"] == "success", f"does not evaluate: {expr}\n{answer}"
    sels = selectors(expr)
    assert sels, f"no selector found in {expr}"
    sources = sorted({source_of(s) for s in sels})
    missing = sorted(s for s in sources if s in NOT_DEPLOYED)
    found = {s: len(series(host, f"count({s})")) > 0 for s in sels}
    if not missing:
        empty = [s for s, ok in found.items() if not ok]
        assert not empty, f"deployed here but no data for {empty} in {expr}"
        if whole_must_return:
            assert answer["data"]["result"], f"no series from {expr}"
    for sel, ok in found.items():
        if source_of(sel) in NOT_DEPLOYED:
            assert not ok, f"{sel} has data although {source_of(sel)} is listed as not deployed: update NOT_DEPLOYED"
        elif not ok:
            raise AssertionError(f"{sel} ({source_of(sel)} runs here) has no data, in {expr}")
    return {"expr": expr, "sources": sources, "not_deployed": missing,
            "returned": len(answer["data"]["result"])}


def gateway_completion(host, prompt: str, max_tokens: int, resolve: str = "", check: bool = True) -> str:
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    key = CLIENT_KEY.read_text().strip()
    pin = f"--resolve vllm.lab.internal:443:{resolve} " if resolve else ""
    cmd = (f"curl -sS -m 30 -o /dev/null -w '%{{http_code}}' --cacert {LAB_CA} {pin}-H @- "
           f"-H 'Content-Type: application/json' --data {shlex.quote(body)} {GATEWAY}/v1/completions")
    # The key goes to curl on stdin (testinfra's run has no stdin): never on a command line.
    out = subprocess.run(["docker", "exec", "-i", "monitoring-node1", "sh", "-c", cmd],
                         input=f"Authorization: Bearer {key}\n", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 or not check, out.stderr
    return out.stdout


# --- the stack --------------------------------------------------------------------------

def test_services_run_and_prometheus_listens_on_loopback_only(host):
    for unit in ("prometheus", "prometheus-node-exporter", "prometheus-alertmanager"):
        assert host.service(unit).is_running, unit
        assert host.service(unit).is_enabled, unit
    listeners = {line.split()[3] for line in host.run("ss -Htln 'sport = :9090'").stdout.splitlines() if line.strip()}
    assert listeners == {"127.0.0.1:9090"}


def test_deployed_config_and_rules_pass_promtool(host):
    assert host.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0
    out = host.run("promtool check rules /etc/prometheus/rules/vllm-fleet/*.rules.yml")
    assert out.rc == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == 7


def test_targets_from_the_inventory_are_up(host):
    targets = curl_json(host, f"{PROM}/api/v1/targets", "state=active")["data"]["activeTargets"]
    by_job = {t["labels"]["job"]: t for t in targets}
    assert set(by_job) == {"prometheus", "vllm", "node", "nginx", "mtail", "gateway", "blackbox-tls"}, by_job.keys()
    assert by_job["vllm"]["labels"].items() >= {"node": "monitoring-node1", "instance_name": "default",
                                                "model": MODEL}.items()
    assert by_job["vllm"]["scrapeUrl"] == f"{VLLM}/metrics"
    assert by_job["blackbox-tls"]["labels"]["instance"] == "vllm.lab.internal:443"
    for target in targets:
        assert target["health"] == "up", target


def test_node_exporter_reads_the_textfile_directory_and_sees_the_model_disk(host):
    textfile = host.file("/var/lib/prometheus/node-exporter")
    # One owner for the three roles that create it (monitoring, failover, backup).
    assert textfile.is_directory and (textfile.user, textfile.group, textfile.mode) == ("root", "root", 0o755)
    info = series(host, 'vllm_fleet_model_dir_info{job="node"}')
    assert info and info[0]["metric"]["path"] == "/srv/vllm/models"
    mount = info[0]["metric"]["mountpoint"]
    assert series(host, f'node_filesystem_size_bytes{{job="node", mountpoint="{mount}"}}'), mount


def test_completions_reach_the_metrics(host):
    before = sum(float(s["value"][1]) for s in series(host, "vllm:request_success_total"))
    for i in range(COMPLETIONS):
        reply = completion(host, f"Monitoring check {i}", 8)
        assert reply["usage"]["completion_tokens"] == 8
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = sum(float(s["value"][1]) for s in series(host, "vllm:request_success_total"))
        if after >= before + COMPLETIONS:
            break
        time.sleep(2)
    assert after >= before + COMPLETIONS, (before, after)
    # Through the gateway (TLS to the VIP's name, a client key): mtail counts
    # them from nginx's access log.
    for i in range(COMPLETIONS):
        assert gateway_completion(host, f"Gateway check {i}", 4) == "200"
    # Two more scrapes so every rate() window holds the new samples.
    scrape = seconds(yaml.safe_load(host.file("/etc/prometheus/prometheus.yml").content_string)["global"]["scrape_interval"])
    time.sleep(2 * scrape)


def test_gateway_errors_reach_the_metrics(host):
    """A 401 (no key) and a 502 (vLLM stopped) through the gateway, so the
    4xx/5xx selectors of the rules and the dashboard have series to find."""
    out = host.run(f"curl -sS -o /dev/null -w '%{{http_code}}' --cacert {LAB_CA} {GATEWAY}/v1/models")
    assert out.stdout == "401", (out.stdout, out.stderr)
    host.run_test(f"systemctl stop {UNIT}")
    try:
        # To the node's own address: the VIP leaves once keepalived's check sees vLLM gone.
        status = gateway_completion(host, "No backend", 4, resolve=NODE_ADDRESS)
        assert status in ("502", "503"), status
    finally:
        host.run(f"systemctl start {UNIT}")
        ready = wait_ready(host)
    assert ready.rc == 0, ready.stdout
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not series(host, 'vllm_fleet_gateway_requests_total{status_class="5xx"}'):
        time.sleep(2)
    assert series(host, 'vllm_fleet_gateway_requests_total{status_class="5xx"}')
    assert series(host, 'vllm_fleet_gateway_requests_total{status_class="4xx"}')
    # The VIP is back once the check passes again (rise), and serves.
    wait = time.monotonic() + 60
    while time.monotonic() < wait and gateway_completion(host, "Back", 4, check=False) != "200":
        time.sleep(2)
    assert gateway_completion(host, "Back", 4) == "200"


def wait_ready(host):
    return host.run(f"sh -c '. /etc/vllm/default.env && export VLLM_API_KEY && "
                    f"/opt/vllm/venv/bin/python /opt/vllm/wait-ready {UNIT} {VLLM} {MODEL} 600'")


def test_a_backup_and_a_repository_check_write_their_metrics(host):
    """The timers would fire daily and weekly: start both services once, as the
    timers would, and wait until Prometheus has scraped their textfile metrics."""
    for unit in ("vllm-fleet-backup.service", "vllm-fleet-backup-check.service"):
        out = host.run(f"systemctl start {unit}")
        assert out.rc == 0, host.run(f"journalctl -u {unit} -n 20 --no-pager").stdout
    deadline = time.monotonic() + 60
    wanted = ("vllm_fleet_backup_last_success_timestamp_seconds", "vllm_fleet_backup_check_success")
    while time.monotonic() < deadline and not all(series(host, f'{m}{{job="node"}}') for m in wanted):
        time.sleep(2)
    assert series(host, 'vllm_fleet_backup_check_success{job="node"}')[0]["value"][1] == "1"
    last = float(series(host, 'vllm_fleet_backup_last_success_timestamp_seconds{job="node"}')[0]["value"][1])
    assert time.time() - last < 600, last


def test_every_alert_expression_parses_and_finds_its_metrics(host):
    groups = curl_json(host, f"{PROM}/api/v1/rules", "type=alert")["data"]["groups"]
    alerts = [r for g in groups for r in g["rules"]]
    assert len(alerts) == 24, [a["name"] for a in alerts]
    results = {a["name"]: check(host, a["query"], whole_must_return=False) for a in alerts}
    FIGURES_DATA["alerts"] = results
    not_deployed = {n for n, r in results.items() if r["not_deployed"]}
    # Every alert runs on live data here, except the three read from DCGM (no GPU).
    assert not_deployed == {"GpuTemperatureHigh", "GpuMemoryNearlyFull", "GpuXidError"}, not_deployed


def test_every_dashboard_query_parses_and_returns_data(host):
    dash = json.loads(host.file(DASHBOARD).content_string)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    # Template variables: label_values(<selector>, <label>) must find that label.
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            sel, label = re.match(r"label_values\((.*),\s*(\w+)\)$", var["definition"]).groups()
            exprs.append(f"count by ({label}) ({sel})")
    results = [check(host, grafana_vars(e), whole_must_return=True) for e in exprs]
    FIGURES_DATA["queries"] = results
    assert len(results) >= 30


def test_figures(host):
    """Scrape and rule-evaluation durations as Prometheus reports them for the lab."""
    def by(expr, label):
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in series(host, expr)}

    interval = yaml.safe_load(host.file("/etc/prometheus/prometheus.yml").content_string)["global"]["scrape_interval"]
    figures = {
        "scrape_duration_seconds": by("avg_over_time(scrape_duration_seconds[1m])", "job"),
        "scrape_interval_p99_seconds": by(
            f'prometheus_target_interval_length_seconds{{quantile="0.99", interval="{interval}"}}', "interval"),
        "rule_group_last_duration_seconds": by("prometheus_rule_group_last_duration_seconds", "rule_group"),
        "rule_group_interval_seconds": by("prometheus_rule_group_interval_seconds", "rule_group"),
        "head_series": by("prometheus_tsdb_head_series", "job"),
    }
    assert figures["scrape_duration_seconds"].keys() >= {"vllm", "node", "prometheus"}
    assert len(figures["rule_group_last_duration_seconds"]) == 7
    assert figures["scrape_duration_seconds"].keys() >= {"nginx", "mtail", "blackbox-tls"}
    FIGURES_DATA.update(figures)


# --- alerting ----------------------------------------------------------------------------

def test_a_rule_change_reloads_prometheus_without_restarting_it(host):
    """The role's handler reloads (SIGHUP) and waits for the new config; the
    process and its TSDB head stay."""
    pid = host.run("systemctl show -p MainPID --value prometheus").stdout.strip()
    before = curl_json(host, f"{PROM}/api/v1/status/runtimeinfo")["data"]["lastConfigTime"]
    playbook = _ansible(["--tags", "monitoring_configure", "-e", "monitoring_alert_requests_waiting_threshold=11"])
    assert "RUNNING HANDLER [monitoring : Reload prometheus]" in playbook
    assert "RUNNING HANDLER [monitoring : Restart prometheus]" not in playbook
    rules = curl_json(host, f"{PROM}/api/v1/rules", "type=alert")["data"]["groups"]
    waiting = [r for g in rules for r in g["rules"] if r["name"] == "VllmRequestsWaiting"][0]
    assert waiting["query"].endswith("> 11"), waiting["query"]
    assert host.run("systemctl show -p MainPID --value prometheus").stdout.strip() == pid
    assert curl_json(host, f"{PROM}/api/v1/status/runtimeinfo")["data"]["lastConfigTime"] != before
    _ansible(["--tags", "monitoring_configure"])          # back to the inventory's value
    assert host.run("systemctl show -p MainPID --value prometheus").stdout.strip() == pid


def _ansible(args: list[str]) -> str:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
    inventory = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory"
    playbook = pathlib.Path(sys.executable).parent / "ansible-playbook"
    proc = subprocess.run([str(playbook), "-i", str(inventory), str(ROOT / "site.yml"),
                           "--limit", "monitoring-node1", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    return proc.stdout


def test_instance_down_fires_within_for_plus_two_scrapes(host):
    config = yaml.safe_load(host.file("/etc/prometheus/prometheus.yml").content_string)["global"]
    scrape = seconds(config["scrape_interval"])
    rules = curl_json(host, f"{PROM}/api/v1/rules", "type=alert")["data"]["groups"]
    down = [r for g in rules for r in g["rules"] if r["name"] == "VllmInstanceDown"][0]
    bound = down["duration"] + 2 * scrape
    host.run_test(f"systemctl stop {UNIT}")
    try:
        start = time.monotonic()
        state = "inactive"
        while time.monotonic() - start < bound + 30:
            alerts = curl_json(host, f"{PROM}/api/v1/alerts")["data"]["alerts"]
            states = {a["state"] for a in alerts if a["labels"]["alertname"] == "VllmInstanceDown"}
            if "firing" in states:
                state = "firing"
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - start
        print(f"\nVllmInstanceDown: firing {elapsed:.1f}s after the stop (for {down['duration']:.0f}s, "
              f"scrape interval {scrape:.0f}s, bound {bound:.0f}s)")
        FIGURES_DATA["instance_down"] = {"seconds_to_firing": round(elapsed, 1), "for_seconds": down["duration"],
                                         "scrape_interval_seconds": scrape, "bound_seconds": bound}
        assert state == "firing" and elapsed <= bound, (state, elapsed, bound)

        # Delivered to Alertmanager (the lab's receiver discards it).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            delivered = curl_json(host, f"{ALERTMANAGER}/api/v2/alerts")
            if any(a["labels"]["alertname"] == "VllmInstanceDown" for a in delivered):
                break
            time.sleep(1)
        assert any(a["labels"]["alertname"] == "VllmInstanceDown" for a in delivered)

        # The dashboard's alert annotation query now has data too.
        annotation = json.loads(host.file(DASHBOARD).content_string)["annotations"]["list"][0]["expr"]
        assert series(host, annotation)
        FIGURES_DATA["annotation_query"] = {"expr": annotation, "returned": len(series(host, annotation))}
    finally:
        host.run(f"systemctl start {UNIT}")
        ready = wait_ready(host)
        _write_figures()
    assert ready.rc == 0, ready.stdout


def _write_figures():
    data = dict(FIGURES_DATA)
    alerts, queries = data.get("alerts", {}), data.get("queries", [])
    summary = {
        "alerts_checked": len(alerts),
        "alerts_with_live_sources": sum(1 for r in alerts.values() if not r["not_deployed"]),
        "alerts_not_deployed_here": {n: r["not_deployed"] for n, r in alerts.items() if r["not_deployed"]},
        "queries_checked": len(queries),
        "queries_with_live_sources": sum(1 for r in queries if not r["not_deployed"]),
        "queries_returning_data": sum(1 for r in queries if r["returned"] > 0),
        "not_deployed_reasons": NOT_DEPLOYED,
    }
    data["summary"] = summary
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True))
    print("\n" + json.dumps(summary, indent=2))
    for key in ("scrape_duration_seconds", "rule_group_last_duration_seconds"):
        print(key, json.dumps(data.get(key, {}), indent=2))
