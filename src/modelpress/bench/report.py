"""Write a benchmark's results: results.json, results.csv, results.md and results.png."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from ..errors import SaveError
from .runner import ROW_KEYS
from .stats import ALPHA, BOOTSTRAP_RESAMPLES, EXACT_MCNEMAR_MAX

__all__ = ["decode_table", "format_row", "markdown", "write_reports"]

COLUMNS = (
    "Model",
    "Method",
    "Size on disk",
    "bits/weight",
    "CPU latency p50 (ms, batch 1)",
    "CPU latency p95 (ms)",
    "CPU throughput (samples/s, batch 32)",
    "GPU latency p50 (ms)",
    "Peak RAM (MB)",
    "Peak VRAM (MB)",
    "Quality",
    "Δ vs original",
    "Agreement",
)


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


NOT_SIGNIFICANT = "(n.s.)"


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}" if p < 0.01 else f"p={p:.3f}".rstrip("0")


def _delta_mark(r: dict[str, Any]) -> str:
    """' (n.s.)' for a delta within noise (paired test p >= 0.05), ' (p=...)' otherwise, ''
    for rows without a paired test (results written before intervals existed)."""
    if r.get("delta_p") is None:
        return ""
    return f" {NOT_SIGNIFICANT}" if r.get("within_noise") else f" ({_p(r['delta_p'])})"


def format_row(r: dict[str, Any]) -> list[str]:
    """One row of the human table (units: MB = 10^6 bytes; accuracy in %, delta in points);
    quality with its 95 % interval in brackets, delta marked (n.s.) when within noise."""
    lo, hi = r.get("quality_low"), r.get("quality_high")
    if r["metric"] == "accuracy":
        quality = f"{100 * r['quality']:.2f}% acc"
        if lo is not None and hi is not None:
            quality += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
        delta = f"{100 * r['quality_delta']:+.2f} pt" + _delta_mark(r)
    else:
        quality = f"{r['quality']:.3f} {'ppl' if r['metric'] == 'perplexity' else r['metric']}"
        if lo is not None and hi is not None:
            quality += f" [{lo:.3f}, {hi:.3f}]"
        delta = f"{r['quality_delta']:+.3f}" + _delta_mark(r)
    agreement = "-" if r.get("agreement") is None else f"{100 * r['agreement']:.2f}%"
    return [
        r["model"],
        r["method"],
        _size(r["size_bytes"]),
        f"{r['bits_per_weight']:.2f}",
        _num(r["cpu_latency_ms_p50"], ".2f"),
        _num(r["cpu_latency_ms_p95"], ".2f"),
        _num(r["cpu_throughput"], ".1f"),
        _num(r["gpu_latency_ms_p50"], ".2f"),
        _num(r["peak_rss_mb"], ".0f"),
        _num(r["peak_vram_mb"], ".0f"),
        quality,
        delta,
        agreement,
    ]


def header_lines(env: dict[str, Any]) -> list[str]:
    flags = ", ".join(env.get("cpu_flags") or []) or "none of note"
    gpu = env.get("cuda") or "none"
    return [
        f"- Model: {env.get('model')} · task {env.get('task')} · metric {env.get('metric')} · "
        f"{env.get('params', 0) / 1e6:.1f}M parameters",
        f"- Data: {env.get('data')}",
        f"- CPU: {env.get('cpu')} ({env.get('cpu_count')} logical cores; {flags}); "
        f"{env.get('threads')} threads",
        f"- GPU: {gpu}; quality evaluated on {env.get('device')}",
        (
            f"- Inputs: latency at batch {env.get('latency_batch_size')} × {env['inputs']}, "
            f"throughput at batch {env.get('throughput_batch_size')} × {env['inputs']}"
            if env.get("inputs")  # a user's own module: the shape of one example
            else f"- Inputs: latency at batch {env.get('latency_batch_size')} × {env.get('seq_len')} tokens, "
            f"throughput at batch {env.get('throughput_batch_size')} × {env.get('seq_len')} tokens"
        ),
        f"- Software: Python {env.get('python')}, torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}"
        + (f", onnxruntime {env['onnxruntime']}" if env.get("onnxruntime") else "")
        + f"; allocator: {env.get('allocator', 'system default')}",
        f"- Run: {env.get('date')}, {env.get('total_seconds', 0):.0f} s in all",
        *(
            [
                f"- Decode: {env['decode']}; memory bandwidth {env['memory_bandwidth_gbs']:.1f} GB/s "
                "(copy, read + write, measured in this run)"
            ]
            if env.get("decode")
            else []
        ),
        *([f"- {env['decode_skipped']}"] if env.get("decode_skipped") else []),
        *([f"- Evaluation: {env['eval_subset']}"] if env.get("eval_subset") else []),
        *quality_lines(env),
        *([f"- Original: {env['original_training']}"] if env.get("original_training") else []),
        *([f"- Memory: {env['memory_skipped']}"] if env.get("memory_skipped") else []),
    ]


def quality_lines(env: dict[str, Any]) -> list[str]:
    """How sure the quality figures are (bench/stats.py), and a warning where the test split
    is too small to resolve 1 point of accuracy (1 % of perplexity); [] for results written
    before intervals existed."""
    res = env.get("quality_resolution") or {}
    if not res:
        return []
    accuracy = env.get("metric") == "accuracy"
    test = (
        f"McNemar's test (exact binomial up to {EXACT_MCNEMAR_MAX} changed predictions)"
        if accuracy
        else f"a paired bootstrap over the test sequences ({BOOTSTRAP_RESAMPLES} resamples)"
    )
    lines = [
        f"- Quality: [95 % interval] by {res['interval']}; Δ vs the original by {test} on the same "
        f"examples; {NOT_SIGNIFICANT} = within noise (p >= {ALPHA:.2f}: this test split cannot tell "
        "the row from the original)"
    ]
    if res.get("resolves_1pt", True):
        return lines
    n = res["n"]
    if accuracy:
        lines.append(
            f"- **The test split is too small to resolve 1 point**: on {n} examples the original's "
            f"95 % interval is ±{100 * res['half_width']:.1f} pt; the paired test is sharper, yet calls "
            f"no Δ under {100 * res['min_paired_delta']:.2f} pt significant "
            f"({round(res['min_paired_delta'] * n)} of {n} predictions, all changing the same way)"
        )
    else:
        rel = res["half_width"] / env["original_quality"] if env.get("original_quality") else float("nan")
        lines.append(
            f"- **The test split is too small to resolve 1 % of perplexity**: on {n} sequences the "
            f"original's 95 % interval is ±{100 * rel:.1f} %"
        )
    return lines


def decode_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the decode table (causal LMs): tokens/s and time to first token
    per batch size, weights read per token, the bandwidth bound and each row's share of it;
    ([], []) where no row was decode-timed."""
    batches = sorted(
        {
            int(k.removeprefix("decode_tokens_per_s_b"))
            for r in rows
            for k in r
            if k.startswith("decode_tokens_per_s_b")
        }
    )
    if not batches:
        return [], []
    header = ["Method"]
    for b in batches:
        header += [f"decode tok/s (batch {b})", f"TTFT ms (batch {b})"]
    header += ["weights read / token", "bound tok/s (bandwidth / weights)"]
    header += [f"share of bound (batch {b})" for b in batches]
    out = []
    for r in rows:
        line = [r["method"]]
        for b in batches:
            line += [_num(r.get(f"decode_tokens_per_s_b{b}"), ".1f"), _num(r.get(f"ttft_ms_b{b}"), ".0f")]
        wb = r.get("weight_bytes_per_token")
        line += [_size(wb) if wb else "-", _num(r.get("decode_bound_tokens_per_s"), ".1f")]
        for b in batches:
            share = r.get(f"decode_bound_share_b{b}")
            line.append("-" if share is None else f"{100 * share:.0f} %")
        out.append(line)
    return header, out


