"""Activation quantization math (primitives/activation.py) against slow references."""

from __future__ import annotations

import math

import pytest
import torch

from modelpress.primitives.activation import (
    OBSERVERS,
    ActivationObserver,
    act_qparams,
    act_qrange,
    fake_quantize_act,
    mse_range,
    percentile_range,
    quantize_act_int8,
    smoothing_factors,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_qrange():
    assert act_qrange(True) == (-127, 127)
    assert act_qrange(False) == (-128, 127)


# -- qparams -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi"), [(-1.0, 3.0), (0.5, 2.0), (-4.0, -1.0), (-2.5, 2.5), (0.0, 0.0), (-1e-3, 1e6)]
)
def test_asymmetric_qparams_cover_the_range_and_hold_zero(lo, hi):
    scale, zp = act_qparams(lo, hi, symmetric=False)
    # slow reference, written out: the range widened to hold 0, 255 steps
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
    ref_scale = max((hi0 - lo0) / 255, 1e-12)
    ref_zp = min(max(-128 - round(lo0 / ref_scale), -128), 127)
    assert scale == pytest.approx(ref_scale, rel=1e-12) and zp == ref_zp
    assert isinstance(zp, int) and -128 <= zp <= 127
    # 0 is exactly representable, lo and hi land within half a step
    assert float(fake_quantize_act(torch.tensor([0.0]), scale, zp, False)) == 0.0
    for v in (lo0, hi0):
        err = abs(float(fake_quantize_act(torch.tensor([v]), scale, zp, False)) - v)
        assert err <= scale / 2 + 1e-6 * max(1.0, abs(v))


@pytest.mark.parametrize(("lo", "hi"), [(-1.0, 3.0), (-5.0, 0.25), (0.0, 0.0), (2.0, 2.0)])
def test_symmetric_qparams(lo, hi):
    scale, zp = act_qparams(lo, hi, symmetric=True)
    assert zp == 0
    assert scale == pytest.approx(max(abs(lo), abs(hi), 1e-12) / 127, rel=1e-12)
    assert scale > 0


# -- quantize / fake quantize ------------------------------------------------------------------


def _slow_quantize(values: list[float], scale: float, zp: int, symmetric: bool) -> list[int]:
    qmin, qmax = (-127, 127) if symmetric else (-128, 127)
    out = []
    for v in values:
        q = round(v / scale)  # Python rounds half to even, as torch.round does
        if not symmetric:
            q += zp
        out.append(min(max(q, qmin), qmax))
    return out


@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_act_int8_equals_slow_reference(symmetric):
    scale = 0.0625  # a power of two: x / scale is exact, so ties are real ties
    zp = 0 if symmetric else -7
    ks = torch.arange(-300, 301, dtype=torch.float64)
    x = torch.cat([ks * scale, (ks + 0.5) * scale, (ks + 0.25) * scale]).float()  # ties, quarters
    x = torch.cat([x, torch.tensor([0.0, -0.0, 1e9, -1e9])])
    q = quantize_act_int8(x, scale, zp, symmetric)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert q.tolist() == _slow_quantize(x.tolist(), scale, zp, symmetric)
    # the 2-D shape is kept and tensor scale / zero point work alike
    q2 = quantize_act_int8(x[:600].reshape(20, 30), torch.tensor([scale]), torch.tensor([zp]), symmetric)
    assert torch.equal(q2.reshape(-1), q[:600])


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quantize_error_is_half_a_step_inside_and_clips_outside(symmetric):
    x = torch.randn(500, generator=_gen()) * 2
    lo, hi = -1.5, 2.5
    scale, zp = act_qparams(lo, hi, symmetric)
    y = fake_quantize_act(x, scale, zp, symmetric)
    assert y.dtype == torch.float32
    qmin, qmax = act_qrange(symmetric)
    rep_lo, rep_hi = (qmin - zp) * scale, (qmax - zp) * scale  # representable range
    inside = (x >= rep_lo) & (x <= rep_hi)
    assert ((y - x)[inside].abs() <= scale / 2 * (1 + 1e-5)).all()
    assert torch.allclose(y[x > rep_hi], torch.tensor(rep_hi))
    assert torch.allclose(y[x < rep_lo], torch.tensor(rep_lo))
    # idempotent: fake-quantized values are on the grid
    assert torch.allclose(fake_quantize_act(y, scale, zp, symmetric), y, atol=scale * 1e-4)


