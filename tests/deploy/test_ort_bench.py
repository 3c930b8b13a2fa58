"""``modelpress bench --backend torch,onnxruntime``: ONNX Runtime rows measured like the torch
rows in the same run, with ONNX Runtime's own quantize_dynamic as a peer."""

import pytest

from modelpress.bench.report import write_reports
from modelpress.bench.runner import BenchOptions, run_bench
from modelpress.errors import ConfigError
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.recipe import resolve_methods


@pytest.fixture
def tiny_task(tiny_bert_dir, small_splits):
    return TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)


def test_bench_onnxruntime_backend_rows(tmp_path, tiny_task):
    opts = BenchOptions(tmp_path, progress=False, rounds=1, backends=("torch", "onnxruntime"))
    result = run_bench(tiny_task, resolve_methods("fp32,int8-dynamic,cluster-4bit"), opts)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == [
        "fp32",
        "fp32@ort",
        "int8-dynamic",
        "int8-dynamic@ort",
        "cluster-4bit",
        "ort-quantize-dynamic",
    ]
    assert any("no ONNX Runtime row" in n and "codebook" in n for n in rows["cluster-4bit"]["notes"])
    for name in ("fp32@ort", "int8-dynamic@ort", "ort-quantize-dynamic"):
        r = rows[name]
        assert r["backend"] == "onnxruntime" and r["cpu_latency_ms_p50"] > 0 and r["cpu_throughput"] > 0
        assert r["peak_rss_mb"] > r["baseline_rss_mb"] > 0 and 0 <= r["quality"] <= 1
        assert r["agreement"] > 0.85 and "cpu_speedup" in r  # compared with torch fp32
        assert r["quality_low"] <= r["quality"] <= r["quality_high"] and 0 <= r["delta_p"] <= 1  # same stats
    assert rows["fp32@ort"]["agreement"] == 1.0
    assert rows["int8-dynamic@ort"]["size_bytes"] < 0.4 * rows["fp32@ort"]["size_bytes"]
    assert rows["int8-dynamic@ort"]["export_check"]["rel_error"] < 0.05
    assert "DynamicQuantizeMatMul" in rows["int8-dynamic@ort"]["kernels"]
    assert result["env"]["onnxruntime"]
    md = write_reports(result, tmp_path)["md"].read_text()
    assert "| int8-dynamic@ort |" in md and "onnxruntime " in md and "ort-quantize-dynamic" in md


def test_bench_backend_option_errors(tmp_path, tiny_task):
    for bad, msg in ((("onnxruntime",), "must include torch"), (("torch", "tvm"), "comma-separated list")):
        with pytest.raises(ConfigError, match=msg):
            run_bench(tiny_task, resolve_methods("fp32"), BenchOptions(tmp_path, backends=bad))
