import numpy as np
import pytest
import torch

from modelpress.primitives.kmeans import fit_kmeans, fit_kmeans_exact, inertia


def _reference_lloyd(x: np.ndarray, c: np.ndarray, max_iter: int = 10_000) -> tuple[np.ndarray, float]:
    """Plain O(n k) Lloyd: nearest-centroid assignment, mean update, until stable."""
    x = x.astype(np.float64)
    c = c.astype(np.float64).copy()
    labels = None
    for _ in range(max_iter):
        new = np.abs(x[:, None] - c[None, :]).argmin(1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for j in range(len(c)):
            if (labels == j).any():
                c[j] = x[labels == j].mean()
    return c, float(((x - c[labels]) ** 2).sum())


def _real_weights(n: int) -> torch.Tensor:
    from safetensors.torch import load_file

    from modelpress.models.sources import minilm_source

    t = load_file(minilm_source().path + "/model.safetensors")
    return t["encoder.layer.0.attention.self.query.weight"].flatten()[:n].float()


@pytest.mark.parametrize("source", ["random", "real"])
@pytest.mark.parametrize("k", [4, 16])
def test_inertia_not_above_reference_lloyd(source, k):
    x = (
        torch.randn(3000, generator=torch.Generator().manual_seed(k))
        if source == "random"
        else _real_weights(3000)
    )
    ours = fit_kmeans(x, k, init="linear")
    lin = np.linspace(float(x.min()), float(x.max()), k)
    _, ref = _reference_lloyd(x.numpy(), lin)
    assert ours.inertia.item() <= ref * (1 + 1e-9)
    # the reported inertia is the real one
    assert ours.inertia.item() == pytest.approx(inertia(x, ours.centroids, ours.codes).item(), rel=1e-6)
    # and every init beats or matches a single reference run from the linear init
    for init in ("kmeans++", "quantile"):
        assert fit_kmeans(x, k, init=init).inertia.item() <= ref * 1.05


def test_exact_dp_is_optimal():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(14, generator=g)
    ys = y.sort().values

    def sse(a: torch.Tensor) -> float:
        return float(((a - a.mean()) ** 2).sum()) if a.numel() else 0.0

    brute = min(sse(ys[:a]) + sse(ys[a:b]) + sse(ys[b:]) for a in range(1, 13) for b in range(a + 1, 14))
    assert fit_kmeans_exact(y, 3).inertia.item() == pytest.approx(brute, rel=1e-6)
    x = torch.randn(2000, generator=g)
    exact = fit_kmeans_exact(x, 8)
    assert exact.inertia.item() <= fit_kmeans(x, 8, init="kmeans++").inertia.item() + 1e-9
    assert exact.inertia.item() == pytest.approx(inertia(x, exact.centroids, exact.codes).item(), rel=1e-6)


def test_weights_zero_means_ignored_and_batches_equal_rows():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 500, generator=g)
    w = (torch.rand(4, 500, generator=g) > 0.5).float()
    batched = fit_kmeans(x, 8, weights=w, init="quantile")
    for i in range(4):
        alone = fit_kmeans(x[i][w[i] > 0], 8, init="quantile")
        torch.testing.assert_close(batched.centroids[i], alone.centroids[0], rtol=1e-5, atol=1e-6)
    unweighted = fit_kmeans(x, 8, init="quantile")
    for i in range(4):
        assert torch.equal(fit_kmeans(x[i], 8, init="quantile").centroids[0], unweighted.centroids[i])


def test_deterministic_under_seed_and_sorted_codes():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(2))
    a, b = fit_kmeans(x, 16, init="kmeans++", seed=7), fit_kmeans(x, 16, init="kmeans++", seed=7)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.codes, b.codes)
    assert (a.centroids[0, 1:] >= a.centroids[0, :-1]).all()
    assert int(a.codes.min()) >= 0 and int(a.codes.max()) < 16


def test_few_distinct_values():
    x = torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    r = fit_kmeans(x, 3, init="kmeans++")
    assert r.inertia.item() == pytest.approx(0.0)


def test_bad_input():
    with pytest.raises(ValueError, match="more than the 3 values"):
        fit_kmeans(torch.randn(3), 4)
    with pytest.raises(ValueError, match="NaN"):
        fit_kmeans(torch.tensor([1.0, float("nan"), 2.0]), 2)
    with pytest.raises(ValueError, match="unknown centroid init"):
        fit_kmeans(torch.randn(10), 2, init="random")
    with pytest.raises(ValueError, match=">= 0"):
        fit_kmeans(torch.randn(10), 2, weights=-torch.ones(10))
    with pytest.raises(ValueError, match="one row"):
        fit_kmeans_exact(torch.randn(2, 10), 2)
