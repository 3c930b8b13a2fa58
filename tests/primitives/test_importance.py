"""Importance scores of structural groups (primitives/importance.py) against slow references."""

from __future__ import annotations

import math

import pytest
import torch

from modelpress.primitives.importance import (
    activation_group_scores,
    block_influence,
    grouped,
    l2_group_scores,
    n_to_remove,
    select_global,
    select_keep,
    taylor_group_contribution,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _block(t: torch.Tensor, dim: int, n_groups: int, g: int) -> torch.Tensor:
    """Block ``g`` of ``t`` along ``dim``, by slicing (the obvious way)."""
    size = t.shape[dim] // n_groups
    return t.narrow(dim, g * size, size)


# -- grouped -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_grouped_rows_are_the_blocks(dim):
    t = torch.randn(6, 12, 4, generator=_gen())
    n = {0: 3, 1: 4, 2: 2, -1: 2}[dim]
    gv = grouped(t, dim, n)
    assert gv.shape[0] == n and gv.numel() == t.numel()
    for g in range(n):
        blk = _block(t, dim, n, g)
        assert torch.equal(torch.sort(gv[g]).values, torch.sort(blk.flatten()).values)
        assert gv[g].pow(2).sum() == pytest.approx(float(blk.pow(2).sum()), rel=1e-6)


def test_grouped_rejects_an_uneven_split():
    with pytest.raises(ValueError, match="does not split into 5 groups"):
        grouped(torch.zeros(4, 12), 1, 5)
    assert grouped(torch.zeros(4, 12), 1, 1).shape == (1, 48)  # one group: everything
    assert grouped(torch.zeros(4, 12), 1, 12).shape == (12, 4)  # one column each


# -- L2 and Taylor -----------------------------------------------------------------------------


def _heads(seed: int = 0):
    """Attention of 3 heads of size 4 on hidden 8: q/k/v rows and o columns per head."""
    g = _gen(seed)
    q, k, v = (torch.randn(12, 8, generator=g) for _ in range(3))
    o = torch.randn(8, 12, generator=g)
    return [(q, 0), (k, 0), (v, 0), (o, 1)]


def test_l2_group_scores_equal_slow_reference():
    parts = _heads()
    scores = l2_group_scores(parts, 3)
    assert scores.dtype == torch.float64 and scores.shape == (3,)
    for h in range(3):
        sq = 0.0
        for t, dim in parts:
            for val in _block(t, dim, 3, h).flatten().tolist():
                sq += val * val
        assert float(scores[h]) == pytest.approx(math.sqrt(sq), rel=1e-9)


def test_l2_scores_of_zero_groups_and_single_group():
    t = torch.randn(6, 5, generator=_gen())
    t[2:4] = 0
    s = l2_group_scores([(t, 0)], 3)
    assert float(s[1]) == 0.0 and float(s[0]) > 0
    one = l2_group_scores([(t, 0)], 1)
    assert float(one[0]) == pytest.approx(float(t.double().norm()))


def test_taylor_contribution_equals_slow_reference():
    g = _gen(1)
    parts = []
    for t, dim in _heads(1):
        parts.append((t, torch.randn(t.shape, generator=g), dim))
    s = taylor_group_contribution(parts, 3)
    assert s.dtype == torch.float64 and s.shape == (3,)
    for h in range(3):
        acc = 0.0
        for w, gr, dim in parts:
            wb, gb = _block(w, dim, 3, h).flatten().tolist(), _block(gr, dim, 3, h).flatten().tolist()
            acc += sum(a * b for a, b in zip(wb, gb, strict=True))
        assert float(s[h]) == pytest.approx(acc * acc, rel=1e-6)  # w*g is formed in float32


def test_taylor_contribution_is_zero_without_gradient_and_ignores_grad_graph():
    w = torch.randn(6, 4, generator=_gen(), requires_grad=True)
    s = taylor_group_contribution([(w, torch.zeros(6, 4), 0)], 2)
    assert torch.equal(s, torch.zeros(2, dtype=torch.float64))
    assert not s.requires_grad


# -- activations -------------------------------------------------------------------------------


def test_activation_scores_of_heads_equal_slow_reference():
    x = torch.randn(2, 5, 12, generator=_gen(2))  # (batch, seq, heads*d), 3 heads of 4
    s = activation_group_scores(x, -1, 3)
    assert s.shape == (3,) and s.dtype == torch.float64
    for h in range(3):
        ref = 0.0
        for b in range(2):
            for t in range(5):
                ref += math.sqrt(sum(v * v for v in x[b, t, 4 * h : 4 * h + 4].tolist()))
        assert float(s[h]) == pytest.approx(ref, rel=1e-9)


def test_activation_scores_of_conv_channels_equal_slow_reference():
    x = torch.randn(2, 6, 3, 3, generator=_gen(3))  # (batch, channels, h, w), 6 groups of 1
    s = activation_group_scores(x, 1, 6)
    for c in range(6):
        assert float(s[c]) == pytest.approx(float(x[:, c].double().abs().sum()), rel=1e-9)
    s2 = activation_group_scores(x, 1, 2)  # 2 groups of 3 channels: L2 over the block per pixel
    for gi in range(2):
        ref = x[:, 3 * gi : 3 * gi + 3].double().pow(2).sum(1).sqrt().sum()
        assert float(s2[gi]) == pytest.approx(float(ref), rel=1e-9)


def test_activation_scores_of_zeros():
    assert torch.equal(activation_group_scores(torch.zeros(3, 8), -1, 4), torch.zeros(4, dtype=torch.float64))


# -- block influence ---------------------------------------------------------------------------


def test_block_influence_equals_slow_reference():
    g = _gen(4)
    x_in = torch.randn(2, 3, 8, generator=g)
    x_out = x_in + 0.5 * torch.randn(2, 3, 8, generator=g)
    ref = 0.0
    for a, b in zip(x_in.reshape(-1, 8).tolist(), x_out.reshape(-1, 8).tolist(), strict=True):
        dot = sum(p * q for p, q in zip(a, b, strict=True))
        ref += 1 - dot / (math.sqrt(sum(p * p for p in a)) * math.sqrt(sum(q * q for q in b)))
    assert block_influence(x_in, x_out) == pytest.approx(ref, rel=1e-9)


def test_block_influence_edge_cases():
    x = torch.randn(4, 8, generator=_gen())
    assert block_influence(x, x) == pytest.approx(0.0, abs=1e-12)  # identity block
    assert block_influence(x, 3 * x) == pytest.approx(0.0, abs=1e-12)  # scale does not count
    assert block_influence(x, -x) == pytest.approx(8.0)  # 2 per position
    assert block_influence(x[:1], torch.zeros(1, 8)) == pytest.approx(1.0)  # a dead output: cos 0


# -- selection ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "n", "expected"),
    [(0.5, 3, 2), (0.25, 2, 1), (0.0, 7, 0), (1.0, 7, 7), (0.1, 30, 3), (0.3, 10, 3), (0.125, 4, 1)],
)
def test_n_to_remove_rounds_half_up(fraction, n, expected):
    assert n_to_remove(fraction, n) == expected


