"""How sure a quality figure is: intervals for each row's quality, paired tests for each Δ.

Every quality figure of a ``modelpress bench`` table carries a 95 % interval, and every Δ
against the original a paired test on the same test examples:

- accuracy: the Wilson score interval (Wilson 1927) of correct / examples; Δ by McNemar's
  test (McNemar 1947) on the examples one model gets right and the other wrong: exact
  (two-sided binomial, p = 1/2) up to ``EXACT_MCNEMAR_MAX`` discordant examples, the
  continuity-corrected chi-square above that;
- perplexity: a percentile bootstrap over the test sequences (perplexity = exp(Σ NLL /
  Σ tokens) of a resample), and for Δ a paired bootstrap (the same resampled sequences
  for both models), its p-value the two-sided share of resampled Δs on the other side of 0.

A Δ is *within noise* when its paired test gives p >= ``ALPHA``: the test split cannot tell
the row from the original. Bootstraps are seeded, so a report is reproducible.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ALPHA",
    "BOOTSTRAP_RESAMPLES",
    "CONFIDENCE",
    "PairedTest",
    "bootstrap_perplexity_interval",
    "mcnemar",
    "mcnemar_p",
    "min_paired_difference",
    "paired_bootstrap_perplexity",
    "perplexity",
    "quality_interval",
    "quality_stats",
    "resolution",
    "wilson_interval",
]

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# Up to this many discordant examples McNemar's test is the exact binomial (Python
# integers, no rounding); above it the continuity-corrected chi-square, which agrees with
# the exact test to a few 1e-3 there and costs nothing.
EXACT_MCNEMAR_MAX = 1000


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``:
    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n). Unlike the normal (Wald) interval
    it stays inside [0, 1] and keeps its coverage near 0 and 1 and on small n."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """A paired comparison of a row with the original on the same test examples."""

    p_value: float
    method: str
    #: classification: examples the original gets right and the row wrong (lost), and the
    #: reverse (gained); None for perplexity
    lost: int | None = None
    gained: int | None = None
    #: perplexity: the bootstrap interval of Δ (row - original); None for accuracy
    delta_low: float | None = None
    delta_high: float | None = None

    @property
    def within_noise(self) -> bool:
        return self.p_value >= ALPHA


def mcnemar_p(lost: int, gained: int) -> tuple[float, str]:
    """Two-sided p-value of McNemar's test for ``lost`` / ``gained`` discordant pairs, and
    which form computed it. Exact: 2 · P(X <= min(lost, gained)), X ~ Binomial(lost +
    gained, 1/2), capped at 1 (p = 1 without discordant pairs)."""
    if lost < 0 or gained < 0:
        raise ValueError(f"discordant counts must be >= 0, got {lost}, {gained}")
    n = lost + gained
    if n == 0:
        return 1.0, "McNemar exact binomial"
    if n <= EXACT_MCNEMAR_MAX:
        k = min(lost, gained)
        tail = sum(math.comb(n, i) for i in range(k + 1))
        return min(1.0, 2 * tail / 2**n), "McNemar exact binomial"
    chi2 = max(0, abs(lost - gained) - 1) ** 2 / n
    return math.erfc(math.sqrt(chi2 / 2)), "McNemar chi-square (continuity-corrected)"


def _bools(x: Any) -> np.ndarray:
    return np.asarray(x.cpu() if hasattr(x, "cpu") else x).astype(bool).ravel()


def mcnemar(reference_correct: Sequence[bool] | Any, correct: Sequence[bool] | Any) -> PairedTest:
    """McNemar's test of two classifiers' per-example correctness on the same examples."""
    ref, row = _bools(reference_correct), _bools(correct)
    if ref.shape != row.shape:
        raise ValueError(f"paired outcomes differ in length: {ref.size} vs {row.size}")
    lost = int((ref & ~row).sum())
    gained = int((~ref & row).sum())
    p, method = mcnemar_p(lost, gained)
    return PairedTest(p, method, lost=lost, gained=gained)


def perplexity(nll: Sequence[float] | Any, tokens: Sequence[int] | Any) -> float:
    """exp(Σ NLL / Σ tokens) over sequences (per-sequence NLL sums and token counts)."""
    return float(np.exp(np.sum(np.asarray(nll, dtype=np.float64)) / np.sum(np.asarray(tokens))))


def _resample(n: int, resamples: int, seed: int) -> np.ndarray:
    if n < 1:
        raise ValueError("a bootstrap needs at least one sequence")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def bootstrap_perplexity_interval(
    nll: Sequence[float] | Any,
    tokens: Sequence[int] | Any,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the perplexity, resampling whole sequences (tokens
    of one sequence are not independent, sequences roughly are)."""
    nll_a = np.asarray(nll, dtype=np.float64)
    tok = np.asarray(tokens, dtype=np.float64)
    idx = _resample(len(nll_a), resamples, seed)  # (resamples, sequences)
    return _percentiles(np.exp(nll_a[idx].sum(1) / tok[idx].sum(1)), confidence)


