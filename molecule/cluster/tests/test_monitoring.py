"""Prometheus on the monitoring host (cluster-mon) watching the real cluster.

Every source the rules read is live here: vLLM on both nodes, node_exporter on
every host, the nginx exporter, mtail and the gateway's token metrics on both
gateways, the VRRP and backup textfile metrics, and the blackbox TLS probe of
the VIP's name.  Only DCGM cannot run (NOT_DEPLOYED, with the reason); a DCGM
selector that finds data means that list is stale and fails the test.

Traffic goes through the VIP and straight to each vLLM; then a fault in
combination: vLLM stopped on both nodes and nginx stopped on the gateway that
does not hold the VIP.  VllmInstanceDown (both nodes), GatewayNginxDown and
VrrpStateChanged (the VIP leaves, no vLLM answers anywhere) must fire within
their `for` plus two scrapes and reach Alertmanager.  Once all is back, every
alert expression Prometheus loaded is evaluated: it parses, each selector has
data, and each inner vector (the expression without its final threshold)
returns series.  Every dashboard query must return data.  Last, a certificate
that expires in 7 days is put on the VIP holder (CertificateExpiringSoon) and a
backup age bound of minutes is loaded by a rule reload (BackupStale).

Figures are written to .lab/figures/monitoring.json (bench/monitoring_figures.py
prints them as the README table).  Last, monitoring_mode: files feeds a
Prometheus that cluster-node3 already runs (before test_rollout.py adds that
node to the cluster).
"""
from __future__ import annotations

import calendar
import json
import re
import shlex
import subprocess
import time

import requests
import yaml

from conftest import (LAB, MONITORING as MON, NODES, VIP, completion, http_get_json, playbook, prometheus, recap,
                      sh, vip_holders, wait_for)
from vllm_fleet.promql import inner_vectors, selectors

PROM = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
UNIT = "vllm@default.service"
MODEL = "tiny-llama"
DASHBOARD = "/var/lib/grafana/dashboards/vllm-fleet/vllm-fleet.json"
FIGURES = LAB / "figures" / "monitoring.json"
HOSTS = [*NODES, "cluster-node3", MON]

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
DCGM_ALERTS = {"GpuTemperatureHigh", "GpuMemoryNearlyFull", "GpuXidError"}
FIGURES_DATA: dict = {}


# --- helpers -------------------------------------------------------------------------

def api_get(url: str, *params: str) -> dict:
    return http_get_json(MON, url, **dict(p.split("=", 1) for p in params))


def query(expr: str) -> dict:
    return prometheus("query", query=expr)


def series(expr: str) -> list:
    answer = query(expr)
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def alert_rules() -> list[dict]:
    groups = api_get(f"{PROM}/api/v1/rules", "type=alert")["data"]["groups"]
    return [r for g in groups for r in g["rules"]]


