"""What this machine is: CPU model and the features that decide which low-precision
kernels are fast (read from /proc/cpuinfo; empty where there is none)."""

from __future__ import annotations

import functools
import platform
import time
from pathlib import Path

__all__ = ["cpu_flags", "cpu_model", "has_vnni", "memory_bandwidth_gbs"]

_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)


@functools.cache
def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    p = Path("/proc/cpuinfo")
    if p.is_file():
        for line in p.read_text(errors="replace").splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info.setdefault(k.strip(), v.strip())
    return info


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features that decide which low-precision kernels are fast."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in _FLAGS if f in flags]


def has_vnni() -> bool:
    """INT8 dot-product instructions (AVX512-VNNI or AVX-VNNI): without them, x86 INT8
    GEMMs multiply u8 x s8 pairs into saturating int16 sums (activations need 7 bits)."""
    return bool({"avx512_vnni", "avx_vnni"} & set(cpu_flags()))


def memory_bandwidth_gbs(megabytes: int = 256, repeats: int = 5) -> float:
    """Measured memory bandwidth in GB/s: the fastest of ``repeats`` copies of a
    ``megabytes`` float32 buffer, counting the bytes read and written (2 x the buffer).

    This is the bound for memory-bound work such as LM decode at small batches, where each
    token reads every weight once: ``bandwidth / bytes of weights`` tokens per second.
    """
    import torch

    src = torch.ones(megabytes << 18)  # float32: 4 bytes each
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best / 1e9
