import pytest
import torch

from modelpress.errors import ConfigError
from modelpress.primitives.sparsity import (
    ActivationNorms,
    cubic_sparsity,
    global_masks,
    keep_count,
    local_mask,
    magnitude_scores,
    nm_mask,
    row_mask,
    taylor_scores,
    wanda_scores,
)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.97])
@pytest.mark.parametrize("shape", [(7, 13), (20, 3, 5, 5)])
def test_local_mask_exact_count_of_largest(sparsity, shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    mask = local_mask(magnitude_scores(w), sparsity)
    k = round((1 - sparsity) * w.numel())
    assert int(mask.sum()) == k
    if 0 < k < w.numel():  # every kept magnitude >= every removed one
        assert w.abs()[mask].min() >= w.abs()[~mask].max()


def test_ties_broken_by_position():
    mask = local_mask(torch.ones(2, 4), 0.5)  # all equal: the first 4 flat positions kept
    assert mask.tolist() == [[True] * 4, [False] * 4]
    assert torch.equal(mask, local_mask(torch.ones(2, 4), 0.5))


def test_global_mask_one_threshold_exact_total():
    g = torch.Generator().manual_seed(1)
    scores = {"a": torch.rand(10, 10, generator=g), "b": torch.rand(30, 5, generator=g) * 0.5}
    masks = global_masks(scores, 0.6)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.4 * 250)
    lo = min(float(scores[n][masks[n]].min()) for n in scores)
    hi = max(float(scores[n][~masks[n]].max()) for n in scores)
    assert lo >= hi
    # layers end up at different sparsities (b's scores are smaller)
    assert masks["a"].float().mean() > masks["b"].float().mean()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_nm_every_group_holds_the_pattern(n, m):
    s = torch.rand(6, 32, generator=torch.Generator().manual_seed(2))
    mask = nm_mask(s, n, m)
    groups, sg = mask.reshape(-1, m), s.reshape(-1, m)
    assert (groups.sum(1) == n).all()
    kept_min = torch.where(groups, sg, torch.inf).min(1).values
    dropped_max = torch.where(groups, -torch.inf, sg).max(1).values
    assert (kept_min >= dropped_max).all()
    with pytest.raises(ConfigError, match="not a multiple of"):
        nm_mask(torch.rand(2, 6), 2, 4)


def test_cubic_schedule_values():
    kw = {"initial": 0.0, "final": 0.8, "begin": 10, "n_events": 4, "frequency": 5}
    assert cubic_sparsity(0, **kw) == 0.0
    assert cubic_sparsity(10, **kw) == 0.0
    # s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 with t0 = 10, n dt = 20
    assert cubic_sparsity(15, **kw) == pytest.approx(0.8 - 0.8 * 0.75**3)
    assert cubic_sparsity(20, **kw) == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert cubic_sparsity(30, **kw) == pytest.approx(0.8)
    assert cubic_sparsity(99, **kw) == pytest.approx(0.8)
    vals = [cubic_sparsity(t, **kw) for t in range(40)]
    assert vals == sorted(vals)


def test_wanda_hand_computed():
    # W (2, 3), inputs X (2 tokens, 3 features): ||X_j|| = (5, 0, 1)
    w = torch.tensor([[1.0, -4.0, 0.5], [-2.0, 1.0, 3.0]])
    x = torch.tensor([[3.0, 0.0, 1.0], [4.0, 0.0, 0.0]])
    acc = ActivationNorms(3)
    acc.add(x[:1])
    acc.add(x[1:])
    norms = acc.norms()
    assert torch.allclose(norms, torch.tensor([5.0, 0.0, 1.0]))
    s = wanda_scores(w, norms)
    assert torch.allclose(s, torch.tensor([[5.0, 0.0, 0.5], [10.0, 0.0, 3.0]]))
    # per output row, keep 2 of 3: the large -4.0 goes (its input is always 0)
    assert row_mask(s, 1 / 3).tolist() == [[True, False, True], [True, False, True]]
    assert local_mask(magnitude_scores(w), 1 / 3)[0, 1]  # magnitude would keep it


def test_taylor_accumulates_abs_over_batches():
    w = torch.tensor([1.0, -2.0, 3.0])
    grads = [torch.tensor([1.0, 1.0, 0.0]), torch.tensor([-1.0, 0.5, 0.1])]
    assert torch.allclose(taylor_scores(w, grads), torch.tensor([2.0, 3.0, 0.3]))
    with pytest.raises(ConfigError, match="no gradient"):
        taylor_scores(w, [])


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), "half"])
def test_bad_sparsity(bad):
    with pytest.raises(ConfigError, match=r"in \[0, 1\)|must be a number"):
        keep_count(10, bad)


def test_nan_weights():
    with pytest.raises(ConfigError, match="NaN or inf"):
        magnitude_scores(torch.tensor([1.0, float("nan")]))