# -- ranges ------------------------------------------------------------------------------------


def _slow_quantile(values: list[float], p: float) -> float:
    """Linear interpolation between order statistics (numpy's / torch's default)."""
    s = sorted(values)
    pos = p * (len(s) - 1)
    i = math.floor(pos)
    j = min(i + 1, len(s) - 1)
    return s[i] + (s[j] - s[i]) * (pos - i)


@pytest.mark.parametrize("percentile", [50.0, 90.0, 99.0, 100.0])
def test_percentile_range_equals_slow_quantiles(percentile):
    v = torch.randn(7, 13, generator=_gen(1)) ** 3
    vals = v.flatten().tolist()
    lo, hi = percentile_range(v, percentile, symmetric=False)
    assert lo == pytest.approx(_slow_quantile(vals, 1 - percentile / 100), rel=1e-5, abs=1e-6)
    assert hi == pytest.approx(_slow_quantile(vals, percentile / 100), rel=1e-5, abs=1e-6)
    slo, shi = percentile_range(v, percentile, symmetric=True)
    a = _slow_quantile([abs(x) for x in vals], percentile / 100)
    assert shi == pytest.approx(a, rel=1e-5) and slo == -shi


def test_percentile_range_single_value_and_zeros():
    assert percentile_range(torch.tensor([-3.0]), 99.0, True) == (-3.0, 3.0)
    assert percentile_range(torch.tensor([-3.0]), 99.0, False) == (-3.0, -3.0)
    assert percentile_range(torch.zeros(10), 99.9, False) == (0.0, 0.0)


def _mse(v: list[float], lo: float, hi: float, symmetric: bool) -> float:
    scale, zp = act_qparams(lo, hi, symmetric)
    qs = _slow_quantize(v, scale, zp, symmetric)
    return sum(((q - zp) * scale - x) ** 2 for q, x in zip(qs, v, strict=True)) / len(v)


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_range_is_the_best_of_the_grid(symmetric):
    g = _gen(2)
    v = torch.cat([torch.randn(60, generator=g), torch.tensor([25.0, -3.0])])  # an outlier
    lo, hi, grid = float(v.min()), float(v.max()), 20
    clo, chi = mse_range(v, lo, hi, symmetric, grid=grid)
    vals = v.tolist()
    # slow reference: score every candidate range, keep the lowest (the widest on ties)
    cands = []
    for i in range(1, grid + 1):
        r = i / grid
        a, b = r * min(lo, 0.0), r * max(hi, 0.0)
        if symmetric:
            a, b = -max(-a, b), max(-a, b)
        cands.append((_mse(vals, a, b, symmetric), -i, a, b))
    best = min(cands)
    # the returned range is one of the candidates, and scores as well as the best one (up to
    # float32 vs float64 arithmetic in the error)
    assert any(
        clo == pytest.approx(a, rel=1e-6) and chi == pytest.approx(b, rel=1e-6) for _, _, a, b in cands
    )
    assert _mse(vals, clo, chi, symmetric) <= best[0] * (1 + 1e-4) + 1e-12
    if symmetric:
        assert clo == -chi


def test_mse_range_keeps_the_full_range_on_uniform_data_ties():
    v = torch.zeros(20)  # every candidate has zero error: the widest one wins
    assert mse_range(v, -1.0, 1.0, symmetric=True, grid=10) == (-1.0, 1.0)


# -- observer ----------------------------------------------------------------------------------


def test_minmax_observer_tracks_exact_extremes_over_batches():
    obs = ActivationObserver("minmax")
    batches = [torch.randn(4, 9, generator=_gen(i)) * (i + 1) for i in range(4)]
    for b in batches:
        obs.add(b)
    allv = torch.cat([b.flatten() for b in batches])
    assert obs.range() == (float(allv.min()), float(allv.max()))
    assert obs.n == allv.numel()
    assert obs.qparams() == act_qparams(float(allv.min()), float(allv.max()), True)
    assert obs.sample is None  # min-max keeps no sample


