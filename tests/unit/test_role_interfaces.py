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


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_role_dispatches_on_the_os_the_same_way(role):
    """tasks/os.yml loads vars/<Distribution>-<major>.yml or main-fallback.yml; main.yml
    includes it first; the fallback makes preflight refuse the host."""
    flag = f"_{role.name}_os_supported"
    assert yaml.safe_load((role / "vars" / "Debian-12.yml").read_text())[flag] is True
    assert yaml.safe_load((role / "vars" / "main-fallback.yml").read_text())[flag] is False
    tasks = yaml.safe_load((role / "tasks" / "os.yml").read_text())
    assert [t["ansible.builtin.include_vars"] for t in tasks] == [
        f"{{{{ lookup('ansible.builtin.first_found', __{role.name}_os_files) }}}}"]
    first = yaml.safe_load((role / "tasks" / "main.yml").read_text())[0]
    assert first["ansible.builtin.include_tasks"]["file"] == "os.yml"
    assert flag in (role / "tasks" / "preflight.yml").read_text()


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_metadata_claims_only_the_tested_platform(role):
    """CI converges Debian 12 (bookworm) containers, and nothing else."""
    meta = yaml.safe_load((role / "meta" / "main.yml").read_text())["galaxy_info"]
    assert meta["platforms"] == [{"name": "Debian", "versions": ["bookworm"]}]


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_a_role_skips_its_preflight_when_the_run_checked_every_host_already(role):
    """Preflight once per run: playbooks/preflight.yml remembers that every host passed;
    a role run without that playbook still checks its host itself."""
    entries = [yaml.safe_load((role / "tasks" / name).read_text())
               for name in ("main.yml", "exporters.yml") if (role / "tasks" / name).exists()]
    for tasks in entries:
        [include] = [t for t in tasks if t.get("ansible.builtin.include_tasks", {}).get("file") == "preflight.yml"]
        conditions = include["when"] if isinstance(include["when"], list) else [include["when"]]
        assert "not (_fleet_preflight_passed | default(false))" in conditions
    gate = yaml.safe_load((ROOT / "playbooks" / "preflight.yml").read_text())[-1]
    assert gate["any_errors_fatal"] is True
    assert gate["tasks"][-1]["ansible.builtin.set_fact"] == {"_fleet_preflight_passed": True}
