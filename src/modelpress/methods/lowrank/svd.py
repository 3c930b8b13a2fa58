"""The math of low-rank factorization: pure tensor functions, no modules.

A weight ``W (out, in)`` is factorised as ``W ~ A @ B`` with ``A (out, r)`` and ``B (r, in)``.
Plain truncated SVD keeps the ``r`` largest singular directions, which minimises ``‖W − Ŵ‖_F``
(Eckart & Young 1936): the squared error is the sum of the discarded ``σ_i²``.

Activation-aware variants minimise the error on the layer's inputs instead, by an SVD of a
*whitened* weight ``W·L`` whose factors are un-whitened afterwards (``B = B' L⁻¹``):

- ASVD (Yuan et al. 2023, arXiv 2312.05821): ``L = diag(s)``, ``s_j = mean|x_j|^alpha``, the
  activation magnitude of input channel ``j`` on calibration data;
- SVD-LLM (Wang et al. 2024, arXiv 2403.07378): ``L`` the Cholesky factor of ``XᵀX``
  (truncation-aware data whitening), so that ``‖(W − Ŵ)Xᵀ‖_F² = ‖(W − Ŵ)L‖_F²`` and the
  output error on the calibration inputs is exactly the sum of the discarded singular values²
  of ``W·L``.

Every decomposition runs in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "activation_scale",
    "allocate_ranks",
    "compensated",
    "factorize",
    "rank_for_energy",
    "rank_for_reduction",
    "spectrum",
    "whitened",
    "whitening_factor",
]

#: ``None`` (plain SVD), ``(in,)`` per-channel scales (ASVD) or ``(in, in)`` lower-triangular
#: Cholesky factor (SVD-LLM)
Whitening = torch.Tensor | None


def activation_scale(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """(in,) ASVD channel scales ``mean|x|^alpha``; channels that never fire are clamped to
    1e-4 of the largest scale (a zero scale would make the un-whitening divide by zero)."""
    s = mean_abs.double().clamp_min(0) ** alpha
    floor = float(s.max()) * 1e-4 if s.numel() and float(s.max()) > 0 else 1.0
    return s.clamp_min(floor)


def whitening_factor(gram: torch.Tensor, damping: float) -> torch.Tensor:
    """(in, in) lower-triangular ``L`` with ``L Lᵀ = XᵀX + λI``, ``λ = damping · mean(diag(XᵀX))``
    (SVD-LLM's whitening). Where the Gram matrix is singular even with that damping (dead
    channels, few tokens), the damping grows tenfold until the factorisation succeeds."""
    h = gram.double()
    mean_diag = float(torch.diagonal(h).mean()) if h.numel() else 0.0
    scale = mean_diag if mean_diag > 0 else 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    lam = damping
    for _ in range(12):
        L, info = torch.linalg.cholesky_ex(h + (lam * scale) * eye)
        if int(info) == 0 and bool(torch.isfinite(L).all()):
            return L
        lam = max(lam * 10, 1e-8)
    raise ValueError("the calibration Gram matrix is not positive definite even with damping 1e4")


def compensated(w: torch.Tensor, cross: torch.Tensor, whiten: torch.Tensor) -> torch.Tensor:
    """(out, in) float64 ``M = W Cᵀ G⁻¹``: the weight that maps the layer's inputs in the
    changed model (``X``, ``G = XᵀX`` damped: ``whiten`` is its Cholesky factor ``L``) to
    the original layer's outputs on the original model's inputs (``X₀``, ``C = XᵀX₀``), the
    least-squares solution of ``min ‖X₀Wᵀ − XMᵀ‖``. Its best rank-r approximation in the
    metric of ``L`` (``factorize(M, r, L)``) is then the best rank-r layer for that
    objective: ``‖X₀Wᵀ − XW'ᵀ‖² = const + ‖Lᵀ(Mᵀ − W'ᵀ)‖²``. With ``X = X₀`` (nothing changed
    before this layer) and no damping, ``M = W``."""
    rhs = cross.double() @ w.double().T  # (in, out): C Wᵀ
    return torch.cholesky_solve(rhs, whiten.double(), upper=False).T.contiguous()


def whitened(w: torch.Tensor, whiten: Whitening) -> torch.Tensor:
    """(out, in) ``W·L`` in float64 (``W`` itself without whitening)."""
    w = w.double()
    if whiten is None:
        return w
    if whiten.dim() == 1:
        return w * whiten.double()  # scales the columns (input channels)
    return w @ whiten.double()


def spectrum(w: torch.Tensor, whiten: Whitening = None) -> torch.Tensor:
    """(min(out, in),) singular values of ``W·L``, descending (float64)."""
    return torch.linalg.svdvals(whitened(w, whiten))


def factorize(w: torch.Tensor, rank: int, whiten: Whitening = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (out, r), B (r, in))`` in float64 with ``A @ B`` the best rank-``r`` approximation
    of ``W`` in the whitened metric: ``W·L ~ U_r Σ_r V_rᵀ``, ``A = U_r Σ_r^½``, ``B = Σ_r^½ V_rᵀ L⁻¹``.

    Σ is split evenly between the factors (as ASVD and SVD-LLM do) so that both have
    comparable ranges: better conditioned for fine-tuning and for quantizing them afterwards."""
    out_f, in_f = w.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise ValueError(f"rank {rank} is outside [1, {min(out_f, in_f)}] for a ({out_f}, {in_f}) weight")
    u, s, vh = torch.linalg.svd(whitened(w, whiten), full_matrices=False)
    root = s[:rank].sqrt()
    a = u[:, :rank] * root  # (out, r)
    b = root[:, None] * vh[:rank]  # (r, in), still whitened
    if whiten is not None:
        if whiten.dim() == 1:
            b = b / whiten.double()
        else:  # B' L⁻¹, by a triangular solve of X L = B'
            b = torch.linalg.solve_triangular(whiten.double(), b, upper=False, left=False)
    return a, b


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest ``r`` whose directions keep at least ``energy`` of ``Σσ_i²``."""
    e = singular_values.double() ** 2
    total = float(e.sum())
    if total <= 0:
        return 1
    kept = torch.cumsum(e, 0) / total
    # a relative tolerance, so that energy 1.0 is reached despite rounding in the cumsum
    return min(int((kept < energy - 1e-12).sum()) + 1, e.numel())


def rank_for_reduction(in_features: int, out_features: int, reduction: float, bias: bool) -> int:
    """The largest ``r`` whose factors (``r·(m + n)`` weights, plus the bias) are at least
    ``reduction`` fewer parameters than the dense layer (``m·n`` weights, plus the bias);
    0 where no rank does."""
    b = out_features if bias else 0
    budget = (1 - reduction) * (in_features * out_features + b) - b
    return max(0, math.floor(budget / (in_features + out_features) + 1e-9))


def allocate_ranks(
    spectra: Sequence[torch.Tensor],
    shapes: Sequence[tuple[int, int]],
    budget: int,
    *,
    multiple: int = 1,
) -> list[int]:
    """Per-layer ranks under one global budget of factor weights (``Σ r_l·(m_l + n_l) ≤ budget``).

    Greedy: every layer starts at rank ``multiple``; then the singular directions of all layers
    are taken in order of the share of their layer's energy they carry per parameter they
    cost, ``(σ_i² / Σ_j σ_j²) / (m + n)``, while the budget allows. Within a layer the
    directions keep their order (σ descending), so each layer keeps a prefix: its most
    important directions. A layer's rank stays below its break-even ``m·n / (m + n)``.
    Directions come in steps of ``multiple`` (the rank stays a multiple of it).
    Raises ``ValueError`` if the budget is below the minimal ranks."""
    ranks = [multiple] * len(spectra)
    left = budget - sum(multiple * (m + n) for m, n in shapes)
    if left < 0:
        raise ValueError("the parameter budget is smaller than rank 1 in every layer")
    items: list[tuple[float, int, int]] = []  # (-value, layer, index of the step)
    for layer, (s, (m, n)) in enumerate(zip(spectra, shapes, strict=True)):
        e = s.double() ** 2
        total = float(e.sum())
        cap = math.ceil(m * n / (m + n)) - 1  # the largest rank that still saves parameters
        steps = (min(cap, e.numel()) - multiple) // multiple
        for k in range(steps):
            lo = multiple * (k + 1)
            share = float(e[lo : lo + multiple].sum()) / total if total > 0 else 0.0
            items.append((-share / (multiple * (m + n)), layer, k))
    items.sort()
    for _, layer, _k in items:
        m, n = shapes[layer]
        cost = multiple * (m + n)
        if cost <= left:
            ranks[layer] += multiple
            left -= cost
    return ranks
