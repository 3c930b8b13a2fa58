"""Run a model through methods and measure each: the rows of the comparison table.

For every method: compress the original, ``save`` it, ``load`` it back, and measure the
*loaded* artifact (what a user deploys): bytes on disk, task quality and agreement with the
original, CPU latency (batch 1) and throughput (batch 32), GPU latency when CUDA is
present, and the peak memory of a fresh process that loads and runs it.

CPU timing runs after every row is built, round-robin: each round times every row once
(a short burst at batch 1, then one at batch 32), so slow drifts of the machine (other
work, thermal or frequency changes) hit every row alike and the ratios in a table come
from the same conditions. A row's latency is the median over its rounds; the report gives
the spread between rounds and says when the machine was too busy for ratios to mean much.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .. import kernels
from ..api import artifact_bytes, check_save_target, compress, compression_notes, load, save
from ..errors import ConfigError, SaveError
from ..models.tasks import TaskAdapter
from ..recipe import Recipe
from .env import cpu_flags, environment, tune_allocator
from .measure import Timing, measure_memory, time_model

__all__ = ["ROW_KEYS", "BenchOptions", "run_bench"]

log = logging.getLogger(__name__)

# The keys of every row of results.json (later issues add rows, never change these).
ROW_KEYS = (
    "model",
    "method",
    "recipe",
    "size_bytes",
    "params",
    "bits_per_weight",
    "cpu_latency_ms_p50",
    "cpu_latency_ms_p95",
    "cpu_throughput",
    "gpu_latency_ms_p50",
    "peak_rss_mb",
    "peak_vram_mb",
    "metric",
    "quality",
    "quality_delta",
    "agreement",
)


@dataclasses.dataclass
class BenchOptions:
    output: Path
    device: str = "auto"  # auto | cpu | cuda: where quality is evaluated and GPU columns run
    threads: int | None = None
    progress: bool = True
    measure_memory: bool = True
    keep_artifacts: bool = True
    tune_allocator: bool = True  # see bench.env.tune_allocator
    rounds: int = 4  # round-robin timing rounds (every row timed once per round)


def _devices(device: str) -> tuple[torch.device, bool]:
    """(device for quality evaluation, whether to fill the GPU columns)."""
    if not isinstance(device, str) or device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    use_gpu = has_cuda and device != "cpu"
    return torch.device("cuda" if use_gpu else "cpu"), use_gpu


def _output_dirs(output: Any) -> Path:
    """Make ``output`` and ``output/artifacts``; returns the latter, or ``SaveError``."""
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output):
        raise ConfigError(f"the benchmark output must be a directory path, got {output!r}")
    art_dir = Path(output) / "artifacts"
    try:
        art_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SaveError(f"cannot write the benchmark results to {output}: {e.strerror or e}") from e
    return art_dir


def count_params(model: torch.nn.Module) -> int:
    """Parameters of a model, tied ones counted once."""
    return sum(p.numel() for p in model.parameters())


def run_bench(
    adapter: TaskAdapter, methods: list[tuple[str, Recipe]], options: BenchOptions
) -> dict[str, Any]:
    """Measure every method on ``adapter``'s model and data; returns ``{"env", "rows"}``."""
    labels = [m for m, _ in methods]
    if not labels:
        raise ConfigError("no methods given")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"method names must be unique, got {', '.join(labels)}")
    for label in labels:
        if not isinstance(label, str) or label.strip(".") == "" or any(c in label for c in "/\\\x00"):
            raise ConfigError(f"method name {label!r} cannot name an artifact directory")
    eval_device, use_gpu = _devices(options.device)
    if options.threads is not None and (
        isinstance(options.threads, bool) or not isinstance(options.threads, int) or options.threads < 1
    ):
        raise ConfigError(f"--threads must be an integer >= 1, got {options.threads!r}")
    threads = options.threads or torch.get_num_threads()
    # Where the results go is checked (and made) before any model is loaded or trained: an
    # unwritable output, or an artifact directory that save() would refuse, fails at once.
    art_dir = _output_dirs(options.output)
    for label in labels:
        check_save_target(art_dir / label)
    torch.set_num_threads(threads)
    allocator = tune_allocator() if options.tune_allocator else "system default"
    out = Path(options.output)

    t_start = time.perf_counter()
    original = adapter.load_original(progress=options.progress)
    params = count_params(original)
    inputs1 = adapter.example_inputs(1)
    inputs32 = adapter.example_inputs(32)
    inputs_file = out / "inputs.safetensors"
    save_file({k: v.contiguous() for k, v in inputs1.items()}, str(inputs_file))
    log.info("evaluating the original %s", adapter.model_name)
    reference = adapter.evaluate(original.to(eval_device), device=eval_device, progress=options.progress)
    original.to("cpu")

    env = environment(
        threads,
        str(eval_device),
        {
            **adapter.describe(),
            "original_quality": reference.value,
            "allocator": allocator,
            "params": params,
        },
    )
    rows: list[dict[str, Any]] = []
    bar = tqdm(methods, desc="methods", disable=not options.progress, unit="method")
    for label, recipe in bar:
        bar.set_postfix_str(label)
        t0 = time.perf_counter()
        compressed = compress(original, recipe, data=adapter, device=eval_device, progress=options.progress)
        compress_s = time.perf_counter() - t0
        method_notes = compression_notes(compressed)  # what a method reported goes into the table notes
        path = save(compressed, art_dir / label)
        del compressed
        gc.collect()
        size = artifact_bytes(path)
        model = load(path)
        ev = adapter.evaluate(
            model.to(eval_device),
            reference=reference.predictions,
            device=eval_device,
            progress=options.progress,
        )
        model.to("cpu")
        gpu_lat = None
        if use_gpu:
            gpu_lat = time_model(model.to("cuda"), inputs1, "cuda").p50_ms
            model.to("cpu")
        mem = measure_memory(path, inputs_file, threads=threads) if options.measure_memory else {}
        vram = None
        if use_gpu and options.measure_memory:
            vram = measure_memory(path, inputs_file, device="cuda")["peak_vram_mb"]
        rows.append(
            {
                "model": adapter.model_name,
                "method": label,
                "recipe": recipe.to_list(),
                "size_bytes": size,
                "params": params,
                "bits_per_weight": 8 * size / params,
                "cpu_latency_ms_p50": None,  # timed below, round-robin
                "cpu_latency_ms_p95": None,
                "cpu_throughput": None,
                "gpu_latency_ms_p50": gpu_lat,
                "peak_rss_mb": mem.get("peak_rss_mb"),
                "peak_vram_mb": vram,
                "metric": ev.metric,
                "quality": ev.value,
                "quality_delta": ev.value - reference.value,
                "agreement": ev.agreement,
                # extras (not part of the fixed key set above)
                "baseline_rss_mb": mem.get("baseline_rss_mb"),
                "compress_seconds": compress_s,
                "method_warnings": method_notes,
                "eval_seconds": ev.seconds,
            }
        )
        del model
        gc.collect()
    _time_rows(rows, [art_dir / r["method"] for r in rows], inputs1, inputs32, options, threads, env)
    if not options.keep_artifacts:
        for r in rows:
            shutil.rmtree(art_dir / r["method"], ignore_errors=True)
    _add_notes(rows)
    env["total_seconds"] = time.perf_counter() - t_start
    return {"env": env, "rows": rows}


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _time_rows(
    rows: list[dict[str, Any]],
    paths: list[Path],
    inputs1: dict[str, torch.Tensor],
    inputs32: dict[str, torch.Tensor],
    options: BenchOptions,
    threads: int,
    env: dict[str, Any],
) -> None:
    """CPU latency and throughput of every row, round-robin over ``options.rounds``."""
    rounds = max(1, int(options.rounds))
    models = []
    for path in paths:
        m = load(path).to("cpu")
        time_model(m, inputs1, "cpu", warmup=2, min_runs=1, min_seconds=0.0)  # kernels chosen here
        models.append(m)
    load_before = _load_average()
    lat: list[list[float]] = [[] for _ in rows]
    thr: list[list[float]] = [[] for _ in rows]
    per_round: list[list[float]] = [[] for _ in rows]
    bar = tqdm(range(rounds), desc="timing (round-robin)", disable=not options.progress, unit="round")
    for _ in bar:
        for i, m in enumerate(models):
            t1 = time_model(m, inputs1, "cpu", warmup=1, min_runs=5, min_seconds=0.4, max_seconds=4.0)
            lat[i] += t1.times_s
            per_round[i].append(t1.p50_ms)
            t32 = time_model(m, inputs32, "cpu", warmup=1, min_runs=2, min_seconds=0.0, max_seconds=6.0)
            thr[i] += t32.times_s
    load_after = _load_average()
    for i, r in enumerate(rows):
        t1, t32 = Timing(tuple(lat[i])), Timing(tuple(thr[i]))
        r["cpu_latency_ms_p50"] = float(torch.tensor(per_round[i]).median())
        r["cpu_latency_ms_p95"] = t1.p95_ms
        r["cpu_throughput"] = 32 / (t32.p50_ms / 1e3)
        r["latency_runs"], r["throughput_runs"] = t1.runs, t32.runs
        r["latency_rounds_ms"] = [round(v, 3) for v in per_round[i]]
        r["latency_round_spread"] = (max(per_round[i]) - min(per_round[i])) / r["cpu_latency_ms_p50"]
        r["kernels"] = _kernel_summary(models[i])
    env["timing"] = f"round-robin, {rounds} rounds; latency = median of the rounds' medians"
    env["load_average"] = [load_before, load_after]
    busy = [x for x in (load_before, load_after) if x is not None and x > threads + 0.75]
    spreads = sorted(r["latency_round_spread"] for r in rows)
    env["busy"] = bool(busy) or (bool(spreads) and spreads[len(spreads) // 2] > 0.25)
    del models
    gc.collect()


def _kernel_summary(model: torch.nn.Module) -> str:
    """Which kernels the row's compressed layers ran (op: kernel xN), '' for a plain model."""
    used = kernels.used(model)
    parts = []
    for op, names in sorted(used.items()):
        parts.append(
            op + ": " + ", ".join(f"{n} x{c}" for n, c in sorted(names.items(), key=lambda kv: -kv[1]))
        )
    return "; ".join(parts)


def _add_notes(rows: list[dict[str, Any]]) -> None:
    """Measured, not typed: speed relative to the fp32 row, and why a row is slow."""
    base = next((r for r in rows if r["method"] == "fp32"), None)
    flags = set(cpu_flags())
    for r in rows:
        notes: list[str] = []
        if base is not None and r is not base:
            ratio = base["cpu_latency_ms_p50"] / r["cpu_latency_ms_p50"]
            r["cpu_speedup"] = ratio
            if ratio >= 1.05:
                notes.append(f"{ratio:.2f}x faster than fp32 on CPU at batch 1")
            elif ratio <= 0.95:
                notes.append(f"slower here: {ratio:.2f}x fp32's speed at batch 1 on this CPU")
                why = ""
                dtypes = {str(m.get("dtype")) for m in r["recipe"] if m.get("method") == "cast"}
                if "float16" in dtypes and not flags & {"avx512_fp16", "amx_fp16"}:
                    why = " (this CPU has no native float16 matmul: no avx512_fp16 / amx_fp16)"
                elif "bfloat16" in dtypes and not flags & {"avx512_bf16", "amx_bf16"}:
                    why = " (this CPU has no native bfloat16 matmul: no avx512_bf16 / amx_bf16)"
                if why:
                    notes.append(why.strip(" ()"))
        if r.get("kernels"):
            notes.append(f"kernels: {r['kernels']}")
        notes += r.get("method_warnings") or []
        r["notes"] = notes
