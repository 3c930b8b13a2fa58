"""Activation quantization math: static INT8 ranges from calibration, and SmoothQuant factors.

Static quantization (Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", arXiv 1712.05877) fixes one activation scale
(and zero point) per tensor ahead of time from the range an *observer* saw on calibration
inputs:

- ``minmax``: the observed minimum and maximum (nothing is clipped);
- ``percentile``: the p-th percentile of ``|x|`` (symmetric) or the (100-p)-th and p-th
  percentiles of ``x`` (asymmetric), clipping the rare extremes;
- ``mse``: the clipping ratio of the min-max range, searched on a grid, that minimizes the
  quantization MSE of the observed values.

Percentile and MSE work on a bounded, uniformly drawn sample of the activations (plus the
exact minimum and maximum), never on all of them.

SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models", arXiv 2211.10438) moves the difficulty of activation outliers into
the weights with per-input-channel factors ``s_j = max|X_j|^α / max|W_j|^(1-α)``:
``X W^T = (X diag(1/s)) (W diag(s))^T``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "OBSERVERS",
    "ActivationObserver",
    "act_qparams",
    "act_qrange",
    "fake_quantize_act",
    "mse_range",
    "percentile_range",
    "quantize_act_int8",
    "smoothing_factors",
]

OBSERVERS = ("minmax", "percentile", "mse")
_EPS = 1e-12


def act_qrange(symmetric: bool) -> tuple[int, int]:
    """INT8 activation range: restricted [-127, 127] when symmetric (zero point 0), the full
    signed [-128, 127] with a zero point when asymmetric (the int8 GEMM takes signed ints)."""
    return (-127, 127) if symmetric else (-128, 127)


def act_qparams(lo: float, hi: float, symmetric: bool) -> tuple[float, int]:
    """Per-tensor INT8 ``(scale, zero_point)`` covering ``[lo, hi]`` (widened to hold 0)."""
    qmin, qmax = act_qrange(symmetric)
    if symmetric:
        return max(abs(lo), abs(hi), _EPS) / qmax, 0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (qmax - qmin), _EPS)
    zp = int(min(max(qmin - round(lo / scale), qmin), qmax))
    return scale, zp


def quantize_act_int8(
    x: torch.Tensor, scale: torch.Tensor | float, zero_point: torch.Tensor | int, symmetric: bool
) -> torch.Tensor:
    """``clamp(round(x / scale) + zero_point)`` as int8, same shape as ``x``."""
    qmin, qmax = act_qrange(symmetric)
    q = torch.round(x.float() / scale)
    if not symmetric:
        q = q + zero_point
    return q.clamp_(qmin, qmax).to(torch.int8)


def fake_quantize_act(x: torch.Tensor, scale: float, zero_point: int, symmetric: bool) -> torch.Tensor:
    """Quantize then dequantize (float32), the value the integer kernel effectively sees."""
    q = quantize_act_int8(x, scale, zero_point, symmetric).float()
    return (q - zero_point) * scale


def percentile_range(values: torch.Tensor, percentile: float, symmetric: bool) -> tuple[float, float]:
    """Clipping range from percentiles of ``values`` (any shape, at most 2**24 elements)."""
    v = values.detach().float().flatten()
    p = percentile / 100.0
    if symmetric:
        a = float(torch.quantile(v.abs(), p))
        return -a, a
    return float(torch.quantile(v, 1.0 - p)), float(torch.quantile(v, p))


def mse_range(
    values: torch.Tensor, lo: float, hi: float, symmetric: bool, grid: int = 100
) -> tuple[float, float]:
    """The range ``r·[lo, hi]``, ``r`` in ``{1/grid, 2/grid, ..., 1}``, whose INT8 fake
    quantization of ``values`` has the smallest mean squared error (ties: the widest)."""
    v = values.detach().float().flatten()
    best: tuple[float, float, float] | None = None  # (mse, lo, hi)
    for i in range(grid, 0, -1):  # from the full range down, so a tie keeps the wider one
        r = i / grid
        clo, chi = r * min(lo, 0.0), r * max(hi, 0.0)
        if symmetric:
            a = max(abs(clo), abs(chi))
            clo, chi = -a, a
        scale, zp = act_qparams(clo, chi, symmetric)
        err = float(((fake_quantize_act(v, scale, zp, symmetric) - v) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, clo, chi)
    assert best is not None
    return best[1], best[2]


class ActivationObserver:
    """Watches the inputs of one layer and proposes its static INT8 range.

    Keeps the exact running min/max and, for ``percentile`` and ``mse``, a uniform sample of
    at most ``sample_size`` values (merged batch by batch in proportion to the values each
    side stands for), so memory is bounded whatever the calibration set.
    """

    def __init__(
        self,
        method: str = "minmax",
        *,
        percentile: float = 99.99,
        symmetric: bool = True,
        sample_size: int = 1 << 18,
        grid: int = 100,
        seed: int = 0,
    ) -> None:
        if method not in OBSERVERS:
            raise ValueError(f"unknown observer '{method}' (choose from {', '.join(OBSERVERS)})")
        self.method = method
        self.percentile = percentile
        self.symmetric = symmetric
        self.sample_size = sample_size
        self.grid = grid
        self.n = 0  # values seen
        self.lo = math.inf
        self.hi = -math.inf
        self.sample: torch.Tensor | None = None
        self._gen = torch.Generator().manual_seed(seed)

    def _pick(self, n: int, k: int) -> torch.Tensor:
        if k >= n:
            return torch.arange(n)
        if n <= 4 * k:
            return torch.randperm(n, generator=self._gen)[:k]
        return torch.randint(0, n, (k,), generator=self._gen)  # huge batch: with replacement

    def add(self, x: torch.Tensor) -> None:
        v = x.detach().flatten()
        if v.numel() == 0:
            return
        if not torch.isfinite(v).all():
            raise ValueError("activations hold NaN or inf values; cannot calibrate a static range")
        self.lo = min(self.lo, float(v.min()))
        self.hi = max(self.hi, float(v.max()))
        n_new = v.numel()
        total = self.n + n_new
        if self.method != "minmax":
            old = self.sample if self.sample is not None else v.new_empty(0, dtype=torch.float32)
            if old.numel() + n_new <= self.sample_size:
                self.sample = torch.cat([old, v.float()])
            else:
                k_new = min(n_new, round(self.sample_size * n_new / total))
                k_old = min(old.numel(), self.sample_size - k_new)
                keep_old = old[self._pick(old.numel(), k_old).to(old.device)]
                keep_new = v[self._pick(n_new, k_new).to(v.device)].float()
                self.sample = torch.cat([keep_old, keep_new])
        self.n = total

    def range(self) -> tuple[float, float]:
        """The ``(lo, hi)`` clipping range this observer chose."""
        if self.n == 0:
            raise ValueError("the observer saw no values")
        if self.method == "minmax" or self.sample is None:
            return self.lo, self.hi
        if self.method == "percentile":
            return percentile_range(self.sample, self.percentile, self.symmetric)
        # the exact extremes join the sample so the full range is scored fairly
        ext = torch.tensor([self.lo, self.hi], device=self.sample.device)
        return mse_range(torch.cat([self.sample, ext]), self.lo, self.hi, self.symmetric, self.grid)

    def qparams(self) -> tuple[float, int]:
        """``(scale, zero_point)`` of the chosen range."""
        lo, hi = self.range()
        return act_qparams(lo, hi, self.symmetric)


def smoothing_factors(
    act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float, eps: float = 1e-5
) -> torch.Tensor:
    """SmoothQuant's per-input-channel ``s = max|X|^α / max|W|^(1-α)`` (shape ``(in,)``).

    ``act_max``: ``max_t |X[t, j]|`` over calibration tokens; ``weight_max``:
    ``max_i |W[i, j]|`` over output rows (of every Linear sharing the input). Clamped as in the
    reference implementation so dead channels do not divide by zero.
    """
    a = act_max.float().clamp_min(eps).pow(alpha)
    w = weight_max.float().clamp_min(eps).pow(1.0 - alpha)
    return (a / w).clamp_min(eps)
