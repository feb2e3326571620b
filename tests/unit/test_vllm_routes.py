"""vllm_fleet.vllm_routes against the route table recorded from vLLM 0.32.0 itself."""
from __future__ import annotations

import pathlib

import pytest
import yaml

from vllm_fleet.gateway import allowlist_problems, served_allowlist
from vllm_fleet.vllm_routes import (ADMIN, DOCS, GENERATION, MODELS, POOLING, REFUSED, TOKENIZER, UNCLASSIFIED,
                                    all_routes, classify_routes, default_allowlist, forbidden_allowlist_entries,
                                    is_guarded, load_table, mangled_cases, match_route, merge, negative_cases,
                                    nginx_view, raw_path_variants, route_class, routes_of, served_task,
                                    unguarded_routes, unknown_allowlist_entries, vllm_dispatch, vllm_view)

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATE_ALLOWLIST = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/responses"]
# Each allowlist task and the recorded app variant that serves it.
TASK_VARIANTS = {"generate": "generate", "transcription": "transcription", "embed": "embed",
                 "classify": "classify", "score": "score", "token_embed": "token_embed",
                 "token_classify": "token_classify"}


@pytest.fixture(scope="module")
def table() -> dict:
    return load_table("0.32.0")


@pytest.fixture(scope="module")
def default_routes(table) -> list[dict]:
    return routes_of(table, "generate")


def test_the_table_is_vllm_0_32_0_and_every_variant_was_built(table):
    assert table["vllm_version"] == "0.32.0"
    assert {n: v["error"] for n, v in table["variants"].items() if "error" in v} == {}
    assert table["routes"] == sorted(table["routes"], key=lambda r: (r["path"], r["kind"], r["methods"],
                                                                     r["endpoint"]))


def test_vllm_guards_only_path_prefixes_with_api_key(table):
    auth = table["auth"]
    assert auth["middleware"] == "vllm.entrypoints.serve.middleware.authenticate.AuthenticationMiddleware"
    assert auth["guarded_prefixes"] == ["/v1", "/v2", "/inference", "/cohere"]
    assert auth["exempt_methods"] == ["OPTIONS"]
    assert is_guarded("/v1/models", auth) and is_guarded("/inference/v1/generate", auth)
    assert is_guarded("/v1foo", auth)  # a plain string prefix, no segment boundary
    assert not is_guarded("/metrics", auth) and not is_guarded("/V1/models", auth)


def test_metrics_is_a_prefix_mount_and_forbidden(table, default_routes):
    metrics = [r for r in default_routes if r["path"] == "/metrics"]
    assert {r["kind"] for r in metrics} == {"route", "mount"}
    mount = next(r for r in metrics if r["kind"] == "mount")
    assert mount["path_regex"] == "^/metrics(?P<path>.*)$"
    assert mount["endpoint"].startswith("prometheus_client.")
    # The issue's attack: vLLM dispatches the raw target to the mount.
    assert vllm_dispatch("/metrics/../v1/models", default_routes)["kind"] == "mount"
    assert vllm_dispatch("/metricsanything", default_routes)["path"] == "/metrics"
    forbidden = dict(forbidden_allowlist_entries(["/v1/models", "/metrics", "/metrics/x"], default_routes,
                                                 table["auth"]))
    assert set(forbidden) == {"/metrics", "/metrics/x"}
    assert forbidden["/metrics/x"].startswith("mount /metrics: an operations")
    assert "not checked" in forbidden["/metrics"]


def test_every_recorded_route_is_classified(table):
    # A new vLLM version adds routes: they are forbidden until someone classifies them.
    assert classify_routes(all_routes(table))[UNCLASSIFIED] == []


def test_route_classes(default_routes):
    classes = classify_routes(default_routes)
    assert {"/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/responses/{response_id}",
            "/v1/responses/{response_id}/cancel"} <= set(classes[GENERATION])
    assert classes[MODELS] == ["/v1/models"]
    assert classes[POOLING] == []  # a generative model's app serves no pooling routes
    assert {"/tokenize", "/detokenize"} <= set(classes[TOKENIZER])
    assert {"/metrics", "/health", "/ping", "/load", "/version", "/invocations", "/scale_elastic_ep"} <= set(
        classes[ADMIN])
    assert classes[DOCS] == ["/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"]
    assert route_class("/v1/embeddings") == route_class("/v2/rerank") == route_class("/score") == POOLING
    assert route_class("/update_weights") == route_class("/fault_tolerance/apply") == ADMIN
    assert route_class("/something_new") == UNCLASSIFIED


