"""Compare what a venv holds with what the inventory asks for.

Used to decide whether pip has to run at all, so a converged host is never
reinstalled and ``--check`` can say exactly what would change.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;#\\]+)")


def canonical_name(name: str) -> str:
    """PEP 503 normalisation: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(lines: Iterable[str]) -> dict[str, str]:
    """``name==version`` lines (pip freeze or a lock file) -> {name: version}.

    Comments, options (``--hash``, ``-i``), continuation lines and anything
    that is not an exact pin are ignored.
    """
    pins: dict[str, str] = {}
    for line in lines:
        match = _REQ.match(line)
        if match:
            pins[canonical_name(match.group(1))] = match.group(2)
    return pins


def unmet(installed: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """Pins in ``wanted`` that ``installed`` (pip freeze output) does not satisfy."""
    have = parse_pins(installed)
    return [
        f"{name}=={version}"
        for name, version in sorted(parse_pins(wanted).items())
        if have.get(name) != version
    ]
