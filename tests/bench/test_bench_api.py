"""``modelpress.bench`` from Python on a user's own module and DataLoader (issue 19, item 5):
the CLI's rows, measured on the loaded artifacts in this process, and the same reports."""

from __future__ import annotations

import json

import pytest
import torch

import modelpress as mp
from modelpress.api import artifact_bytes
from modelpress.bench import runner
from modelpress.bench.runner import ROW_KEYS
from modelpress.bench.user import BenchResult
from user_models import PReLUNet, TinyEncoder, accuracy_on, image_loader, token_loader


@pytest.fixture
def net() -> PReLUNet:
    torch.manual_seed(0)
    return PReLUNet().eval()


def test_bench_a_plain_cnn_writes_the_clis_rows_and_reports(tmp_path, net):
    loader = image_loader()
    result = mp.bench(net, "fp32,int8-dynamic", data=loader, output=tmp_path, rounds=1, progress=False)
    assert isinstance(result, BenchResult)
    assert [r["method"] for r in result.rows] == ["fp32", "int8-dynamic"]
    for r in result.rows:
        assert set(ROW_KEYS) <= set(r)
        assert r["size_bytes"] == artifact_bytes(tmp_path / "artifacts" / r["method"])  # bytes of the files
        assert r["metric"] == "accuracy" and 0 <= r["quality"] <= 1
        assert r["cpu_latency_ms_p50"] > 0 and r["peak_rss_mb"] is None  # no fresh process for a user class
    fp32 = result["fp32"]
    assert fp32["quality"] == pytest.approx(accuracy_on(loader)(net)) and fp32["agreement"] == 1.0
    assert result["int8-dynamic"]["size_bytes"] < fp32["size_bytes"]
    assert "fresh process cannot rebuild" in result.env["memory_skipped"]
    saved = json.loads(result.reports["json"].read_text())
    assert [r["method"] for r in saved["rows"]] == [r["method"] for r in result.rows]
    assert all(p.is_file() for p in result.reports.values())
    assert "inputs of shape [3, 12, 12]" in result.reports["md"].read_text()


def test_bench_a_small_transformer_with_eval_fn_and_no_output(tmp_path, monkeypatch):
    torch.manual_seed(0)
    enc = TinyEncoder().eval()
    loader = token_loader()
    calls = []

    def accuracy(model):
        calls.append(1)
        return accuracy_on(loader)(model)

    monkeypatch.chdir(tmp_path)
    example = next(iter(loader))[0][:2]
    result = mp.bench(
        enc,
        ["fp32", "gptq-4bit"],
        data=loader,
        eval_fn=accuracy,
        example_inputs=example,
        rounds=1,
        progress=False,
    )
    assert [r["method"] for r in result.rows] == ["fp32", "gptq-4bit"]
    assert result.rows[0]["metric"] == "accuracy" and len(calls) == 3  # original + 2 loaded rows
    assert result.reports == {} and not list(tmp_path.iterdir())  # artifacts in a removed temp dir


def test_bench_takes_configs_and_recipes_by_label(net):
    from modelpress.methods.structured.channels import PruneChannelsConfig

    result = mp.bench(
        net,
        {"half-channels": PruneChannelsConfig(fraction=0.5), "int8": "int8-dynamic"},
        data=image_loader(),
        rounds=1,
        measure_memory=False,
        progress=False,
    )
    assert [r["method"] for r in result.rows] == ["half-channels", "int8"]
    assert result["half-channels"]["recipe"][0]["method"] == "prune-channels"


def test_the_package_stays_a_package():
    assert callable(mp.bench) and mp.bench.runner is runner  # modelpress.bench(...) and its modules


def test_bench_bad_input_gets_one_clear_error(net):
    unlabeled = image_loader(labels=False)
    with pytest.raises(mp.ConfigError, match="bench needs a quality metric: pass eval_fn"):
        mp.bench(net, "fp32", data=unlabeled, progress=False)
    with pytest.raises(mp.ConfigError, match=r"bench takes a torch nn\.Module"):
        mp.bench("net", "fp32", data=image_loader(), progress=False)  # type: ignore[arg-type]
    with pytest.raises(mp.ConfigError, match="unknown benchmark method 'no-such-method'"):
        mp.bench(net, "no-such-method", data=image_loader(), progress=False)
    with pytest.raises(mp.ConfigError, match="bench methods are names"):
        mp.bench(net, [42], data=image_loader(), progress=False)
    with pytest.raises(mp.ConfigError, match="yielded no batches"):
        mp.bench(net, "fp32", data=[], progress=False)
    with pytest.raises(mp.ConfigError, match="example_inputs must be a tensor"):
        mp.bench(net, "fp32", data=image_loader(), example_inputs="x", progress=False)
    with pytest.raises(mp.ConfigError, match="rounds must be an integer"):
        mp.bench(net, "fp32", data=image_loader(), rounds=0, progress=False)


def test_dataframe_needs_pandas():
    result = BenchResult([{"method": "fp32", "size_bytes": 1}], {})
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(mp.ModelpressError, match="needs pandas"):
            result.dataframe()
    else:
        assert result.dataframe().loc["fp32", "size_bytes"] == 1
