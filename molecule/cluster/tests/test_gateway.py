"""The gateway through the VIP: TLS, keys, allowlist, limits, streaming, spread."""
import socket
import ssl
import subprocess
import time

import requests

from conftest import BASE, MODEL, ROOT, NODES, VIP, access_log, completion, secret, sh, vip_holders


def test_exactly_one_node_holds_the_vip():
    assert len(vip_holders()) == 1


def test_health_needs_no_key(api):
    assert api.get(f"{BASE}/health", timeout=10).status_code == 200


def test_missing_or_unknown_key_is_401_with_a_json_error(api):
    for headers in ({}, {"Authorization": "Bearer not-a-client-key-0123456789abcdef"}):
        reply = completion(api, headers)
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "invalid_api_key"


def test_a_client_key_is_accepted_and_replaced_by_the_internal_key(api, alice):
    # vLLM only accepts its internal key, which differs from every client key:
    # a 200 proves the gateway swapped it.
    assert secret("client-lab-alice") != secret("vllm_api_key")
    reply = api.get(f"{BASE}/v1/models", headers=alice, timeout=10)
    assert reply.status_code == 200
    assert [m["id"] for m in reply.json()["data"]] == [MODEL]
    reply = completion(api, alice, max_tokens=8)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 8
    assert reply.headers["X-Request-Id"]


def test_endpoints_outside_the_allowlist_are_404(api, alice):
    for path in ("/invocations", "/metrics", "/tokenize", "/pause", "/collective_rpc", "/update_weights", "/"):
        reply = api.post(f"{BASE}{path}", headers=alice, json={}, timeout=10)
        assert reply.status_code == 404, path
        assert reply.json()["error"]["code"] == "not_found"


def test_plain_http_redirects_to_https():
    reply = requests.get(f"http://{VIP}/v1/models", allow_redirects=False, timeout=10)
    assert reply.status_code == 301
    assert reply.headers["Location"].startswith(f"https://{VIP}/")


def test_tls_is_mozilla_intermediate(ca, api):
    def handshake(version):
        ctx = ssl.create_default_context(cafile=ca)
        ctx.minimum_version = ctx.maximum_version = version
        with socket.create_connection((VIP, 443), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=VIP) as tls:
                return tls.version(), tls.cipher()[0]

    assert handshake(ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"
    version, cipher = handshake(ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        try:
            handshake(old)
        except (ssl.SSLError, OSError):
            continue
        raise AssertionError(f"{old} was accepted")
    hsts = api.get(f"{BASE}/health", timeout=10).headers["Strict-Transport-Security"]
    assert hsts == "max-age=63072000"


def test_rate_limit_answers_429_after_the_burst(api, bob):
    # bob: 1 request/s, burst 2.  Seven back-to-back requests cannot all pass.
    replies = [api.get(f"{BASE}/v1/models", headers=bob, timeout=10) for _ in range(7)]
    codes = [r.status_code for r in replies]
    assert codes[:3] == [200, 200, 200], codes
    limited = [r for r in replies if r.status_code == 429]
    assert limited, codes
    for reply in limited:
        assert reply.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(reply.headers["Retry-After"]) >= 1
    time.sleep(3)
    assert api.get(f"{BASE}/v1/models", headers=bob, timeout=10).status_code == 200


def test_streaming_is_not_buffered(api, alice):
    arrivals = []
    start = time.monotonic()
    with api.post(f"{BASE}/v1/completions", headers=alice, stream=True, timeout=60,
                  json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 256,
                        "stream": True, "ignore_eos": True}) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic() - start)
    # vLLM may put several tokens in one chunk; there are still many chunks.
    assert len(arrivals) >= 32, len(arrivals)
    spread = arrivals[-1] - arrivals[0]
    # A buffering proxy delivers every chunk at once at the end.
    assert spread > 0.05, f"first chunk at {arrivals[0]:.3f}s, last at {arrivals[-1]:.3f}s"
    assert arrivals[0] < arrivals[-1] - spread / 2


def test_requests_spread_over_both_backends(api, alice):
    holder = vip_holders()[0]
    before = len(access_log(holder))
    for i in range(12):
        assert completion(api, alice, prompt=f"spread {i}", max_tokens=2).status_code == 200
    used = {entry["upstream_addr"] for entry in access_log(holder)[before:] if entry["uri"] == "/v1/completions"}
    assert used == {f"{address}:8000" for address in NODES.values()}, used


def test_access_log_is_json_with_client_and_request_id_and_no_key(api, alice):
    reply = completion(api, alice, max_tokens=1)
    request_id = reply.headers["X-Request-Id"]
    holder = vip_holders()[0]
    entry = next(e for e in access_log(holder) if e["request_id"] == request_id)
    assert entry["client"] == "lab-alice" and entry["status"] == 200
    assert entry["upstream_addr"] and float(entry["request_time"]) >= 0
    raw = sh(holder, "cat /var/log/nginx/vllm-access.json").stdout
    assert secret("client-lab-alice") not in raw and "Bearer" not in raw


def reachable_from_here(address, port):
    try:
        socket.create_connection((address, port), timeout=2).close()
        return True
    except OSError:
        return False


def test_metrics_listener_is_local_only():
    for node in NODES:
        assert "Active connections" in sh(node, "curl -fsS http://127.0.0.1:8081/stub_status").stdout
    # This machine is not a monitoring host: the firewall drops it.
    assert not reachable_from_here(NODES["cluster-node1"], 8081)


def test_firewall_lets_only_gateways_reach_vllm():
    for address in NODES.values():
        assert not reachable_from_here(address, 8000)
        assert reachable_from_here(address, 443)
    # The nodes are gateways: they reach each other's vLLM.
    assert sh("cluster-node1", f"curl -fsS -o /dev/null -w '%{{http_code}}' http://{NODES['cluster-node2']}:8000/health").stdout == "200"
    ruleset = sh("cluster-node1", "nft list table inet vllm_fleet").stdout
    assert "policy drop" in ruleset and "ip protocol 112" in ruleset.replace("vrrp", "112")


def test_sslyze_finds_the_tls_setup_compliant_with_mozilla_intermediate(ca):
    sslyze = ROOT / ".venv-sslyze" / "bin" / "sslyze"
    assert sslyze.exists(), "run `make venv` (it installs sslyze in .venv-sslyze)"
    proc = subprocess.run([str(sslyze), "--mozilla_config=intermediate", f"--certinfo_ca_file={ca}", f"{VIP}:443"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"{VIP}:443: OK - Compliant." in proc.stdout, proc.stdout[-2000:]


def test_vrrp_state_is_exported_as_a_textfile_metric():
    holder = vip_holders()[0]
    for node in NODES:
        text = sh(node, "cat /var/lib/prometheus/node-exporter/vllm_fleet_vrrp.prom").stdout
        expected = 1 if node == holder else 0
        assert f'vllm_fleet_vrrp_master{{vrrp_instance="VI_vllm"}} {expected}' in text, (node, text)
