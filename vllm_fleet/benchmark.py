"""Reports of ``playbooks/benchmark.yml``: the raw results of vLLM's serving
benchmark (``vllm bench serve --save-result``), one JSON per target and
concurrency, turned into a Markdown table per target, PNG plots and SLO
verdicts.

    python -m vllm_fleet.benchmark <report-dir> [--slo ttft_p99_ms=500 ...]

writes ``report.md``, ``summary.json`` and the plots (``throughput.png``,
``latency.png``, ``gateway_vs_direct.png``, their points in ``plots.json``)
into the report directory, prints ``summary.json`` and exits 0 (the
playbook reads the breaches from it and fails the play naming them).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable

# The target a run measured, as the playbook labels it (--metadata target=...):
# "gateway" (through the VIP) or "direct <host>/<instance>".
GATEWAY = "gateway"
METRICS = ("ttft", "itl", "e2el")
PERCENTILES = (50, 99)
# SLO name -> (what it limits, how a run's value is read, whether higher is worse).
SLOS = {
    "ttft_p99_ms": ("TTFT p99 (ms)", lambda s: s["ttft_p99_ms"], True),
    "itl_p99_ms": ("ITL p99 (ms)", lambda s: s["itl_p99_ms"], True),
    "e2el_p99_ms": ("E2E latency p99 (ms)", lambda s: s["e2el_p99_ms"], True),
    "failed_max": ("failed requests", lambda s: s["failed"], True),
    "output_tok_s_min": ("output tok/s", lambda s: s["output_tok_s"], False),
}
COLUMNS = (
    ("concurrency", "concurrency", "{}"),
    ("req/s", "req_s", "{:.2f}"),
    ("output tok/s", "output_tok_s", "{:.1f}"),
    ("TTFT p50 ms", "ttft_p50_ms", "{:.1f}"),
    ("TTFT p99 ms", "ttft_p99_ms", "{:.1f}"),
    ("ITL p50 ms", "itl_p50_ms", "{:.1f}"),
    ("ITL p99 ms", "itl_p99_ms", "{:.1f}"),
    ("E2E p50 ms", "e2el_p50_ms", "{:.1f}"),
    ("E2E p99 ms", "e2el_p99_ms", "{:.1f}"),
    ("completed", "completed", "{}"),
    ("failed", "failed", "{}"),
)


class ReportError(ValueError):
    pass


def summarize(result: dict[str, Any], source: str = "") -> dict[str, Any]:
    """The figures of one run that the report and the SLOs use."""
    try:
        row = {
            "target": str(result["target"]),
            "concurrency": int(result["max_concurrency"]),
            "completed": int(result["completed"]),
            "failed": int(result.get("failed", 0)),
            "req_s": float(result["request_throughput"]),
            "output_tok_s": float(result["output_throughput"]),
            "duration_s": float(result["duration"]),
        }
        for metric in METRICS:
            for p in PERCENTILES:
                row[f"{metric}_p{p}_ms"] = float(result[f"p{p}_{metric}_ms"])
    except (KeyError, TypeError, ValueError) as error:
        raise ReportError(f"{source or 'a result'}: not a result of vllm bench serve with "
                          f"--percentile-metrics ttft,itl,e2el --metric-percentiles 50,99 "
                          f"and --metadata target=...: {error!r}") from None
    return row


def load(directory: Path) -> list[dict[str, Any]]:
    """Every run's summary, ordered by target (gateway first) and concurrency."""
    rows = []
    for path in sorted((directory / "raw").glob("*.json")):
        rows.append(summarize(json.loads(path.read_text()), str(path)))
    if not rows:
        raise ReportError(f"{directory / 'raw'}: no result of vllm bench serve")
    return sorted(rows, key=lambda r: (r["target"] != GATEWAY, r["target"], r["concurrency"]))


def targets(rows: Iterable[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["target"] for r in rows))


def breaches(rows: Iterable[dict[str, Any]], slos: dict[str, float | None]) -> list[str]:
    """One line per run and SLO it misses, naming the figure, its value and the limit."""
    unknown = sorted(set(slos) - set(SLOS))
    if unknown:
        raise ReportError(f"unknown SLO {', '.join(unknown)}: allowed are {', '.join(SLOS)}")
    found = []
    for row in rows:
        for name, limit in slos.items():
            if limit is None:
                continue
            label, read, higher_is_worse = SLOS[name]
            value = read(row)
            if (value > limit) if higher_is_worse else (value < limit):
                found.append(f"{row['target']} at concurrency {row['concurrency']}: {label} "
                             f"{value:g} {'>' if higher_is_worse else '<'} benchmark_slo_{name}={limit:g}")
    return found


