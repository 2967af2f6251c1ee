"""Load-test report: summary (Markdown + JSON), PNG plots, SLO checks, Prometheus deltas.

Everything is computed from the per-request records (:mod:`koserve.loadtest.metrics`), which hold
exact values; locust's own CSVs are kept next to it as raw data (their percentiles are rounded
into buckets and the final CSV can lag the printed totals).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from koserve.errors import ConfigError
from koserve.loadtest.metrics import StreamRecord

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft", "tpot", "chunk_gap", "itl", "e2e")  # itl: the old name of chunk_gap (kept for SLOs/JSON)

DEFINITIONS = {
    "ttft": "time to first token: send -> first non-empty streamed text chunk",
    "tpot": "time per output token after the first, per request: (E2E - TTFT) / (output tokens - 1); "
            "AIPerf's and genai-perf's 'inter-token latency', vLLM's 'TPOT'",
    "chunk_gap": "time between two consecutive non-empty chunks of one stream, every gap of every request; one "
                 "chunk can carry several tokens (a Korean character of 2-3 byte tokens), so its tail is longer",
    "itl": "the same values as chunk_gap (the name before TPOT was reported; kept so old SLOs and scripts work)",
    "e2e": "send -> last response of the stream",
    "output_tokens": "tokens of the streamed text counted with the profile's tokenizer, or the server's count "
                     "(gateway usage.completion_tokens, BLS num_output_tokens)",
    "prompt_tokens": "tokens the model received: the rendered prompt with chat template and system prompt, "
                     "counted with the real tokenizer, or the gateway's usage.prompt_tokens when it sends one",
    "input_tokens": "tokens of the text the load generator put in the request (the gateway: the user message only, "
                    "before its chat template)",
    "output_tokens_per_s": "output tokens of all measured requests / (first send -> last response)",
}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def _stats(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"p{q}": _scaled(percentile(values, q), scale) for q in PERCENTILES}
    out["mean"] = _scaled(sum(values) / len(values), scale) if values else None
    out["max"] = _scaled(max(values), scale) if values else None
    return out


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else round(value * scale, 3)


def summarize(records: Sequence[StreamRecord], *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary dict (latencies in ms, rates per second); warm-up records are counted, not measured."""
    warmup = [r for r in records if r.warmup]
    records = [r for r in records if not r.warmup]
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    if records:
        t0 = min(r.start for r in records)
        t1 = max(r.end for r in records)
        window = max(t1 - t0, 1e-9)
    else:
        t0 = t1 = 0.0
        window = 0.0
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [gap for r in ok for gap in r.itls]
    tpots = [r.tpot for r in ok if r.tpot is not None]
    e2es = [r.e2e for r in ok]
    out_tokens = [r.output_tokens for r in ok]
    tps = [r.tokens_per_s for r in ok if r.tokens_per_s is not None]
    in_tokens = [r.input_tokens for r in ok if r.input_tokens is not None]
    prompt_tokens = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    sources = Counter(r.prompt_tokens_source for r in ok if r.prompt_tokens is not None and r.prompt_tokens_source)
    errors = Counter(r.error for r in failed)
    summary: dict[str, Any] = {
        "requests": len(records),
        "succeeded": len(ok),
        "failed": len(failed),
        "error_rate": round(len(failed) / len(records), 6) if records else 0.0,
        "duration_s": round(window, 3),
        "requests_per_s": round(len(ok) / window, 3) if window else 0.0,
        "output_tokens_total": sum(out_tokens),
        "output_tokens_per_s": round(sum(out_tokens) / window, 3) if window else 0.0,
        "chunks_total": sum(r.chunks for r in ok),
        "ttft_ms": _stats(ttfts),
        "tpot_ms": _stats(tpots),
        "chunk_gap_ms": _stats(itls),
        "itl_ms": _stats(itls),
        "e2e_ms": _stats(e2es),
        "request_output_tokens_per_s": _stats(tps, scale=1.0),
        "output_tokens_per_request": _stats([float(x) for x in out_tokens], scale=1.0),
        "prompt_tokens_per_request": _stats([float(x) for x in prompt_tokens], scale=1.0),
        "prompt_tokens_source": "+".join(sorted(sources)) or None,
        "input_tokens_per_request": _stats([float(x) for x in in_tokens], scale=1.0),
        "warmup_requests": len(warmup),
        "max_concurrency": max((r.concurrency for r in records), default=0),
        "errors": [{"message": msg, "count": n} for msg, n in errors.most_common(10)],
        "protocols": sorted({r.protocol for r in records}),
        "models": sorted({r.model for r in records}),
    }
    summary["definitions"] = dict(DEFINITIONS)
    if meta:
        summary["run"] = meta
    return summary


