"""vllm-fleet: controller-side logic used by the Ansible roles and plugins.

Plain functions live here so they can be unit-tested without Ansible; the
filter plugins in ``plugins/filter`` and modules in ``plugins/modules`` are
thin wrappers around them.
"""

from importlib import resources


def package_file(name: str) -> str:
    """The path of a file shipped in this package (``backup_tool.py``), for a role to install."""
    path = resources.files(__name__) / name
    if not path.is_file():
        raise FileNotFoundError(f"vllm_fleet has no file {name!r}")
    return str(path)