@pytest.mark.parametrize("symmetric", [True, False])
def test_percentile_and_mse_observers_equal_the_functions_when_the_sample_holds_all(symmetric):
    batches = [torch.randn(5, 8, generator=_gen(10 + i)) for i in range(3)]
    allv = torch.cat([b.flatten() for b in batches])
    p = ActivationObserver("percentile", percentile=95.0, symmetric=symmetric)
    m = ActivationObserver("mse", symmetric=symmetric, grid=25)
    for b in batches:
        p.add(b)
        m.add(b)
    assert torch.equal(p.sample, allv)
    assert p.range() == percentile_range(allv, 95.0, symmetric)
    lo, hi = float(allv.min()), float(allv.max())
    ext = torch.cat([allv, torch.tensor([lo, hi])])
    assert m.range() == mse_range(ext, lo, hi, symmetric, 25)
    assert m.qparams() == act_qparams(*m.range(), symmetric)


def test_observer_sample_stays_bounded_and_keeps_the_extremes():
    obs = ActivationObserver("percentile", sample_size=64, percentile=100.0, symmetric=False)
    batches = [torch.randn(50, generator=_gen(i)) for i in range(6)] + [torch.randn(1000, generator=_gen(9))]
    for b in batches:
        obs.add(b)
        assert obs.sample.numel() <= 64
    allv = torch.cat(batches)
    assert obs.n == allv.numel()
    assert obs.lo == float(allv.min()) and obs.hi == float(allv.max())
    assert torch.isin(obs.sample, allv).all()  # sampled from what it saw


def test_observer_is_deterministic_for_a_seed():
    def run(seed):
        o = ActivationObserver("percentile", sample_size=32, seed=seed)
        for i in range(5):
            o.add(torch.randn(40, generator=_gen(i)))
        return o.sample

    assert torch.equal(run(0), run(0))


def test_observer_errors_and_empty_batches():
    with pytest.raises(ValueError, match="unknown observer 'entropy'"):
        ActivationObserver("entropy")
    assert set(OBSERVERS) == {"minmax", "percentile", "mse"}
    for method in OBSERVERS:
        obs = ActivationObserver(method)
        with pytest.raises(ValueError, match="saw no values"):
            obs.range()
        obs.add(torch.empty(0, 4))  # ignored
        assert obs.n == 0
        for bad in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(ValueError, match="NaN or inf"):
                obs.add(torch.tensor([1.0, bad]))
        assert obs.n == 0  # a rejected batch leaves no trace
        obs.add(torch.tensor([2.0]))  # a single value
        assert obs.range() == ((2.0, 2.0) if method == "minmax" else (-2.0, 2.0))  # symmetric


# -- SmoothQuant -------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
def test_smoothing_factors_equal_the_formula(alpha):
    g = _gen(3)
    a = torch.rand(11, generator=g) * 10
    w = torch.rand(11, generator=g)
    s = smoothing_factors(a, w, alpha)
    ref = [
        max(x, 1e-5) ** alpha / max(y, 1e-5) ** (1 - alpha)
        for x, y in zip(a.tolist(), w.tolist(), strict=True)
    ]
    torch.testing.assert_close(s, torch.tensor(ref), rtol=1e-5, atol=0)
    assert s.dtype == torch.float32 and s.shape == (11,)


def test_smoothing_balances_activation_and_weight_ranges_at_half():
    """At alpha = 0.5, max|X_j / s_j| == max|W_j * s_j| (the point of SmoothQuant)."""
    g = _gen(4)
    x = torch.randn(64, 16, generator=g) * torch.logspace(-1, 2, 16)  # outlier channels
    wt = torch.randn(8, 16, generator=g)
    s = smoothing_factors(x.abs().amax(0), wt.abs().amax(0), 0.5)
    torch.testing.assert_close((x / s).abs().amax(0), (wt * s).abs().amax(0), rtol=1e-5, atol=0)
    # and the product is unchanged
    torch.testing.assert_close((x / s) @ (wt * s).t(), x @ wt.t(), rtol=1e-4, atol=1e-4)


def test_smoothing_factors_survive_dead_channels():
    s = smoothing_factors(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), 0.5)
    assert torch.isfinite(s).all() and (s > 0).all()
    torch.testing.assert_close(s, torch.tensor([1e-5**0.5, 1 / 1e-5**0.5, 1.0]))