def test_dev_and_lora_routes_exist_only_with_their_switches(table, default_routes):
    default = {r["path"] for r in default_routes}
    dev = {r["path"] for r in routes_of(table, "generate+VLLM_SERVER_DEV_MODE")}
    lora = {r["path"] for r in routes_of(table, "generate+VLLM_ALLOW_RUNTIME_LORA_UPDATING")}
    admin_dev = {"/sleep", "/wake_up", "/is_sleeping", "/collective_rpc", "/reset_prefix_cache", "/server_info",
                 "/pause", "/update_weights"}
    assert admin_dev <= dev and not admin_dev & default
    assert {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"} <= lora - default
    assert {"/start_profile", "/stop_profile"} <= {r["path"] for r in routes_of(table, "generate+--profiler-config")}
    assert "/static" in {r["path"] for r in routes_of(table, "generate+--enable-offline-docs")}
    assert not {"/docs", "/openapi.json", "/redoc"} & {
        r["path"] for r in routes_of(table, "generate+--disable-fastapi-docs")}


def test_what_vllm_serves_without_checking_api_key(table, default_routes):
    assert unguarded_routes(default_routes, table["auth"]) == [
        "/detokenize", "/docs", "/docs/oauth2-redirect", "/generative_scoring", "/health", "/invocations",
        "/is_scaling_elastic_ep", "/kv_event_sources", "/load", "/metrics", "/openapi.json", "/ping", "/redoc",
        "/scale_elastic_ep", "/tokenize", "/version"]
    score = routes_of(table, "score")
    assert {"/classify", "/pooling", "/score", "/rerank"} <= set(unguarded_routes(score, table["auth"]))


@pytest.mark.parametrize("task", sorted(TASK_VARIANTS))
def test_default_allowlists_are_real_allowed_routes_of_their_task(table, task):
    routes = routes_of(table, TASK_VARIANTS[task])
    for tokenizer in (False, True):
        allowlist = default_allowlist(task, tokenizer=tokenizer)
        assert "/v1/models" in allowlist
        assert unknown_allowlist_entries(allowlist, routes) == []
        assert forbidden_allowlist_entries(allowlist, routes, table["auth"]) == []
        assert not any(route_class(match_route(a, routes)["path"]) in (ADMIN, DOCS) for a in allowlist)


def test_default_allowlists_per_task():
    assert default_allowlist("generate") == GENERATE_ALLOWLIST
    assert default_allowlist("generate", tokenizer=True) == sorted(GENERATE_ALLOWLIST + ["/tokenize", "/detokenize"])
    assert default_allowlist("embed") == ["/v1/embeddings", "/v1/models"]
    assert default_allowlist("classify") == ["/classify", "/v1/models"]
    assert default_allowlist("score") == ["/classify", "/v1/models", "/v1/rerank", "/v1/score"]
    assert default_allowlist("reward") == default_allowlist("token_classify") == ["/pooling", "/v1/models"]
    with pytest.raises(ValueError, match="unknown task 'encode'"):
        default_allowlist("encode")
    assert served_task("generate") == "generate"
    assert served_task("pooling", "embed") == "embed"
    assert served_task("pooling", "auto", "classify") == "classify"
    with pytest.raises(ValueError, match="depends on the model"):
        served_task("auto")


def test_the_gateway_roles_default_allowlist_passes(table, default_routes):
    """The role's default (empty: follow the served model) gives a default vLLM node the
    generation endpoints, and those pass the gateway's own preflight rules."""
    defaults = yaml.safe_load((ROOT / "roles" / "gateway" / "defaults" / "main.yml").read_text())
    assert defaults["gateway_allowed_endpoints"] == []
    node = {"inventory_hostname": "gpu-node-01"}
    allowlist = served_allowlist([node], defaults["gateway_tokenize_endpoints"])
    assert allowlist == default_allowlist("generate")
    assert allowlist_problems(allowlist, [node]) == []
    embedder = {"inventory_hostname": "emb-01", "vllm_extra_args": {"runner": "pooling", "convert": "embed"}}
    assert served_allowlist([embedder]) == ["/v1/embeddings", "/v1/models"]
    assert allowlist_problems(["/v1/models", "/metrics"], [node]) == [
        "/metrics: route /metrics: an operations/engine-control endpoint; vLLM --api-key not checked on it"]
    assert forbidden_allowlist_entries(allowlist, default_routes, table["auth"]) == []
    assert unknown_allowlist_entries(allowlist, default_routes) == []


def test_forbidden_and_unknown_entries(table, default_routes):
    dev = routes_of(table, "generate+VLLM_SERVER_DEV_MODE")
    entries = ["/v1/completions", "/health", "/docs", "/ping", "/invocations", "/sleep", "/v1/models", "/nope"]
    assert [e for e, _ in forbidden_allowlist_entries(entries, dev, table["auth"])] == [
        "/health", "/docs", "/ping", "/invocations", "/sleep", "/nope"]
    assert unknown_allowlist_entries(["/v1/responses/resp_1", "/v1/responses/a/b", "/v1/model", "/v1/models/",
                                      "/V1/models", "/v1/models"], default_routes) == [
        "/v1/responses/a/b", "/v1/model", "/v1/models/", "/V1/models"]
    lora = routes_of(table, "generate+VLLM_ALLOW_RUNTIME_LORA_UPDATING")
    reasons = dict(forbidden_allowlist_entries(["/v1/load_lora_adapter"], lora, table["auth"]))
    assert "operations/engine-control" in reasons["/v1/load_lora_adapter"]
    assert "--api-key checked" in reasons["/v1/load_lora_adapter"]


def test_nginx_and_vllm_views_of_raw_targets():
    assert nginx_view("/metrics/../v1/models") == "/v1/models"
    assert vllm_view("/metrics/../v1/models") == "/metrics/../v1/models"
    assert nginx_view("/metrics%2F..%2Fv1%2Fmodels") == "/v1/models"
    assert vllm_view("/metrics%2F..%2Fv1%2Fmodels") == "/metrics/../v1/models"
    assert nginx_view("//v1//models/") == "/v1/models/"
    assert nginx_view("/v1/models?x=/../metrics") == "/v1/models"
    assert nginx_view("/../v1/models") is None and nginx_view("/v1/models%00") is None
    assert nginx_view("http://h/v1/models") == "/v1/models"
    assert nginx_view("/v1/models;x") == "/v1/models;x" and nginx_view("/V1/models") == "/V1/models"


def test_raw_path_variants():
    variants = raw_path_variants("/v1/models")
    assert {"//v1/models", "/v1/models/", "/v1//models", "/v1/./models", "/v1/models;x", "/V1/MODELS",
            "/v1%2Fmodels", "/v1%2fmodels", "/x/%2e%2e/v1/models", "/v1/models%00", "/v1\\models",
            "/v1%5Cmodels"} <= set(variants)
    assert "/v1/models" not in variants and variants == sorted(set(variants))
    assert len(raw_path_variants("/metrics")) >= 25


def test_negative_cases_cover_the_issue_and_every_other_route(default_routes):
    cases = negative_cases(GENERATE_ALLOWLIST, default_routes)
    by_target = {c["target"]: c for c in cases}
    attack = by_target["/metrics/../v1/models"]
    assert attack == {"target": "/metrics/../v1/models", "must_not_reach": "/metrics", "nginx_sees": "/v1/models",
                      "may_reach": "/v1/models", "raw_dispatch": "/metrics", "dangerous": True}
    assert by_target["/metrics%2F../v1/models"]["dangerous"]
    assert by_target["/metrics/%2e%2e/v1/models"]["dangerous"]
    assert by_target["/metricsx/../v1/models"]["raw_dispatch"] == "/metrics"
    climb = by_target["/v1/models/../../metrics"]
    assert (climb["nginx_sees"], climb["may_reach"], climb["dangerous"]) == ("/metrics", None, False)
    # Every route outside the allowlist is tried plainly; nothing allowlisted is a target.
    allowed = set(GENERATE_ALLOWLIST)
    plain = {c["target"] for c in cases} & {r["path"].replace("{response_id}", "x1") for r in default_routes}
    assert plain == {r["path"].replace("{response_id}", "x1") for r in default_routes} - allowed
    assert not allowed & set(by_target)
    assert all(c["must_not_reach"] not in allowed for c in cases)
    assert all(c["may_reach"] in allowed for c in cases if c["may_reach"])
    # Forwarded raw, only the prefix mount turns an allowed-looking target into another route.
    assert {c["raw_dispatch"] for c in cases if c["dangerous"]} == {"/metrics"}


def test_mangled_allowlisted_paths(default_routes):
    cases = {c["target"]: c for c in mangled_cases(GENERATE_ALLOWLIST, default_routes)}
    assert {"//v1/models", "/v1/models/", "/v1//models"} <= set(cases)
    assert all(c["may_reach"] in GENERATE_ALLOWLIST for c in cases.values())
    assert not [c for c in cases.values() if c["dangerous"]]
    # Forwarded raw, vLLM routes them to their own route or nowhere, except
    # the responses sub-route: a dot segment is a response id to Starlette.
    assert {c["raw_dispatch"] for c in cases.values()} <= set(GENERATE_ALLOWLIST) | {
        None, "/v1/responses/{response_id}"}
    assert cases["/v1/responses/."]["raw_dispatch"] == "/v1/responses/{response_id}"
    assert cases["/v1%2Fmodels"]["raw_dispatch"] == "/v1/models"  # uvicorn decodes %2F
    assert 404 in REFUSED and 200 not in REFUSED


def test_merge_sorts_and_refuses_a_table_without_the_default_app():
    route = {"path": "/b", "kind": "route", "methods": ["GET"], "endpoint": "m:f", "path_regex": "^/b$"}
    other = {**route, "path": "/a", "path_regex": "^/a$"}
    base = {"vllm_version": "9", "versions": {}, "auth": None}
    merged = merge({"generate": {**base, "routes": [route, other]}, "embed": {**base, "routes": [route]},
                    "score": {"error": "boom"}})
    assert [(r["path"], r["variants"]) for r in merged["routes"]] == [("/a", ["generate"]),
                                                                    ("/b", ["generate", "embed"])]
    assert merged["variants"]["score"]["error"] == "boom"
    with pytest.raises(RuntimeError, match="default generate app"):
        merge({"embed": {**base, "routes": []}})
