"""Fast 1-D k-means: ``fit_kmeans`` (batched Lloyd on sorted data) and ``fit_kmeans_exact``
(optimal, dynamic programming).

One dimension makes k-means cheap. Sort each row once and keep prefix sums of ``w``,
``w·x`` and ``w·x²``; a cluster is then a contiguous run of the sorted row, its borders are
the midpoints between neighbouring centroids (found by binary search), and its weight, mean
and squared error come from three prefix-sum differences. A Lloyd iteration therefore costs
``O(k log n)`` per row instead of ``O(k n)``, and every row of a batch (per-channel or
per-group clustering) runs in the same tensor ops, on the tensor's device. The same trick
gives an ``O(k log n)``-per-centroid k-means++ initialisation. This is the approach of
flash1dkmeans (Jang et al.) written in batched PyTorch; the exact mode is the optimal 1-D
k-means of Wang & Song, "Ckmeans.1d.dp" (R Journal 2011), with the divide-and-conquer
speed-up of Grønlund et al., "Fast exact k-means, k-medians and Bregman divergence
clustering in 1D" (arXiv 1701.07204).

Importance-weighted k-means (``weights``) minimises ``Σ w_i (x_i − c_{a(i)})²``, the
sensitivity-weighted objective of SqueezeLLM (Kim et al., arXiv 2306.07629) when ``w`` are
squared gradients (Fisher information).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

__all__ = ["KMeansResult", "assign", "fit_kmeans", "fit_kmeans_exact", "fit_kmeans_vectors", "inertia"]

INITS = ("linear", "kmeans++", "quantile")


@dataclasses.dataclass
class KMeansResult:
    centroids: torch.Tensor  # (rows, k) ascending, float32
    codes: torch.Tensor  # (rows, n) int64 index of each value's centroid, original order
    inertia: torch.Tensor  # (rows,) float64 weighted sum of squared errors
    iterations: int


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 1:
        return x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"k-means takes a 1-D tensor or a 2-D batch of rows, got shape {tuple(x.shape)}")
    return x


def _check(x: torch.Tensor, k: int, weights: torch.Tensor | None) -> None:
    if not 1 <= k:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > x.shape[-1]:
        raise ValueError(f"k = {k} clusters is more than the {x.shape[-1]} values to cluster")
    if not torch.isfinite(x).all():
        raise ValueError("values to cluster hold NaN or inf")
    if weights is not None:
        if weights.shape != x.shape:
            raise ValueError(f"weights shape {tuple(weights.shape)} differs from values {tuple(x.shape)}")
        if (weights < 0).any() or not torch.isfinite(weights).all():
            raise ValueError("weights must be finite and >= 0")


def _prefix(v: torch.Tensor) -> torch.Tensor:
    """(R, n) -> (R, n+1) float64 prefix sums with a leading zero."""
    p = torch.zeros(v.shape[0], v.shape[1] + 1, dtype=torch.float64, device=v.device)
    torch.cumsum(v.to(torch.float64), dim=1, out=p[:, 1:])
    return p


class _Sorted:
    """A batch of sorted rows with the prefix sums that make cluster statistics O(1)."""

    def __init__(self, x: torch.Tensor, weights: torch.Tensor | None) -> None:
        # numpy's sort is about twice as fast as torch's on CPU (measured: 8M floats 0.39 s
        # vs 0.79 s), and needs no indices when there are no weights
        if x.device.type == "cpu":
            xn = x.detach().numpy()
            if weights is None:
                self.xs, w = torch.from_numpy(np.sort(xn, axis=1)), None
            else:
                order = np.argsort(xn, axis=1)
                self.xs = torch.from_numpy(np.take_along_axis(xn, order, axis=1))
                wn = np.take_along_axis(weights.detach().numpy(), order, axis=1)
                w = torch.from_numpy(wn).to(torch.float64)
        else:
            self.xs, order_t = x.sort(dim=1)
            w = None if weights is None else weights.gather(1, order_t).to(torch.float64)
        xs64 = self.xs.to(torch.float64)
        self.p0 = _prefix(torch.ones_like(xs64) if w is None else w)
        self.p1 = _prefix(xs64 if w is None else w * xs64)
        self.p2 = _prefix(xs64 * xs64 if w is None else w * xs64 * xs64)
        self.n = x.shape[1]

    def borders(self, c: torch.Tensor) -> torch.Tensor:
        """(R, k) sorted centroids -> (R, k+1) start indices of each cluster in sorted order."""
        mid = ((c[:, 1:] + c[:, :-1]) * 0.5).to(self.xs.dtype).contiguous()
        b = torch.searchsorted(self.xs, mid)
        z = torch.zeros(b.shape[0], 1, dtype=b.dtype, device=b.device)
        return torch.cat([z, b, torch.full_like(z, self.n)], dim=1)

    def stats(self, bounds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lo, hi = bounds[:, :-1], bounds[:, 1:]

        def seg(p: torch.Tensor) -> torch.Tensor:
            return p.gather(1, hi) - p.gather(1, lo)

        return seg(self.p0), seg(self.p1), seg(self.p2)

    def sse(self, c: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        s0, s1, s2 = self.stats(bounds)
        c64 = c.to(torch.float64)
        return (s2 - 2 * c64 * s1 + c64 * c64 * s0).clamp_min(0).sum(dim=1)


def _init_linear(s: _Sorted, k: int) -> torch.Tensor:
    lo, hi = s.xs[:, :1].to(torch.float64), s.xs[:, -1:].to(torch.float64)
    t = torch.linspace(0, 1, k, dtype=torch.float64, device=s.xs.device)
    return lo + (hi - lo) * t


def _init_quantile(s: _Sorted, k: int) -> torch.Tensor:
    """Centroids at the weighted quantiles (j + 1/2) / k: dense regions get more centroids."""
    total = s.p0[:, -1:]
    q = (torch.arange(k, dtype=torch.float64, device=s.xs.device) + 0.5) / k * total
    idx = torch.searchsorted(s.p0[:, 1:].contiguous(), q.contiguous()).clamp_max(s.n - 1)
    return s.xs.gather(1, idx).to(torch.float64)


def _d2_mass(s: _Sorted, a: torch.Tensor, i: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """D² mass of sorted[a:i] around centroid c, per row (all (R, 1))."""
    return (
        (s.p2.gather(1, i) - s.p2.gather(1, a))
        - 2 * c * (s.p1.gather(1, i) - s.p1.gather(1, a))
        + c * c * (s.p0.gather(1, i) - s.p0.gather(1, a))
    )


def _init_kmeanspp(
    s: _Sorted, k: int, gen: torch.Generator, n_local_trials: int | None = None
) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; greedy trials as in scikit-learn):
    each new centroid is the best of ``n_local_trials`` candidates drawn with probability
    proportional to their squared distance to the nearest chosen centroid. The D² mass of
    the run of sorted values owned by each chosen centroid comes from prefix sums, and a
    draw inside a run is a binary search on its (monotone) cumulative D²."""
    R, dev = s.xs.shape[0], s.xs.device
    L = n_local_trials if n_local_trials is not None else 2 + int(math.log(k))
    steps = max(1, math.ceil(math.log2(s.n + 1)))
    u = torch.rand(R, 1, generator=gen, dtype=torch.float64).to(dev)
    first = torch.searchsorted(s.p0[:, 1:].contiguous(), u * s.p0[:, -1:]).clamp_max(s.n - 1)
    c = s.xs.gather(1, first).to(torch.float64)  # (R, 1)
    for t in range(1, k):
        bounds = s.borders(c)  # (R, t+1)
        s0, s1, s2 = s.stats(bounds)
        mass = (s2 - 2 * c * s1 + c * c * s0).clamp_min(0)  # (R, t) D² owned by each centroid
        total = mass.sum(1, keepdim=True)
        cum = mass.cumsum(1)
        # L candidates per row at once: (R, L)
        r = torch.rand(R, L, generator=gen, dtype=torch.float64).to(dev) * total
        j = torch.searchsorted(cum, r).clamp_max(t - 1)  # chosen run of each draw
        r = r - (cum.gather(1, j) - mass.gather(1, j))  # remaining mass inside the run
        cj = c.gather(1, j)
        a, b = bounds.gather(1, j), bounds.gather(1, j + 1)  # run [a, b)
        lo, hi = a.clone(), b.clone()
        for _ in range(steps):  # smallest i with mass(a, i) >= r
            mid = (lo + hi) // 2
            go_right = _d2_mass(s, a, mid, cj) < r
            lo = torch.where(go_right, mid + 1, lo)
            hi = torch.where(go_right, hi, mid)
        pick = (lo - 1).clamp(0, s.n - 1)
        # no mass left (fewer distinct values than k): any value of the row will do
        cand = torch.where(total > 0, s.xs.gather(1, pick).to(torch.float64), s.xs[:, -1:].to(torch.float64))
        if L == 1:
            c, _ = torch.cat([c, cand], dim=1).sort(dim=1)
            continue
        # cost of each candidate set (R, L, t+1): borders of all sets in one search
        sets, _ = torch.cat([c.unsqueeze(1).expand(R, L, t), cand.unsqueeze(2)], dim=2).sort(dim=2)
        mids = ((sets[..., 1:] + sets[..., :-1]) * 0.5).to(s.xs.dtype).reshape(R, L * t)
        inner = torch.searchsorted(s.xs, mids.contiguous()).reshape(R, L, t)
        z = torch.zeros(R, L, 1, dtype=inner.dtype, device=dev)
        bb = torch.cat([z, inner, torch.full_like(z, s.n)], dim=2).reshape(R, L * (t + 2))
        lo_i, hi_i = (
            bb.reshape(R, L, t + 2)[..., :-1].reshape(R, -1),
            bb.reshape(R, L, t + 2)[..., 1:].reshape(R, -1),
        )
        seg = [(p.gather(1, hi_i) - p.gather(1, lo_i)).reshape(R, L, t + 1) for p in (s.p0, s.p1, s.p2)]
        cost = (seg[2] - 2 * sets * seg[1] + sets * sets * seg[0]).clamp_min(0).sum(2)  # (R, L)
        best = cost.argmin(1)
        c = sets[torch.arange(R, device=dev), best]
    return c


