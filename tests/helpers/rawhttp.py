"""An HTTP/1.1 client that sends the request target byte for byte.

``requests``/``urllib3``/``http.client`` normalise or reject the targets the
gateway tests need (``/metrics/../v1/models``, ``/v1%2Fmodels``,
``/v1/models;x``, a backslash, ``%00``): this one writes the request line
verbatim over a plain or TLS socket and parses one response (Content-Length,
chunked or read-to-close bodies; interim 1xx responses skipped).

    from tests.helpers.rawhttp import raw_request
    r = raw_request("172.31.250.100", 443, "GET", "/metrics/../v1/models",
                    {"Authorization": "Bearer ..."}, tls_ca=ca)
    assert r.status == 404, r.body
"""
from __future__ import annotations

import dataclasses
import socket
import ssl
from collections.abc import Iterable, Mapping
from typing import BinaryIO

__all__ = ["RawResponse", "raw_request"]

HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]]
_MAX_LINE = 65536


@dataclasses.dataclass(frozen=True)
class RawResponse:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]  # in the order received, names as sent
    body: bytes  # de-chunked
    request_line: bytes  # what was written, without CRLF

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header of that name (case-insensitive)."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), default)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _encode(value: str | bytes, what: str) -> bytes:
    data = value if isinstance(value, bytes) else value.encode("latin-1")
    if b"\r" in data or b"\n" in data:
        raise ValueError(f"{what} {value!r} holds CR or LF: one request per call")
    return data


def _header_pairs(headers: HeaderInput | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


def build_request(method: str, target: str | bytes, headers: HeaderInput | None, body: bytes,
                  host_header: str) -> bytes:
    """The exact bytes ``raw_request`` writes (exposed for tests).

    Adds ``Host`` (unless given), ``Connection: close`` (replacing any given)
    and ``Content-Length`` when there is a body or the method carries one.
    """
    pairs = [(k, v) for k, v in _header_pairs(headers) if k.lower() != "connection"]
    names = {k.lower() for k, _ in pairs}
    if "host" not in names:
        pairs.insert(0, ("Host", host_header))
    if "content-length" not in names and "transfer-encoding" not in names and (
            body or method.upper() in ("POST", "PUT", "PATCH")):
        pairs.append(("Content-Length", str(len(body))))
    pairs.append(("Connection", "close"))
    lines = [_encode(method, "method") + b" " + _encode(target, "target") + b" HTTP/1.1"]
    lines += [_encode(k, "header name") + b": " + _encode(v, "header value") for k, v in pairs]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _readline(stream: BinaryIO) -> bytes:
    line = stream.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise ValueError("response line longer than 64 KiB")
    return line


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ConnectionError(f"connection closed after {len(data)} of {n} body bytes")
    return data


def _read_head(stream: BinaryIO) -> tuple[str, int, str, list[tuple[str, str]]]:
    status_line = _readline(stream)
    if not status_line:
        raise ConnectionError("connection closed before a status line")
    version, _, rest = status_line.decode("latin-1").rstrip("\r\n").partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise ValueError(f"not an HTTP status line: {status_line!r}")
    headers = []
    while True:
        line = _readline(stream)
        if line in (b"\r\n", b"\n", b""):
            break
        name, sep, value = line.decode("latin-1").rstrip("\r\n").partition(":")
        if not sep:
            raise ValueError(f"malformed header line: {line!r}")
        headers.append((name.strip(), value.strip()))
    return version, int(code), reason, headers


def _read_chunked(stream: BinaryIO) -> bytes:
    body = bytearray()
    while True:
        size_line = _readline(stream).split(b";", 1)[0].strip()
        if not size_line:
            raise ConnectionError("connection closed inside a chunked body")
        size = int(size_line, 16)
        if size == 0:
            while _readline(stream) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return bytes(body)
        body += _read_exact(stream, size)
        _readline(stream)  # CRLF after the chunk


def read_response(stream: BinaryIO, method: str, request_line: bytes) -> RawResponse:
    """Parse one response from ``stream`` (exposed for tests)."""
    while True:
        version, status, reason, headers = _read_head(stream)
        if not 100 <= status < 200 or status == 101:
            break
    lowered = {k.lower(): v for k, v in headers}
    if method.upper() == "HEAD" or status in (101, 204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in lowered.get("transfer-encoding", "").lower():
        body = _read_chunked(stream)
    elif "content-length" in lowered:
        body = _read_exact(stream, int(lowered["content-length"]))
    else:
        body = stream.read()
    return RawResponse(status, reason, version, headers, body, request_line)


def raw_request(host: str, port: int, method: str, target: str | bytes,
                headers: HeaderInput | None = None, body: bytes = b"", tls_ca: str | None = None,
                server_hostname: str | None = None, timeout: float = 10) -> RawResponse:
    """Send one HTTP/1.1 request with ``target`` written exactly as given.

    ``target`` is never normalised, quoted or unquoted; a ``str`` is encoded
    as latin-1, ``bytes`` go as they are (only CR/LF are refused).
    ``tls_ca``: a CA file; the connection is then TLS, verified against it
    for ``server_hostname`` (default ``host``), which also names the default
    ``Host`` header. ``timeout`` bounds connecting and every read.
    """
    name = server_hostname or host
    host_header = name if port in (80, 443) else f"{name}:{port}"
    if ":" in name and not name.startswith("["):
        host_header = f"[{name}]" if port in (80, 443) else f"[{name}]:{port}"
    request = build_request(method, target, headers, body, host_header)
    request_line = request.split(b"\r\n", 1)[0]
    sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
    try:
        if tls_ca is not None:
            context = ssl.create_default_context(cafile=tls_ca)
            sock = context.wrap_socket(sock, server_hostname=name)
        sock.sendall(request)
        with sock.makefile("rb") as stream:
            return read_response(stream, method, request_line)
    finally:
        sock.close()