# -- SLOs ------------------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|us|µs|s|m)?\s*$")
_UNITS_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1000.0, "m": 60000.0, None: 1000.0}
_LOWER_IS_BETTER = {f"{m}_{p}" for m in LATENCIES for p in ("p50", "p90", "p99", "mean", "max")} | {"error_rate"}
_HIGHER_IS_BETTER = {"output_tokens_per_s", "requests_per_s"}


@dataclass(frozen=True)
class SLO:
    metric: str  # e.g. ttft_p99, error_rate, output_tokens_per_s
    limit: float  # ms for latencies, fraction for error_rate, per second for rates
    text: str

    def value(self, summary: dict[str, Any]) -> float | None:
        if self.metric in _HIGHER_IS_BETTER or self.metric == "error_rate":
            return summary.get(self.metric)
        name, stat = self.metric.rsplit("_", 1)
        return summary.get(f"{name}_ms", {}).get(stat)

    def check(self, summary: dict[str, Any]) -> tuple[bool, float | None]:
        value = self.value(summary)
        if value is None:
            return False, None
        if self.metric in _HIGHER_IS_BETTER:
            return value >= self.limit, value
        return value <= self.limit, value


def parse_slos(spec: str) -> list[SLO]:
    """Parse ``ttft_p99=2s,tpot_p99=50ms,chunk_gap_p99=100ms,error_rate=1%,output_tokens_per_s=500``.

    Latencies take s/ms/us (a bare number is seconds); ``error_rate`` a fraction or percent;
    rates are minimums, everything else maximums.
    """
    slos: list[SLO] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise ConfigError(f"SLO {part!r}: expected name=value, e.g. ttft_p99=2s")
        name, raw = (x.strip() for x in part.split("=", 1))
        if name in _HIGHER_IS_BETTER:
            try:
                limit = float(raw)
            except ValueError as exc:
                raise ConfigError(f"SLO {part!r}: {name} takes a number per second") from exc
        elif name == "error_rate":
            try:
                limit = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
            except ValueError as exc:
                raise ConfigError(f"SLO {part!r}: error_rate takes a fraction or a percentage") from exc
        elif name in _LOWER_IS_BETTER:
            m = _DURATION.match(raw)
            if not m:
                raise ConfigError(f"SLO {part!r}: expected a duration such as 2s, 150ms or 800us")
            limit = float(m.group(1)) * _UNITS_MS[m.group(2)]
        else:
            known = sorted(_LOWER_IS_BETTER | _HIGHER_IS_BETTER)
            raise ConfigError(f"SLO {part!r}: unknown metric {name!r}; known: {', '.join(known)}")
        slos.append(SLO(name, limit, part))
    return slos


def _slo_quantity(metric: str, value: float) -> str:
    if metric == "error_rate":
        return f"{value * 100:.2f} %"
    if metric in _HIGHER_IS_BETTER:
        return f"{value:,.1f}/s"
    return f"{value:,.1f} ms"


