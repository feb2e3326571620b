"""Decisions of the monitoring role, as plain functions.

The role turns the inventory (hostvars of every vLLM node, gateway and host)
into Prometheus file_sd target files, and checks durations and addresses in
preflight.  These functions are plain Python so
tests/unit/test_monitoring_targets.py can exercise them without Ansible.
"""
from __future__ import annotations

import ipaddress
import posixpath
import re
from typing import Any, Iterable, Mapping

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


def vllm_targets(nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """file_sd groups, one per vLLM instance of every node.

    ``nodes``: ``{node, address, model, instances: [{name, port}, ...]}`` per
    inventory host in ``vllm_nodes``.  Labels: ``node`` (inventory name),
    ``instance_name`` (the vllm@<name> unit) and ``model`` (served name).
    """
    groups = []
    seen: dict[str, str] = {}
    for node in sorted(nodes, key=lambda n: str(n["node"])):
        for inst in node.get("instances") or []:
            target = hostport(node["address"], inst["port"])
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


def vllm_target_conflicts(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Why ``vllm_targets`` would refuse ``nodes`` (empty when it would not)."""
    problems = []
    seen: dict[str, str] = {}
    for node in sorted(nodes, key=lambda n: str(n["node"])):
        for inst in node.get("instances") or []:
            where = f"{node['node']}/{inst.get('name')}"
            try:
                target = hostport(node["address"], inst["port"])
            except (KeyError, TypeError, ValueError):
                problems.append(f"{where} has no usable address and port")
                continue
            if target in seen:
                problems.append(f"{where} and {seen[target]} both serve on {target}")
            seen[target] = where
    return problems


def host_targets(hosts: Iterable[Mapping[str, Any]], port_key: str = "port") -> list[dict[str, Any]]:
    """file_sd groups of one exporter per host: ``{node, address, <port_key>}``."""
    return [
        {"targets": [hostport(h["address"], h[port_key])], "labels": _labels({"node": h["node"]})}
        for h in sorted(hosts, key=lambda h: str(h["node"]))
    ]


def mount_of(path: str, mounts: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The mount (``{mount, fstype, device}``) holding ``path``: the longest
    mount point that is ``path`` or one of its ancestors (Ansible's
    ``ansible_facts['mounts']`` entries)."""
    path = posixpath.normpath(str(path))
    best: Mapping[str, Any] | None = None
    for entry in mounts or []:
        point = posixpath.normpath(str(entry.get("mount", "")))
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(posixpath.normpath(str(best["mount"])))):
            best = entry
    if best is None:
        return {"mount": "/", "fstype": "", "device": ""}
    return {"mount": str(best["mount"]), "fstype": str(best.get("fstype", "")),
            "device": str(best.get("device", ""))}


def fs_types_exclude(excluded: Iterable[str], keep: Iterable[str]) -> str:
    """node_exporter's ``--collector.filesystem.fs-types-exclude`` regex
    without the filesystem types in ``keep`` (the model's filesystem must be
    measured even when it is, say, the overlay root of a container)."""
    keep = set(keep)
    return "^(" + "|".join(t for t in excluded if t not in keep) + ")$"


class FilterModule:
    def filters(self):
        return {
            "monitoring_duration_seconds": duration_seconds,
            "monitoring_hostport": hostport,
            "monitoring_vllm_targets": vllm_targets,
            "monitoring_vllm_target_conflicts": vllm_target_conflicts,
            "monitoring_host_targets": host_targets,
            "monitoring_mount_of": mount_of,
            "monitoring_fs_types_exclude": fs_types_exclude,
            "monitoring_is_duration": is_duration,
            "monitoring_is_loopback": is_loopback,
        }
