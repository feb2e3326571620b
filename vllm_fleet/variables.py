"""Inventory variables that carry a role's prefix but are no role's argument.

A misspelt role variable (``vllm_gpu_memory_utilisation``) is not an error to
Ansible: the role takes its default and the run succeeds.  Preflight refuses
every variable of a host that starts with a role's name and ``_``
(``vllm_``, ``gateway_``, ``nvidia_driver_`` ...) but is neither an option of
that role's argument specs nor one of its defaults, and suggests the closest
known name.  A site that keeps its own variables with such a prefix lists them
(or glob patterns) in ``base_site_variables``.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml


def playbook_variables(spec_file: str | Path) -> dict[str, set[str]]:
    """The day-2 playbooks' variables (``playbooks/vars/argument_specs.yml``): prefix -> names."""
    path = Path(spec_file)
    if not path.is_file():
        return {}
    specs = (yaml.safe_load(path.read_text()) or {}).get("argument_specs") or {}
    return {name: set((entry or {}).get("options") or {}) for name, entry in specs.items()}


def playbook_settings(spec_file: str | Path, playbook: str, given: dict[str, Any]) -> dict[str, Any]:
    """A day-2 playbook's variables: its spec's defaults (an option without
    one is None), overridden by what the inventory or -e gave.  The spec is
    the one home of the defaults; the playbook reads this dict."""
    specs = (yaml.safe_load(Path(spec_file).read_text()) or {}).get("argument_specs") or {}
    options = (specs.get(playbook) or {}).get("options") or {}
    settings = {name: (option or {}).get("default") for name, option in options.items()}
    settings.update({name: value for name, value in given.items() if name in options})
    return settings


@functools.lru_cache(maxsize=8)
def _known_variables(roles_dir: str, playbook_specs: str) -> dict[str, frozenset[str]]:
    known = {**role_variables(roles_dir), **(playbook_variables(playbook_specs) if playbook_specs else {})}
    return {prefix: frozenset(names) for prefix, names in known.items()}


def role_variables(roles_dir: str | Path) -> dict[str, set[str]]:
    """Every role's known variable names: argument-spec options of every entry point and defaults."""
    known: dict[str, set[str]] = {}
    for role in sorted(Path(roles_dir).iterdir()):
        spec_file = role / "meta" / "argument_specs.yml"
        if not spec_file.is_file():
            continue
        names: set[str] = set()
        specs = (yaml.safe_load(spec_file.read_text()) or {}).get("argument_specs") or {}
        for entry in specs.values():
            names.update((entry or {}).get("options") or {})
        defaults = role / "defaults" / "main.yml"
        if defaults.is_file():
            names.update(yaml.safe_load(defaults.read_text()) or {})
        known[role.name] = names
    return known


def unknown_variables(names: Iterable[str], known: Mapping[str, Iterable[str]],
                      allowed: Iterable[str] = ()) -> list[tuple[str, str, str | None]]:
    """``(name, role, suggestion)`` for each name with a role's prefix that no role knows.

    The longest matching prefix names the role (``nvidia_driver_`` before a
    hypothetical ``nvidia_``).  ``allowed`` holds a site's own names or glob
    patterns.  The suggestion is the closest known name of any role, or None.
    """
    known = {role: set(vars_) for role, vars_ in known.items()}
    every = sorted(set().union(*known.values())) if known else []
    prefixes = sorted(known, key=len, reverse=True)
    patterns = [str(p) for p in allowed]
    found = []
    for name in sorted({str(n) for n in names}):
        role = next((r for r in prefixes if name.startswith(r + "_")), None)
        if role is None or name in known[role] or any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if any(name in vars_ for vars_ in known.values()):
            continue  # another role's variable that happens to share a prefix
        close = difflib.get_close_matches(name, every, n=1, cutoff=0.8)
        found.append((name, role, close[0] if close else None))
    return found


#: Facts a role publishes for another (set_fact, not arguments): known names too.
PUBLISHED_FACTS = frozenset({"nvidia_driver_reboot_pending"})

SECRET_WORDS = ("key", "password", "passphrase", "secret", "token", "credential")


def looks_secret(*names: str | None) -> bool:
    """Whether any of the names (a variable, its suggested spelling) has a word like a secret's.

    Fuzzy on purpose: a misspelt ``backup_pasword`` is a password all the same.
    """
    for name in filter(None, names):
        words = name.lower().split("_")
        for word in words:
            if any(secret in word or difflib.SequenceMatcher(None, word, secret).ratio() >= 0.66
                   for secret in SECRET_WORDS):
                return True
    return False


def _shown(name: str, hostvars: Mapping[str, Any], hint: str | None = None) -> str:
    """The value for a message: hidden when the name (or its suggestion) says secret, cut when long."""
    if looks_secret(name, hint):
        return "<hidden>"
    try:
        text = json.dumps(hostvars[name], default=str)
    except Exception:  # noqa: BLE001 - a value that does not template is still named
        return "<not templated>"
    return text if len(text) <= 120 else text[:117] + "..."


def unknown_variable_errors(hostvars: Mapping[str, Any], roles_dir: str, allowed: Iterable[str] | None = None,
                            playbook_specs: str | None = None) -> list[str]:
    """One preflight line per unknown prefixed variable of a host (``hostvars[inventory_hostname]``).

    ``playbook_specs`` adds the day-2 playbooks' own prefixes (``upgrade_``, ``restore_``).
    """
    errors = []
    # Facts are no inventory variables: with inject_facts_as_vars (Ansible's
    # default) the vllm_gpu fact is a top-level name too.
    facts = hostvars.get("ansible_facts") or {}
    names = [n for n in hostvars.keys() if n not in facts and n not in PUBLISHED_FACTS]
    known = _known_variables(str(Path(roles_dir).resolve()), str(Path(playbook_specs).resolve()) if playbook_specs else "")
    for name, role, hint in unknown_variables(names, known, allowed or ()):
        shown = _shown(name, hostvars, hint)
        did_you_mean = f"; did you mean {hint}?" if hint else ""
        owner = f"the {role} role's" if (Path(roles_dir) / role).is_dir() else f"playbooks/{role}.yml's"
        errors.append(f"{name}={shown}: carries {owner} prefix but is no argument of any vllm-fleet "
                      f"role or playbook{did_you_mean} (allowed: the variables in roles/*/meta/argument_specs.yml "
                      f"and playbooks/vars/argument_specs.yml, or list a site's own name in base_site_variables)")
    return errors
