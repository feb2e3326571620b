"""Shared pytest setup: make the node-side module_utils importable.

Ansible ships ``plugins/module_utils/*.py`` to the nodes; the unit tests import
the same files directly as plain modules.
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))
