"""vllm_fleet.vllm_args: engine-argument keys checked against the pinned vLLM's own options."""
import json

import pytest
import yaml

from vllm_fleet import vllm_args
from vllm_fleet.vllm_routes import load_table as load_routes

ROLE_VARS = "roles/vllm/vars/main.yml"


@pytest.fixture(scope="module")
def table():
    return vllm_args.load_table("0.32.0")


def test_every_recorded_route_version_has_an_argument_table():
    """The two tables go together (scripts/vllm-tables.sh writes both)."""
    for version in vllm_args.recorded_versions():
        assert load_routes(version)["vllm_version"] == version
    assert {"0.31.0", "0.32.0"} <= set(vllm_args.recorded_versions())


def test_the_tables_are_recorded_from_vllm_itself(table):
    # A few options every release of the supported range has, with their aliases.
    options = table["options"]
    assert table["vllm_version"] == "0.32.0"
    assert len(options) > 300
    assert options["max-model-len"]["dest"] == "max_model_len"
    assert options["device-memory-utilization"]["dest"] == options["gpu-memory-utilization"]["dest"]
    assert "bfloat16" in options["dtype"]["choices"]
    assert options["enable-prefix-caching"]["kind"] == "bool"
    assert "tp" not in options  # short aliases are not config keys


@pytest.mark.parametrize("version", ["0.31.0", "0.32.0"])
def test_every_argument_the_role_manages_exists_in_each_recorded_release(version, pytestconfig):
    managed = yaml.safe_load((pytestconfig.rootpath / ROLE_VARS).read_text())["_vllm_engine_args"]
    options = vllm_args.load_table(version)["options"]
    assert sorted(k for k in managed if k not in options) == []


def test_known_keys_in_either_spelling_pass(table):
    args = {"max_model_len": 4096, "--enable-prefix-caching": True, "kv-cache-dtype": "fp8", "seed": 0}
    assert vllm_args.engine_arg_errors(args, table, "vllm_extra_args") == []


def test_a_typo_is_named_with_a_suggestion_in_the_operators_spelling(table):
    [line] = vllm_args.engine_arg_errors({"max_mdel_len": 5}, table, "vllm_extra_args")
    assert line.startswith("vllm_extra_args.max_mdel_len=5: 'max-mdel-len' is not an option of vLLM 0.32.0")
    assert "did you mean max_model_len?" in line
    [line] = vllm_args.engine_arg_errors({"max-mdel-len": 5}, table, "x")
    assert "did you mean max-model-len?" in line


def test_a_key_with_nothing_close_gets_no_suggestion(table):
    [line] = vllm_args.engine_arg_errors({"frobnicate": "yes"}, table, "x")
    assert "did you mean" not in line and "frobnicate" in line


def test_a_value_outside_the_recorded_choices_is_refused(table):
    [line] = vllm_args.engine_arg_errors({"dtype": "bfloat61"}, table, "vllm_instances[a].args")
    assert line.startswith("vllm_instances[a].args.dtype=bfloat61: not a choice of vLLM 0.32.0's --dtype")
    assert "did you mean bfloat16?" in line and "allowed: auto" in line


def test_not_a_mapping(table):
    assert vllm_args.engine_arg_errors(["max_model_len"], table, "vllm_extra_args") == [
        'vllm_extra_args=["max_model_len"]: must be a mapping of vLLM option names to values']


def test_aliases_of_managed_options_clash(table):
    managed = ["gpu-memory-utilization", "enable-prefix-caching"]
    lines = vllm_args.alias_clashes({"device_memory_utilization": 0.5, "no-enable-prefix-caching": True,
                                     "gpu-memory-utilization": 0.9, "seed": 1}, managed, table, "vllm_extra_args")
    assert len(lines) == 2
    assert "device_memory_utilization=0.5: another spelling of --gpu-memory-utilization" in lines[0]
    assert "no-enable-prefix-caching=true: another spelling of --enable-prefix-caching" in lines[1]


def test_fleet_errors_name_each_instance_and_unknown_versions():
    lines = vllm_args.fleet_engine_arg_errors(
        "0.32.0", {"seed": 1}, [{"name": "chat", "args": {"max_num_seqz": 4}}, {"name": "embed"}])
    assert len(lines) == 1 and lines[0].startswith("vllm_instances[chat].args.max_num_seqz=4")
    [line] = vllm_args.fleet_engine_arg_errors("9.9.9", {}, [])
    assert line.startswith("vllm_version=9.9.9: vllm-fleet has not recorded")
    assert "0.32.0" in line and "scripts/vllm-tables.sh 9.9.9" in line


def test_check_command(tmp_path, capsys):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"max_mdel_len": 5}))
    assert vllm_args.main(["check", "--version", "0.32.0", str(args)]) == 1
    assert "did you mean max_model_len?" in capsys.readouterr().out
