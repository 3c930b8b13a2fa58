"""The environment header of a benchmark report."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any

import torch

from ..machine import cpu_flags, cpu_model

__all__ = ["cpu_flags", "cpu_model", "environment", "tune_allocator"]


def tune_allocator() -> str:
    """Stop glibc from returning large freed blocks to the OS between forward passes.

    By default glibc serves big tensors (above an adaptive threshold) with fresh ``mmap``
    pages and trims the heap on free, so every forward pass page-faults its temporaries in
    again; timings then swing several-fold with the allocator's history (measured: the same
    INT8 layer at 3.5 or 12 ms). Raising the mmap and trim thresholds keeps freed memory for
    reuse, as the jemalloc / tcmalloc setups recommended for PyTorch CPU inference do. It is
    applied to the timing process only (every method alike); peak-RAM workers keep the
    defaults. Returns a description for the report header.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        one_gib = 1 << 30
        ok = libc.mallopt(m_mmap_threshold, 32 * (1 << 20)) and libc.mallopt(m_trim_threshold, one_gib)
    except (OSError, AttributeError):
        return "system default"
    return "glibc, mmap threshold 32 MiB, trim threshold 1 GiB" if ok else "system default"


def environment(threads: int, device: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "latency_batch_size": 1,
        "throughput_batch_size": 32,
    }
    if extra:
        env.update(extra)
    return env
