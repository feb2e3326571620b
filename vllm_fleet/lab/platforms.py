"""The lab's Molecule platforms: each scenario lists only what is its own
(name, groups, networks, extra volumes) and ``complete`` fills in the rest
from the one declaration, ``playbooks/lab/vars/platform.yml``."""
from __future__ import annotations

import copy


def complete(platform: dict, defaults: dict) -> dict:
    """``platform`` over ``defaults``: the platform's keys win, except
    ``volumes``, which are added to the defaults' (a scenario mounts its own
    data beside what every lab host needs)."""
    if not isinstance(platform, dict) or not platform.get("name"):
        raise ValueError(f"a platform needs a name: {platform!r}")
    merged = copy.deepcopy(defaults)
    for key, value in platform.items():
        if key == "volumes":
            merged["volumes"] = list(defaults.get("volumes", [])) + [v for v in value if v not in defaults.get("volumes", [])]
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def lab_host(name: str, hostvars: dict, network: str, etc_hosts: dict) -> dict:
    """A host of the local lab (inventories/lab) as a platform: its address on
    the lab network, the wheelhouse and the shared restic repository."""
    host = hostvars[name]
    lab_dir = host["lab_dir"]
    return {"name": name, "etc_hosts": dict(etc_hosts),
            "volumes": [f"{lab_dir}/wheelhouse:/srv/wheelhouse:ro",
                        # Shared by the lab nodes like an NFS mount: the restic repository.
                        f"{lab_dir}/backup:/srv/backup:rw"],
            "networks": [{"name": network, "ipv4_address": host["lab_address"]}]}
