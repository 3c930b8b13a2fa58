import json

import pytest

from modelpress.api import artifact_files
from modelpress.bench import stats
from modelpress.bench.measure import time_callable
from modelpress.bench.report import markdown, write_reports
from modelpress.bench.runner import ROW_KEYS, BenchOptions, run_bench
from modelpress.errors import ConfigError
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.recipe import resolve_methods


@pytest.fixture
def tiny_task(tiny_bert_dir, small_splits):
    return TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)


def test_run_bench_rows_are_measured(tmp_path, tiny_task):
    result = run_bench(
        tiny_task,
        resolve_methods("fp32,int8-dynamic"),
        BenchOptions(tmp_path, progress=False, throughput_batch=3),
    )
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["fp32", "int8-dynamic"]
    assert result["env"]["throughput_batch"] == 3 and "(samples/s, batch 3)" in markdown(result)
    for r in rows.values():
        assert set(ROW_KEYS) <= set(r)
        files = artifact_files(tmp_path / "artifacts" / r["method"])
        assert r["size_bytes"] == sum(f.stat().st_size for f in files)
        assert r["bits_per_weight"] == pytest.approx(8 * r["size_bytes"] / r["params"])
        assert r["cpu_latency_ms_p50"] > 0 and r["cpu_latency_ms_p95"] >= r["cpu_latency_ms_p50"]
        assert r["cpu_throughput"] > 0 and r["peak_rss_mb"] > r["baseline_rss_mb"] > 0
        assert r["gpu_latency_ms_p50"] is None and r["peak_vram_mb"] is None  # no CUDA here
    assert rows["fp32"]["agreement"] == 1.0 and rows["fp32"]["quality_delta"] == 0.0
    # every quality figure carries its 95 % interval, every delta a paired test on the same examples
    n = len(tiny_task.splits.test)
    for r in rows.values():
        assert r["quality_low"] <= r["quality"] <= r["quality_high"]
        lost, gained = r["examples_lost"], r["examples_gained"]
        assert r["quality_delta"] == pytest.approx((gained - lost) / n)
        assert r["delta_p"] == stats.mcnemar_p(lost, gained)[0] and r["within_noise"] == (
            r["delta_p"] >= 0.05
        )
    assert rows["fp32"]["delta_p"] == 1.0 and rows["fp32"]["within_noise"]
    assert result["env"]["quality_resolution"]["n"] == n
    assert rows["int8-dynamic"]["size_bytes"] < 0.3 * rows["fp32"]["size_bytes"]
    assert "cpu_speedup" in rows["int8-dynamic"]
    env = result["env"]
    assert env["threads"] >= 1 and env["seq_len"] == 16 and env["torch"]

    paths = write_reports(result, tmp_path, command="modelpress bench")
    data = json.loads(paths["json"].read_text())
    assert set(data) == {"env", "rows"} and len(data["rows"]) == 2
    md = paths["md"].read_text()
    assert "| Model | Method | Size on disk |" in md and "int8-dynamic" in md
    assert paths["csv"].read_text().splitlines()[0].startswith(",".join(ROW_KEYS[:3]))
    assert paths["png"].stat().st_size > 1000
    assert "re-measured" not in md

    # a re-timed run (benchmarks/retime.py) says so under its command
    result["env"]["retimed_by"] = "python benchmarks/retime.py results/x --model minilm"
    md = write_reports(result, tmp_path, command="c")["md"].read_text()
    assert "Command: `c`" in md and "by: `python benchmarks/retime.py results/x --model minilm`" in md


def test_run_bench_bad_options(tmp_path, tiny_task):
    with pytest.raises(ConfigError, match="--device must be"):
        run_bench(tiny_task, resolve_methods("fp32"), BenchOptions(tmp_path, device="tpu"))
    with pytest.raises(ConfigError, match="unique"):
        run_bench(tiny_task, resolve_methods("fp32,fp32"), BenchOptions(tmp_path))


def test_time_callable_bounds():
    calls = []
    t = time_callable(lambda: calls.append(1), warmup=2, min_runs=7, min_seconds=0.0)
    assert t.runs == 7 and len(calls) == 9 and t.p95_ms >= t.p50_ms >= 0


