"""Preflight rules of the gateway and failover roles, cross-host ones included.

Same harness as test_preflight.py: the real site.yml against two local
hosts, both gateways, one with a bad value; the run must stop before any
change on either host.  Certificates are made here, at run time.
"""
from __future__ import annotations

import datetime
import ipaddress
import pathlib
import socket

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from test_preflight import assert_rejected, run_site

KEY_A = "A" * 40
KEY_B = "B" * 40


def pem_pair(days_valid=30, key=None, rsa_bits=None, not_before_days=-1):
    key = key or (rsa.generate_private_key(65537, rsa_bits) if rsa_bits else ec.generate_private_key(ec.SECP256R1()))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "preflight.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=not_before_days))
            .not_valid_after(now + datetime.timedelta(days=days_valid))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def this_machine_address() -> str:
    """An IPv4 address of this machine that is not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        return sock.getsockname()[0]


ADDRESS = this_machine_address()
NET = ipaddress.ip_network(f"{ADDRESS}/24", strict=False)
FREE_VIP = str(list(NET.hosts())[-2]) if str(list(NET.hosts())[-2]) != ADDRESS else str(list(NET.hosts())[-3])
CERT, KEY = pem_pair()


def gateway_vars(**overrides):
    values = {
        "vllm_listen_address": ADDRESS,
        "gateway_tls_certificate": CERT,
        "gateway_tls_private_key": KEY,
        "gateway_api_clients": [{"name": "alice", "key": KEY_A}, {"name": "bob", "key": KEY_B}],
        "failover_vip": FREE_VIP,
        "failover_vip_prefix": 24,
    }
    values.update(overrides)
    return values


EXPIRED = pem_pair(days_valid=-1, not_before_days=-10)
OTHER_KEY = pem_pair()[1]
RSA_1024 = pem_pair(rsa_bits=1024)

CASES = {
    "short client key": ({"gateway_api_clients": [{"name": "alice", "key": "short"}]},
                         ["gateway_api_clients", "client 'alice'", "32-256 characters"]),
    "duplicate client key": ({"gateway_api_clients": [{"name": "alice", "key": KEY_A}, {"name": "carol", "key": KEY_A}]},
                             ["same key as client 'alice'"]),
    "quote in client key": ({"gateway_api_clients": [{"name": "alice", "key": KEY_A + '"; return 200'}]},
                            ["client 'alice'", "[A-Za-z0-9._~+/=-]"]),
    "no clients": ({"gateway_api_clients": []}, ["gateway_api_clients: empty"]),
    "bad hash header": ({"gateway_hash_header": "X Session"}, ["gateway_hash_header=X Session", "header name"]),
    "unknown interface": ({"failover_interface": "nosuch0"}, ["failover_interface=nosuch0", "one of this host's"]),
    "zero rate": ({"gateway_rate_limit": 0}, ["gateway_rate_limit=0", "> 0"]),
    "admin route in the allowlist": ({"gateway_allowed_endpoints": ["/v1/completions", "/metrics"]},
                                     ["gateway_allowed_endpoints=", "/metrics: route /metrics",
                                      "operations/engine-control"]),
    "no such route in the allowlist": ({"gateway_allowed_endpoints": ["/v1/complete"]},
                                       ["/v1/complete: no such route in vLLM 0.32.0"]),
    "typo in a client setting": ({"gateway_api_clients": [{"name": "alice", "key": KEY_A, "max_stream": 2}]},
                                 ["gateway_api_clients[0].max_stream (client 'alice'): not a client setting"]),
    "client name that would break the config": ({"gateway_api_clients": [{"name": 'al"ice', "key": KEY_A}]},
                                                ["gateway_api_clients[0].name='al\"ice'"]),
    "quota without accounting": ({"gateway_token_accounting": False, "gateway_token_quota_per_day": 1000},
                                 ["gateway_token_quota_per_day=1000", "needs gateway_token_accounting=true"]),
    "header limit above the buffers": ({"gateway_max_header_size": "64k"},
                                       ["gateway_max_header_size=64k", "1k to 32k"]),
    "expired certificate": ({"gateway_tls_certificate": EXPIRED[0], "gateway_tls_private_key": EXPIRED[1]},
                            ["the certificate is not valid now"]),
    "key does not match": ({"gateway_tls_private_key": OTHER_KEY}, ["certificate and key do not match"]),
    "weak RSA key": ({"gateway_tls_certificate": RSA_1024[0], "gateway_tls_private_key": RSA_1024[1]},
                     ["key RSA 1024 bits", "RSA >= 2048"]),
    "VIP outside the subnet": ({"failover_vip": "198.51.100.7"},
                               ["failover_vip=198.51.100.7/24", "no address of this host"]),
    "VIP is a node address": ({"failover_vip": ADDRESS}, [f"failover_vip={ADDRESS}/24", "equals the address of"]),
    "router id out of range": ({"failover_virtual_router_id": 300}, ["failover_virtual_router_id=300", "1-255"]),
    "fractional advert with VRRPv2": ({"failover_vrrp_version": 2, "failover_advert_interval": 0.5},
                                      ["failover_advert_interval=0.5", "whole"]),
    "real-time priority out of range": ({"failover_realtime_priority": 120},
                                        ["failover_realtime_priority=120", "from 1 to 99", "or 0 for none"]),
}


@pytest.mark.parametrize("bad,fragments", CASES.values(), ids=CASES.keys())
def test_bad_gateway_value_fails_before_any_change(tmp_path, bad, fragments):
    result, out = run_site(tmp_path, {**gateway_vars(), **bad}, gateways=True, common=gateway_vars())
    assert_rejected(tmp_path, result, out, *fragments)


def test_equal_priorities_fail_on_both_peers_before_any_change(tmp_path):
    """A clash is symmetric: both gateways are reported, none is changed."""
    result, out = run_site(tmp_path, {**gateway_vars(), "failover_priority": 200}, gateways=True,
                           common=gateway_vars())
    assert result.returncode != 0
    assert "[bad-node] failover_priority=200" in out and "[good-node] failover_priority=200" in out
    assert "distinct among vllm_gateways" in out
    # Every host failed, so Ansible had no host left for the later plays.
    assert "vllm : Install" not in out and "gateway : Install" not in out
    assert not (tmp_path / "state").exists()


def test_a_valid_gateway_pair_passes_preflight(tmp_path):
    result, out = run_site(tmp_path, gateway_vars(), gateways=True, common=gateway_vars(),
                           playbook="playbooks/preflight.yml")
    assert result.returncode == 0, out[-4000:]
