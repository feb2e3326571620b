"""tests.helpers.rawhttp against a local http.server that echoes the raw request line."""
from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import pathlib
import ssl
import threading
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers.rawhttp import build_request, raw_request


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers with what it received, before any normalisation."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib's name)
        pass

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.dumps({
            "requestline": self.requestline,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": self.rfile.read(length).decode("latin-1"),
        }).encode()
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Check")
            self.end_headers()
            half = len(payload) // 2
            for part in (payload[:half], payload[half:]):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Check: done\r\n\r\n")
        elif self.path.startswith("/eof"):
            self.send_response(203, "Read To Close")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.close_connection = True
        else:
            self.send_response(404 if self.path.startswith("/missing") else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = _echo


@pytest.fixture(scope="module")
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _echo(server: http.server.ThreadingHTTPServer, method: str, target: str | bytes, **kwargs: object) -> dict:
    response = raw_request("127.0.0.1", server.server_address[1], method, target, **kwargs)  # type: ignore[arg-type]
    assert response.status in (200, 203, 404), response
    return json.loads(response.body)


@pytest.mark.parametrize("target", [
    "/metrics/../v1/models",
    "/v1/./models",
    "/v1%2Fmodels",
    "/v1/%2e%2e/metrics",
    "//v1//models/",
    "/v1/models;x",
    "/V1/Models",
    "/v1/models%00",
    "/v1\\models",
    "/v1/models?a=../../metrics#frag",
    "http://other.example/v1/models",
    "*",
])
def test_the_request_line_reaches_the_server_byte_for_byte(server, target):
    echoed = _echo(server, "GET", target)
    # The request line as the server read it (http.server itself folds a
    # leading '//' in ``self.path``; the line is what went over the wire).
    assert echoed["requestline"] == f"GET {target} HTTP/1.1"


def test_bytes_targets_are_sent_as_they_are(server):
    response = raw_request("127.0.0.1", server.server_address[1], "GET", b"/caf\xe9/../x")
    assert response.request_line == b"GET /caf\xe9/../x HTTP/1.1"
    assert json.loads(response.body)["path"] == "/caf\xe9/../x"


def test_headers_host_connection_and_body(server):
    port = server.server_address[1]
    echoed = _echo(server, "POST", "/v1/completions", headers={"Authorization": "Bearer k", "Connection": "keep-alive"},
                   body=b'{"a": 1}')
    headers = [tuple(h) for h in echoed["headers"]]
    assert headers[0] == ("Host", f"127.0.0.1:{port}")
    assert ("Authorization", "Bearer k") in headers
    assert ("Connection", "close") in headers and ("Connection", "keep-alive") not in headers
    assert ("Content-Length", "8") in headers
    assert echoed["body"] == '{"a": 1}'
    # A Host given by the caller wins (virtual-host tests).
    given = _echo(server, "GET", "/", headers=[("Host", "vllm.lab.internal")])
    assert [h for h in given["headers"] if h[0] == "Host"] == [["Host", "vllm.lab.internal"]]


def test_response_framings(server):
    port = server.server_address[1]
    chunked = raw_request("127.0.0.1", port, "GET", "/chunked/../x")
    assert chunked.status == 200 and chunked.header("transfer-encoding") == "chunked"
    assert json.loads(chunked.body)["path"] == "/chunked/../x"
    to_close = raw_request("127.0.0.1", port, "GET", "/eof")
    assert (to_close.status, to_close.reason) == (203, "Read To Close")
    assert json.loads(to_close.body)["path"] == "/eof"
    missing = raw_request("127.0.0.1", port, "GET", "/missing")
    assert missing.status == 404 and missing.header("Content-Type") == "application/json"
    head = raw_request("127.0.0.1", port, "HEAD", "/x")
    assert head.status == 200 and head.body == b"" and int(head.header("content-length") or 0) > 0
    # An interim 100 Continue is skipped: the final response is returned.
    cont = raw_request("127.0.0.1", port, "POST", "/x", headers={"Expect": "100-continue"}, body=b"hi")
    assert cont.status == 200 and json.loads(cont.body)["body"] == "hi"


def test_cr_lf_are_refused_so_one_call_is_one_request():
    with pytest.raises(ValueError, match="CR or LF"):
        build_request("GET", "/v1/models HTTP/1.1\r\nX: y", None, b"", "h")
    with pytest.raises(ValueError, match="CR or LF"):
        build_request("GET", "/", {"X": "a\nb"}, b"", "h")


def _pki(tmp: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A CA and a server certificate for 'lab.test' and 127.0.0.1."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rawhttp test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("lab.test"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.crt", tmp / "server.crt", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_verifies_against_the_given_ca_and_name(tmp_path):
    ca, cert, key = _pki(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    port = srv.server_address[1]
    try:
        by_ip = raw_request("127.0.0.1", port, "GET", "/metrics/../v1/models", tls_ca=str(ca))
        assert json.loads(by_ip.body)["requestline"] == "GET /metrics/../v1/models HTTP/1.1"
        by_name = raw_request("127.0.0.1", port, "GET", "/v1//models", tls_ca=str(ca), server_hostname="lab.test")
        echoed = json.loads(by_name.body)
        assert echoed["path"] == "/v1//models"
        assert ["Host", f"lab.test:{port}"] in echoed["headers"]
        with pytest.raises(ssl.SSLCertVerificationError):
            raw_request("127.0.0.1", port, "GET", "/", tls_ca=str(ca), server_hostname="other.test")
        with pytest.raises(ssl.SSLCertVerificationError):
            raw_request("127.0.0.1", port, "GET", "/", tls_ca=str(_pki(other)[0]))
    finally:
        srv.shutdown()
        srv.server_close()