def firing(name: str) -> list[dict]:
    return [a for a in api_get(f"{PROM}/api/v1/alerts")["data"]["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == "firing"]


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d)", duration))


def scrape_interval() -> float:
    config = yaml.safe_load(sh(MON, "cat /etc/prometheus/prometheus.yml").stdout)
    return seconds(config["global"]["scrape_interval"])


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
    return expr.replace("$__rate_interval", "1m").replace("$node", ".*").replace("$instance_name", ".*")


def check(expr: str, *, whole_must_return: bool, inner: bool = False) -> dict:
    """Evaluate ``expr``; each selector must have data where its source runs,
    and (alerts) each inner vector must return series."""
    answer = query(expr)
    assert answer["status"] == "success", f"does not evaluate: {expr}\n{answer}"
    sels = selectors(expr)
    assert sels, f"no selector found in {expr}"
    sources = sorted({source_of(s) for s in sels})
    missing = sorted(s for s in sources if s in NOT_DEPLOYED)
    for sel in sels:
        has_data = len(series(f"count({sel})")) > 0
        if source_of(sel) in NOT_DEPLOYED:
            assert not has_data, f"{sel} has data although {source_of(sel)} is listed as not deployed"
        else:
            assert has_data, f"{sel} ({source_of(sel)} runs here) has no data, in {expr}"
    inner_counts = {}
    if not missing:
        if whole_must_return:
            assert answer["data"]["result"], f"no series from {expr}"
        if inner:
            for vector in inner_vectors(expr):
                inner_counts[vector] = len(series(vector))
                assert inner_counts[vector] > 0, f"inner vector {vector!r} of {expr!r} returns no series"
    return {"expr": expr, "sources": sources, "not_deployed": missing,
            "returned": len(answer["data"]["result"]), "inner_vectors": inner_counts}


def vllm_direct(node: str, prompt: str) -> int:
    """A completion straight to a node's vLLM, with the internal key read on
    the node from its root-only EnvironmentFile and handed to curl on stdin."""
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 4})
    cmd = (". /etc/vllm/default.env && printf 'Authorization: Bearer %s' \"$VLLM_API_KEY\" | "
           f"curl -sS -m 60 -o /dev/null -w '%{{http_code}}' -H @- -H 'Content-Type: application/json' "
           f"--data {shlex.quote(body)} http://{NODES[node]}:8000/v1/completions")
    return int(sh(node, cmd).stdout)


def wait_ready(node: str) -> None:
    sh(node, f". /etc/vllm/default.env && export VLLM_API_KEY && /opt/vllm/venv/bin/python /opt/vllm/wait-ready "
             f"{UNIT} http://{NODES[node]}:8000 {MODEL} 600")


def traffic(api, alice, count: int = 6) -> None:
    for i in range(count):
        assert completion(api, alice, prompt=f"Monitoring {i}", max_tokens=4).status_code == 200
    for node in NODES:
        assert vllm_direct(node, "Direct") == 200
    time.sleep(2 * scrape_interval())      # two scrapes, so every rate() window holds them


def reconfigure_monitoring(*extra: str) -> str:
    run = playbook("site.yml", "--limit", MON, "--tags", "monitoring_configure", *extra)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    return run.stdout


# --- the stack --------------------------------------------------------------------------

