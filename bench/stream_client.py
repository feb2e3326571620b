"""Streaming client copied into a lab node by bench/cluster.py (stdlib only).

usage: python3 stream_client.py URL[,URL...] CA_FILE N MAX_TOKENS   (key on stdin)
Several URLs are taken in turn, one request each (as nginx spreads requests over its backends).
Prints one JSON line per request: {"ok": bool, "status": int, "chunks": n, "ttft": s,
"interval": mean s between chunks}; the clock starts after the connection (and TLS) is up.
"""
import http.client
import json
import ssl
import sys
import time
import urllib.parse


def one(url, ca, key, max_tokens):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=60,
                                           context=ssl.create_default_context(cafile=ca))
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
    body = json.dumps({"model": "tiny-llama", "prompt": "Once upon a time", "max_tokens": max_tokens,
                       "stream": True, "ignore_eos": True})
    # Connect (and, through the VIP, finish the TLS handshake) before the clock
    # starts: clients keep connections alive, so TTFT compares the request
    # path, not the handshake.
    conn.connect()
    start = time.perf_counter()
    conn.request("POST", parts.path, body=body, headers={
        "Authorization": "Bearer " + key, "Content-Type": "application/json"})
    resp = conn.getresponse()
    arrivals = []
    done = False
    while True:
        line = resp.readline()
        if not line:
            break
        if line.startswith(b"data: [DONE]"):
            done = True
            break
        if line.startswith(b"data: "):
            arrivals.append(time.perf_counter() - start)
    conn.close()
    # A frontend that falls behind may merge the whole answer into one chunk:
    # that is an answer (ok), with no cadence to measure.
    ok = resp.status == 200 and done and len(arrivals) >= 1
    # vLLM may put several tokens in one chunk, and a reader may get several
    # chunks in one read: the cadence is the mean time per chunk over the stream.
    return {"ok": ok, "status": resp.status, "chunks": len(arrivals), "ttft": arrivals[0] if arrivals else None,
            "interval": (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) if len(arrivals) > 1 else None}


def main():
    urls, ca, n, max_tokens = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    key = sys.stdin.readline().strip()
    for i in range(n):
        print(json.dumps(one(urls[i % len(urls)], ca, key, max_tokens)), flush=True)


if __name__ == "__main__":
    main()
