"""playbooks/benchmark.yml on the lab: vLLM's serving benchmark through the VIP
and to each instance directly, a report on the controller, an SLO gate, load
caps, and no change to any host."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import NODES, access_log, playbook, recap, sh, vip_holders

SMALL = {"benchmark_concurrency": [1, 2], "benchmark_num_prompts": 6, "benchmark_input_len": 32,
         "benchmark_output_len": 16}
TARGETS = ["gateway"] + [f"direct {node}/default" for node in NODES]


def benchmark(report_dir: Path, *args: str, **variables):
    return playbook("playbooks/benchmark.yml", *args, "-e", json.dumps({**SMALL, "benchmark_report_dir": str(report_dir),
                                                                         **variables}))


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One benchmark of the lab; the tests below read its report."""
    where = tmp_path_factory.mktemp("reports")
    holder = vip_holders()[0]
    seen = len(access_log(holder))
    run = benchmark(where)
    reports = sorted(where.glob("benchmark-*"))
    return run, reports, access_log(holder)[seen:]


def test_the_benchmark_changes_nothing_and_succeeds(measured):
    run, reports, _ = measured
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert all(counts["changed"] == 0 for counts in recap(run.stdout).values()), recap(run.stdout)
    assert len(reports) == 1
    # Its working directory on the load host is gone.
    assert sh("cluster-node1", "ls -d /tmp/vllm-fleet-benchmark.* 2>/dev/null || true").stdout.strip() == ""


def test_every_run_has_its_raw_result(measured):
    _, (report,), _ = measured
    raw = sorted((report / "raw").glob("*.json"))
    assert len(raw) == len(TARGETS) * len(SMALL["benchmark_concurrency"]), raw
    results = [json.loads(path.read_text()) for path in raw]
    assert sorted({r["target"] for r in results}) == sorted(TARGETS)
    for r in results:
        assert r["completed"] == SMALL["benchmark_num_prompts"] and r["failed"] == 0, (r["target"], r["errors"])
        assert r["max_concurrency"] in SMALL["benchmark_concurrency"]
        assert r["p99_ttft_ms"] > 0 and r["output_throughput"] > 0


def test_the_gateway_runs_went_through_the_gateway_as_the_benchmark_client(measured):
    _, _, log = measured
    through = [e for e in log if e["uri"] == "/v1/completions" and e["client"] == "benchmark"]
    # The direct runs do not pass the gateway: only the gateway target's requests are logged.
    assert len(through) == SMALL["benchmark_num_prompts"] * len(SMALL["benchmark_concurrency"]), len(through)
    assert {e["uri"] for e in log if e["client"] == "benchmark"} == {"/v1/completions"}
    assert {e["status"] for e in through} == {200}


def test_the_report_has_a_table_per_target_and_the_plots_their_points(measured):
    _, (report,), _ = measured
    text = (report / "report.md").read_text()
    for target in TARGETS:
        table = text.split(f"## {target}\n", 1)[1].split("\n## ", 1)[0]
        rows = [line for line in table.splitlines() if re.match(r"^\| \d+ \|", line)]
        assert [int(row.split("|")[1]) for row in rows] == SMALL["benchmark_concurrency"], table
    assert "## Gateway against direct" in text and "every run met every SLO set" in text
    plots = json.loads((report / "plots.json").read_text())
    assert set(plots["throughput"]) == set(TARGETS)
    assert len(plots["latency"]) == 6 and all(name.startswith("gateway ") for name in plots["latency"])
    for name, series in plots.items():
        assert series, name
        for label, points in series.items():
            assert [p[0] for p in points] == SMALL["benchmark_concurrency"], (name, label)
            assert all(p[1] > 0 for p in points), (name, label)
        assert (report / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((report / "summary.json").read_text())
    assert summary["breaches"] == [] and len(summary["gateway_overhead"]) == 2


def test_an_impossible_slo_fails_the_play_naming_the_breach(tmp_path):
    run = benchmark(tmp_path, benchmark_targets=["gateway"], benchmark_concurrency=[1],
                    benchmark_slo_ttft_p99_ms=0.001)
    assert run.returncode != 0
    assert re.search(r"SLO missed \(.*report\.md\): gateway at concurrency 1: TTFT p99 \(ms\) [0-9.]+ > "
                     r"benchmark_slo_ttft_p99_ms=0\.001", one_line(run.stdout)), run.stdout[-3000:]
    # The report is written all the same, saying what was missed.
    (report,) = tmp_path.glob("benchmark-*")
    assert "MISSED: gateway at concurrency 1: TTFT p99" in (report / "report.md").read_text()


def test_limit_measures_that_node_directly_and_the_gateway(tmp_path):
    """--limit cluster-node2: the direct runs go to its instance only; the load
    host (cluster-node1, outside the limit) still runs them."""
    run = benchmark(tmp_path, "--limit", "cluster-node2", benchmark_concurrency=[1])
    assert run.returncode == 0, run.stdout[-4000:]
    (report,) = tmp_path.glob("benchmark-*")
    targets = sorted(json.loads(p.read_text())["target"] for p in (report / "raw").glob("*.json"))
    assert targets == ["direct cluster-node2/default", "gateway"]
    assert "- load host: cluster-node1" in (report / "report.md").read_text()


@pytest.mark.parametrize("variables, message", [
    ({"benchmark_concurrency": [1, 64]},
     "benchmark_concurrency=[1, 64]: each step must be 1-16 (benchmark_max_concurrency, the most load"),
    ({"benchmark_num_prompts": 5000}, "benchmark_num_prompts=5000: must be 1-1000 (benchmark_max_prompts)"),
    ({"benchmark_client": "nobody"}, "benchmark_client=nobody: no such entry in gateway_api_clients of cluster-node1"),
    ({"benchmark_load_host": "cluster-mon"}, "benchmark_load_host=cluster-mon: must be a host of vllm_nodes"),
    ({"benchmark_concurency": [1]}, "benchmark_concurency"),
])
def test_more_load_than_allowed_or_a_bad_request_is_refused_before_any_request(tmp_path, variables, message):
    holder = vip_holders()[0]
    seen = len(access_log(holder))
    run = benchmark(tmp_path, **variables)
    assert run.returncode != 0
    assert message in one_line(run.stdout), run.stdout[-3000:]
    assert not list(tmp_path.glob("benchmark-*"))
    assert [e for e in access_log(holder)[seen:] if e["client"] == "benchmark"] == []
