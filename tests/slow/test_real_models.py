"""Real pretrained models (MiniLM sentiment, SmolLM2 perplexity). Marked slow; run in CI.

The first run trains the default classifier (one epoch, a few minutes on 2 cores) and
dequantizes SmolLM2; both are cached in the user cache dir for later runs.
"""

from __future__ import annotations

import math

import pytest

from modelpress.bench.runner import BenchOptions, run_bench
from modelpress.models.builtin import resolve_model
from modelpress.recipe import resolve_methods

pytestmark = pytest.mark.slow


def test_minilm_default_fp32_vs_int8_dynamic(tmp_path):
    task = resolve_model("minilm")
    # one timing round: the test checks the pipeline end to end; benchmarks carry the figures
    result = run_bench(
        task,
        resolve_methods("fp32,int8-dynamic"),
        BenchOptions(tmp_path, progress=False, rounds=1, throughput_batch=4),
    )
    fp32, int8 = result["rows"]
    assert fp32["quality"] > 0.78  # fine-tuned MiniLM on Rotten Tomatoes (head-only gets ~0.76)
    assert fp32["params"] == pytest.approx(22.7e6, rel=0.01)
    assert int8["size_bytes"] <= 0.30 * fp32["size_bytes"]
    assert abs(int8["quality_delta"]) <= 0.01  # within 1 point of fp32
    assert int8["agreement"] > 0.95
    assert int8["peak_rss_mb"] < fp32["peak_rss_mb"]


def test_smollm2_perplexity_fp32_vs_int8(tmp_path):
    task = resolve_model("smollm2", eval_tokens=2048)
    result = run_bench(
        task,
        resolve_methods("fp32,int8-dynamic"),
        # one timing round and a short decode at batch 1 (on CPUs without VNNI every int8
        # call is slow; benchmarks, not tests, carry the speed figures)
        BenchOptions(
            tmp_path,
            progress=False,
            measure_memory=False,
            rounds=1,
            throughput_batch=2,
            decode_tokens=4,
            decode_batches=(1,),
        ),
    )
    fp32, int8 = result["rows"]
    assert fp32["metric"] == "perplexity" and math.isfinite(fp32["quality"]) and 5 < fp32["quality"] < 100
    assert int8["quality"] < 1.15 * fp32["quality"]
    assert int8["size_bytes"] <= 0.30 * fp32["size_bytes"]
    assert 0.8 < int8["agreement"] <= 1.0
