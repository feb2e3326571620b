"""vllm_fleet.variables: role-prefixed inventory variables that no role knows."""
from vllm_fleet import variables

KNOWN = {"vllm": {"vllm_gpu_memory_utilization", "vllm_version"}, "nvidia_driver": {"nvidia_driver_branch"},
         "backup": {"backup_password", "backup_enabled"}}


def test_roles_are_read_from_their_argument_specs_and_defaults(pytestconfig):
    known = variables.role_variables(pytestconfig.rootpath / "roles")
    assert {"base", "vllm", "gateway", "failover", "monitoring", "backup", "nvidia_driver"} <= set(known)
    assert "vllm_gpu_memory_utilization" in known["vllm"]
    assert "base_site_variables" in known["base"]


def test_a_misspelt_role_variable_is_found_with_a_suggestion():
    found = variables.unknown_variables(
        ["vllm_gpu_memory_utilisation", "vllm_version", "ansible_host", "lab_dir", "nvidia_driver_brnach"], KNOWN)
    assert found == [("nvidia_driver_brnach", "nvidia_driver", "nvidia_driver_branch"),
                     ("vllm_gpu_memory_utilisation", "vllm", "vllm_gpu_memory_utilization")]


def test_site_names_and_patterns_are_allowed():
    assert variables.unknown_variables(["vllm_site_owner", "vllm_cost_centre"], KNOWN,
                                       ["vllm_site_*", "vllm_cost_centre"]) == []


def test_errors_name_the_value_and_hide_secrets():
    hostvars = {"vllm_gpu_memory_utilisation": 0.9, "backup_pasword": "s3cret", "vllm_version": "0.32.0"}
    errors = variables.unknown_variable_errors(hostvars, "roles")
    assert errors[0].startswith("backup_pasword=<hidden>: carries the backup role's prefix")
    assert "s3cret" not in "".join(errors)
    assert errors[1].startswith("vllm_gpu_memory_utilisation=0.9: carries the vllm role's prefix")
    assert "did you mean vllm_gpu_memory_utilization?" in errors[1]


def test_secret_looking_names_are_fuzzy():
    assert variables.looks_secret("backup_pasword") and variables.looks_secret("vllm_api_kye")
    assert not variables.looks_secret("vllm_gpu_memory_utilisation")


def test_the_day2_playbooks_variables_are_known_and_their_typos_are_not(pytestconfig):
    root = pytestconfig.rootpath
    specs = str(root / "playbooks" / "vars" / "argument_specs.yml")
    hostvars = {"upgrade_restart": True, "restore_converge": False, "upgrade_restrat": True}
    [line] = variables.unknown_variable_errors(hostvars, str(root / "roles"), [], specs)
    assert line.startswith("upgrade_restrat=true: carries playbooks/upgrade.yml's prefix")
    assert "did you mean upgrade_restart?" in line


def test_the_playbooks_defaults_match_their_spec(pytestconfig):
    """upgrade.yml's play vars and the spec's defaults are one set of values."""
    root = pytestconfig.rootpath
    spec = variables.playbook_variables(root / "playbooks" / "vars" / "argument_specs.yml")
    assert spec["upgrade"] == {"upgrade_restart", "upgrade_move_vip", "upgrade_drain_timeout"}
    import yaml
    options = yaml.safe_load((root / "playbooks" / "vars" / "argument_specs.yml").read_text())["argument_specs"]["upgrade"]["options"]
    plays = yaml.safe_load((root / "playbooks" / "upgrade.yml").read_text())
    rollout = next(p for p in plays if p.get("name") == "Roll the change out one node at a time")
    assert {k: rollout["vars"][k] for k in options} == {k: v["default"] for k, v in options.items()}


def test_facts_and_published_facts_are_not_inventory_typos(pytestconfig):
    hostvars = {"vllm_gpu": {"count": 0}, "ansible_facts": {"vllm_gpu": {"count": 0}},
                "nvidia_driver_reboot_pending": False}
    assert variables.unknown_variable_errors(hostvars, str(pytestconfig.rootpath / "roles")) == []


def _set_fact_names(tasks):
    for task in tasks or []:
        for key in ("block", "rescue", "always"):
            yield from _set_fact_names(task.get(key))
        args = task.get("ansible.builtin.set_fact") or task.get("set_fact")
        if isinstance(args, dict):
            yield from (k for k in args if k != "cacheable")


def test_every_role_prefixed_fact_a_role_sets_is_published(pytestconfig):
    """A role that set_facts a `<role>_...` name must list it in PUBLISHED_FACTS, or preflight
    would take it for a typo on a later run in the same play."""
    import yaml
    found = set()
    for path in (pytestconfig.rootpath / "roles").glob("*/tasks/*.yml"):
        found.update(_set_fact_names(yaml.safe_load(path.read_text())))
    assert "nvidia_driver_reboot_pending" in found  # the scan sees what it should
    prefixed = {n for n in found if not n.startswith("_")}
    arguments = set().union(*variables.role_variables(pytestconfig.rootpath / "roles").values())
    assert prefixed - arguments == set(variables.PUBLISHED_FACTS)


def test_playbook_settings_are_the_spec_defaults_overridden_by_what_was_given(pytestconfig):
    spec = pytestconfig.rootpath / "playbooks" / "vars" / "argument_specs.yml"
    settings = variables.playbook_settings(spec, "benchmark", {"benchmark_concurrency": [2], "benchmark_slo_itl_p99_ms": 50,
                                                                "upgrade_restart": True, "benchmark_typo": 1})
    assert settings["benchmark_concurrency"] == [2] and settings["benchmark_slo_itl_p99_ms"] == 50
    # Defaults from the spec; an option without one is None; other playbooks' names and unknown names are not taken.
    assert settings["benchmark_num_prompts"] == 100 and settings["benchmark_slo_failed_max"] == 0
    assert settings["benchmark_slo_ttft_p99_ms"] is None
    assert "upgrade_restart" not in settings and "benchmark_typo" not in settings


def test_benchmark_yml_reads_its_variables_only_through_the_spec(pytestconfig):
    """One home for the benchmark's defaults: the playbook never gives one itself."""
    import re
    text = (pytestconfig.rootpath / "playbooks" / "benchmark.yml").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    stray = [m for m in re.findall(r"(?<![_.'\w])benchmark_[a-z0-9_]+\s*\|\s*default", code)]
    assert stray == []