def fit_kmeans(
    x: torch.Tensor,
    k: int,
    *,
    weights: torch.Tensor | None = None,
    init: str = "linear",
    max_iter: int = 300,
    seed: int = 0,
    n_local_trials: int | None = None,
) -> KMeansResult:
    """Lloyd's k-means on each row of ``x`` (``(n,)`` or ``(rows, n)``) with ``k`` clusters.

    ``init``: ``"linear"`` (evenly spaced between min and max; the best of Deep Compression,
    Han et al. 2016), ``"kmeans++"`` (greedy, seeded; ``n_local_trials`` candidates per
    centroid, default ``2 + ln k``) or ``"quantile"`` (density-based). Iterates
    until no border moves or ``max_iter``. Deterministic for a given ``seed``. Returns
    centroids ascending, codes in the original order, and the weighted inertia.
    """
    x = _as_rows(x)
    w = None if weights is None else _as_rows(weights)
    _check(x, k, w)
    if init not in INITS:
        raise ValueError(f"unknown centroid init '{init}' (known: {', '.join(INITS)})")
    s = _Sorted(x, w)
    if init == "linear":
        c = _init_linear(s, k)
    elif init == "quantile":
        c = _init_quantile(s, k)
    else:
        c = _init_kmeanspp(s, k, torch.Generator().manual_seed(seed), n_local_trials)
    bounds = s.borders(c)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - reported
        s0, s1, _ = s.stats(bounds)
        c = torch.where(s0 > 0, s1 / s0.clamp_min(1e-300), c)  # an empty cluster keeps its centroid
        new_bounds = s.borders(c)
        if torch.equal(new_bounds, bounds):
            break
        bounds = new_bounds
    c32 = c.to(torch.float32)
    return KMeansResult(c32, assign(x, c32), s.sse(c, bounds), it)


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each value (centroids ascending, per row)."""
    x = _as_rows(x)
    mid = ((centroids[:, 1:] + centroids[:, :-1]) * 0.5).to(x.dtype).contiguous()
    return torch.searchsorted(mid, x.contiguous())


def inertia(
    x: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor, weights: torch.Tensor | None = None
):
    """Weighted squared error of a clustering, computed directly (a reference)."""
    x = _as_rows(x).to(torch.float64)
    err = (x - centroids.to(torch.float64).gather(1, _as_rows(codes))) ** 2
    if weights is not None:
        err = err * _as_rows(weights).to(torch.float64)
    return err.sum(1)


def fit_kmeans_exact(x: torch.Tensor, k: int, *, weights: torch.Tensor | None = None) -> KMeansResult:
    """Optimal 1-D k-means of one row by dynamic programming (``O(k n log n)`` time,
    ``O(k n)`` memory for the back-pointers).

    ``D[m][i]`` = least squared error of the first ``i`` sorted values in ``m`` clusters
    ``= min_j D[m-1][j] + SSE(j, i)``; the optimal ``j`` is monotone in ``i``, so each layer
    is solved by divide and conquer, one recursion level at a time with numpy.
    """
    xr = _as_rows(x)
    if xr.shape[0] != 1:
        raise ValueError("fit_kmeans_exact clusters one row; loop over rows (it is meant for small problems)")
    w = None if weights is None else _as_rows(weights)
    _check(xr, k, w)
    n = xr.shape[1]
    if n * k > 400_000_000:
        raise ValueError(
            f"exact k-means of {n} values into {k} clusters needs too much memory; use fit_kmeans"
        )
    s = _Sorted(xr.cpu(), None if w is None else w.cpu())
    p0, p1, p2 = (p[0].numpy() for p in (s.p0, s.p1, s.p2))

    def cost(j: np.ndarray, i: np.ndarray) -> np.ndarray:  # SSE of sorted[j:i]
        c0, c1, c2 = p0[i] - p0[j], p1[i] - p1[j], p2[i] - p2[j]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(c0 > 0, c2 - c1 * c1 / np.where(c0 > 0, c0, 1), 0.0)

    prev = np.full(n + 1, np.inf)
    prev[0] = 0.0
    back = np.zeros((k, n + 1), dtype=np.int64)
    for m in range(1, k + 1):
        cur = np.full(n + 1, np.inf)
        # tasks: i in [lo, hi], optimal j in [olo, ohi]; valid i >= m, j >= m - 1, j < i
        lo, hi, olo, ohi = (np.array([v]) for v in (m, n, m - 1, n - 1))
        while lo.size:
            mid = (lo + hi) // 2
            jhi = np.minimum(ohi, mid - 1)
            cnt = np.maximum(jhi - olo + 1, 0)
            owner = np.repeat(np.arange(mid.size), cnt)
            start = np.repeat(olo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt)
            j = np.arange(cnt.sum()) + start
            val = prev[j] + cost(j, mid[owner])
            best_val = np.full(mid.size, np.inf)
            np.minimum.at(best_val, owner, val)
            is_best = val == best_val[owner]
            first = np.full(mid.size, -1)
            idx = np.flatnonzero(is_best)
            first_owner, pos = np.unique(owner[idx], return_index=True)
            first[first_owner] = j[idx[pos]]
            cur[mid] = best_val
            back[m - 1, mid] = np.where(first >= 0, first, olo)
            arg = back[m - 1, mid]
            left = mid - 1 >= lo
            right = mid + 1 <= hi
            lo, hi, olo, ohi = (
                np.concatenate([lo[left], mid[right] + 1]),
                np.concatenate([mid[left] - 1, hi[right]]),
                np.concatenate([olo[left], arg[right]]),
                np.concatenate([arg[left], ohi[right]]),
            )
        prev = cur
    bounds = np.zeros(k + 1, dtype=np.int64)
    bounds[k] = n
    for m in range(k, 0, -1):
        bounds[m - 1] = back[m - 1, bounds[m]]
    bt = torch.from_numpy(bounds).unsqueeze(0)
    s0, s1, _ = s.stats(bt)
    c = torch.where(s0 > 0, s1 / s0.clamp_min(1e-300), torch.zeros_like(s1))
    c32 = c.to(torch.float32).to(xr.device)
    return KMeansResult(c32, assign(xr, c32), torch.tensor([float(prev[n])], dtype=torch.float64), k)


def fit_kmeans_vectors(
    x: torch.Tensor, k: int, *, max_iter: int = 25, seed: int = 0, chunk: int = 65536, sample: int = 100_000
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """k-means of ``N`` vectors of dimension ``d`` (product / vector quantization).

    k-means++ seeding on a random sample of at most ``sample`` vectors, then Lloyd over
    all vectors, assigning in chunks by ``|x|² − 2 x·c + |c|²`` (a matrix product). Returns
    ``(centroids (k, d), codes (N,), inertia)``. Deterministic for a given ``seed``.
    """
    if x.dim() != 2:
        raise ValueError(f"expected (N, d) vectors, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if k > n:
        raise ValueError(f"k = {k} clusters is more than the {n} vectors to cluster")
    if not torch.isfinite(x).all():
        raise ValueError("vectors to cluster hold NaN or inf")
    gen = torch.Generator().manual_seed(seed)
    x = x.float()
    pool = x[torch.randperm(n, generator=gen)[: min(n, sample)].to(x.device)]
    # k-means++ on the sample
    c = pool[torch.randint(len(pool), (1,), generator=gen).to(x.device)]
    d2 = ((pool - c) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        i = torch.multinomial(p.cpu(), 1, generator=gen).to(x.device)
        c = torch.cat([c, pool[i]])
        d2 = torch.minimum(d2, ((pool - pool[i]) ** 2).sum(1))

    def assign_all(c: torch.Tensor) -> tuple[torch.Tensor, float]:
        codes = torch.empty(n, dtype=torch.long, device=x.device)
        total = 0.0
        cn = (c * c).sum(1)
        for s in range(0, n, chunk):
            xs = x[s : s + chunk]
            dist = (xs * xs).sum(1, keepdim=True) - 2 * xs @ c.T + cn
            best, idx = dist.min(1)
            codes[s : s + chunk] = idx
            total += float(best.clamp_min(0).sum())
        return codes, total

    codes, total = assign_all(c)
    for _ in range(max_iter):
        sums = torch.zeros_like(c).index_add_(0, codes, x)
        counts = torch.bincount(codes, minlength=k).to(x.dtype).unsqueeze(1)
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        new_codes, total = assign_all(c)
        if torch.equal(new_codes, codes):
            break
        codes = new_codes
    return c, codes, total
