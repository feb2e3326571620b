"""Where every vLLM instance of the fleet listens: one answer for the gateway and monitoring.

A host's ``vllm_instances`` and ``vllm_listen_address`` come from its
hostvars; a host that leaves them unset serves what the vllm role's defaults
say, which are not in another play's hostvars.  This module is the one place
that reads a role's defaults file for that (``role_defaults``).
"""
from __future__ import annotations

import pathlib
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import yaml

ROLES = pathlib.Path(__file__).resolve().parents[1] / "roles"


@lru_cache(maxsize=None)
def role_defaults(role: str) -> dict[str, Any]:
    """A role's own defaults (roles/<role>/defaults/main.yml)."""
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}


def vllm_defaults() -> dict[str, Any]:
    """The vllm role's defaults: the single source of instance defaults."""
    return role_defaults("vllm")


def backends(hosts: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every vLLM instance of the given hosts (their hostvars), in inventory order.

    A host without ``vllm_instances``/``vllm_listen_address`` gets the vllm
    role's defaults, exactly as the role itself would.
    """
    defaults = vllm_defaults()
    found = []
    for hv in hosts:
        address = hv.get("vllm_listen_address", defaults["vllm_listen_address"])
        for instance in hv.get("vllm_instances", defaults["vllm_instances"]):
            found.append({
                "host": hv["inventory_hostname"],
                "address": address,
                "port": int(instance["port"]),
                "instance": instance["name"],
                "endpoint": f"[{address}]:{instance['port']}" if ":" in str(address)
                else f"{address}:{instance['port']}",
            })
    return found
