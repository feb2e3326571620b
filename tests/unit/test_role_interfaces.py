"""Every role documents every default once, in meta/argument_specs.yml."""
import pathlib
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if (p / "meta" / "argument_specs.yml").exists())


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_and_argspec_have_the_same_keys(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    for entry, spec in specs.items():
        assert set(spec["options"]) == set(defaults), (
            f"{role.name}: argspec entry {entry!r} and defaults/main.yml differ: "
            f"only in argspec {sorted(set(spec['options']) - set(defaults))}, "
            f"only in defaults {sorted(set(defaults) - set(spec['options']))}")


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_public_variables_carry_the_role_prefix(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    assert [k for k in defaults if not k.startswith(role.name + "_")] == []


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_option_is_described_and_typed(role):
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]
    bad = [name for name, opt in spec["options"].items() if not opt.get("description") or not opt.get("type")]
    assert bad == []


def test_role_readme_tables_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "role-docs.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
