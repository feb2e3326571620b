"""Inventory-wide logic of the gateway: backends and API clients.

Plain functions so the unit tests exercise them without Ansible; the filter
plugin ``plugins/filter/fleet.py`` wraps them.  The failover role's decisions
are in ``vllm_fleet.failover``, address helpers in ``vllm_fleet.network``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from vllm_fleet import vllm_routes
from vllm_fleet.endpoints import vllm_defaults
from vllm_fleet.engine_config import instance_config


# Characters that can never break nginx's quoting of a map key or a header.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._~+/=-]{32,256}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SIZE_PATTERN = re.compile(r"^[0-9]+[kKmMgG]?$")
# Every setting a client entry may carry (anything else is a typo).
CLIENT_FIELDS = frozenset({"name", "key", "rate", "burst", "max_streams", "max_body_size",
                           "max_tokens", "token_quota_per_minute", "token_quota_per_day"})




def served_tasks(hosts: Iterable[Mapping[str, Any]]) -> list[str]:
    """The task of every vLLM instance of the given hosts (their hostvars), sorted.

    Read from each instance's engine arguments as the vllm role merges them
    (``vllm_extra_args``, then the instance's ``args``): ``runner``,
    ``convert`` and ``pooler-config``'s ``task``.  No runner, or ``auto``,
    counts as ``generate``: name the runner of a pooling model explicitly.
    Raises ValueError naming the host and instance for flags that name no task.
    """
    defaults = vllm_defaults()
    tasks = set()
    for hv in hosts:
        extra = hv.get("vllm_extra_args", defaults["vllm_extra_args"]) or {}
        for instance in hv.get("vllm_instances", defaults["vllm_instances"]):
            args = instance_config(instance, {}, extra)
            runner = str(args.get("runner", "auto"))
            pooler = args.get("pooler-config")
            pooler_task = pooler.get("task") if isinstance(pooler, Mapping) else None
            try:
                tasks.add(vllm_routes.served_task("generate" if runner == "auto" else runner,
                                                  str(args.get("convert", "auto")), pooler_task))
            except ValueError as err:
                raise ValueError(f"{hv['inventory_hostname']}/{instance['name']}: {err}") from None
    return sorted(tasks)


def served_allowlist(hosts: Iterable[Mapping[str, Any]], tokenizer: bool = False) -> list[str]:
    """Exact paths for the models the backends serve: the union of each task's default.

    Empty when a backend's flags name no task (``allowlist_problems`` says which).
    """
    try:
        tasks = served_tasks(hosts)
    except ValueError:
        return []
    return sorted({path for task in tasks for path in vllm_routes.default_allowlist(task, tokenizer)})


def allowlist_problems(allowlist: Iterable[str], hosts: Iterable[Mapping[str, Any]]) -> list[str]:
    """Why the gateway must not proxy these paths to the given backends (hostvars).

    Checked against the recorded route table of every vLLM version the
    backends pin: an admin, docs or unclassified route (``/metrics``,
    ``/load``, ...) and a path that is no route of that vLLM are refused, each
    named with why.  A backend whose engine flags name no task is named too.
    """
    hosts = list(hosts)
    allowlist = list(allowlist)
    problems = []
    try:
        served_tasks(hosts)
    except ValueError as err:
        problems.append(f"cannot tell the served model's endpoints: {err}")
    if not allowlist:
        return problems or ["no endpoint to proxy"]
    default_version = vllm_defaults()["vllm_version"]
    for version in sorted({str(hv.get("vllm_version", default_version)) for hv in hosts} or {default_version}):
        try:
            table = vllm_routes.load_table(version)
        except FileNotFoundError as err:
            problems.append(str(err))
            continue
        routes = vllm_routes.all_routes(table)
        unknown = vllm_routes.unknown_allowlist_entries(allowlist, routes)
        problems += [f"{entry}: no such route in vLLM {version}" for entry in unknown]
        problems += [f"{entry}: {reason}" for entry, reason in vllm_routes.forbidden_allowlist_entries(
            [e for e in allowlist if e not in unknown], routes, table.get("auth"))]
    return problems


def size_bytes(size: str | int) -> int:
    """nginx size syntax to bytes: '1m' -> 1048576, '512k' -> 524288, '100' -> 100."""
    match = re.fullmatch(r"([0-9]+)([kKmMgG]?)", str(size).strip())
    if not match:
        raise ValueError(f"not an nginx size: {size!r}")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[match.group(2).lower()]


# Per-client settings that fall back to a role-wide default, and their type.
CLIENT_OPTIONAL = ("max_tokens", "token_quota_per_minute", "token_quota_per_day")


def clients(api_clients: Iterable[Mapping[str, Any]], rate: float, burst: int,
            max_streams: int, max_body_size: str = "1m",
            defaults: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Fill each client's limits from the role-wide defaults.

    ``defaults`` holds the role-wide ``max_tokens``/``token_quota_per_minute``/
    ``token_quota_per_day`` (None = no limit); a client's own value wins.
    """
    defaults = defaults or {}
    filled = []
    for c in api_clients:
        entry = {
            "name": c["name"],
            "key": c["key"],
            "rate": c.get("rate", rate),
            "burst": int(c.get("burst", burst)),
            "max_streams": int(c.get("max_streams", max_streams)),
            "max_body_size": str(c.get("max_body_size") or max_body_size),
        }
        for field in CLIENT_OPTIONAL:
            value = c.get(field, defaults.get(field))
            entry[field] = None if value is None else int(value)
        filled.append(entry)
    return filled


# How the gateway's Lua treats a proxied endpoint: the generation endpoints get
# request caps and usage for streams; every endpoint's usage is counted.
ENDPOINT_KINDS = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/responses": "responses"}


def endpoint_kind(path: str) -> str:
    return ENDPOINT_KINDS.get(path, "other")


def largest_body(filled: Iterable[Mapping[str, Any]], default: str) -> str:
    """nginx's client_max_body_size: the largest any client may send."""
    return max([str(default)] + [str(c["max_body_size"]) for c in filled], key=size_bytes)


def lua_config(filled: Iterable[Mapping[str, Any]], max_n: int, accounting: bool) -> dict[str, Any]:
    """What the gateway's Lua reads at (re)load: exact keys, per-client caps and quotas."""
    filled = list(filled)
    return {
        "accounting": bool(accounting),
        "max_n": int(max_n),
        "keys": {c["key"]: c["name"] for c in filled},
        "clients": {
            c["name"]: {k: v for k, v in (
                ("max_body", size_bytes(c["max_body_size"])),
                ("max_tokens", c.get("max_tokens")),
                ("quota_minute", c.get("token_quota_per_minute")),
                ("quota_day", c.get("token_quota_per_day")),
            ) if v is not None}
            for c in filled
        },
    }


def limit_zones(filled: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Group clients by identical limits: nginx needs one zone per rate.

    Returns ``{"req": [{"id", "rate", "burst", "clients"}], "conn": [{"id", "max", "clients"}]}``.
    """
    req: dict[tuple, list[str]] = {}
    conn: dict[int, list[str]] = {}
    for c in filled:
        req.setdefault((c["rate"], c["burst"]), []).append(c["name"])
        conn.setdefault(c["max_streams"], []).append(c["name"])
    return {
        "req": [{"id": i, "rate": r, "burst": b, "clients": names}
                for i, ((r, b), names) in enumerate(sorted(req.items()))],
        "conn": [{"id": i, "max": m, "clients": names}
                 for i, (m, names) in enumerate(sorted(conn.items()))],
    }


def rate_spec(rate: float) -> str:
    """nginx rate syntax: 10 -> '10r/s'; 0.5 -> '30r/m'."""
    if float(rate).is_integer():
        return f"{int(rate)}r/s"
    return f"{round(float(rate) * 60)}r/m"


def client_problems(api_clients: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every reason the client list is unusable, keys never echoed."""
    problems = []
    seen_names: set[str] = set()
    seen_keys: dict[str, str] = {}
    for i, c in enumerate(api_clients):
        if not isinstance(c, Mapping):
            problems.append(f"gateway_api_clients[{i}]={type(c).__name__}: each client is a mapping "
                            "with at least name and key")
            continue
        name = str(c.get("name", ""))
        key = str(c.get("key", ""))
        where = f"gateway_api_clients[{i}]"
        if not NAME_PATTERN.match(name):
            problems.append(f"{where}.name={name!r}: letters, digits, '_', '.', '-' (1-64, not starting with a symbol)")
        elif name in seen_names:
            problems.append(f"{where}.name={name!r}: names must be unique")
        seen_names.add(name)
        if not KEY_PATTERN.match(key):
            problems.append(f"{where}.key=<{len(key)} characters, hidden> (client {name!r}): "
                            "32-256 characters from [A-Za-z0-9._~+/=-]")
        elif key in seen_keys:
            problems.append(f"{where}.key=<hidden> (client {name!r}): same key as client "
                            f"{seen_keys[key]!r}; every client needs its own key")
        seen_keys.setdefault(key, name)
        for field in sorted(set(c) - CLIENT_FIELDS):
            problems.append(f"{where}.{field} (client {name!r}): not a client setting; "
                            f"allowed: {', '.join(sorted(CLIENT_FIELDS))}")
        for field, low in (("rate", 0), ("burst", -1), ("max_streams", 0)) + tuple((f, 0) for f in CLIENT_OPTIONAL):
            if field not in c or (c[field] is None and field in CLIENT_OPTIONAL):
                continue
            value = c[field]
            whole = field != "rate"
            try:
                ok = not isinstance(value, bool) and float(value) > low and (not whole or float(value).is_integer())
            except (TypeError, ValueError):
                ok = False
            if not ok:
                problems.append(f"{where}.{field}={value!r} (client {name!r}): must be "
                                f"{'a whole number' if whole else 'a number'} > {low}")
        if "max_body_size" in c and not SIZE_PATTERN.match(str(c["max_body_size"])):
            problems.append(f"{where}.max_body_size={c['max_body_size']!r} (client {name!r}): "
                            "an nginx size like 512k or 4m")
    return problems
