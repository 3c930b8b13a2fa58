import json

import pytest

from modelpress.api import artifact_files
from modelpress.bench.measure import time_callable
from modelpress.bench.report import write_reports
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
        tiny_task, resolve_methods("fp32,int8-dynamic"), BenchOptions(tmp_path, progress=False)
    )
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["fp32", "int8-dynamic"]
    for r in rows.values():
        assert set(ROW_KEYS) <= set(r)
        files = artifact_files(tmp_path / "artifacts" / r["method"])
        assert r["size_bytes"] == sum(f.stat().st_size for f in files)
        assert r["bits_per_weight"] == pytest.approx(8 * r["size_bytes"] / r["params"])
        assert r["cpu_latency_ms_p50"] > 0 and r["cpu_latency_ms_p95"] >= r["cpu_latency_ms_p50"]
        assert r["cpu_throughput"] > 0 and r["peak_rss_mb"] > r["baseline_rss_mb"] > 0
        assert r["gpu_latency_ms_p50"] is None and r["peak_vram_mb"] is None  # no CUDA here
    assert rows["fp32"]["agreement"] == 1.0 and rows["fp32"]["quality_delta"] == 0.0
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
