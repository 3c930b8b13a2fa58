"""Fake quantization with learned step sizes: ``lsq_fake_quantize / lsq_ints``.

LSQ (Esser et al., "Learned Step Size Quantization", arXiv 1902.08153) trains the scale of
each quantizer together with the weights: the forward pass rounds, the backward pass uses
a straight-through estimator (STE) for the rounding. LSQ+ (Bhalgat et al., arXiv
2004.09576) adds a learned offset for asymmetric ranges. Here the offset stays an
*integer* zero point (rounded in the forward pass, STE in the backward pass), so a trained
quantizer converts exactly to the ``affine`` format of post-training quantization.

Shapes follow ``primitives.quant``: a weight ``(rows, cols)``, scales and zero points
``(rows, n_groups)``, one per output channel or per run of ``group_size`` columns.
The forward pass computes exactly what ``quantize`` then ``dequantize`` compute (same
float32 operations in the same order), so the fake-quantized weight equals, bit for bit,
the decode of the integers ``lsq_ints`` returns.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .quant import qrange

__all__ = ["lsq_fake_quantize", "lsq_grad_scale", "lsq_ints"]


def lsq_grad_scale(group: int, bits: int, symmetric: bool) -> float:
    """LSQ's gradient scale ``g = 1/sqrt(N_W · Q_P)``: ``N_W`` weights share a scale,
    ``Q_P`` is the largest integer code."""
    return 1.0 / math.sqrt(group * qrange(bits, symmetric)[1])


def _parts(
    w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, bits: int, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``v = w/s`` (rows, n_groups, group), the clamped integers ``q``, the integer zero
    point ``z`` (rows, n_groups, 1) or None, and ``s`` (rows, n_groups, 1), all float32."""
    rows, cols = w.shape
    g = cols if group_size is None else group_size
    if cols % g:
        raise ValueError(f"group size {g} does not divide the row length {cols}")
    qmin, qmax = qrange(bits, zero_point is None)
    wg = w.float().reshape(rows, cols // g, g)
    s = scale.float().unsqueeze(-1)
    v = wg / s
    q = torch.round(v)
    z = None
    if zero_point is not None:
        z = torch.round(zero_point.float()).clamp_(qmin, qmax).unsqueeze(-1)
        q = q + z
    return v, q.clamp_(qmin, qmax), z, s


class _LSQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w, scale, zero_point, bits, group_size, grad_scale):
        v, q, z, s = _parts(w, scale, zero_point, bits, group_size)
        ctx.save_for_backward(v, q, s, *(() if z is None else (z,)))
        ctx.bits, ctx.has_zp, ctx.grad_scale = bits, z is not None, grad_scale
        ctx.shape, ctx.dtype = w.shape, w.dtype
        out = q if z is None else q - z
        return (out * s).reshape(w.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        if ctx.has_zp:
            v, q, s, z = ctx.saved_tensors
        else:
            (v, q, s), z = ctx.saved_tensors, None
        qmin, qmax = qrange(ctx.bits, not ctx.has_zp)
        gg = grad.float().reshape(v.shape)  # (rows, n_groups, group)
        u = v if z is None else v + z  # unrounded code: LSQ's pass-through test
        inside = (u >= qmin) & (u <= qmax)
        gw = torch.where(inside, gg, torch.zeros_like(gg)).reshape(ctx.shape).to(ctx.dtype)
        # d ŵ / d s: round(v) - v inside the range, the clipped code (minus z) outside
        dq_ds = torch.where(inside, torch.round(v) - v, q if z is None else q - z)
        gs = (gg * dq_ds).sum(-1) * ctx.grad_scale
        gz = None
        if z is not None:
            # ŵ = (clamp(round(v) + z) - z)·s: z cancels inside the range, gives -s outside
            gz = (gg * torch.where(inside, torch.zeros_like(v), -s.expand_as(v))).sum(-1) * ctx.grad_scale
        return gw, gs, gz, None, None, None


def lsq_fake_quantize(
    w: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    bits: int,
    *,
    group_size: int | None = None,
    grad_scale: float | None = None,
) -> torch.Tensor:
    """Quantize-dequantize ``w`` (float32 result, shape of ``w``), differentiable LSQ-style.

    ``scale`` (rows, n_groups) > 0; ``zero_point`` (rows, n_groups), float, rounded to the
    nearest integer and clamped to the code range in the forward pass (None: symmetric).
    Gradients: ``w`` gets the STE gradient where ``w/s + z`` lies in the code range and 0
    outside (the clipped weights); ``scale`` gets LSQ's ``round(v) - v`` inside and the
    clipped code outside; ``zero_point`` gets ``-s`` outside and 0 inside; both are
    multiplied by ``grad_scale`` (default ``lsq_grad_scale``).
    """
    if grad_scale is None:
        g = int(w.shape[1]) if group_size is None else group_size
        grad_scale = lsq_grad_scale(g, bits, zero_point is None)
    return _LSQ.apply(w, scale, zero_point, bits, group_size, grad_scale)


@torch.no_grad()
def lsq_ints(
    w: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    bits: int,
    *,
    group_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The integer codes ``(rows, cols)`` (int8 symmetric / uint8 asymmetric, as
    ``quantize`` returns them) and int16 zero points ``(rows, n_groups)`` that
    ``lsq_fake_quantize`` stands for: ``dequantize`` of them equals its forward exactly."""
    _, q, z, _ = _parts(w, scale, zero_point, bits, group_size)
    q = q.reshape(w.shape).to(torch.int8 if z is None else torch.uint8)
    return q, None if z is None else z.squeeze(-1).to(torch.int16)
