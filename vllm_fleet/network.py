"""A host's addresses and interfaces, from its Ansible facts."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any


def in_subnet(addresses: Iterable[str], vip: str, prefix: int) -> list[str]:
    """The addresses that share ``vip/prefix``'s subnet (the VIP itself excluded)."""
    try:
        net = ipaddress.ip_network(f"{vip}/{prefix}", strict=False)
    except ValueError:
        return []
    return [a for a in addresses if a != vip and ipaddress.ip_address(a) in net]


def interface_of(facts: Mapping[str, Any], address: str) -> str:
    """Name of the interface holding ``address`` in a host's ansible_facts ('' if none)."""
    for name in facts.get("interfaces", []):
        iface = facts.get(name.replace("-", "_"), {})
        ipv4 = iface.get("ipv4", {}) if isinstance(iface, Mapping) else {}
        secondary = iface.get("ipv4_secondaries", []) if isinstance(iface, Mapping) else []
        if address and (ipv4.get("address") == address or any(s.get("address") == address for s in secondary)):
            return iface.get("device", name)
    return ""


def primary_ipv4(facts: Mapping[str, Any]) -> list[str]:
    """Each interface's primary IPv4 address: a node's own addresses.

    A VIP that keepalived added is a secondary address and is not listed, so
    a converged master does not look like it owns the VIP as its address.
    """
    found = []
    for name in facts.get("interfaces", []):
        iface = facts.get(name.replace("-", "_"), {})
        address = iface.get("ipv4", {}).get("address") if isinstance(iface, Mapping) else None
        if address:
            found.append(address)
    return found
