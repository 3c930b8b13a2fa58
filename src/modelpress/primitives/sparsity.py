"""Unstructured sparsity: importance scores, masks and schedules (pure tensor math).

Masks are boolean tensors of the weight's shape, ``True`` = kept. Every mask keeps an exact
count: ``round((1 - sparsity) * n)`` weights of the largest score, ties broken by position
(the lower flat index is kept first), so masks are deterministic and testable.

- magnitude: ``|w|`` (Han et al., "Learning both Weights and Connections for Efficient
  Neural Networks", arXiv 1506.02626), per layer (``local_mask``) or with one threshold
  across layers (``global_masks``);
- Wanda: ``|W_ij| * ||X_j||_2``, compared within each output row (Sun et al., "A Simple and
  Effective Pruning Approach for Large Language Models", arXiv 2306.11695);
- first-order Taylor: ``|w * g|`` accumulated over batches (Molchanov et al., "Importance
  Estimation for Neural Network Pruning", arXiv 1906.10771);
- N:M semi-structured masks, N kept in every M consecutive inputs (Mishra et al.,
  "Accelerating Sparse Deep Neural Networks", arXiv 2104.08378);
- the cubic gradual schedule of Zhu & Gupta, "To prune, or not to prune" (arXiv 1710.01878).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import ConfigError

__all__ = [
    "ActivationNorms",
    "check_sparsity",
    "check_weight",
    "cubic_sparsity",
    "global_masks",
    "keep_count",
    "local_mask",
    "magnitude_scores",
    "nm_mask",
    "row_mask",
    "taylor_scores",
    "topk_mask",
    "wanda_scores",
]


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """``sparsity`` as a float in ``[0, 1)``, else a ``ConfigError`` saying so."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ConfigError(f"{what} must be a number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ConfigError(
            f"{what} must be in [0, 1) (the fraction of weights removed; 1.0 would remove all), got {s}"
        )
    return s


def check_weight(w: torch.Tensor, name: str = "weight") -> None:
    """Refuse NaN / inf weights: their magnitude has no order to prune by."""
    if not torch.isfinite(w).all():
        raise ConfigError(f"cannot prune {name}: it holds NaN or inf values")


def keep_count(n: int, sparsity: float) -> int:
    """Weights kept out of ``n`` at ``sparsity``: ``round((1 - sparsity) * n)``."""
    return round((1.0 - check_sparsity(sparsity)) * n)


def magnitude_scores(w: torch.Tensor) -> torch.Tensor:
    """``|w|`` in float32 (Han et al. 2015)."""
    check_weight(w)
    return w.detach().float().abs()


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of ``scores``' shape keeping exactly the ``k`` largest (flat order);
    among equal scores the lower flat index is kept first (a stable sort)."""
    flat = scores.reshape(-1)
    if not 0 <= k <= flat.numel():
        raise ValueError(f"cannot keep {k} of {flat.numel()} scores")
    order = torch.sort(flat, descending=True, stable=True).indices  # (n,) best first
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[order[:k]] = True
    return mask.reshape(scores.shape)


def local_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """One layer: keep exactly ``round((1 - sparsity) * n)`` largest scores."""
    return topk_mask(scores, keep_count(scores.numel(), sparsity))


def global_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold across layers (Han et al. 2015's global ranking): exactly
    ``round((1 - sparsity) * N)`` of all ``N`` weights kept, ties broken by layer order then
    position. Scores of different layers must be comparable (magnitudes, Taylor)."""
    names = list(scores)
    if not names:
        raise ConfigError("global pruning needs at least one layer")
    flat = torch.cat([scores[n].reshape(-1).float() for n in names])  # (N,) all layers
    keep = topk_mask(flat, keep_count(flat.numel(), sparsity))
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[start : start + size].reshape(scores[n].shape)
        start += size
    return out


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per output row ``(out, in)``: each row keeps exactly ``round((1 - s) * in)`` of its
    largest scores (Wanda's comparison group)."""
    rows = scores.reshape(scores.shape[0], -1)  # (out, in) — conv kernels flattened
    k = keep_count(rows.shape[1], sparsity)
    order = torch.sort(rows, dim=1, descending=True, stable=True).indices  # (out, in)
    mask = torch.zeros_like(rows, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask.reshape(scores.shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask: in each group of ``m`` consecutive inputs of a row, keep the ``n`` largest.

    ``scores`` is ``(out, in)`` (or a conv kernel, flattened to ``(out, in*kh*kw)``); the row
    length must be a multiple of ``m``."""
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ConfigError(f"N:M pattern needs integers 0 < N < M, got {n}:{m}")
    rows = scores.reshape(scores.shape[0], -1)
    if rows.shape[1] % m:
        raise ConfigError(f"N:M pattern {n}:{m}: rows of {rows.shape[1]} inputs are not a multiple of {m}")
    groups = rows.reshape(-1, m)  # (out * in/m, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, order[:, :n], True)
    return mask.reshape(scores.shape)


class ActivationNorms:
    """Running ``||X_j||_2`` per input feature ``j`` over all calibration tokens (Wanda)."""

    def __init__(self, features: int) -> None:
        self.sumsq = torch.zeros(features, dtype=torch.float64)  # (in,)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """``x``: ``(tokens, in)`` inputs of the layer."""
        x = x.detach().reshape(-1, x.shape[-1])
        self.sumsq += (x.double() ** 2).sum(0).cpu()
        self.count += x.shape[0]

    def norms(self) -> torch.Tensor:
        if self.count == 0:
            raise ConfigError("wanda: the layer saw no calibration input")
        return self.sumsq.sqrt().float()  # (in,)


def wanda_scores(w: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| * ||X_j||_2`` for ``w`` of shape ``(out, in)`` and ``act_norm (in,)``
    (Sun et al. 2023, eq. 1). Compare within rows (``row_mask``)."""
    check_weight(w)
    if act_norm.shape != (w.shape[1],):
        raise ValueError(f"wanda: {tuple(act_norm.shape)} input norms for a weight of shape {tuple(w.shape)}")
    return w.detach().float().abs() * act_norm.to(w.device).float().unsqueeze(0)  # (out, in)


def taylor_scores(w: torch.Tensor, grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """First-order Taylor importance ``sum_b |w * g_b|`` over per-batch gradients ``g_b``
    (each of ``w``'s shape): the estimated change of the loss when ``w`` is set to zero
    (Molchanov et al. 2019), summed in absolute value per batch so that the gradients of a
    converged model do not cancel."""
    check_weight(w)
    if not grads:
        raise ConfigError("taylor: no gradient was accumulated (empty calibration set)")
    wf = w.detach().float()
    out = torch.zeros_like(wf)
    for g in grads:
        out += (wf * g.float()).abs()
    return out


def cubic_sparsity(
    step: int, *, initial: float, final: float, begin: int, n_events: int, frequency: int
) -> float:
    """Zhu & Gupta (2017), eq. 1: ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3``.

    ``s_i`` before ``t0 = begin``, ``s_f`` from ``t0 + n dt`` on; pruning happens every ``dt =
    frequency`` steps in between."""
    check_sparsity(initial, "initial sparsity")
    check_sparsity(final, "final sparsity")
    if n_events < 1 or frequency < 1:
        raise ConfigError("cubic schedule needs n_events >= 1 and frequency >= 1")
    span = n_events * frequency
    t = min(max(step - begin, 0), span)
    return final + (initial - final) * (1.0 - t / span) ** 3
