"""Intervals and paired tests of bench/stats.py against reference computations."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from modelpress.bench import stats
from modelpress.bench.report import format_row, header_lines, write_reports
from modelpress.models.tasks import Evaluation

Z = 1.959963984540054  # the 97.5 % normal quantile


def _wilson_reference(s: int, n: int) -> tuple[float, float]:
    """Wilson (1927) in its other closed form: (2np + z² ± z·sqrt(z² + 4np(1-p))) / 2(n + z²)."""
    p = s / n
    root = Z * math.sqrt(Z * Z + 4 * n * p * (1 - p))
    return (2 * n * p + Z * Z - root) / (2 * (n + Z * Z)), (2 * n * p + Z * Z + root) / (2 * (n + Z * Z))


@pytest.mark.parametrize("s,n", [(57, 99), (1, 10), (50, 100), (990, 1000), (3, 7)])
def test_wilson_matches_the_closed_form(s, n):
    assert stats.wilson_interval(s, n) == pytest.approx(_wilson_reference(s, n), abs=1e-12)


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I (score method)
@pytest.mark.parametrize(
    "s,n,low,high",
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_matches_published_values(s, n, low, high):
    lo, hi = stats.wilson_interval(s, n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_wilson_on_the_issues_split_is_about_ten_points():
    lo, hi = stats.wilson_interval(57, 99)
    assert 0.09 < (hi - lo) / 2 < 0.10 and lo < 0.55 < hi  # the majority class is inside
    with pytest.raises(ValueError):
        stats.wilson_interval(5, 0)


def test_wilson_coverage_on_binomial_samples():
    rng = np.random.default_rng(1)
    p, n = 0.576, 99
    hits = [stats.wilson_interval(int(k), n) for k in rng.binomial(n, p, size=2000)]
    coverage = np.mean([lo <= p <= hi for lo, hi in hits])
    assert 0.93 <= coverage <= 0.97


def _exact_binomial_two_sided(k: int, n: int) -> float:
    """Sum of the Binomial(n, 1/2) probabilities no larger than that of k (scipy's 'minlike'
    definition), computed with math.comb, independent of stats.mcnemar_p's tail sum."""
    pmf = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(q for q in pmf if q <= pmf[k] * (1 + 1e-12)))


@pytest.mark.parametrize("lost,gained", [(6, 0), (5, 0), (10, 20), (13, 4), (7, 7), (0, 1), (150, 110)])
def test_mcnemar_exact_matches_an_independent_binomial_test(lost, gained):
    p, method = stats.mcnemar_p(lost, gained)
    assert method == "McNemar exact binomial"
    assert p == pytest.approx(_exact_binomial_two_sided(lost, lost + gained), rel=1e-9)
    try:
        from scipy.stats import binomtest
    except ImportError:
        return
    assert p == pytest.approx(binomtest(lost, lost + gained, 0.5).pvalue, rel=1e-9)


def test_mcnemar_large_counts_use_the_continuity_corrected_chi_square():
    p, method = stats.mcnemar_p(600, 500)
    assert "chi-square" in method
    chi2 = (abs(600 - 500) - 1) ** 2 / 1100
    assert p == pytest.approx(math.erfc(math.sqrt(chi2 / 2)))
    scipy_stats = pytest.importorskip("scipy.stats")
    assert p == pytest.approx(scipy_stats.chi2.sf(chi2, 1), rel=1e-9)
    # and it is close to the exact test at the switch-over
    exact = _exact_binomial_two_sided(540, 1100)
    assert abs(stats.mcnemar_p(560, 540)[0] - _exact_binomial_two_sided(540, 1100)) < 5e-3 and exact > 0


def test_mcnemar_counts_discordant_examples():
    ref = torch.tensor([1, 1, 1, 0, 0, 1, 0, 1], dtype=torch.bool)
    row = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0], dtype=torch.bool)
    t = stats.mcnemar(ref, row)
    assert (t.lost, t.gained) == (3, 1) and t.p_value == pytest.approx(_exact_binomial_two_sided(1, 4))
    assert t.within_noise
    assert stats.mcnemar(ref, ref).p_value == 1.0
    with pytest.raises(ValueError, match="length"):
        stats.mcnemar(ref, row[:-1])


def test_min_paired_difference_is_where_the_exact_test_turns_significant():
    assert stats.min_paired_difference(99) == pytest.approx(6 / 99)
    assert stats.mcnemar_p(6, 0)[0] < stats.ALPHA <= stats.mcnemar_p(5, 0)[0]


