"""The monitoring role's decisions (vllm_fleet/monitoring.py):
file_sd targets from inventory entries, Prometheus durations, node_exporter's
filesystem exclusions."""
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
from vllm_fleet import monitoring as mon  # noqa: E402


def entry(node, address, **kw):
    return {"node": node, "address": address, "node_port": 9100, "vllm": False, "gateway": False, **kw}


FLEET = [
    entry("gpu-node-02", "10.0.10.12", vllm=True, vllm_address="10.0.10.12", model="llama",
          instances=[{"name": "a", "port": 8000}, {"name": "b", "port": 8001}], dcgm=True, dcgm_port=9400),
    entry("gpu-node-01", "10.0.10.11", vllm=True, vllm_address="10.0.10.11", model="llama",
          instances=[{"name": "default", "port": 8000}], dcgm=False, dcgm_port=9400),
    entry("gw-01", "10.0.20.1", gateway=True, nginx_port=9113, mtail_port=3903,
          gateway_address="10.0.20.1", gateway_metrics_port=8081),
    entry("mon-01", "10.0.30.1"),
]


# --- durations ---------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("15s", 15), ("5m", 300), ("1h30m", 5400), ("26h", 93600), ("500ms", 0.5), ("1d", 86400), ("2w", 1209600),
])
def test_durations(text, seconds):
    assert mon.duration_seconds(text) == seconds
    assert mon.is_duration(text)


@pytest.mark.parametrize("text", ["", "5", "5 m", "m5", "1.5m", "-1m", "5min", None])
def test_not_durations(text):
    assert not mon.is_duration(text)
    with pytest.raises(mon.MonitoringError):
        mon.duration_seconds(text)


# --- targets -----------------------------------------------------------------------

def test_vllm_targets_one_group_per_instance_sorted_by_node():
    assert mon.vllm_targets(FLEET) == [
        {"targets": ["10.0.10.11:8000"], "labels": {"node": "gpu-node-01", "instance_name": "default", "model": "llama"}},
        {"targets": ["10.0.10.12:8000"], "labels": {"node": "gpu-node-02", "instance_name": "a", "model": "llama"}},
        {"targets": ["10.0.10.12:8001"], "labels": {"node": "gpu-node-02", "instance_name": "b", "model": "llama"}},
    ]


def test_adding_a_node_adds_its_targets():
    bigger = FLEET + [entry("gpu-node-03", "10.0.10.13", vllm=True, vllm_address="10.0.10.13", model="llama",
                            instances=[{"name": "default", "port": 8000}])]
    added = [g for g in mon.vllm_targets(bigger) if g not in mon.vllm_targets(FLEET)]
    assert added == [{"targets": ["10.0.10.13:8000"],
                      "labels": {"node": "gpu-node-03", "instance_name": "default", "model": "llama"}}]
    assert ["10.0.10.13:9100"] in [g["targets"] for g in mon.host_targets(bigger, "node_port")]


def test_ipv6_targets_are_bracketed():
    node = entry("v6", "fd00::11", vllm=True, vllm_address="fd00::11", model="m", instances=[{"name": "x", "port": 8000}])
    assert mon.vllm_targets([node])[0]["targets"] == ["[fd00::11]:8000"]
    assert mon.host_targets([node], "node_port")[0]["targets"] == ["[fd00::11]:9100"]


def test_two_instances_on_one_address_and_port_are_refused():
    clash = [entry("n1", "127.0.0.1", vllm=True, vllm_address="127.0.0.1", model="m", instances=[{"name": "a", "port": 8000}]),
             entry("n2", "127.0.0.1", vllm=True, vllm_address="127.0.0.1", model="m", instances=[{"name": "a", "port": 8000}])]
    assert mon.vllm_target_conflicts(clash) == ["n2/a and n1/a both serve on 127.0.0.1:8000"]
    with pytest.raises(mon.MonitoringError):
        mon.vllm_targets(clash)
    assert mon.vllm_target_conflicts(FLEET) == []


