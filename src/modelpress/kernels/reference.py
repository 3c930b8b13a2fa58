"""Reference kernels: decode the weight, call the float op. Always registered, lowest
priority, the oracle every faster kernel is checked against."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..formats.base import CompressedTensor
from .dispatch import Kernel, register_kernel

_LOWEST = -1000


def _linear(
    state: None, x: torch.Tensor, fmt: CompressedTensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    return F.linear(x, fmt.decode(x.dtype), None if bias is None else bias.to(x.dtype))


def _embedding(state: None, ids: torch.Tensor, fmt: CompressedTensor) -> torch.Tensor:
    flat = ids.reshape(-1)
    uniq, inverse = torch.unique(flat, return_inverse=True)
    rows = fmt.decode_rows(uniq)  # (unique ids, dim): decode each needed row once
    return rows[inverse].reshape(*ids.shape, int(fmt.shape[1]))


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv(
    state: None,
    x: torch.Tensor,
    fmt: CompressedTensor,
    bias: torch.Tensor | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
) -> torch.Tensor:
    fn = _CONV[len(fmt.shape) - 2]
    b = None if bias is None else bias.to(x.dtype)
    return fn(x, fmt.decode(x.dtype), b, stride, padding, dilation, groups)


def _linear_a8(
    state: None, x: torch.Tensor, fmt: CompressedTensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Dynamic-activation INT8 linear, reference: the float matmul on the decoded weight
    (what the INT8 GEMM computes, up to activation rounding)."""
    return F.linear(x.float(), fmt.decode(), bias)


def _linear_a8_static(
    state: None,
    xq: torch.Tensor,
    fmt: CompressedTensor,
    bias: torch.Tensor | None,
    act_scale: torch.Tensor,
    act_zero_point: torch.Tensor,
    act_symmetric: bool,
) -> torch.Tensor:
    """Static-activation INT8 linear on already-quantized inputs ``xq``: dequantize, float
    matmul on the decoded weight."""
    xd = (xq.float() - act_zero_point.float()) * act_scale
    return F.linear(xd, fmt.decode(), bias)


for _op, _fn in (
    ("linear", _linear),
    ("embedding", _embedding),
    ("conv", _conv),
    ("linear_a8", _linear_a8),
    ("linear_a8_static", _linear_a8_static),
):
    register_kernel(Kernel("reference", _op, ("*",), _fn, priority=_LOWEST))
