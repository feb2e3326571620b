"""vllm_fleet.benchmark: vLLM serving-benchmark results -> tables, plots, SLO verdicts."""
from __future__ import annotations

import json

import pytest

from vllm_fleet import benchmark


def result(target: str, concurrency: int, *, e2el=100.0, ttft=20.0, itl=5.0, tok_s=50.0, failed=0) -> dict:
    r = {"target": target, "max_concurrency": concurrency, "completed": 10 - failed, "failed": failed,
         "request_throughput": 2.0 * concurrency, "output_throughput": tok_s * concurrency, "duration": 5.0}
    for metric, base in (("ttft", ttft), ("itl", itl), ("e2el", e2el)):
        r[f"p50_{metric}_ms"] = base * concurrency
        r[f"p99_{metric}_ms"] = base * concurrency * 1.5
    return r


@pytest.fixture()
def report_dir(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for c in (1, 2):
        (raw / f"gateway--c{c}.json").write_text(json.dumps(result("gateway", c, e2el=110.0)))
        for node, e2el in (("n1", 100.0), ("n2", 104.0)):
            (raw / f"direct-{node}--c{c}.json").write_text(json.dumps(result(f"direct {node}/default", c, e2el=e2el)))
    return tmp_path


def test_the_runs_go_through_the_gateway_then_to_each_instance():
    backends = [{"host": "n1", "instance": "default", "endpoint": "10.0.0.1:8000"},
                {"host": "n2", "instance": "big", "endpoint": "[fd00::2]:8001"}]
    runs = benchmark.runs(backends, ["gateway", "direct"], [1, 4], "https://vllm.example/")
    assert [(r["target"], r["url"], r["key"], r["concurrency"]) for r in runs] == [
        ("gateway", "https://vllm.example", "client", 1), ("gateway", "https://vllm.example", "client", 4),
        ("direct n1/default", "http://10.0.0.1:8000", "internal", 1),
        ("direct n1/default", "http://10.0.0.1:8000", "internal", 4),
        ("direct n2/big", "http://[fd00::2]:8001", "internal", 1),
        ("direct n2/big", "http://[fd00::2]:8001", "internal", 4)]
    assert len({r["file"] for r in runs}) == len(runs)
    assert all(r["file"].endswith(".json") and "/" not in r["file"] and " " not in r["file"] for r in runs)
    assert [r["target"] for r in benchmark.runs(backends, ["direct"], [2], "")] == ["direct n1/default", "direct n2/big"]


def test_slo_args_skip_the_unset():
    assert benchmark.slo_args({"ttft_p99_ms": "500", "itl_p99_ms": None, "e2el_p99_ms": "", "failed_max": 0}) == [
        "--slo", "ttft_p99_ms=500", "--slo", "failed_max=0"]


def test_breaches_name_the_run_the_figure_and_the_limit(report_dir):
    rows = benchmark.load(report_dir)
    assert benchmark.breaches(rows, {"ttft_p99_ms": 1000.0, "failed_max": 0}) == []
    missed = benchmark.breaches(rows, {"ttft_p99_ms": 40.0, "output_tok_s_min": 60.0})
    # TTFT p99 = 20 * c * 1.5: 30 at c=1 (met), 60 at c=2 (missed); tok/s = 50 * c: 50 < 60 at c=1.
    assert "gateway at concurrency 2: TTFT p99 (ms) 60 > benchmark_slo_ttft_p99_ms=40" in missed
    assert "gateway at concurrency 1: output tok/s 50 < benchmark_slo_output_tok_s_min=60" in missed
    assert not any("concurrency 1: TTFT" in m for m in missed)
    assert len(missed) == 6


def test_failed_requests_breach_failed_max():
    rows = [benchmark.summarize(result("gateway", 1, failed=2))]
    assert benchmark.breaches(rows, {"failed_max": 0}) == [
        "gateway at concurrency 1: failed requests 2 > benchmark_slo_failed_max=0"]
    assert benchmark.breaches(rows, {"failed_max": 2}) == []


def test_an_unknown_slo_is_refused():
    with pytest.raises(benchmark.ReportError, match="unknown SLO ttft_p95_ms: allowed are ttft_p99_ms"):
        benchmark.breaches([], {"ttft_p95_ms": 1.0})


def test_gateway_overhead_against_the_median_of_the_instances(report_dir):
    overhead = benchmark.gateway_overhead(benchmark.load(report_dir))
    assert [(o["concurrency"], o["overhead_ms"]) for o in overhead] == [(1, pytest.approx(8.0)),
                                                                        (2, pytest.approx(16.0))]


def test_the_report_writes_tables_plots_and_a_summary(report_dir):
    summary = benchmark.report(report_dir, {"ttft_p99_ms": 40.0, "itl_p99_ms": None}, {"model": "tiny"})
    text = (report_dir / "report.md").read_text()
    assert "- model: tiny" in text
    for target in ("## gateway", "## direct n1/default", "## direct n2/default"):
        assert target in text
    # One table row per concurrency under each target.
    gateway_table = text.split("## gateway\n")[1].split("##")[0]
    assert len([line for line in gateway_table.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]) == 2
    assert "MISSED: gateway at concurrency 2: TTFT p99" in text
    plots = json.loads((report_dir / "plots.json").read_text())
    assert set(plots) == {"throughput", "latency", "gateway_vs_direct"}
    assert plots["throughput"]["gateway"] == [[1, 50.0], [2, 100.0]]
    assert all(len(points) == 2 for series in plots.values() for points in series.values())
    for name in plots:
        png = (report_dir / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    on_disk = json.loads((report_dir / "summary.json").read_text())
    assert on_disk["breaches"] == summary["breaches"] and on_disk["slos"] == {"ttft_p99_ms": 40.0}
    assert len(on_disk["runs"]) == 6


def test_a_result_without_the_percentiles_is_refused_by_name(tmp_path):
    (tmp_path / "raw").mkdir()
    broken = result("gateway", 1)
    del broken["p99_itl_ms"]
    (tmp_path / "raw" / "gateway--c1.json").write_text(json.dumps(broken))
    with pytest.raises(benchmark.ReportError, match=r"gateway--c1.json: not a result of vllm bench serve .*p99_itl_ms"):
        benchmark.load(tmp_path)


def test_no_result_at_all_is_refused(tmp_path):
    with pytest.raises(benchmark.ReportError, match="no result of vllm bench serve"):
        benchmark.load(tmp_path)


def test_the_command_line_prints_the_summary_and_refuses_a_negative_slo(report_dir, capsys):
    assert benchmark.main([str(report_dir), "--slo", "failed_max=0"]) == 0
    assert json.loads(capsys.readouterr().out)["breaches"] == []
    with pytest.raises(SystemExit):
        benchmark.main([str(report_dir), "--slo", "ttft_p99_ms=-1"])
