"""Measurements: size on disk, latency / throughput, and peak memory of a fresh process.

Rules (DESIGN.md): size is the bytes of the files ``save`` wrote; latency is warm-up, then
repeated timed runs until the median is stable enough (a minimum count and time, with
caps), reporting p50 and p95; GPU timings synchronize; memory is the peak RSS of a fresh
subprocess that loads the artifact and runs it, VRAM by ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelpressError

__all__ = ["Timing", "measure_memory", "time_callable", "time_model"]


@dataclasses.dataclass(frozen=True)
class Timing:
    times_s: tuple[float, ...]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.times_s) * 1e3

    @property
    def p95_ms(self) -> float:
        xs = sorted(self.times_s)
        return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))] * 1e3

    @property
    def runs(self) -> int:
        return len(self.times_s)


def time_callable(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    min_runs: int = 20,
    min_seconds: float = 2.0,
    max_runs: int = 500,
    max_seconds: float = 15.0,
    sync: Callable[[], None] | None = None,
) -> Timing:
    """Warm up, then time ``fn`` until at least ``min_runs`` runs and ``min_seconds``.

    Stops early at ``max_runs`` or ``max_seconds`` (but never before 5 runs), so a slow
    configuration still finishes. ``sync`` (e.g. ``torch.cuda.synchronize``) is called
    before each clock read.
    """
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        n = len(times)
        if n >= max_runs or (elapsed >= max_seconds and n >= 5):
            break
        if n >= min_runs and elapsed >= min_seconds:
            break
    return Timing(tuple(times))


def time_model(
    model: nn.Module, inputs: dict[str, torch.Tensor], device: torch.device | str = "cpu", **kw: float
) -> Timing:
    """Latency of one forward pass of ``model`` on ``inputs`` (moved to ``device``)."""
    device = torch.device(device)
    batch = {k: v.to(device) for k, v in inputs.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def run() -> None:
        with torch.inference_mode():
            model(**batch)

    return time_callable(run, sync=sync, **kw)  # type: ignore[arg-type]


def measure_memory(
    artifact: Path,
    inputs_file: Path,
    *,
    device: str = "cpu",
    threads: int | None = None,
    timeout: float = 600,
) -> dict[str, float | None]:
    """Peak RSS (and peak VRAM on CUDA) of a fresh process that loads ``artifact`` and runs
    inference on the saved inputs. Returns ``{"peak_rss_mb", "baseline_rss_mb",
    "peak_vram_mb"}``."""
    cmd = [
        sys.executable,
        "-m",
        "modelpress.bench.worker",
        str(artifact),
        str(inputs_file),
        "--device",
        device,
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelpressError(f"memory measurement of {artifact.name} failed: {tail[0]}")
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ModelpressError(f"memory measurement of {artifact.name} printed no result")
