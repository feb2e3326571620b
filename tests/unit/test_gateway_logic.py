import pytest

from vllm_fleet.failover import vip_owners, vrid_clashes, vrrp_priorities
from vllm_fleet.endpoints import backends
from vllm_fleet.gateway import (client_problems, clients, endpoint_kind, largest_body, limit_zones,
                                lua_config, rate_spec, size_bytes)
from vllm_fleet.network import in_subnet, interface_of

KEY_A = "a" * 40
KEY_B = "b" * 40


def test_backends_follow_inventory_order_and_the_vllm_role_defaults():
    hosts = [
        {"inventory_hostname": "n1", "vllm_listen_address": "10.0.0.1",
         "vllm_instances": [{"name": "g0", "port": 8000}, {"name": "g1", "port": 8001}]},
        {"inventory_hostname": "n2", "vllm_listen_address": "10.0.0.2"},
    ]
    assert [b["endpoint"] for b in backends(hosts)] == ["10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.2:8000"]
    assert backends([{"inventory_hostname": "n3", "vllm_listen_address": "fd00::3"}])[0]["endpoint"] == "[fd00::3]:8000"


def test_clients_inherit_role_wide_limits_and_zones_group_equal_limits():
    filled = clients([{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B, "rate": 1, "burst": 2}], 10, 20, 16)
    assert filled[0] == {"name": "a", "key": KEY_A, "rate": 10, "burst": 20, "max_streams": 16,
                         "max_body_size": "1m", "max_tokens": None, "token_quota_per_minute": None,
                         "token_quota_per_day": None}
    zones = limit_zones(filled)
    assert sorted(z["clients"] for z in zones["req"]) == [["a"], ["b"]]
    assert zones["conn"] == [{"id": 0, "max": 16, "clients": ["a", "b"]}]


def test_rate_spec():
    assert rate_spec(10) == "10r/s"
    assert rate_spec(0.5) == "30r/m"


def test_client_problems_name_the_client_and_never_the_key():
    bad = [
        {"name": "ok", "key": KEY_A},
        {"name": "dup-key", "key": KEY_A},
        {"name": "short", "key": "tooshort"},
        {"name": "quote", "key": 'x' * 40 + '"; return 200;'},
        {"name": "ok", "key": KEY_B},
        {"name": "", "key": "c" * 40},
        {"name": "zero", "key": "d" * 40, "rate": 0},
    ]
    problems = client_problems(bad)
    text = "\n".join(problems)
    assert "same key as client 'ok'" in text
    assert "client 'short'" in text and "client 'quote'" in text
    assert "names must be unique" in text
    assert "gateway_api_clients[5].name=''" in text
    assert "gateway_api_clients[6].rate=0" in text
    assert KEY_A not in text and "tooshort" not in text
    assert client_problems([{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B}]) == []


def test_keys_differing_only_in_case_are_distinct_clients():
    """The gateway matches keys exactly, so the duplicate check must too."""
    upper = KEY_A.upper()
    assert client_problems([{"name": "a", "key": KEY_A}, {"name": "b", "key": upper}]) == []
    assert lua_config(clients([{"name": "a", "key": KEY_A}, {"name": "b", "key": upper}], 1, 1, 1), 16, True)[
        "keys"] == {KEY_A: "a", upper: "b"}


def test_client_problems_refuse_typos_and_bad_limits():
    problems = "\n".join(client_problems([
        {"name": "a", "key": KEY_A, "max_stream": 2},
        {"name": "b", "key": KEY_B, "max_tokens": 0, "token_quota_per_day": 1.5, "max_body_size": "2 MB"},
        {"name": "c", "key": "c" * 40, "rate": "fast", "burst": True, "token_quota_per_minute": None},
        {"name": "d e", "key": "d" * 40},
        {"name": 'x"y', "key": "e" * 40},
    ]))
    assert "gateway_api_clients[0].max_stream (client 'a'): not a client setting" in problems
    assert "max_streams" in problems.split("allowed: ")[1]
    assert "gateway_api_clients[1].max_tokens=0 (client 'b'): must be a whole number > 0" in problems
    assert "gateway_api_clients[1].token_quota_per_day=1.5" in problems
    assert "gateway_api_clients[1].max_body_size='2 MB'" in problems
    assert "gateway_api_clients[2].rate='fast'" in problems and "gateway_api_clients[2].burst=True" in problems
    assert "token_quota_per_minute=" not in problems  # null means none
    assert "gateway_api_clients[3].name='d e'" in problems
    assert client_problems(["alice"]) == ["gateway_api_clients[0]=str: each client is a mapping with at least name and key"] and "gateway_api_clients[4].name='x\"y'" in problems