def paired_bootstrap_perplexity(
    reference_nll: Sequence[float] | Any,
    nll: Sequence[float] | Any,
    tokens: Sequence[int] | Any,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> PairedTest:
    """Paired bootstrap of Δ perplexity (row - original): both models are scored on the
    same resampled sequences. The interval is the percentile interval of the resampled Δs;
    p = 2 · min(share of Δ <= 0, share of Δ >= 0) with the +1 correction of Davison and
    Hinkley (1997), capped at 1, so p < ALPHA exactly when 0 lies outside the interval."""
    ref = np.asarray(reference_nll, dtype=np.float64)
    row = np.asarray(nll, dtype=np.float64)
    tok = np.asarray(tokens, dtype=np.float64)
    if ref.shape != row.shape or ref.shape != tok.shape:
        raise ValueError(f"paired sequences differ in length: {ref.size}, {row.size}, {tok.size}")
    idx = _resample(len(ref), resamples, seed)
    t = tok[idx].sum(1)
    deltas = np.exp(row[idx].sum(1) / t) - np.exp(ref[idx].sum(1) / t)
    lo, hi = _percentiles(deltas, confidence)
    below = (int((deltas <= 0).sum()) + 1) / (resamples + 1)
    above = (int((deltas >= 0).sum()) + 1) / (resamples + 1)
    p = min(1.0, 2 * min(below, above))
    return PairedTest(
        p, f"paired bootstrap over sequences ({resamples} resamples)", delta_low=lo, delta_high=hi
    )


def min_paired_difference(n: int, alpha: float = ALPHA) -> float:
    """The smallest accuracy difference McNemar's exact test can call significant on ``n``
    examples: k / n for the least k with 2 · 2^-k < alpha (every changed prediction going
    the same way; k = 6 at alpha 0.05). Any mix of changes in both directions needs more."""
    k = 1
    while 2 * 0.5**k >= alpha:
        k += 1
    return k / n


def quality_interval(ev: Any, confidence: float = CONFIDENCE) -> tuple[float, float, str] | None:
    """(low, high, how) of an Evaluation's quality, or None where it kept no per-example
    outcomes."""
    if getattr(ev, "correct", None) is not None:
        c = _bools(ev.correct)
        lo, hi = wilson_interval(int(c.sum()), int(c.size), confidence)
        return lo, hi, f"Wilson score interval over {c.size} test examples"
    if getattr(ev, "nll", None) is not None and getattr(ev, "tokens", None) is not None:
        lo, hi = bootstrap_perplexity_interval(_floats(ev.nll), _floats(ev.tokens), confidence=confidence)
        # the bootstrap sums in another order than the evaluation: with one test sequence (or
        # all alike) lo == hi == the point up to rounding, which may put the point outside
        value = float(getattr(ev, "value", lo))
        lo, hi = min(lo, value), max(hi, value)
        n = len(_floats(ev.nll))
        return lo, hi, f"percentile bootstrap over {n} test sequences ({BOOTSTRAP_RESAMPLES} resamples)"
    return None


def _floats(x: Any) -> np.ndarray:
    return np.asarray(x.cpu() if hasattr(x, "cpu") else x, dtype=np.float64).ravel()


def paired_test(reference: Any, ev: Any) -> PairedTest | None:
    """The paired test of ``ev`` against ``reference`` (both Evaluations of the same test
    examples), or None where either kept no per-example outcomes."""
    if getattr(reference, "correct", None) is not None and getattr(ev, "correct", None) is not None:
        return mcnemar(reference.correct, ev.correct)
    if all(getattr(e, k, None) is not None for e in (reference, ev) for k in ("nll", "tokens")):
        if not np.array_equal(_floats(reference.tokens), _floats(ev.tokens)):
            raise ValueError("paired perplexity needs the same sequences for both models")
        return paired_bootstrap_perplexity(_floats(reference.nll), _floats(ev.nll), _floats(ev.tokens))
    return None


def quality_stats(reference: Any, ev: Any) -> dict[str, Any]:
    """The row fields that say how sure a row's quality and its Δ are: ``quality_low`` /
    ``quality_high`` (95 % interval), ``delta_p``, ``delta_test``, ``within_noise``, and
    ``examples_lost`` / ``examples_gained`` (classification) or ``delta_low`` /
    ``delta_high`` (perplexity). {} where the evaluation kept no per-example outcomes."""
    out: dict[str, Any] = {}
    interval = quality_interval(ev)
    if interval is not None:
        out["quality_low"], out["quality_high"] = interval[0], interval[1]
    test = paired_test(reference, ev)
    if test is not None:
        out["delta_p"] = test.p_value
        out["delta_test"] = test.method
        out["within_noise"] = test.within_noise
        if test.lost is not None:
            out["examples_lost"], out["examples_gained"] = test.lost, test.gained
        if test.delta_low is not None:
            out["delta_low"], out["delta_high"] = test.delta_low, test.delta_high
    return out


def resolution(reference: Any) -> dict[str, Any]:
    """What the test split can resolve, for the report header: the original's interval
    (``quality_low`` / ``quality_high``, ``interval``: how), ``n``, ``half_width`` (in the
    metric's units; accuracy as a fraction), ``min_paired_delta`` (accuracy: the smallest Δ
    McNemar can call significant) and ``resolves_1pt``: whether the half-width is at most 1
    point of accuracy, or 1 % of the perplexity. {} without per-example outcomes."""
    interval = quality_interval(reference)
    if interval is None:
        return {}
    lo, hi, how = interval
    out: dict[str, Any] = {"quality_low": lo, "quality_high": hi, "interval": how}
    if getattr(reference, "correct", None) is not None:
        n = int(_bools(reference.correct).size)
        half = (hi - lo) / 2
        out.update(n=n, half_width=half, min_paired_delta=min_paired_difference(n), resolves_1pt=half <= 0.01)
    else:
        n = len(_floats(reference.nll))
        half = (hi - lo) / 2
        out.update(n=n, half_width=half, resolves_1pt=half <= 0.01 * float(reference.value))
    return out
