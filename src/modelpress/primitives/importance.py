"""Importance scores of structural groups (heads, neurons, channels, blocks) and the choice
of which to keep. Pure tensor math, no modules.

A *group* is a set of equally sized, contiguous blocks along one dimension of several
tensors that must be removed together (Torch-Pruning's dependency groups, Fang et al. 2023,
arXiv 2301.12900): attention head ``h`` is rows ``h*d:(h+1)*d`` of the query, key and value
weights and the same columns of the output projection. ``grouped`` views one tensor's part
of every group as a row; the scores reduce those rows.

- ``l2_group_scores``: L2 norm of the group's weights (Li et al. 2017, "Pruning Filters for
  Efficient ConvNets", arXiv 1608.08710, rank filters by their norm);
- ``taylor_group_contribution``: the first-order Taylor estimate of the loss change when the
  group is removed, ``(sum_{s in group} g_s w_s)^2`` per batch (Molchanov et al. 2019,
  "Importance Estimation for Neural Network Pruning", arXiv 1906.10771);
- ``activation_group_scores``: mean magnitude of the group's activations on calibration
  data (the data-driven counterpart; Michel et al. 2019, "Are Sixteen Heads Really Better
  than One?", arXiv 1905.10650, score heads from data as well);
- ``block_influence``: ``1 - cos(x_in, x_out)`` of a residual block (Men et al. 2024,
  "ShortGPT", arXiv 2403.03853): blocks that barely change their input are removable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "activation_group_scores",
    "block_influence",
    "grouped",
    "l2_group_scores",
    "n_to_remove",
    "select_global",
    "select_keep",
    "taylor_group_contribution",
]


def grouped(t: torch.Tensor, dim: int, n_groups: int) -> torch.Tensor:
    """``t`` as ``(n_groups, -1)``: row ``g`` holds every entry of block ``g`` along ``dim``."""
    if t.shape[dim] % n_groups:
        raise ValueError(f"dimension {dim} of size {t.shape[dim]} does not split into {n_groups} groups")
    return t.movedim(dim, 0).reshape(n_groups, -1)


def l2_group_scores(parts: Sequence[tuple[torch.Tensor, int]], n_groups: int) -> torch.Tensor:
    """(n_groups,) L2 norm of each group over all its ``(tensor, dim)`` parts."""
    sq = torch.zeros(n_groups, dtype=torch.float64)
    for t, dim in parts:
        sq += grouped(t.detach().double(), dim, n_groups).pow(2).sum(1).cpu()
    return sq.sqrt()


def taylor_group_contribution(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor, int]], n_groups: int
) -> torch.Tensor:
    """(n_groups,) ``(sum_{s in group} g_s w_s)^2`` of one batch over ``(weight, grad, dim)``
    parts; summed over batches by the caller (Molchanov et al. 2019, eq. 8 for groups)."""
    s = torch.zeros(n_groups, dtype=torch.float64)
    for w, g, dim in parts:
        s += grouped((w.detach() * g).double(), dim, n_groups).sum(1).cpu()
    return s.pow(2)


def activation_group_scores(x: torch.Tensor, dim: int, n_groups: int) -> torch.Tensor:
    """(n_groups,) sum over the batch of each group's activation magnitude: the L2 norm of
    its block per position (a head's context vector, a neuron, a channel map), summed."""
    x = x.detach().movedim(dim, -1).double()
    x = x.reshape(-1, n_groups, x.shape[-1] // n_groups)  # (positions, groups, block)
    return x.norm(dim=2).sum(0).cpu()


def block_influence(x_in: torch.Tensor, x_out: torch.Tensor) -> float:
    """Summed ``1 - cos(x_in, x_out)`` over positions (last dim = hidden) of one batch."""
    cos = torch.nn.functional.cosine_similarity(x_in.detach().double(), x_out.detach().double(), dim=-1)
    return float((1 - cos).sum())


def n_to_remove(fraction: float, n: int) -> int:
    """How many of ``n`` groups a ``fraction`` removes (rounded half up)."""
    return math.floor(fraction * n + 0.5)


def select_keep(scores: torch.Tensor, n_remove: int) -> list[int]:
    """Sorted indices of the groups kept when the ``n_remove`` lowest scores go (ties: the
    later index goes first, so the result is deterministic)."""
    n = scores.numel()
    order = sorted(range(n), key=lambda i: (float(scores[i]), -i))
    return sorted(order[n_remove:])


def select_global(scores: Sequence[torch.Tensor], fraction: float, min_keep: int = 1) -> list[list[int]]:
    """Keep lists per layer when ``fraction`` of all groups go by one global ranking.

    Scores are normalised per layer by their L2 norm first (Michel et al. 2019 normalise
    head importance per layer) so layers of different scale compete fairly; each layer keeps
    at least ``min_keep`` groups.
    """
    normed = [s.double() / max(float(s.double().norm()), 1e-30) for s in scores]
    total = sum(s.numel() for s in normed)
    budget = n_to_remove(fraction, total)
    cands = sorted(
        ((float(v), li, gi) for li, s in enumerate(normed) for gi, v in enumerate(s.tolist())),
        key=lambda t: (t[0], -t[1], -t[2]),
    )
    removed: list[set[int]] = [set() for _ in normed]
    for _, li, gi in cands:
        if budget == 0:
            break
        if normed[li].numel() - len(removed[li]) <= min_keep:
            continue
        removed[li].add(gi)
        budget -= 1
    return [[i for i in range(s.numel()) if i not in r] for s, r in zip(normed, removed, strict=True)]
