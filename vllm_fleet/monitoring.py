"""Decisions of the monitoring role, as plain functions.

The role turns the inventory (hostvars of every vLLM node, gateway and host)
into Prometheus file_sd target files, checks durations and addresses in
preflight, and adjusts node_exporter so the models' filesystem is measured.  These functions are plain Python so
tests/unit/test_monitoring_targets.py can exercise them without Ansible.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable, Mapping

from vllm_fleet import endpoints

#: Prometheus duration units in seconds (model/time.go ParseDuration).
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")
_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")
#: A Prometheus label name.
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class MonitoringError(ValueError):
    """An inventory value the monitoring role cannot use."""


def duration_seconds(value: Any) -> float:
    """Seconds of a Prometheus duration (``90s``, ``5m``, ``1h30m``).

    Raises MonitoringError for anything Prometheus would refuse, so preflight
    can name the variable instead of promtool failing later.
    """
    text = str(value).strip()
    if not _DURATION.match(text):
        raise MonitoringError(f"{value!r} is not a Prometheus duration such as 30s, 5m or 1h30m")
    return float(sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(text)))


def is_duration(value: Any) -> bool:
    try:
        duration_seconds(value)
    except MonitoringError:
        return False
    return True


def hostport(address: str, port: Any) -> str:
    """``address:port``, with IPv6 literals in brackets."""
    address = str(address).strip()
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"{address}:{int(port)}"


def is_loopback(address: Any) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    text = str(address).strip().strip("[]")
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _labels(labels: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in labels.items():
        if not LABEL_NAME.match(str(name)) or str(name).startswith("__"):
            raise MonitoringError(f"{name!r} is not a label name Prometheus accepts")
        out[str(name)] = "" if value is None else str(value)
    return out


def _vllm_entries(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted((e for e in entries if e.get("vllm", True)), key=lambda e: str(e["node"]))


def vllm_targets(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """file_sd groups, one per vLLM instance of every vLLM node.

    ``entries``: one per inventory host, ``{node, vllm (bool), vllm_address,
    model, instances: [{name, port}, ...]}`` (hosts with ``vllm`` false are
    skipped).  Labels: ``node`` (inventory name), ``instance_name`` (the
    vllm@<name> unit) and ``model`` (served name).
    """
    groups = []
    seen: dict[str, str] = {}
    for node in _vllm_entries(entries):
        for inst in node.get("instances") or []:
            target = hostport(node["vllm_address"], inst["port"])
            where = f"{node['node']}/{inst['name']}"
            if target in seen:
                raise MonitoringError(f"{where} and {seen[target]} both serve on {target}")
            seen[target] = where
            groups.append({
                "targets": [target],
                "labels": _labels({"node": node["node"], "instance_name": inst["name"],
                                   "model": node.get("model") or ""}),
            })
    return groups


def vllm_target_conflicts(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """Why ``vllm_targets`` would refuse ``entries`` (empty when it would not)."""
    problems = []
    seen: dict[str, str] = {}
    for node in _vllm_entries(entries):
        for inst in node.get("instances") or []:
            where = f"{node['node']}/{inst.get('name')}"
            try:
                target = hostport(node["vllm_address"], inst["port"])
            except (KeyError, TypeError, ValueError):
                problems.append(f"{where} has no usable address and port")
                continue
            if target in seen:
                problems.append(f"{where} and {seen[target]} both serve on {target}")
            seen[target] = where
    return problems


def host_targets(entries: Iterable[Mapping[str, Any]], port_key: str = "port",
                 only: str | None = None, address_key: str = "address") -> list[dict[str, Any]]:
    """file_sd groups of one exporter per host: ``{node, <address_key>, <port_key>}``;
    with ``only``, just the hosts whose entry has that key true."""
    return [
        {"targets": [hostport(h[address_key], h[port_key])], "labels": _labels({"node": h["node"]})}
        for h in sorted(entries, key=lambda h: str(h["node"]))
        if only is None or h.get(only)
    ]


def fs_types_exclude(excluded: Iterable[str], keep: Iterable[str]) -> str:
    """node_exporter's ``--collector.filesystem.fs-types-exclude`` regex
    without the filesystem types in ``keep`` (the model's filesystem must be
    measured even when it is, say, the overlay root of a container)."""
    keep = set(keep)
    return "^(" + "|".join(t for t in excluded if t not in keep) + ")$"


def _as_bool(value: Any) -> bool:
    """Ansible's ``bool`` filter: yes/no, true/false, on/off, 1/0 as text too."""
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "true", "on", "1", "y", "t")
    return bool(value)


def inventory_entries(hosts: Iterable[Mapping[str, Any]], vllm_hosts: Iterable[str], gateway_hosts: Iterable[str],
                      own: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One scrape entry per inventory host (its hostvars), in one pass over the inventory.

    ``own`` holds the monitoring host's values of the port and DCGM settings,
    the fallback for a host that does not set its own.  A vLLM node's
    instances and address are the fleet's one answer (``endpoints.backends``),
    defaults of the vllm role included; a gateway's metrics listener binds its
    default IPv4 address (the gateway role's template), not ``monitoring_address``.
    """
    vllm_hosts, gateway_hosts = set(vllm_hosts), set(gateway_hosts)
    gateway_defaults = endpoints.role_defaults("gateway")
    vllm_defaults = endpoints.vllm_defaults()
    entries = []
    for hv in hosts:
        name = hv["inventory_hostname"]
        facts = hv.get("ansible_facts") or {}
        fallback = hv.get("ansible_host") or name
        default_ipv4 = (facts.get("default_ipv4") or {}).get("address") or fallback
        entry: dict[str, Any] = {
            "node": name,
            "address": hv.get("monitoring_address") or default_ipv4,
            "node_port": hv.get("monitoring_node_exporter_port", own["monitoring_node_exporter_port"]),
            "gateway": name in gateway_hosts,
            "nginx_port": hv.get("monitoring_nginx_exporter_port", own["monitoring_nginx_exporter_port"]),
            "mtail_port": hv.get("monitoring_mtail_port", own["monitoring_mtail_port"]),
            "vllm": name in vllm_hosts,
        }
        if name in gateway_hosts:
            entry["gateway_address"] = default_ipv4
            entry["gateway_metrics_port"] = hv.get("gateway_metrics_port", gateway_defaults["gateway_metrics_port"])
        if name in vllm_hosts:
            found = endpoints.backends([hv])
            model = hv.get("vllm_model", vllm_defaults["vllm_model"]) or {}
            entry.update({
                "vllm_address": found[0]["address"] if found else hv.get("vllm_listen_address",
                                                                         vllm_defaults["vllm_listen_address"]),
                "instances": [{"name": b["instance"], "port": b["port"]} for b in found],
                "model": hv.get("vllm_served_model_name") or model.get("name", ""),
                "dcgm": _as_bool(hv.get("monitoring_dcgm_enabled", own["monitoring_dcgm_enabled"])),
                "dcgm_port": hv.get("monitoring_dcgm_port", own["monitoring_dcgm_port"]),
            })
        entries.append(entry)
    return entries