def test_services_run_and_prometheus_listens_on_loopback_only():
    for unit in ("prometheus", "prometheus-node-exporter", "prometheus-alertmanager", "prometheus-blackbox-exporter"):
        assert sh(MON, f"systemctl is-active {unit}").stdout.strip() == "active", unit
        assert sh(MON, f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit
    listeners = {line.split()[3] for line in sh(MON, "ss -Htln 'sport = :9090'").stdout.splitlines() if line.strip()}
    assert listeners == {"127.0.0.1:9090"}


def test_deployed_config_and_rules_pass_promtool():
    sh(MON, "promtool check config /etc/prometheus/prometheus.yml")
    out = sh(MON, "promtool check rules /etc/prometheus/rules/vllm-fleet/*.rules.yml").stdout
    assert out.count("SUCCESS") == 7, out


def test_targets_from_the_inventory_are_up():
    targets = api_get(f"{PROM}/api/v1/targets", "state=active")["data"]["activeTargets"]
    by_job: dict[str, list] = {}
    for target in targets:
        by_job.setdefault(target["labels"]["job"], []).append(target)
    assert set(by_job) == {"prometheus", "vllm", "node", "nginx", "mtail", "gateway", "blackbox-tls"}, by_job.keys()
    vllm = {t["labels"]["node"]: t for t in by_job["vllm"]}
    assert set(vllm) == set(NODES)
    for node, address in NODES.items():
        assert vllm[node]["labels"].items() >= {"instance_name": "default", "model": MODEL}.items()
        assert vllm[node]["scrapeUrl"] == f"http://{address}:8000/metrics"
    assert {t["labels"]["node"] for t in by_job["node"]} == set(HOSTS)
    for job in ("nginx", "mtail", "gateway"):
        assert {t["labels"]["node"] for t in by_job[job]} == set(NODES), job
    assert [t["labels"]["instance"] for t in by_job["blackbox-tls"]] == ["vllm.lab.internal:443"]
    for target in targets:
        assert target["health"] == "up", target


def test_the_tls_probe_sees_the_gateway_certificate():
    probe = series('probe_success{job="blackbox-tls"}')
    assert probe and probe[0]["value"][1] == "1", probe
    expiry = float(series('probe_ssl_earliest_cert_expiry{job="blackbox-tls"}')[0]["value"][1])
    served = sh(vip_holders()[0], "openssl x509 -noout -enddate -in /etc/nginx/vllm-fleet/server.crt").stdout
    not_after = calendar.timegm(time.strptime(served.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y GMT"))
    assert expiry == not_after, (expiry, served)


def test_backups_and_repository_checks_write_their_metrics():
    """The timers would fire daily and weekly: start both services once on each node."""
    for node in NODES:
        for unit in ("vllm-fleet-backup.service", "vllm-fleet-backup-check.service"):
            sh(node, f"systemctl start {unit}")
    wanted = ("vllm_fleet_backup_last_success_timestamp_seconds", "vllm_fleet_backup_check_success")
    wait_for(lambda: all(len(series(f'{m}{{job="node"}}')) >= len(NODES) for m in wanted), 60, interval=2)
    for sample in series('vllm_fleet_backup_check_success{job="node"}'):
        assert sample["value"][1] == "1", sample


# --- faults in combination ----------------------------------------------------------------

def test_two_faults_fire_their_alerts_and_reach_alertmanager(api, alice):
    """vLLM stopped on both nodes, and nginx stopped on the gateway without the VIP."""
    traffic(api, alice)
    scrape = scrape_interval()
    rules = {r["name"]: r for r in alert_rules()}
    holder = vip_holders()[0]
    spare = next(n for n in NODES if n != holder)
    expected = {"VllmInstanceDown": set(NODES), "GatewayNginxDown": {spare}, "VrrpStateChanged": {holder}}
    start = time.monotonic()
    sh(spare, "systemctl stop nginx")
    for node in NODES:
        sh(node, f"systemctl stop {UNIT}")
    seen: dict[str, float] = {}
    try:
        # No backend anywhere: the holder's nginx answers 502 (counted as 5xx by mtail and the gateway).
        status = api.get(f"https://{NODES[holder]}/health", timeout=30).status_code
        assert status in (502, 503), status
        bound = max(rules[n]["duration"] for n in expected) + 2 * scrape + 30
        while time.monotonic() - start < bound and len(seen) < len(expected):
            for name, nodes in expected.items():
                if name not in seen and nodes <= {a["labels"].get("node") for a in firing(name)}:
                    seen[name] = round(time.monotonic() - start, 1)
            time.sleep(0.5)
        print(f"\nfiring after the faults (s): {seen}")
        FIGURES_DATA["faults_to_firing_seconds"] = seen
        assert set(seen) == set(expected), (seen, bound)
        for name in ("VllmInstanceDown", "GatewayNginxDown"):
            assert seen[name] <= rules[name]["duration"] + 2 * scrape + 10, (name, seen[name])
        # Delivered to Alertmanager (the lab's receiver discards it).
        wait_for(lambda: {a["labels"]["alertname"] for a in api_get(f"{ALERTMANAGER}/api/v2/alerts")} >= set(expected),
                 30, interval=1)
        # The dashboard's alert annotation query now has data too.
        annotation = json.loads(sh(MON, f"cat {DASHBOARD}").stdout)["annotations"]["list"][0]["expr"]
        assert series(annotation)
    finally:
        sh(spare, "systemctl start nginx")
        for node in NODES:
            sh(node, f"systemctl start {UNIT}")
        for node in NODES:
            wait_ready(node)
    wait_for(lambda: len(vip_holders()) == 1, 60, interval=1)
    wait_for(lambda: serves(api, alice), 60, interval=2)


def serves(api, alice) -> bool:
    try:
        return completion(api, alice, max_tokens=4).status_code == 200
    except requests.RequestException:        # the VIP settling on its holder
        return False


# --- every rule and query on live data ------------------------------------------------------

def test_every_alert_expression_and_its_inner_vectors_return_series(api, alice):
    traffic(api, alice)
    alerts = alert_rules()
    assert len(alerts) == 25, [a["name"] for a in alerts]
    results = {a["name"]: check(a["query"], whole_must_return=False, inner=a["name"] not in DCGM_ALERTS)
               for a in alerts}
    FIGURES_DATA["alerts"] = results
    not_deployed = {n for n, r in results.items() if r["not_deployed"]}
    assert not_deployed == DCGM_ALERTS, not_deployed
    assert sum(len(r["inner_vectors"]) for r in results.values()) >= 22 + 3   # three alerts have two operands


def test_every_dashboard_query_returns_data():
    dash = json.loads(sh(MON, f"cat {DASHBOARD}").stdout)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            sel, label = re.match(r"label_values\((.*),\s*(\w+)\)$", var["definition"]).groups()
            exprs.append(f"count by ({label}) ({sel})")
    results = [check(grafana_vars(e), whole_must_return=True) for e in exprs]
    FIGURES_DATA["queries"] = results
    assert len(results) >= 30


def test_figures():
    """Scrape and rule-evaluation durations as Prometheus reports them for the lab."""
    def by(expr, label):
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in series(expr)}

    interval = yaml.safe_load(sh(MON, "cat /etc/prometheus/prometheus.yml").stdout)["global"]["scrape_interval"]
    figures = {
        "scrape_duration_seconds": by("avg_over_time(scrape_duration_seconds[1m])", "job"),
        "scrape_interval_p99_seconds": by(
            f'prometheus_target_interval_length_seconds{{quantile="0.99", interval="{interval}"}}', "interval"),
        "rule_group_last_duration_seconds": by("prometheus_rule_group_last_duration_seconds", "rule_group"),
        "rule_group_interval_seconds": by("prometheus_rule_group_interval_seconds", "rule_group"),
        "head_series": by("prometheus_tsdb_head_series", "job"),
    }
    assert figures["scrape_duration_seconds"].keys() >= {"vllm", "node", "prometheus", "nginx", "mtail", "blackbox-tls"}
    assert len(figures["rule_group_last_duration_seconds"]) == 7
    FIGURES_DATA.update(figures)
    _write_figures()


# --- thresholds that take days, brought within reach ------------------------------------------

def test_a_certificate_near_its_end_fires_certificate_expiring_soon(tmp_path):
    """A real certificate that expires in 7 days (signed by the lab CA) served
    by the VIP holder: the blackbox probe reads it and the alert fires."""
    holder = vip_holders()[0]
    pki = LAB / "pki"
    key, csr, crt = tmp_path / "short.key", tmp_path / "short.csr", tmp_path / "short.crt"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(csr), "-subj", "/CN=vllm.lab.internal"], check=True, capture_output=True)
    ext = tmp_path / "ext.cnf"
    ips = ",".join(f"IP:{a}" for a in (VIP, *NODES.values()))
    ext.write_text(f"subjectAltName=DNS:vllm.lab.internal,{ips}\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
                    "-CAcreateserial", "-CAserial", str(tmp_path / "ca.srl"), "-days", "7", "-out", str(crt),
                    "-extfile", str(ext)], check=True, capture_output=True)
    # The key travels in a 0600 vars file, never on a command line.
    extra = tmp_path / "short-cert.yml"
    extra.touch(mode=0o600)
    extra.write_text(yaml.safe_dump({"gateway_tls_certificate": crt.read_text(), "gateway_tls_private_key": key.read_text()}))
    rules = {r["name"]: r for r in alert_rules()}
    try:
        run = playbook("site.yml", "--limit", "vllm_gateways", "--tags", "gateway", "-e", f"@{extra}")
        assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
        _, took = wait_for(lambda: firing("CertificateExpiringSoon"), 2 * scrape_interval() + 60, interval=1)
        print(f"\nCertificateExpiringSoon firing {took:.1f} s after the run that served the 7-day certificate")
        FIGURES_DATA["certificate_expiring_seconds_after_the_run"] = round(took, 1)
        _write_figures()
        assert rules["CertificateExpiringSoon"]["duration"] == 0
    finally:
        run = playbook("site.yml", "--limit", "vllm_gateways", "--tags", "gateway")
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    wait_for(lambda: not firing("CertificateExpiringSoon"), 2 * scrape_interval() + 60, interval=1)