def markdown(result: dict[str, Any], command: str | None = None) -> str:
    env, rows = result["env"], result["rows"]
    out = [f"## {env.get('model')} — {env.get('task')}", ""]
    if command:
        out += [f"Command: `{command}`", ""]
    if env.get("retimed_by"):
        out += [
            "CPU latency, throughput and peak RAM re-measured on the same artifacts, one after "
            f"the other on an otherwise idle CPU, by: `{env['retimed_by']}`",
            "",
        ]
    out += [*header_lines(env)]
    spreads = sorted(r["latency_round_spread"] for r in rows if r.get("latency_round_spread") is not None)
    if env.get("timing") and spreads:
        loads = [f"{x:.2f}" for x in env.get("load_average") or [] if x is not None]
        mid = spreads[len(spreads) // 2]
        out.append(
            f"- Timing: {env['timing']}; spread between rounds: median {100 * mid:.0f} %, "
            f"max {100 * spreads[-1]:.0f} %" + (f"; load average {' -> '.join(loads)}" if loads else "")
        )
    if env.get("busy"):
        out.append(
            "- **The machine was busy during timing** (load average above the threads used, or rounds "
            "disagreeing by more than 25 %): the speed ratios in this table are noisy"
        )
    out.append("")
    batch = int(env.get("throughput_batch") or 32)
    cols = [c.replace("batch 32", f"batch {batch}") for c in COLUMNS]
    out.append("| " + " | ".join(cols) + " |")
    out.append("|" + "|".join("---" for _ in cols) + "|")
    out += ["| " + " | ".join(format_row(r)) + " |" for r in rows]
    dec_header, dec_rows = decode_table(rows)
    if dec_rows:
        out += [
            "",
            "Decode (greedy, KV cache; tokens/s counts the new tokens after the first, of all sequences; "
            "share of bound = tokens/s per sequence / bound):",
            "",
        ]
        out.append("| " + " | ".join(dec_header) + " |")
        out.append("|" + "|".join("---" for _ in dec_header) + "|")
        out += ["| " + " | ".join(line) + " |" for line in dec_rows]
    notes = [f"- **{r['method']}**: {n}" for r in rows for n in r.get("notes", [])]
    base = [r["baseline_rss_mb"] for r in rows if r.get("baseline_rss_mb")]
    out += [""]
    if notes:
        out += ["Notes (measured in this run):", *notes, ""]
    timed = [r for r in rows if r.get("compress_seconds") is not None and r["method"] != "fp32"]
    if timed:
        out += [
            "Compression time (s, calibration and training included): "
            + ", ".join(f"{r['method']} {r['compress_seconds']:.1f}" for r in timed),
            "",
        ]
    out.append(
        "Size on disk = bytes of the files `modelpress.save` wrote (MB = 10^6 bytes); "
        "bits/weight = 8 × bytes / parameters of the original. "
        "Peak RAM = peak RSS of a fresh process that loads the artifact and runs one batch"
        + (
            f" (the interpreter with torch and transformers imported takes ~{min(base):.0f} MB of it)."
            if base
            else "."
        )
        + " Agreement = share of test predictions equal to the original's (next-token top-1 for LMs)."
    )
    return "\n".join(out) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    extra = sorted({k for r in rows for k in r} - set(ROW_KEYS) - {"recipe", "notes"})
    keys = [*ROW_KEYS, *extra, "notes"]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                **{k: r.get(k) for k in keys},
                "recipe": json.dumps(r["recipe"]),
                "notes": "; ".join(r.get("notes", [])),
            }
        )
    return buf.getvalue()