def slo_comparison(result: dict[str, Any]) -> str:
    """``439.6 ms > 50.0 ms``: the measured value against the limit, with units and the relation that holds."""
    metric, limit, value = result["metric"], result["limit"], result["value"]
    if value is None:
        return f"not measured (no successful request) vs {_slo_quantity(metric, limit)}"
    if metric in _HIGHER_IS_BETTER:
        relation = "≥" if value >= limit else "<"
    else:
        relation = "≤" if value <= limit else ">"
    return f"{_slo_quantity(metric, value)} {relation} {_slo_quantity(metric, limit)}"


def check_slos(slos: Sequence[SLO], summary: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    for slo in slos:
        passed, value = slo.check(summary)
        results.append({"slo": slo.text, "metric": slo.metric, "limit": slo.limit, "value": value, "passed": passed})
    return results


# -- Prometheus ------------------------------------------------------------------------------------------------

_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)


def parse_prometheus(text: str) -> dict[tuple[str, str], float]:
    """``{(metric, model): value}`` for Triton's per-model counters (summed over versions)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")  # the parser adds _total to counter samples
            if name in _COUNTERS:
                key = (name, sample.labels.get("model", ""))
                values[key] = values.get(key, 0.0) + float(sample.value)
    return values


def prometheus_delta(before: str, after: str) -> dict[str, dict[str, float]]:
    """Per-model counter increases over the run, plus average request/queue time in ms."""
    b, a = parse_prometheus(before), parse_prometheus(after)
    models: dict[str, dict[str, float]] = {}
    for (name, model), value in a.items():
        models.setdefault(model, {})[name.removeprefix("nv_inference_")] = value - b.get((name, model), 0.0)
    for stats in models.values():
        done = stats.get("request_success", 0.0) + stats.get("request_failure", 0.0)
        if done:
            stats["avg_request_ms"] = round(stats.get("request_duration_us", 0.0) / done / 1000.0, 3)
            stats["avg_queue_ms"] = round(stats.get("queue_duration_us", 0.0) / done / 1000.0, 3)
    return dict(sorted(models.items()))


# -- Markdown --------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def render_markdown(summary: dict[str, Any], slo_results: Sequence[dict[str, Any]] = (),
                    prometheus: dict[str, dict[str, float]] | None = None) -> str:
    run = summary.get("run", {})
    lines = ["# koserve load test", ""]
    if run.get("end_detail"):
        lines += [f"**Run ended:** {run['end_detail']}", ""]
    if run:
        lines += [f"- {k}: `{v}`" for k, v in run.items() if k != "end_detail"] + [""]
    lines += [
        "| measure | p50 | p90 | p99 | mean | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    source = summary.get("prompt_tokens_source")
    prompt_label = "prompt tokens per request (what the model received" + (
        ", from the server's usage)" if source == "server" else ")")
    for key, label in (("ttft_ms", "TTFT (ms)"),
                       ("tpot_ms", "TPOT / inter-token latency per request (ms)"),
                       ("chunk_gap_ms", "chunk gap (ms)"), ("e2e_ms", "end-to-end (ms)"),
                       ("request_output_tokens_per_s", "output tokens/s per request"),
                       ("output_tokens_per_request", "output tokens per request"),
                       ("prompt_tokens_per_request", prompt_label),
                       ("input_tokens_per_request", "input tokens per request (text the load generator sent)")):
        s = summary.get(key)
        if s is None:
            continue
        lines.append(f"| {label} | " + " | ".join(_fmt(s[c]) for c in ("p50", "p90", "p99", "mean", "max")) + " |")
    lines += [
        "",
        "- **TTFT**: send → first non-empty streamed text chunk.",
        "- **TPOT** (time per output token; AIPerf's and genai-perf's *inter-token latency*, vLLM's *TPOT*): per "
        "request, **(E2E − TTFT) / (output tokens − 1)**; percentiles over requests.",
        "- **chunk gap**: time between two consecutive non-empty chunks of a stream, percentiles over every gap. A "
        "chunk can carry several tokens (a Korean character spanning 2–3 byte tokens arrives whole), so single gaps "
        "of 2–3× the token pace are expected and the chunk-gap tail is longer than TPOT's. (JSON `itl_ms` holds the "
        "same values under its old name.)",
        "- **E2E**: send → last response. Output tokens: the streamed text re-tokenized with the profile's "
        "tokenizer, or the server's count when it gives one.",
    ]
    if summary.get("warmup_requests"):
        lines += [f"- {summary['warmup_requests']} warm-up request(s) are left out of every figure."]
    lines += [
        "",
        "| totals | value |",
        "|---|---:|",
        f"| requests (ok / failed) | {summary['succeeded']} / {summary['failed']} |",
        f"| warm-up requests (not measured) | {summary.get('warmup_requests', 0)} |",
        f"| error rate | {summary['error_rate'] * 100:.2f} % |",
        f"| duration (first send → last response) | {summary['duration_s']:.1f} s |",
        f"| requests/s (completed) | {summary['requests_per_s']:.2f} |",
        f"| output tokens/s (all streams) | {summary['output_tokens_per_s']:.1f} |",
        f"| output tokens | {summary['output_tokens_total']} |",
        f"| most requests in flight (per locust process) | {summary['max_concurrency']} |",
    ]
    gen = summary.get("load_generator")
    if gen:
        lines.append(f"| load generator CPU (busiest of {gen['processes']} locust process(es)) | "
                     f"{gen['cpu_percent_max']:.0f} % of a core |")
        if gen["saturated"]:
            lines += ["", f"**Warning:** a locust process used {gen['cpu_percent_max']:.0f} % of a core: the load "
                      "generator, not only the server, limited this run. Add locust processes (`--processes`) or "
                      "machines (distributed mode)."]
    if summary["errors"]:
        lines += ["", "## Errors", "", "| count | message |", "|---:|---|"]
        lines += [f"| {e['count']} | {str(e['message']).replace('|', '/')} |" for e in summary["errors"]]
    if slo_results:
        lines += ["", "## SLOs", "", "| SLO | measured vs limit | result |", "|---|---:|---|"]
        for r in slo_results:
            lines.append(f"| `{r['slo']}` | {slo_comparison(r)} | {'pass' if r['passed'] else '**MISSED**'} |")
    if prometheus:
        lines += ["", "## Server metrics (Triton, change over the run)", "",
                  "| model | success | failure | executions | avg request ms | avg queue ms |",
                  "|---|---:|---:|---:|---:|---:|"]
        for model, s in prometheus.items():
            lines.append(
                f"| {model} | {s.get('request_success', 0):.0f} | {s.get('request_failure', 0):.0f} | "
                f"{s.get('exec_count', 0):.0f} | {_fmt(s.get('avg_request_ms'), 2)} | {_fmt(s.get('avg_queue_ms'), 2)} |"
            )
    if summary.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"`{name}`" for name in summary["plots"]) + "."]
    elif summary.get("plots_note"):
        lines += ["", f"Plots: none, {summary['plots_note']}."]
    lines += ["", "Raw data: `records/*.jsonl` (one line per request), `locust_*.csv`.", ""]
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------------------


def plot_window(span: float, e2e_p50: float = 0.0) -> float:
    """Width (s) of the rolling window of the throughput plot: a few seconds and at least two typical requests
    (a closed loop finishes its requests in waves one E2E apart), at most a third of the run."""
    window = max(min(5.0, span / 6.0), 2.0 * e2e_p50)
    return round(max(0.5, min(window, span / 3.0)), 1)


def rolling_rate(times: Sequence[float], weights: Sequence[float] | None, grid: Sequence[float], window: float,
                 span: float) -> list[float]:
    """Events per second around each grid point: the weighted count in a centred ``window``, clipped to
    ``[0, span]`` and divided by the covered length (so the first and last seconds do not dip)."""
    import numpy as np

    t = np.asarray(times, dtype=float)
    order = np.argsort(t)
    t = t[order]
    w = np.ones_like(t) if weights is None else np.asarray(weights, dtype=float)[order]
    cum = np.concatenate(([0.0], np.cumsum(w)))
    g = np.asarray(grid, dtype=float)
    lo = np.clip(g - window / 2, 0.0, span)
    hi = np.clip(g + window / 2, 0.0, span)
    total = cum[np.searchsorted(t, hi, side="right")] - cum[np.searchsorted(t, lo, side="left")]
    return list(total / np.maximum(hi - lo, 1e-9))


def in_flight_steps(records: Sequence[StreamRecord], t0: float) -> tuple[list[float], list[int]]:
    """Exact requests-in-flight step function: (times, counts) after each send/finish."""
    events = sorted([(r.start - t0, 1) for r in records] + [(r.end - t0, -1) for r in records])
    xs, ys, n = [0.0], [0], 0
    for t, d in events:
        n += d
        xs.append(max(t, 0.0))
        ys.append(n)
    return xs, ys


def write_plots(records: Sequence[StreamRecord], out_dir: Path) -> list[Path]:
    """PNG plots (matplotlib, Agg backend) of the measured (non-warm-up) records; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = list(records)  # warm-up requests still in flight count in the in-flight line
    records = [r for r in records if not r.warmup]
    ok = [r for r in records if r.ok]
    if not records:
        return []
    t0 = min(r.start for r in records)
    t1 = max(r.end for r in records)
    span = max(t1 - t0, 1e-3)
    nb = max(1, min(40, int(span / 0.5)))  # equal buckets of >= 0.5 s covering exactly the run
    bucket = span / nb
    centres = [(i + 0.5) * bucket for i in range(nb)]
    written: list[Path] = []

    # 1. latency percentiles over time (by completion time)
    panels = (("TTFT", lambda r: [r.ttft] if r.ttft is not None else []),
              ("TPOT", lambda r: [r.tpot] if r.tpot is not None else []),
              ("chunk gap", lambda r: r.itls), ("E2E", lambda r: [r.e2e]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 11), sharex=True)
    for ax, (name, getter) in zip(axes, panels):
        per: list[list[float]] = [[] for _ in range(nb)]
        for r in ok:
            per[min(int((r.end - t0) // bucket), nb - 1)].extend(getter(r))
        for q, style in zip(PERCENTILES, ("-", "--", ":")):
            ys = [percentile(v, q) for v in per]
            xs = [x for x, y in zip(centres, ys) if y is not None]
            ax.plot(xs, [y * 1000 for y in ys if y is not None], style, marker=".", label=f"p{q}")
        ax.set_ylabel(f"{name} (ms)")
        top = max((max(v) for v in per if v), default=0.0) * 1000
        ax.set_ylim(0, top * 1.35 or 1.0)  # room above the lines for the legend
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", ncol=3, fontsize=8)
    axes[-1].set_xlim(0, span)
    axes[-1].set_xlabel(f"time since the first measured send (s); requests by completion, {bucket:.1f} s buckets")
    fig.suptitle("Latency percentiles over time (TPOT = (E2E − TTFT) / (output tokens − 1))")
    fig.tight_layout()
    written.append(out_dir / "latency_over_time.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    # 2. throughput over time: output tokens/s and requests/s (rolling window), requests in flight (exact)
    window = plot_window(span, percentile([r.e2e for r in ok], 50) or 0.0)
    steps = max(2, min(400, int(span / 0.25) + 1))
    grid = [span * i / (steps - 1) for i in range(steps)]
    token_times: list[float] = []
    token_weights: list[float] = []
    for r in ok:
        if r.ttft is None or not r.chunks:
            continue
        per_chunk = r.output_tokens / r.chunks
        t = r.start - t0 + r.ttft
        for k in range(r.chunks):
            token_times.append(t)
            token_weights.append(per_chunk)
            if k < len(r.itls):
                t += r.itls[k]
    done = [r.end - t0 for r in records if r.ok]
    failed = [r.end - t0 for r in records if not r.ok]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    tok_rate = rolling_rate(token_times, token_weights, grid, window, span) if token_times else [0.0] * steps
    ax1.plot(grid, tok_rate, "-", color="tab:blue", label="output tokens/s")
    ax1.set_ylabel("output tokens/s")
    ax1.grid(alpha=0.3)
    ax1b = ax1.twinx()
    req_rate = rolling_rate(done, None, grid, window, span) if done else [0.0] * steps
    ax1b.plot(grid, req_rate, "g--", label="requests/s (ok)")
    if failed:
        ax1b.plot(grid, rolling_rate(failed, None, grid, window, span), "r:", label="failures/s")
    ax1b.set_ylabel("requests/s")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="upper center", ncol=3, fontsize=8)
    ax1.set_ylim(0, max(tok_rate, default=0.0) * 1.35 or 1.0)
    ax1b.set_ylim(0, max([*req_rate, 0.0]) * 1.35 or 1.0)
    ax1.set_title(f"rates over a rolling {window:g} s window", fontsize=10)
    xs, ys = in_flight_steps([r for r in everything if r.end > t0], t0)
    ax2.step(xs, ys, where="post")
    ax2.set_ylabel("requests in flight")
    ax2.set_ylim(0, max(ys) * 1.15 + 0.5)
    ax2.set_xlim(0, span)
    ax2.set_xlabel("time since the first measured send (s)")
    ax2.grid(alpha=0.3)
    fig.suptitle("Throughput over time")
    fig.tight_layout()
    written.append(out_dir / "throughput_over_time.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    # 3. TTFT vs concurrency (requests in flight when each request started)
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [(r.concurrency, r.ttft * 1000) for r in ok if r.ttft is not None]
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.35, label="requests")
        levels = sorted({p[0] for p in pts})
        for q, style in ((50, "-o"), (99, "--s")):
            ax.plot(levels, [percentile([p[1] for p in pts if p[0] == c], q) for c in levels], style, label=f"p{q}")
        ax.legend()
    ax.set_xlabel("requests in flight at send (per locust process)")
    ax.set_ylabel("TTFT (ms)")
    ax.grid(alpha=0.3)
    ax.set_title("TTFT vs concurrency")
    fig.tight_layout()
    written.append(out_dir / "ttft_vs_concurrency.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    return written


GENERATOR_BUSY_PERCENT = 85.0


def load_generator_usage(processes: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """CPU use of the locust processes during the test; ``saturated`` when one was busier than 85 % of a core."""
    if not processes:
        return None
    busiest = max((p.get("cpu_percent") or 0.0) for p in processes)
    return {
        "processes": len(processes),
        "cpu_s": round(sum(p.get("cpu_s", 0.0) for p in processes), 3),
        "cpu_percent_max": busiest,
        "saturated": busiest >= GENERATOR_BUSY_PERCENT,
    }


def write_report(
    out_dir: Path,
    records: Sequence[StreamRecord],
    *,
    meta: dict[str, Any] | None = None,
    generator: dict[str, Any] | None = None,
    slos: Sequence[SLO] = (),
    metrics_before: str | None = None,
    metrics_after: str | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``summary.json``, ``summary.md`` and the plots into ``out_dir``; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(records, meta=meta)
    if generator:
        summary["load_generator"] = generator
    prom = None
    if metrics_before is not None and metrics_after is not None:
        try:
            prom = prometheus_delta(metrics_before, metrics_after)
        except Exception as exc:  # noqa: BLE001 - a malformed scrape must not lose the report
            prom = None
            summary["prometheus_error"] = str(exc)
    if prom is not None:
        summary["prometheus"] = prom
    results = check_slos(slos, summary)
    if results:
        summary["slos"] = results
        summary["slos_passed"] = all(r["passed"] for r in results)
    if plots:
        if summary["succeeded"]:
            summary["plots"] = [p.name for p in write_plots(records, out_dir)]
        else:
            summary["plots"] = []
            summary["plots_note"] = "no request succeeded (a plot would be empty)"
    else:
        summary["plots_note"] = "--no-plots"
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(render_markdown(summary, results, prom), encoding="utf-8")
    return summary
