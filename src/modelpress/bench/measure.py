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

__all__ = [
    "DecodeTiming",
    "Timing",
    "measure_memory",
    "time_callable",
    "time_generate",
    "time_model",
    "weight_bytes_per_token",
]


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
    model: nn.Module,
    inputs: dict[str, torch.Tensor] | tuple[torch.Tensor, ...],
    device: torch.device | str = "cpu",
    **kw: float,
) -> Timing:
    """Latency of one forward pass of ``model`` on ``inputs`` (moved to ``device``): keyword
    arguments (a dict), or positional ones (a tuple: a user's own module)."""
    device = torch.device(device)
    kwargs = {k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict) else {}
    args = tuple(v.to(device) for v in inputs) if isinstance(inputs, tuple) else ()
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def run() -> None:
        with torch.inference_mode():
            model(*args, **kwargs)

    return time_callable(run, sync=sync, **kw)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class DecodeTiming:
    """One greedy generation: time to the first new token (the prompt's prefill and one
    step) and the time of the remaining ``new_tokens - 1`` steps, for ``batch`` sequences."""

    ttft_s: float
    decode_s: float
    new_tokens: int
    batch: int

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput: new tokens of all sequences after the first, per second."""
        return self.batch * (self.new_tokens - 1) / max(self.decode_s, 1e-9)


def time_generate(model: nn.Module, inputs: dict[str, torch.Tensor], new_tokens: int) -> DecodeTiming:
    """Greedy generation of exactly ``new_tokens`` tokens after the prompt ``inputs`` with
    transformers' ``generate`` (KV cache on), timed by a streamer that stamps the clock
    when the prompt goes in and after every new token."""
    from transformers.generation.streamers import BaseStreamer

    if new_tokens < 2:
        raise ModelpressError(f"decode timing needs at least 2 new tokens, got {new_tokens}")
    stamps: list[float] = []

    class _Clock(BaseStreamer):
        def put(self, value: torch.Tensor) -> None:
            stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    cfg = getattr(model, "generation_config", None)
    pad = getattr(cfg, "pad_token_id", None)
    if pad is None:
        eos = getattr(cfg, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, list) and eos else eos
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask", torch.ones_like(ids))
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(  # type: ignore[operator]
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad if pad is not None else 0,
            streamer=_Clock(),
        )
    # stamps[0]: the prompt handed over; stamps[1]: first new token; stamps[-1]: the last
    if len(stamps) != new_tokens + 1:
        raise ModelpressError(f"generate produced {len(stamps) - 1} tokens, {new_tokens} were asked for")
    return DecodeTiming(stamps[1] - t0, stamps[-1] - stamps[1], new_tokens, int(ids.shape[0]))


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: every matrix of the model once (a tied
    embedding / LM head once, as the head), stored formats at their stored size; input
    embeddings that are not tied to a head are left out (a step reads one row of them)."""
    from ..formats.base import CompressedTensor

    def is_embedding(m: nn.Module) -> bool:
        return isinstance(m, nn.Embedding) or type(m).__name__.endswith("Embedding")

    seen: set[int] = set()
    total = 0
    for m in model.modules():
        if is_embedding(m) or isinstance(m, CompressedTensor):
            continue
        for child in m.children():
            if isinstance(child, CompressedTensor) and id(child) not in seen:
                seen.add(id(child))
                total += child.stored_nbytes()
        for p in m.parameters(recurse=False):
            if p.dim() >= 2 and id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
    return total


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
