"""Affine (uniform) quantization math: ``choose_qparams / quantize / dequantize``.

Pure tensor functions, no modules. Weights are 2-D ``(rows, cols)`` with one scale per row
("per channel", the output channel of a Linear or the token row of an Embedding) or per
group of ``group_size`` consecutive columns. Jacob et al., "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference" (arXiv 1712.05877).
"""

from __future__ import annotations

import torch

__all__ = [
    "choose_qparams",
    "dequantize",
    "qrange",
    "quantize",
    "quantize_per_token_int8",
]

_EPS = 1e-12


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range. Symmetric uses the restricted range [-(2^(b-1)-1), 2^(b-1)-1]."""
    if not 1 < bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if symmetric:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """(rows, cols) -> (rows, n_groups, group) view."""
    rows, cols = w.shape
    g = cols if group_size is None else group_size
    if cols % g:
        raise ValueError(f"group size {g} does not divide the row length {cols}")
    return w.reshape(rows, cols // g, g)


def choose_qparams(
    w: torch.Tensor, bits: int = 8, *, symmetric: bool = True, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min-max scales (and zero points when asymmetric) of a 2-D weight.

    Returns ``scale`` of shape ``(rows, n_groups)`` in float32 and ``zero_point`` of the
    same shape in int16 (``None`` when symmetric).
    """
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("weight holds NaN or inf values; refusing to quantize")
    wg = _grouped(w.detach().float(), group_size)
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        scale = wg.abs().amax(-1) / qmax
        return scale.clamp_min(_EPS), None
    lo = wg.amin(-1).clamp(max=0.0)
    hi = wg.amax(-1).clamp(min=0.0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS)
    zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int16)
    return scale, zp


def quantize(
    w: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    bits: int = 8,
    *,
    group_size: int | None = None,
) -> torch.Tensor:
    """Round-to-nearest integers (int8 container for any bits <= 8, uint8 if asymmetric)."""
    symmetric = zero_point is None
    qmin, qmax = qrange(bits, symmetric)
    wg = _grouped(w.detach().float(), group_size)
    q = torch.round(wg / scale.unsqueeze(-1))
    if zero_point is not None:
        q = q + zero_point.unsqueeze(-1)
    q = q.clamp_(qmin, qmax).reshape(w.shape)
    return q.to(torch.int8 if symmetric else torch.uint8)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    *,
    group_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of ``quantize``: ``(q - zero_point) * scale``."""
    qg = _grouped(q, group_size).to(torch.float32)
    if zero_point is not None:
        qg = qg - zero_point.unsqueeze(-1).to(torch.float32)
    return (qg * scale.unsqueeze(-1)).reshape(q.shape).to(dtype)


def quantize_per_token_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric INT8 of activations, one scale per row (token).

    ``x`` is ``(tokens, features)``; returns ``(int8 (tokens, features), scale (tokens, 1))``.
    """
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min_(_EPS).div_(127.0)
    xq = (x.float() / scale).round_().clamp_(-127, 127).to(torch.int8)
    return xq, scale
