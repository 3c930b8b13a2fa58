"""How compressed weights are computed on this machine: one function per op, each
dispatching to the kernels registered for it (``dispatch.py``). Modules in ``nn/`` call
these and nothing else.

Inputs are 2-D for the linear ops (``(tokens, in_features)``; modules flatten leading
dims), any shape of ids for ``embedding``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..formats.base import CompressedTensor
from . import binary as _binary  # noqa: F401 - registers the binary / ternary kernels
from . import cpu as _cpu  # noqa: F401 - registers torch's CPU low-precision kernels
from . import dense as _dense  # noqa: F401 - registers the decoded-copy fallback
from . import int8 as _int8  # noqa: F401 - registers the INT8 kernels
from . import reference as _reference  # noqa: F401 - registers the reference kernels
from .dispatch import (
    KERNELS,
    Kernel,
    candidates,
    chosen,
    force,
    invalidate,
    reference_kernels,
    register_kernel,
    run,
)
from .int8 import int_mm_available

__all__ = [
    "KERNELS",
    "Kernel",
    "candidates",
    "chosen",
    "conv",
    "embedding",
    "force",
    "int_mm_available",
    "invalidate",
    "linear",
    "linear_a8",
    "linear_a8_static",
    "reference_kernels",
    "register_kernel",
    "used",
]


def used(model: torch.nn.Module) -> dict[str, dict[str, int]]:
    """Which kernels ran in ``model`` so far: op -> kernel name -> number of (weight, row
    bucket) cases it was chosen for."""
    from .dispatch import _chosen_kernels

    return _chosen_kernels(model)


def linear(x: torch.Tensor, fmt: CompressedTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W^T + b`` with a weight-only compressed ``W``, in ``x``'s dtype."""
    return run("linear", x, fmt, bias=bias)


def linear_a8(x: torch.Tensor, fmt: CompressedTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """W8A8 with dynamic per-token INT8 activations; float32 out. ``x``: ``(tokens, in)``."""
    return run("linear_a8", x, fmt, bias=bias)


def linear_a8_static(
    xq: torch.Tensor,
    fmt: CompressedTensor,
    bias: torch.Tensor | None,
    act_scale: torch.Tensor,
    act_zero_point: torch.Tensor,
    act_symmetric: bool,
) -> torch.Tensor:
    """W8A8 on inputs already quantized with a static scale / zero point; float32 out."""
    return run(
        "linear_a8_static",
        xq,
        fmt,
        bias=bias,
        act_scale=act_scale,
        act_zero_point=act_zero_point,
        act_symmetric=act_symmetric,
    )


def embedding(ids: torch.Tensor, fmt: CompressedTensor) -> torch.Tensor:
    """Rows ``ids`` of a compressed embedding table, ``(*ids.shape, dim)``."""
    return run("embedding", ids, fmt)


def conv(
    x: torch.Tensor,
    fmt: CompressedTensor,
    bias: torch.Tensor | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
) -> torch.Tensor:
    """Conv1d/2d/3d with a compressed kernel ``(out, in/groups, *k)``, in ``x``'s dtype."""
    return run("conv", x, fmt, bias=bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
