"""Inventory-wide decisions of the failover role: VRRP priorities, the VIP's owners, VRID clashes.

Plain functions; ``plugins/filter/fleet.py`` wraps them.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from vllm_fleet.network import primary_ipv4


def vrrp_priorities(peers: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Priority of every peer: its own ``failover_priority``, else 200 - 10 x position."""
    return {
        hv["inventory_hostname"]: int(hv["failover_priority"]) if hv.get("failover_priority") is not None
        else 200 - 10 * index
        for index, hv in enumerate(peers)
    }


def vip_owners(hosts: Iterable[Mapping[str, Any]], vip: str) -> list[str]:
    """Hosts (hostvars with facts) whose own (primary) address is ``vip``."""
    return [hv["inventory_hostname"] for hv in hosts if vip in primary_ipv4(hv.get("ansible_facts", {}))]


def vrid_clashes(hosts: Iterable[Mapping[str, Any]], vip: str, prefix: int, vrid: int) -> list[str]:
    """Hosts using ``vrid`` for a *different* VIP on the same subnet."""
    try:
        net = ipaddress.ip_network(f"{vip}/{prefix}", strict=False)
    except ValueError:
        return []
    clashes = []
    for hv in hosts:
        other = hv.get("failover_vip")
        if not other or other == vip or hv.get("failover_virtual_router_id") is None:
            continue
        try:
            same_net = ipaddress.ip_address(other) in net
        except ValueError:
            continue
        if same_net and int(hv["failover_virtual_router_id"]) == int(vrid):
            clashes.append(hv["inventory_hostname"])
    return clashes