def test_exporter_targets_per_role_of_the_host():
    assert [g["labels"]["node"] for g in mon.host_targets(FLEET, "node_port")] == [
        "gpu-node-01", "gpu-node-02", "gw-01", "mon-01"]
    assert mon.host_targets(FLEET, "nginx_port", "gateway") == [{"targets": ["10.0.20.1:9113"], "labels": {"node": "gw-01"}}]
    assert mon.host_targets(FLEET, "dcgm_port", "dcgm") == [{"targets": ["10.0.10.12:9400"], "labels": {"node": "gpu-node-02"}}]


def test_gateway_metrics_target_is_the_address_nginx_listens_on():
    """nginx's metrics listener binds the gateway's default IPv4 address, not the
    monitoring_address its exporters use."""
    assert mon.host_targets(FLEET, "gateway_metrics_port", "gateway", "gateway_address") == [
        {"targets": ["10.0.20.1:8081"], "labels": {"node": "gw-01"}}]
    split = [entry("gw-02", "192.168.5.2", gateway=True, gateway_address="10.0.20.2", gateway_metrics_port=8082)]
    assert mon.host_targets(split, "gateway_metrics_port", "gateway", "gateway_address") == [
        {"targets": ["10.0.20.2:8082"], "labels": {"node": "gw-02"}}]


def test_a_bad_label_name_is_refused():
    with pytest.raises(mon.MonitoringError):
        mon._labels({"bad name": 1})
    with pytest.raises(mon.MonitoringError):
        mon._labels({"__reserved": "x"})


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.0.1.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("10.0.0.1", False), ("fd00::1", False), ("gpu-node-01", False),
])
def test_loopback(address, loopback):
    assert mon.is_loopback(address) is loopback


# --- node_exporter ---------------------------------------------------------------------

def test_fs_types_exclude_keeps_the_model_filesystem():
    excluded = ["autofs", "overlay", "proc", "tmpfs"]
    assert mon.fs_types_exclude(excluded, ["overlay"]) == "^(autofs|proc|tmpfs)$"
    assert mon.fs_types_exclude(excluded, ["ext4"]) == "^(autofs|overlay|proc|tmpfs)$"


def test_hostport():
    assert mon.hostport("10.0.0.1", "9100") == "10.0.0.1:9100"
    assert mon.hostport("fd00::1", 9100) == "[fd00::1]:9100"
    assert mon.hostport("[fd00::1]", 9100) == "[fd00::1]:9100"


OWN = {"monitoring_node_exporter_port": 9100, "monitoring_nginx_exporter_port": 9113, "monitoring_mtail_port": 3903,
       "monitoring_dcgm_enabled": False, "monitoring_dcgm_port": 9400}


def test_inventory_entries_use_the_fleets_one_answer_for_vllm_endpoints():
    from vllm_fleet import endpoints
    hosts = [
        {"inventory_hostname": "gpu1", "ansible_facts": {"default_ipv4": {"address": "10.0.0.11"}},
         "vllm_listen_address": "10.0.0.11", "monitoring_dcgm_enabled": "false"},
        {"inventory_hostname": "gw1", "ansible_host": "10.0.0.21", "monitoring_address": "10.9.0.21"},
    ]
    gpu1, gw1 = mon.inventory_entries(hosts, ["gpu1"], ["gw1"], OWN)
    # gpu1 leaves vllm_instances unset: the vllm role's default instance, as the gateway sees it.
    assert gpu1["instances"] == [{"name": b["instance"], "port": b["port"]} for b in endpoints.backends(hosts[:1])]
    assert gpu1["instances"] == [{"name": i["name"], "port": int(i["port"])}
                                 for i in endpoints.vllm_defaults()["vllm_instances"]]
    assert gpu1["vllm_address"] == "10.0.0.11" and gpu1["dcgm"] is False  # "false" as Ansible's bool reads it
    assert gpu1["node_port"] == 9100 and gpu1["vllm"] and not gpu1["gateway"]
    # A gateway scrapes at monitoring_address, its nginx metrics at its default address (ansible_host here).
    assert gw1["address"] == "10.9.0.21" and gw1["gateway_address"] == "10.0.0.21"
    assert gw1["gateway_metrics_port"] == endpoints.role_defaults("gateway")["gateway_metrics_port"]
    assert "instances" not in gw1