def _sequences(rng, n, mu, tokens=100, sd=8.0):
    """n sequences of ``tokens`` tokens whose mean NLL per token is mu (true ppl exp(mu))."""
    return rng.normal(mu * tokens, sd, size=n), np.full(n, tokens)


def test_bootstrap_perplexity_interval_covers_the_true_perplexity():
    rng = np.random.default_rng(0)
    mu = 2.5
    hits = []
    for trial in range(200):
        nll, tok = _sequences(rng, 40, mu)
        assert stats.perplexity(nll, tok) == pytest.approx(math.exp(nll.sum() / tok.sum()))
        lo, hi = stats.bootstrap_perplexity_interval(nll, tok, resamples=500, seed=trial)
        assert lo <= stats.perplexity(nll, tok) <= hi
        hits.append(lo <= math.exp(mu) <= hi)
    assert 0.88 <= np.mean(hits) <= 0.99


def test_bootstrap_is_seeded():
    nll, tok = _sequences(np.random.default_rng(3), 16, 2.0)
    a = stats.bootstrap_perplexity_interval(nll, tok, seed=5)
    assert a == stats.bootstrap_perplexity_interval(nll, tok, seed=5)
    assert a != stats.bootstrap_perplexity_interval(nll, tok, seed=6)


def test_paired_bootstrap_perplexity():
    rng = np.random.default_rng(0)
    ref, tok = _sequences(rng, 30, 2.5, sd=20.0)
    same = stats.paired_bootstrap_perplexity(ref, ref, tok)
    assert same.p_value == 1.0 and same.delta_low == same.delta_high == 0.0 and same.within_noise
    # a row 1 % worse on every sequence: pairing sees it although the sequences vary a lot
    worse = stats.paired_bootstrap_perplexity(ref, ref + 0.01 * tok, tok)
    assert worse.p_value < 0.001 and worse.delta_low > 0 and not worse.within_noise
    unpaired = stats.bootstrap_perplexity_interval(ref, tok)
    assert unpaired[1] - unpaired[0] > 10 * (worse.delta_high - worse.delta_low)
    # p < alpha exactly when 0 is outside the interval
    for seed in range(20):
        row = ref + rng.normal(0.0, 2.0, size=ref.shape) + rng.normal(0, 0.5)
        t = stats.paired_bootstrap_perplexity(ref, row, tok, seed=seed)
        assert (t.p_value < stats.ALPHA) == (t.delta_low > 0 or t.delta_high < 0)


def _eval(correct: list[bool]) -> Evaluation:
    c = torch.tensor(correct)
    return Evaluation("accuracy", c.float().mean().item(), c.long(), correct=c)


def _row(method: str, ref: Evaluation, ev: Evaluation) -> dict:
    return {
        "model": "tiny",
        "method": method,
        "recipe": [],
        "size_bytes": 1000,
        "params": 100,
        "bits_per_weight": 80.0,
        "cpu_latency_ms_p50": 1.0,
        "cpu_latency_ms_p95": 1.2,
        "cpu_throughput": 900.0,
        "gpu_latency_ms_p50": None,
        "peak_rss_mb": None,
        "peak_vram_mb": None,
        "metric": "accuracy",
        "quality": ev.value,
        "quality_delta": ev.value - ref.value,
        "agreement": None,
        **stats.quality_stats(ref, ev),
    }