def test_a_rule_change_reloads_prometheus_and_a_stale_backup_fires():
    """The role's handler reloads (SIGHUP) and waits for the new config; the
    process and its TSDB head stay.  With the backup age bound at 3 minutes,
    a node whose last backup is older fires BackupStale at the next evaluation."""
    pid = sh(MON, "systemctl show -p MainPID --value prometheus").stdout.strip()
    before = api_get(f"{PROM}/api/v1/status/runtimeinfo")["data"]["lastConfigTime"]
    last = {s["metric"]["node"]: float(s["value"][1])
            for s in series('vllm_fleet_backup_last_success_timestamp_seconds{job="node"}')}
    assert last, "no node reports a backup"
    # The node whose backup is the oldest goes stale first: at its last backup + 180 s, which
    # may still be ahead on a fast machine (the tests before this one back up); wait for it.
    oldest = min(last, key=last.get)
    stale_at = last[oldest] + 3 * 60
    try:
        out = reconfigure_monitoring("-e", json.dumps({"monitoring_alert_requests_waiting_threshold": 11,
                                                       "monitoring_alert_backup_max_age_hours": 0.05}))
        assert "RUNNING HANDLER [monitoring : Reload prometheus]" in out
        assert "RUNNING HANDLER [monitoring : Restart prometheus]" not in out
        rules = {r["name"]: r for r in alert_rules()}
        assert rules["VllmRequestsWaiting"]["query"].endswith("> 11"), rules["VllmRequestsWaiting"]["query"]
        assert rules["BackupStale"]["query"].endswith("> 180"), rules["BackupStale"]["query"]
        assert sh(MON, "systemctl show -p MainPID --value prometheus").stdout.strip() == pid
        assert api_get(f"{PROM}/api/v1/status/runtimeinfo")["data"]["lastConfigTime"] != before
        reloaded = time.time()
        wait = max(0.0, stale_at - reloaded)
        _, took = wait_for(lambda: oldest in {a["labels"]["node"] for a in firing("BackupStale")},
                           wait + 2 * scrape_interval() + 30, interval=1)
        # From the later of the reload and the moment the backup went stale, to firing.
        FIGURES_DATA["backup_stale_seconds_to_firing_after_reload"] = round(max(0.0, took - wait), 1)
        _write_figures()
    finally:
        reconfigure_monitoring()          # back to the inventory's values
    assert sh(MON, "systemctl show -p MainPID --value prometheus").stdout.strip() == pid
    wait_for(lambda: not firing("BackupStale"), 2 * scrape_interval() + 30, interval=1)