def test_causal_lm_rows_get_decode_speed_and_bandwidth_share(tmp_path, tiny_llama_dir):
    from modelpress.data.datasets import political_speeches
    from modelpress.models.causal_lm import CausalLMTask

    task = CausalLMTask(
        local_source(str(tiny_llama_dir)), political_speeches(), eval_tokens=512, window=128, seq_len=16
    )
    opts = BenchOptions(
        tmp_path, progress=False, measure_memory=False, rounds=2, decode_tokens=5, decode_batches=(1, 2)
    )
    result = run_bench(task, resolve_methods("fp32,int8-dynamic"), opts)
    env, rows = result["env"], {r["method"]: r for r in result["rows"]}
    assert env["memory_bandwidth_gbs"] > 0 and "16-token prompt + 5 new tokens" in env["decode"]
    fp32, int8 = rows["fp32"], rows["int8-dynamic"]
    for r in (fp32, int8):
        for b in (1, 2):
            assert r[f"decode_tokens_per_s_b{b}"] > 0 and r[f"ttft_ms_b{b}"] > 0
            share = r[f"decode_bound_share_b{b}"]
            assert share == pytest.approx(r[f"decode_tokens_per_s_b{b}"] / b / r["decode_bound_tokens_per_s"])
        assert r["decode_bound_tokens_per_s"] == pytest.approx(
            env["memory_bandwidth_gbs"] * 1e9 / r["weight_bytes_per_token"]
        )
    # tied embedding / head counted once (as the head); int8 reads about a quarter of the bytes
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(tiny_llama_dir))
    assert fp32["weight_bytes_per_token"] >= 4 * cfg.vocab_size * cfg.hidden_size
    assert int8["weight_bytes_per_token"] < 0.3 * fp32["weight_bytes_per_token"]
    assert "decode_speedup_b1" in int8
    # perplexity: a bootstrap interval over the test windows and a paired bootstrap of the delta
    for r in (fp32, int8):
        assert r["quality_low"] <= r["quality"] <= r["quality_high"] and "paired bootstrap" in r["delta_test"]
    assert fp32["delta_p"] == 1.0 and fp32["delta_low"] == fp32["delta_high"] == 0.0
    assert int8["delta_low"] <= int8["quality_delta"] <= int8["delta_high"]
    md = write_reports(result, tmp_path)["md"].read_text()
    assert "decode tok/s (batch 1)" in md and "share of bound (batch 2)" in md and "memory bandwidth" in md


def test_decode_timing_is_off_for_encoders_and_when_asked(tmp_path, tiny_task):
    result = run_bench(
        tiny_task,
        resolve_methods("fp32"),
        BenchOptions(tmp_path, progress=False, measure_memory=False, rounds=1),
    )
    assert "decode" not in result["env"] and not any(k.startswith("decode") for k in result["rows"][0])
    with pytest.raises(ConfigError, match="--decode-tokens"):
        run_bench(tiny_task, resolve_methods("fp32"), BenchOptions(tmp_path, decode_tokens=1))


def test_time_generate_counts_exactly_the_new_tokens(tiny_llama):
    import torch

    from modelpress.bench.measure import time_generate

    ids = torch.randint(5, 100, (3, 7))
    t = time_generate(tiny_llama.eval(), {"input_ids": ids}, 4)
    assert t.batch == 3 and t.new_tokens == 4 and t.ttft_s > 0 and t.decode_s > 0
    assert t.tokens_per_s == pytest.approx(3 * 3 / t.decode_s)


def test_eval_examples_subset_is_the_same_for_every_row_and_said(tmp_path, tiny_task, monkeypatch):
    from modelpress.bench import runner

    n = len(tiny_task.splits.test)
    opts = BenchOptions(tmp_path, progress=False, measure_memory=False, rounds=1, eval_examples=n // 2)
    result = run_bench(tiny_task, resolve_methods("fp32,fp16"), opts)
    assert f"the first {n // 2} of {n} test examples" in result["env"]["eval_subset"]
    assert all(
        len(r) == n // 2 for r in [tiny_task.evaluate(tiny_task.load_original(), progress=False).predictions]
    )
    assert (
        "Evaluation: quality of every row on the first" in write_reports(result, tmp_path)["md"].read_text()
    )
    # auto: the full set unless a row's dtype is only emulated on this CPU
    tiny_task.eval_limit = None
    monkeypatch.setattr(runner, "AUTO_EVAL_EXAMPLES", n // 4)
    monkeypatch.setattr(runner, "cpu_flags", lambda: ["avx2"])
    assert runner._eval_subset(tiny_task, resolve_methods("fp32,int8-dynamic"), "auto") is None
    msg = runner._eval_subset(tiny_task, resolve_methods("fp32,bf16"), "auto")
    assert "bf16 (bfloat16)" in msg and tiny_task.eval_limit == n // 4
    monkeypatch.setattr(runner, "cpu_flags", lambda: ["avx2", "avx512_bf16"])
    tiny_task.eval_limit = None
    assert runner._eval_subset(tiny_task, resolve_methods("fp32,bf16"), "auto") is None
    for bad in (0, -3, "some", True):
        with pytest.raises(ConfigError, match="--eval-examples"):
            runner._eval_subset(tiny_task, resolve_methods("fp32"), bad)


def test_memory_worker_also_runs_one_position_of_token_inputs():
    import torch

    from modelpress.bench.worker import memory_inputs

    ids = torch.arange(12).reshape(2, 6)
    feeds = memory_inputs(
        {"input_ids": ids, "attention_mask": torch.ones(2, 6), "pixel_values": torch.ones(2, 3)}
    )
    assert len(feeds) == 2 and feeds[0]["input_ids"] is ids
    assert feeds[1]["input_ids"].tolist() == [[0], [6]] and tuple(feeds[1]["attention_mask"].shape) == (2, 1)
    assert tuple(feeds[1]["pixel_values"].shape) == (2, 3)  # not a token input: as it was
    assert len(memory_inputs({"input_ids": ids[:, :1]})) == 1  # one position already
    assert len(memory_inputs({"pixel_values": torch.ones(1, 3, 8, 8)})) == 1