def test_sizes_and_the_largest_body():
    assert size_bytes("1m") == 1048576 and size_bytes("512k") == 524288 and size_bytes(100) == 100
    assert size_bytes("2G") == 2 * 1024 ** 3
    with pytest.raises(ValueError):
        size_bytes("1 MB")
    filled = clients([{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B, "max_body_size": "4m"}], 1, 1, 1, "1m")
    assert largest_body(filled, "1m") == "4m"
    assert largest_body(filled[:1], "1m") == "1m"


def test_lua_config_carries_caps_and_quotas_with_role_defaults():
    filled = clients([{"name": "a", "key": KEY_A, "max_tokens": 64},
                      {"name": "b", "key": KEY_B, "token_quota_per_minute": None}], 1, 1, 1, "1m",
                     {"max_tokens": None, "token_quota_per_minute": 1000, "token_quota_per_day": 50000})
    config = lua_config(filled, 8, True)
    assert config["accounting"] is True and config["max_n"] == 8
    assert config["clients"]["a"] == {"max_body": 1048576, "max_tokens": 64, "quota_minute": 1000,
                                      "quota_day": 50000}
    # A client's own null removes the role-wide quota.
    assert config["clients"]["b"] == {"max_body": 1048576, "quota_day": 50000}


def test_endpoint_kinds():
    assert endpoint_kind("/v1/completions") == "completions"
    assert endpoint_kind("/v1/chat/completions") == "chat"
    assert endpoint_kind("/v1/responses") == "responses"
    assert endpoint_kind("/v1/embeddings") == "other"


def test_in_subnet_and_interface_of():
    assert in_subnet(["10.0.0.5", "192.168.1.2", "10.0.0.100"], "10.0.0.100", 24) == ["10.0.0.5"]
    assert in_subnet(["10.0.0.5"], "not-an-ip", 24) == []
    facts = {"interfaces": ["lo", "eth0"], "lo": {"device": "lo", "ipv4": {"address": "127.0.0.1"}},
             "eth0": {"device": "eth0", "ipv4": {"address": "10.0.0.5"}}}
    assert interface_of(facts, "10.0.0.5") == "eth0"
    assert interface_of(facts, "10.9.9.9") == ""


def test_priorities_follow_inventory_order_unless_set():
    assert vrrp_priorities([{"inventory_hostname": "a"}, {"inventory_hostname": "b"},
                            {"inventory_hostname": "c", "failover_priority": 250}]) == {"a": 200, "b": 190, "c": 250}


def test_vip_owners_and_vrid_clashes():
    def facts(primary, secondary=()):
        return {"interfaces": ["eth0"], "eth0": {"ipv4": {"address": primary},
                                                 "ipv4_secondaries": [{"address": a} for a in secondary]}}

    hosts = [
        {"inventory_hostname": "a", "ansible_facts": facts("10.0.0.5", ["10.0.0.100"]),
         "failover_vip": "10.0.0.100", "failover_virtual_router_id": 51},
        {"inventory_hostname": "b", "ansible_facts": facts("10.0.0.6"),
         "failover_vip": "10.0.0.200", "failover_virtual_router_id": 51},
        {"inventory_hostname": "c", "failover_vip": "10.9.0.200", "failover_virtual_router_id": 51},
    ]
    assert vip_owners(hosts, "10.0.0.6") == ["b"]
    # The master holds the VIP as a secondary address: that is not ownership.
    assert vip_owners(hosts, "10.0.0.100") == []
    assert vrid_clashes(hosts, "10.0.0.100", 24, 51) == ["b"]
    assert vrid_clashes(hosts, "10.0.0.100", 24, 52) == []