def test_report_on_a_small_split_shows_intervals_and_marks_noise(tmp_path):
    # 99 test examples, the original right on 57 (the issue's split)
    ref_c = [True] * 57 + [False] * 42
    ref = _eval(ref_c)
    noisy = _eval([not c if i in (0, 1, 2, 3, 4, 5, 60) else c for i, c in enumerate(ref_c)])  # -6 +1
    broken = _eval([False] * 99)  # loses all 57
    rows = [_row("fp32", ref, ref), _row("noisy", ref, noisy), _row("broken", ref, broken)]
    env = {
        "model": "tiny",
        "task": "text-classification",
        "metric": "accuracy",
        "original_quality": ref.value,
    }
    env["quality_resolution"] = stats.resolution(ref)
    assert env["quality_resolution"]["resolves_1pt"] is False and env["quality_resolution"]["n"] == 99

    r = {x["method"]: x for x in rows}
    assert r["noisy"]["examples_lost"] == 6 and r["noisy"]["examples_gained"] == 1
    assert (
        r["noisy"]["delta_p"] == pytest.approx(_exact_binomial_two_sided(1, 7)) and r["noisy"]["within_noise"]
    )
    assert r["broken"]["delta_p"] < 1e-10 and not r["broken"]["within_noise"]
    lo, hi = _wilson_reference(57, 99)
    cells = format_row(r["fp32"])
    assert cells[-3] == f"57.58% acc [{100 * lo:.1f}, {100 * hi:.1f}]" == "57.58% acc [47.7, 66.8]"
    assert format_row(r["noisy"])[-2] == "-5.05 pt (n.s.)"
    assert format_row(r["broken"])[-2] == "-57.58 pt (p<0.001)"

    head = "\n".join(header_lines(env))
    assert "too small to resolve 1 point" in head and "±9.6 pt" in head and "6.06 pt" in head
    assert "(n.s.) = within noise" in head

    paths = write_reports({"env": env, "rows": rows}, tmp_path)
    md = paths["md"].read_text()
    assert "-5.05 pt (n.s.) |" in md and "57.58% acc [47.7, 66.8] |" in md
    assert "too small to resolve 1 point" in md
    with paths["csv"].open() as f:
        got = {row["method"]: row for row in csv.DictReader(f)}
    assert float(got["noisy"]["quality_low"]) == pytest.approx(stats.wilson_interval(52, 99)[0])
    assert got["noisy"]["within_noise"] == "True" and float(got["broken"]["delta_p"]) < 1e-10
    assert json.loads(paths["json"].read_text())["rows"][1]["examples_lost"] == 6
    assert paths["png"].stat().st_size > 1000


def test_a_large_split_is_not_flagged_and_old_results_still_render():
    ref = _eval([True] * 9000 + [False] * 1000)
    res = stats.resolution(ref)
    assert res["resolves_1pt"] and res["half_width"] < 0.01
    env = {"metric": "accuracy", "quality_resolution": res}
    assert not any("too small" in line for line in header_lines(env))
    old = _row("fp32", ref, ref)
    for k in ("quality_low", "quality_high", "delta_p", "within_noise", "delta_test"):
        old.pop(k)
    assert format_row(old)[-3:-1] == ["90.00% acc", "+0.00 pt"]


def test_perplexity_rows_get_a_bootstrap_interval_and_a_paired_test():
    rng = np.random.default_rng(0)
    nll, tok = _sequences(rng, 8, 2.5, tokens=511)
    ref = Evaluation(
        "perplexity",
        stats.perplexity(nll, tok),
        torch.zeros(1),
        nll=torch.tensor(nll),
        tokens=torch.tensor(tok),
    )
    ev = Evaluation(
        "perplexity",
        stats.perplexity(nll * 1.001, tok),
        torch.zeros(1),
        nll=torch.tensor(nll * 1.001),
        tokens=torch.tensor(tok),
    )
    fields = stats.quality_stats(ref, ev)
    assert fields["quality_low"] < ev.value < fields["quality_high"]
    assert fields["delta_low"] > 0 and fields["delta_p"] < 0.05 and "paired bootstrap" in fields["delta_test"]
    res = stats.resolution(ref)
    assert res["n"] == 8 and "bootstrap over 8 test sequences" in res["interval"]


def test_perplexity_interval_contains_the_point_even_with_one_sequence():
    # one sequence: every resample is that sequence, so the bootstrap gives lo == hi, and
    # a point computed in another order may lie an ulp outside; the row's interval must hold it
    nll = np.array([1234.5678901234])
    tok = np.array([15])
    for value in (stats.perplexity(nll, tok) * (1 + 1e-15), stats.perplexity(nll, tok) * (1 - 1e-15)):
        ev = Evaluation("perplexity", value, torch.zeros(1), nll=torch.tensor(nll), tokens=torch.tensor(tok))
        lo, hi, _ = stats.quality_interval(ev)
        assert lo <= ev.value <= hi


def test_plot_accepts_a_point_just_outside_its_interval(tmp_path):
    from modelpress.bench import report

    row = {
        "method": "int8",
        "metric": "perplexity",
        "quality": 10.0,
        "quality_low": 10.0 + 1e-12,
        "quality_high": 10.0 + 2e-12,
        "size_bytes": 1e6,
        "cpu_latency_ms_p50": 1.0,
    }
    report.plot({"rows": [row], "env": {}}, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
