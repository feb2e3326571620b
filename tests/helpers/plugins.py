"""The project's Ansible filter plugins, loaded the way Ansible loads them."""
from __future__ import annotations

import functools
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def _loader():
    from ansible.plugins.loader import filter_loader, init_plugin_loader

    init_plugin_loader()
    filter_loader.add_directory(str(ROOT / "plugins" / "filter"))
    return filter_loader


def ansible_filter(name: str):
    """The function behind the Jinja filter ``name`` (``vllm_plan``), as a playbook gets it."""
    plugin = _loader().get(name)
    assert plugin is not None, f"no filter plugin named {name}"
    return plugin.j2_function