def gateway_overhead(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency: the gateway's median E2E latency against the median of
    the direct targets' (every instance measured alone at that concurrency)."""
    out = []
    for concurrency in sorted({r["concurrency"] for r in rows}):
        gateway = [r for r in rows if r["target"] == GATEWAY and r["concurrency"] == concurrency]
        direct = [r for r in rows if r["target"] != GATEWAY and r["concurrency"] == concurrency]
        if gateway and direct:
            via = gateway[0]["e2el_p50_ms"]
            alone = statistics.median(r["e2el_p50_ms"] for r in direct)
            out.append({"concurrency": concurrency, "gateway_e2el_p50_ms": via, "direct_e2el_p50_ms": alone,
                        "overhead_ms": via - alone})
    return out


def markdown(rows: list[dict[str, Any]], slo_breaches: list[str], meta: dict[str, Any]) -> str:
    lines = ["# Benchmark report", ""]
    for key, value in meta.items():
        lines.append(f"- {key}: {value}")
    lines.append("")
    for target in targets(rows):
        lines += [f"## {target}", "",
                  "| " + " | ".join(c[0] for c in COLUMNS) + " |",
                  "|" + "|".join("---:" for _ in COLUMNS) + "|"]
        for row in (r for r in rows if r["target"] == target):
            lines.append("| " + " | ".join(fmt.format(row[key]) for _, key, fmt in COLUMNS) + " |")
        lines.append("")
    overhead = gateway_overhead(rows)
    if overhead:
        lines += ["## Gateway against direct (E2E latency p50)", "",
                  "| concurrency | gateway ms | direct ms (median of instances) | overhead ms |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {o['concurrency']} | {o['gateway_e2el_p50_ms']:.1f} | {o['direct_e2el_p50_ms']:.1f} | "
                  f"{o['overhead_ms']:.1f} |" for o in overhead]
        lines.append("")
    lines += ["## SLOs", ""]
    lines += [f"- MISSED: {b}" for b in slo_breaches] or ["- every run met every SLO set"]
    lines += ["", "Plots: ![throughput](throughput.png) ![latency](latency.png)"
              + (" ![gateway against direct](gateway_vs_direct.png)" if overhead else ""), ""]
    return "\n".join(lines)


def plot_data(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[list[float]]]]:
    """The points of each plot: plot -> series -> [[x, y], ...]."""
    data: dict[str, dict[str, list[list[float]]]] = {"throughput": {}, "latency": {}}
    for target in targets(rows):
        mine = [r for r in rows if r["target"] == target]
        data["throughput"][target] = [[r["concurrency"], r["output_tok_s"]] for r in mine]
    # Latency as clients see it: through the gateway, else the first instance.
    first = targets(rows)[0]
    for metric in METRICS:
        for p in PERCENTILES:
            data["latency"][f"{first} {metric.upper()} p{p}"] = [
                [r["concurrency"], r[f"{metric}_p{p}_ms"]] for r in rows if r["target"] == first]
    overhead = gateway_overhead(rows)
    if overhead:
        data["gateway_vs_direct"] = {
            "gateway": [[o["concurrency"], o["gateway_e2el_p50_ms"]] for o in overhead],
            "direct": [[o["concurrency"], o["direct_e2el_p50_ms"]] for o in overhead],
        }
    return data


PLOT_LABELS = {
    "throughput": ("Output throughput against concurrency", "output tokens/s"),
    "latency": ("Latency percentiles against concurrency", "ms (log)"),
    "gateway_vs_direct": ("Gateway against direct: E2E latency p50", "ms"),
}


def draw(data: dict[str, dict[str, list[list[float]]]], directory: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot, ticker

    written = []
    for name, series in data.items():
        title, ylabel = PLOT_LABELS[name]
        figure, axes = pyplot.subplots(figsize=(7, 4.2), dpi=100)
        for label, points in series.items():
            # Percentiles of one metric share a colour: p50 solid, p99 dashed.
            style = "--" if label.endswith("p99") else "-"
            colour = f"C{METRICS.index(label.split()[-2].lower())}" if name == "latency" else None
            axes.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=label, color=colour)
        xs = sorted({p[0] for points in series.values() for p in points})
        if xs and xs[0] > 0 and xs[-1] / xs[0] >= 8:
            axes.set_xscale("log", base=2)
        axes.set_xticks(xs)
        axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%d"))
        axes.xaxis.set_minor_locator(ticker.NullLocator())
        if name == "latency" and all(p[1] > 0 for pts in series.values() for p in pts):
            axes.set_yscale("log")
            axes.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            axes.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        axes.set_title(title)
        axes.set_xlabel("concurrent requests")
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
        figure.tight_layout()
        path = directory / f"{name}.png"
        figure.savefig(path)
        pyplot.close(figure)
        written.append(path)
    return written


def report(directory: Path, slos: dict[str, float | None], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    rows = load(directory)
    missed = breaches(rows, slos)
    data = plot_data(rows)
    (directory / "plots.json").write_text(json.dumps(data, indent=1) + "\n")
    draw(data, directory)
    (directory / "report.md").write_text(markdown(rows, missed, meta or {}))
    summary = {"runs": rows, "breaches": missed, "gateway_overhead": gateway_overhead(rows),
               "slos": {k: v for k, v in slos.items() if v is not None}}
    (directory / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def runs(backends: list[dict[str, Any]], targets: list[str], ladder: list[int], base_url: str) -> list[dict[str, Any]]:
    """The playbook's runs: through the gateway (the client key), then each
    instance directly (the internal key), at every concurrency of the ladder."""
    found = []
    if "gateway" in targets:
        found += [{"target": GATEWAY, "url": base_url.rstrip("/"), "key": "client", "concurrency": int(c)}
                  for c in ladder]
    if "direct" in targets:
        found += [{"target": f"direct {b['host']}/{b['instance']}", "url": f"http://{b['endpoint']}", "key": "internal",
                   "concurrency": int(c)} for b in backends for c in ladder]
    for run in found:
        slug = "".join(ch if ch.isalnum() else "-" for ch in run["target"])
        run["file"] = f"{slug}--c{run['concurrency']}.json"
    return found


def slo_args(slos: dict[str, Any]) -> list[str]:
    """``--slo name=value`` for each SLO that is set (the playbook's benchmark_slo_*)."""
    args = []
    for name, value in slos.items():
        if value not in (None, "", "None"):
            args += ["--slo", f"{name}={float(value):g}"]
    return args


def _slo(text: str) -> tuple[str, float | None]:
    name, _, value = text.partition("=")
    if value.strip().lower() in ("", "none", "null"):
        return name, None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"{text}: an SLO is a number of at least 0")
    return name, number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--slo", type=_slo, action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        summary = report(args.directory, dict(args.slo), dict(m.split("=", 1) for m in args.meta))
    except ReportError as error:
        print(f"benchmark report: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
