"""``dense``: the decoded float32 weight kept in memory, for layers no fast kernel runs
within its tolerance here.

The reference kernel decodes the whole weight at every call (an int8 MiniLM FFN layer:
0.3-0.5 ms per call on 2 cores, as long as the matmul itself). Where the autotuner finds
no other kernel that matches the reference for a layer (on CPUs without VNNI fbgemm's
7-bit activations fail the tolerance on some layers; codebooks of some shapes), this
kernel decodes once and runs the float matmul: exact, and the speed of fp32 for that layer
instead of less. It is a *fallback* (``Kernel.fallback``): the autotuner times it only when
no non-fallback kernel passed, so it never displaces a kernel that reads fewer bytes.

Its copies cost 4 bytes per weight, so they are capped: at most ``MODELPRESS_DENSE_MB``
megabytes in the process (default 64; 0 disables the kernel), counted while the copies are
alive. A layer beyond the cap runs the reference kernel.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import torch
import torch.nn.functional as F

from ..formats.base import CompressedTensor
from .dispatch import Kernel, register_kernel

__all__ = ["dense_budget", "dense_bytes"]

_lock = threading.Lock()
_alive = [0]  # bytes of dense copies alive in this process


def dense_budget() -> int:
    """Bytes the dense copies may take (``MODELPRESS_DENSE_MB``, default 64 MB)."""
    raw = os.environ.get("MODELPRESS_DENSE_MB", "64")
    try:
        return max(0, int(float(raw) * 1e6))
    except ValueError:
        return int(64e6)


def dense_bytes() -> int:
    """Bytes of dense copies alive now."""
    return _alive[0]


def _release(n: int) -> None:
    with _lock:
        _alive[0] -= n


class _Dense:
    """One decoded weight; its bytes leave the count when it is garbage-collected."""

    def __init__(self, w: torch.Tensor) -> None:
        self.w = w
        n = w.numel() * w.element_size()
        with _lock:
            _alive[0] += n
        weakref.finalize(self, _release, n)


def _fits(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    if len(fmt.shape) != 2 or x.device.type != "cpu" or not x.is_floating_point() or x.numel() == 0:
        return False
    states = fmt.__dict__.get("_kernel_state", {})
    if ("linear", "dense") in states or ("linear_a8", "dense") in states:
        return True  # already prepared: counted
    return dense_bytes() + 4 * fmt.numel() <= dense_budget()


def _prepare(fmt: CompressedTensor) -> _Dense:
    return _Dense(fmt.decode(torch.float32).contiguous())


def _linear(state: _Dense, x: torch.Tensor, fmt: CompressedTensor, bias: torch.Tensor | None = None) -> Any:
    y = F.linear(x.float(), state.w, None if bias is None else bias.float())
    return y.to(x.dtype)


def _linear_a8(
    state: _Dense, x: torch.Tensor, fmt: CompressedTensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    return F.linear(x.float(), state.w, bias)


for _op, _fn in (("linear", _linear), ("linear_a8", _linear_a8)):
    register_kernel(
        Kernel(
            "dense",
            _op,
            ("*",),
            _fn,
            prepare=_prepare,
            supports=_fits,
            priority=-999,
            fallback=True,
            # exact for float32 inputs; bf16 / fp16 ones are computed in float32 (the
            # reference computes in their dtype: its rounding, up to ~0.5 %)
            tolerance=0.02,
        )
    )