def test_select_keep_drops_the_lowest():
    s = torch.tensor([0.5, 0.1, 0.9, 0.3])
    assert select_keep(s, 2) == [0, 2]
    assert select_keep(s, 0) == [0, 1, 2, 3]
    assert select_keep(s, 4) == []
    assert select_keep(torch.tensor([7.0]), 0) == [0]


def test_select_keep_ties_drop_the_later_index_first():
    assert select_keep(torch.ones(4), 1) == [0, 1, 2]
    assert select_keep(torch.tensor([2.0, 1.0, 1.0, 3.0]), 1) == [0, 1, 3]


def test_select_keep_matches_brute_force_on_random_scores():
    g = _gen(5)
    s = torch.randint(0, 4, (12,), generator=g).double()  # many ties
    for n_remove in range(13):
        # brute force: repeatedly remove the lowest score, the highest index among equals
        left = list(range(12))
        for _ in range(n_remove):
            worst = min(left, key=lambda i: (float(s[i]), -i))
            left.remove(worst)
        assert select_keep(s, n_remove) == left


def test_select_global_normalises_per_layer():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = a * 100  # same ranking, another scale: competes equally
    assert select_global([a, b], 0.5) == [[2, 3], [2, 3]]


def test_select_global_equals_brute_force():
    g = _gen(6)
    scores = [torch.rand(5, generator=g), torch.rand(3, generator=g) * 10, torch.rand(4, generator=g)]
    for fraction in (0.0, 0.25, 0.5, 0.9, 1.0):
        for min_keep in (1, 2):
            normed = [[float(v) / math.sqrt(sum(float(u) ** 2 for u in s)) for v in s] for s in scores]
            budget = math.floor(fraction * 12 + 0.5)
            keep = [set(range(len(s))) for s in normed]
            for _v, li, gi in sorted(
                ((v, li, gi) for li, s in enumerate(normed) for gi, v in enumerate(s)),
                key=lambda t: (t[0], -t[1], -t[2]),
            ):
                if budget == 0:
                    break
                if len(keep[li]) > min_keep:
                    keep[li].discard(gi)
                    budget -= 1
            assert select_global(scores, fraction, min_keep) == [sorted(k) for k in keep]


def test_select_global_keeps_min_keep_and_survives_zero_layers():
    out = select_global([torch.tensor([1.0, 2.0]), torch.tensor([5.0, 6.0, 7.0, 8.0])], 1.0)
    assert [len(k) for k in out] == [1, 1]  # everything would go, one each stays
    out = select_global([torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])], 0.5, min_keep=1)
    assert all(len(k) >= 1 for k in out)
    assert sum(len(k) for k in out) == 6 - 3
    assert select_global([torch.tensor([4.0])], 0.9) == [[0]]  # a single group always stays