def _write_figures():
    data = dict(FIGURES_DATA)
    alerts, queries = data.get("alerts", {}), data.get("queries", [])
    data["summary"] = {
        "alerts_checked": len(alerts),
        "alerts_with_live_sources": sum(1 for r in alerts.values() if not r["not_deployed"]),
        "inner_vectors_checked": sum(len(r["inner_vectors"]) for r in alerts.values()),
        "alerts_not_deployed_here": {n: r["not_deployed"] for n, r in alerts.items() if r["not_deployed"]},
        "queries_checked": len(queries),
        "queries_with_live_sources": sum(1 for r in queries if not r["not_deployed"]),
        "queries_returning_data": sum(1 for r in queries if r["returned"] > 0),
        "not_deployed_reasons": NOT_DEPLOYED,
    }
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True))
    print("\n" + json.dumps(data["summary"], indent=2))


# --- monitoring_mode: files, against a Prometheus the site already runs ------------------------

def test_files_mode_feeds_an_existing_prometheus(tmp_path):
    """cluster-node3 runs a Prometheus of its own (Debian's, installed by hand,
    as a site's existing one would be).  The role in monitoring_mode: files
    writes only the rule files, file_sd targets and a scrape config, and
    reloads it; the operator includes them once (Prometheus 2.42 has no
    scrape_config_files, so the jobs are copied), and that Prometheus then
    evaluates the fleet's rules over the same targets as cluster-mon's.  A
    second run changes nothing."""
    host = "cluster-node3"
    # A fresh one each run (purged first, should this test run again on the same host).
    sh(host, "export DEBIAN_FRONTEND=noninteractive; apt-get purge -y -qq prometheus >/dev/null; rm -rf /etc/prometheus;"
             " apt-get install -y -qq --no-install-recommends prometheus >/dev/null")
    inventory = tmp_path / "existing-prometheus.yml"
    inventory.write_text(yaml.safe_dump({"monitoring": {"hosts": {host: {
        "monitoring_mode": "files", "monitoring_tls_probe_targets": [], "monitoring_alertmanager_receivers": []}}}}))
    args = ("--limit", host, "--tags", "monitoring")
    run = playbook("site.yml", *args, inventories=(str(inventory),))
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert "RUNNING HANDLER [monitoring : Reload prometheus]" in run.stdout
    # The role left the site's prometheus.yml alone; the operator includes the fleet's files once.
    config = yaml.safe_load(sh(host, "cat /etc/prometheus/prometheus.yml").stdout)
    assert "vllm-fleet" not in json.dumps(config)
    fleet = yaml.safe_load(sh(host, "cat /etc/prometheus/vllm-fleet.scrape.yml").stdout)
    config["rule_files"] = config.get("rule_files") or []
    config["rule_files"].append("/etc/prometheus/rules/vllm-fleet/*.rules.yml")
    # The rules select the fleet's job names (node, vllm, ...): a job of the site's own by one
    # of those names (Debian's default config has "node") gives way to the fleet's.
    names = {job["job_name"] for job in fleet["scrape_configs"]}
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] not in names] + fleet["scrape_configs"]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run(["docker", "cp", str(local), f"{host}:/etc/prometheus/prometheus.yml"], check=True)
    sh(host, "promtool check config /etc/prometheus/prometheus.yml && systemctl reload prometheus")

    def theirs(path: str, **params: str) -> dict:
        return http_get_json(host, f"http://127.0.0.1:9090/api/v1/{path}", **params)

    def fleet_alerts() -> list[str]:
        groups = theirs("rules", type="alert")["data"]["groups"]
        return sorted(r["name"] for g in groups if g["name"].startswith("vllm-fleet-") for r in g["rules"])

    wait_for(lambda: len(fleet_alerts()) == 25, 30, interval=1)
    assert fleet_alerts() == sorted(r["name"] for r in alert_rules())

    def targets(answer: dict) -> set[tuple[str, str]]:
        return {(t["labels"]["job"], t["labels"]["instance"]) for t in answer["data"]["activeTargets"]
                if t["labels"]["job"] in ("vllm", "node", "nginx", "mtail", "gateway")}

    wait_for(lambda: targets(theirs("targets", state="active")) == targets(prometheus("targets", state="active")),
             60, interval=2)
    # Its own node_exporter answers it (the other hosts' firewalls let only cluster-mon scrape).
    wait_for(lambda: any(s["value"][1] == "1" for s in theirs("query", query=f'up{{job="node", node="{host}"}}')
                         ["data"]["result"]), 60, interval=2)
    again = playbook("site.yml", *args, inventories=(str(inventory),))
    assert again.returncode == 0, again.stdout[-5000:]
    assert recap(again.stdout)[host]["changed"] == 0, again.stdout[-3000:]