def plot(result: dict[str, Any], path: Path) -> None:
    """Quality vs size and quality vs CPU latency, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    env = result["env"]
    metric = rows[0]["metric"] if rows else "quality"
    scale = 100.0 if metric == "accuracy" else 1.0
    ylabel = "accuracy (%)" if metric == "accuracy" else metric
    res = env.get("quality_resolution") or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in (
        (axes[0], "size_bytes", "size on disk (MB)"),
        (axes[1], "cpu_latency_ms_p50", "CPU latency p50, batch 1 (ms)"),
    ):
        if res.get("quality_low") is not None:  # the original's 95 % interval
            ax.axhspan(
                res["quality_low"] * scale,
                res["quality_high"] * scale,
                color="0.85",
                zorder=0,
                label="original's 95 % interval",
            )
        for i, r in enumerate(rows):
            x = r[key] / 1e6 if key == "size_bytes" else r[key]
            y = r["quality"] * scale
            color = f"C{i % 10}"
            if r.get("quality_low") is not None and r.get("quality_high") is not None:
                # a percentile bootstrap interval need not contain the point estimate (a ratio
                # estimator over few sequences): clip the bar at the point rather than fail
                err = [[max(0.0, y - r["quality_low"] * scale)], [max(0.0, r["quality_high"] * scale - y)]]
                ax.errorbar([x], [y], yerr=err, fmt="none", ecolor=color, elinewidth=1, capsize=3)
            # hollow marker: the delta vs the original is within noise (paired test p >= 0.05)
            hollow = bool(r.get("within_noise")) and r.get("delta_p") is not None
            ax.scatter([x], [y], s=36, facecolors="white" if hollow else color, edgecolors=color, zorder=3)
            # alternate label offsets so methods at the same point stay readable
            ax.annotate(
                r["method"], (x, y), textcoords="offset points", xytext=(5, 4 - 12 * (i % 2)), fontsize=8
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if any(r.get("delta_p") is not None for r in rows):
        from matplotlib.artist import Artist
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        handles: list[Artist] = [
            Line2D([], [], marker="o", ls="none", color="0.3", label="Δ vs original significant (p < 0.05)"),
            Line2D(
                [],
                [],
                marker="o",
                ls="none",
                color="0.3",
                markerfacecolor="white",
                label="Δ within noise (n.s.)",
            ),
            Line2D([], [], marker="|", ls="none", color="0.3", markersize=10, label="95 % interval"),
        ]
        if res.get("quality_low") is not None:
            handles.append(Patch(color="0.85", label="original's 95 % interval"))
        axes[0].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(
        f"{result['env'].get('model')}: {ylabel} vs size and latency "
        f"({'higher' if metric == 'accuracy' else 'lower'} is better)"
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_reports(result: dict[str, Any], out: Path, command: str | None = None) -> dict[str, Path]:
    """Write results.{json,csv,md,png} into ``out``; ``SaveError`` where it cannot."""
    out = Path(out)
    paths = {k: out / f"results.{k}" for k in ("json", "csv", "md", "png")}
    result_json = {"env": result["env"], "rows": result["rows"]}
    if command:
        result_json["env"] = {**result["env"], "command": command}
    try:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(paths["json"], json.dumps(result_json, indent=1, default=str) + "\n")
        _atomic_write(paths["csv"], _csv(result["rows"]))
        _atomic_write(paths["md"], markdown(result, command))
        plot(result, paths["png"])
    except OSError as e:
        raise SaveError(f"cannot write the benchmark reports to {out}: {e.strerror or e}") from e
    return paths
