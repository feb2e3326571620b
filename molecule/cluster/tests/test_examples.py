"""The client examples (examples/) run as users run them: the official OpenAI
SDK, pointed at the VIP with the lab CA and a client key from the environment
(never argv).  Each must exit 0 with a real answer, and the gateway's access
log must show its requests; a wrong key or a missing CA must make it fail."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import BASE, CA, ROOT, access_log, secret, vip_holders

EXAMPLES = ROOT / "examples"


def run(example: str, *args: str, key: str = "client-lab-alice", ca: bool = True, timeout: int = 240):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "VLLM_FLEET_", "SSL_CERT"))}
    env.update(OPENAI_BASE_URL=f"{BASE}/v1", OPENAI_API_KEY=secret(key) if key else "wrong-key-for-the-test",
               NO_PROXY="*")
    if ca:
        env["VLLM_FLEET_CA"] = str(CA)
    return subprocess.run([sys.executable, str(EXAMPLES / example), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def requests_seen(holder: str, since: int) -> list[str]:
    return [e["uri"] for e in access_log(holder)[since:]]


@pytest.fixture()
def holder():
    holders = vip_holders()
    assert len(holders) == 1, holders
    return holders[0]


def test_completion_and_chat(holder):
    seen = len(access_log(holder))
    done = run("complete_and_chat.py")
    assert done.returncode == 0, done.stderr[-2000:]
    completion = re.search(r"^completion: .+ \((\d+) tokens\)$", done.stdout, re.M)
    chat = re.search(r"^chat: .+ \((\d+) tokens, finish_reason=(stop|length)\)$", done.stdout, re.M | re.S)
    assert completion and int(completion.group(1)) > 0, done.stdout
    assert chat and int(chat.group(1)) > 0, done.stdout
    uris = requests_seen(holder, seen)
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions"} <= set(uris), uris


def test_streamed_chat():
    done = run("stream_chat.py")
    assert done.returncode == 0, done.stderr[-2000:]
    streamed = re.search(r"^\[(\d+) tokens streamed\]$", done.stdout, re.M)
    assert streamed and int(streamed.group(1)) > 0, done.stdout
    assert done.stdout.rsplit("\n[", 1)[0].strip(), "no text before the usage line"


def test_async_batch_with_bounded_concurrency():
    done = run("batch_async.py", "16", "4")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert re.search(r"^16/16 answered, [1-9]\d* tokens in .* with at most 4 in flight$", done.stdout, re.M), done.stdout


def test_async_batch_retries_through_a_tight_rate_limit(holder):
    """lab-bob may send 1 request/s (burst 2): one after another, short
    completions outrun that and get 429s with Retry-After: 1, and the SDK's
    retries (one contender: a retry a second later always finds room) still
    get every prompt answered."""
    seen = len(access_log(holder))
    done = run("batch_async.py", "6", "1", key="client-lab-bob")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "6/6 answered" in done.stdout and "at most 1 in flight" in done.stdout, done.stdout
    statuses = [str(e["status"]) for e in access_log(holder)[seen:] if e["uri"] == "/v1/completions"]
    assert "429" in statuses and statuses.count("200") == 6, statuses


def test_responses_api():
    done = run("responses.py")
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"^responses: .+ \(status=(completed|incomplete), [1-9]\d* tokens\)$", done.stdout, re.M | re.S), \
        done.stdout


def test_a_wrong_key_fails_with_401():
    done = run("complete_and_chat.py", key="")
    assert done.returncode != 0
    assert "AuthenticationError" in done.stderr and "401" in done.stderr, done.stderr[-2000:]


def test_without_the_lab_ca_the_certificate_is_refused():
    done = run("complete_and_chat.py", ca=False)
    assert done.returncode != 0
    assert "APIConnectionError" in done.stderr and "CERTIFICATE_VERIFY_FAILED" in done.stderr, done.stderr[-2000:]
