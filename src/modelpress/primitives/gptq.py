"""GPTQ: layer-wise quantization with second-order error compensation.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (arXiv 2210.17323). For a Linear weight ``W (rows,
cols)`` and its inputs ``X``, GPTQ minimises ``‖WX − ŴX‖²`` column by column: each column
is rounded, and its rounding error is spread over the not-yet-quantized columns through the
inverse Hessian ``H⁻¹ = (2XXᵀ + λI)⁻¹`` (via its upper Cholesky factor). Columns are
processed in blocks ("lazy batch updates"); ``act_order`` quantizes columns with large
Hessian diagonals first. With groups, the scale / zero point of a group of consecutive
columns is chosen from the (already error-updated) weights when the group is reached; with
``act_order`` the groups' parameters are fixed up front from the original weights ("static
groups"), so groups stay contiguous runs of columns and the result is the ordinary
``affine`` format.
"""

from __future__ import annotations

import torch

from .quant import choose_qparams, qrange

__all__ = ["HessianAccumulator", "gptq_quantize"]


class HessianAccumulator:
    """Running ``H = 2/n · Σ xᵀx`` over input rows ``x (tokens, cols)`` (float64 sums)."""

    def __init__(self, cols: int, device: torch.device | str = "cpu") -> None:
        self.sum = torch.zeros(cols, cols, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError("calibration inputs hold NaN or inf values")
        self.sum += (x.T @ x).to(torch.float64)
        self.n += x.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.n == 0:
            raise ValueError("no calibration input reached this layer")
        return (2.0 / self.n) * self.sum


def _params(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    s, z = choose_qparams(w, bits, symmetric=symmetric, group_size=None)
    return s[:, 0], None if z is None else z[:, 0].to(torch.float32)


def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = None,
    symmetric: bool = False,
    act_order: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize ``w (rows, cols)`` given the Hessian ``h (cols, cols)`` of its inputs.

    Returns ``(q, scale, zero_point)`` in the layout of ``primitives.quant.quantize``:
    integers ``q (rows, cols)`` (int32), ``scale (rows, n_groups)`` float32 and
    ``zero_point`` (int16, same shape) or None when symmetric.
    """
    if w.dim() != 2 or h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"weight {tuple(w.shape)} and Hessian {tuple(h.shape)} do not match")
    if not torch.isfinite(w).all():
        raise ValueError("weight holds NaN or inf values; refusing to quantize")
    rows, cols = w.shape
    g = cols if group_size is None else int(group_size)
    if cols % g:
        raise ValueError(f"group size {g} does not divide the row length {cols}")
    qmin, qmax = qrange(bits, symmetric)
    W = w.detach().to(torch.float32).clone()
    H = h.detach().to(torch.float64).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    n_groups = cols // g
    scale = torch.empty(rows, n_groups, dtype=torch.float32, device=W.device)
    zero = None if symmetric else torch.empty(rows, n_groups, dtype=torch.float32, device=W.device)
    if act_order or group_size is None:  # parameters fixed from the original weights
        s0, z0 = choose_qparams(W, bits, symmetric=symmetric, group_size=g)
        scale.copy_(s0)
        if zero is not None and z0 is not None:
            zero.copy_(z0.to(torch.float32))
    fixed = act_order or group_size is None

    perm = torch.arange(cols, device=W.device)
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except RuntimeError as e:  # not positive definite even after damping
        raise ValueError(f"GPTQ: the Hessian is not positive definite ({e}); raise `damp`") from None
    Hinv = Hinv.to(torch.float32)

    Q = torch.empty(rows, cols, dtype=torch.int32, device=W.device)
    group_of = perm // g  # group of each (permuted) column
    if not fixed:  # contiguous groups met in order: make blocks whole groups
        block_size = g * max(1, block_size // g)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if not fixed and col % g == 0:  # a new group starts: parameters from updated weights
                s_new, z_new = _params(W1[:, i : i + g], bits, symmetric)
                scale[:, col // g] = s_new
                if zero is not None and z_new is not None:
                    zero[:, col // g] = z_new
            gi = int(group_of[col])
            s = scale[:, gi]
            x = W1[:, i]
            q = torch.round(x / s)
            if zero is not None:
                q = (q + zero[:, gi]).clamp_(qmin, qmax)
                xq = (q - zero[:, gi]) * s
            else:
                q = q.clamp_(qmin, qmax)
                xq = q * s
            Q[:, col] = q.to(torch.int32)
            err = (x - xq) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if act_order:
        Q = Q[:, torch.argsort(perm)]
    zp = None if zero is None else zero.to(torch.int16)
    return Q, scale, zp
