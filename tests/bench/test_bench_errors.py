"""Bad input to ``bench`` (issue 14): one ``ModelpressError`` from the Python API, one
``error:`` line (exit code 2, no traceback) from the CLI, each before any model is loaded,
trained or evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from modelpress.bench.report import write_reports
from modelpress.bench.runner import BenchOptions, run_bench
from modelpress.cli import app
from modelpress.errors import ConfigError, DataError, ModelpressError, SaveError
from modelpress.models.builtin import resolve_model
from modelpress.models.causal_lm import CausalLMTask
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import local_source, minilm_source
from modelpress.recipe import Recipe

runner = CliRunner()


@pytest.fixture
def no_model_work(monkeypatch):
    """The case must fail before a model is loaded (the default one trains for minutes)."""

    def refuse(self, *a, **k):  # pragma: no cover - reached only if a check is gone
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(TextClassificationTask, "load_original", refuse)
    monkeypatch.setattr(CausalLMTask, "load_original", refuse)
    monkeypatch.setattr(CausalLMTask, "_dir", refuse)


def _one_error_line(res) -> str:
    text = res.stderr or res.output
    assert res.exit_code == 2, text
    assert "Traceback" not in text and text.count("error:") == 1, text
    return " ".join(text.split())


def _files(tmp: Path) -> dict[str, str]:
    """Bad inputs the cases below name by key."""
    recipes = {
        "not-a-list.yaml": "methods: {a: 1}\n",
        "entries.yaml": "methods: [1, 2]\n",
        "unknown-field.yaml": "- method: int8-dynamic\n  nope: 1\n",
        "bad-value.yaml": "- method: cast\n  dtype: float99\n",
        "bad-number.yaml": "- method: kmeans\n  bits: 0\n",
        "not-yaml.yaml": ": : :\n",
        "deep.yaml": "[" * 2000,
    }
    for name, text in recipes.items():
        (tmp / name).write_text(text)
    (tmp / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81")
    (tmp / "dir.yaml").mkdir()
    (tmp / "a-file").write_text("x")
    for name, cfg in {"cfg-list": "[]", "cfg-bad-json": "{", "cfg-archs": '{"architectures": [1]}'}.items():
        (tmp / name).mkdir()
        (tmp / name / "config.json").write_text(cfg)
    foreign = tmp / "out-foreign" / "artifacts" / "fp32"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("not an artifact")
    return {p.name: str(p) for p in tmp.iterdir()}


CLI_CASES = [
    # unknown / missing models
    (["--model", "nope-model"], "model directory not found: nope-model"),
    (["--model", "{tmp}/missing"], "model directory not found"),
    (["--model", "models/nope"], "model 'models/nope' not found"),
    (["--model", "{cfg-list}"], "config.json is not a JSON object"),
    (["--model", "{cfg-bad-json}"], "config.json is not valid JSON"),
    (["--model", "{cfg-archs}"], "cannot tell the task"),
    (["--model", "{a-file}"], "model directory not found"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "causal-lm"], "runs the text-classification task, not causal-lm"),
    (["--data", "{tmp}/d.csv"], "data file not found"),  # the built-in MiniLM takes --data
    # methods and recipe files
    (["--methods", "fp32,int9"], "unknown benchmark method 'int9'"),
    (["--methods", ","], "no methods given"),
    (["--methods", "fp32,fp32"], "method names must be unique"),
    (["--methods", "{not-a-list.yaml}"], "a recipe is a YAML list of methods"),
    (["--methods", "{entries.yaml}"], "each recipe entry needs a 'method' key"),
    (["--methods", "{unknown-field.yaml}"], "unknown field(s) nope for method 'int8-dynamic'"),
    (["--methods", "{bad-value.yaml}"], "cast: dtype must be one of"),
    (["--methods", "{bad-number.yaml}"], "kmeans: bits must be"),
    (["--methods", "{not-yaml.yaml}"], "recipe is not valid YAML"),
    (["--methods", "{deep.yaml}"], "nested too deeply"),
    (["--methods", "{binary.yaml}"], "is not UTF-8 text"),
    (["--methods", "{dir.yaml}"], "recipe file not found"),
    (["--methods", "{tmp}/missing.yaml"], "recipe file not found"),
    # devices and counts
    (["--device", "nope"], "--device must be auto, cpu or cuda, got 'nope'"),
    (["--device", "cuda:0"], "--device must be auto, cpu or cuda"),
    (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["--threads", "-2"], "--threads must be an integer >= 1, got -2"),
    (["--seq-len", "0"], "--seq-len must be an integer >= 1, got 0"),
    (["--seq-len", "-5"], "--seq-len must be an integer >= 1, got -5"),
    (["--seq-len", "100000"], "--seq-len 100000 is more than all-MiniLM-L6-v2 takes"),
    (["--model", "smollm2", "--eval-tokens", "0"], "--eval-tokens must be an integer >= 1, got 0"),
    (["--model", "smollm2", "--eval-tokens", "300"], "--eval-tokens (at least one window of 512"),
    # where the results go
    (["--output", "/proc/modelpress-x"], "cannot write the benchmark results to /proc/modelpress-x"),
    (["--output", "{a-file}"], "Not a directory"),
    (["--output", "{out-foreign}", "--methods", "fp32"], "refusing to overwrite"),
]
if not torch.cuda.is_available():
    CLI_CASES.append((["--device", "cuda"], "torch sees no CUDA device"))


@pytest.mark.usefixtures("no_model_work")
@pytest.mark.parametrize(
    ("args", "message"), CLI_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_bad_bench_input_is_one_error_line(tmp_path, args, message):
    files = {"tmp": str(tmp_path), **_files(tmp_path)}
    for key, value in files.items():
        args = [a.replace("{" + key + "}", value) for a in args]
    out = [] if "--output" in args else ["--output", str(tmp_path / "out")]
    msg = _one_error_line(runner.invoke(app, ["bench", "--no-progress", *args, *out]))
    assert message in msg
    assert not (tmp_path / "out").exists()  # every check comes before the output is made


def test_bench_models_transformers_cannot_read_are_one_data_error(tmp_path, monkeypatch):
    """A config transformers refuses, a directory without weights, a hub id without a network:
    one ``error:`` line naming the model (the loader's own exception under --debug)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    head = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "1": "b"}}
    for name, cfg in {
        "unknown-type": {**head, "model_type": "nope"},
        "no-weights": {**head, "model_type": "bert"},
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    for model, message in [
        (str(tmp_path / "unknown-type"), f"cannot load the model at {tmp_path / 'unknown-type'}"),
        (str(tmp_path / "no-weights"), "no file named model.safetensors"),
        ("some-user/some-model", "cannot load the model at some-user/some-model"),
    ]:
        args = ["bench", "--model", model, "--methods", "fp32", "--task", "text-classification"]
        msg = _one_error_line(runner.invoke(app, [*args, "--no-progress", "--output", str(tmp_path / "o")]))
        assert message in msg
    res = runner.invoke(app, ["--debug", *args, "--no-progress", "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "Traceback" in (res.stderr or res.output)


class _Adapter(TextClassificationTask):
    """A text task on MiniLM's config whose model must never be loaded."""

    def __init__(self, small_splits, **kw) -> None:
        super().__init__(minilm_source(), small_splits, **kw)


@pytest.mark.usefixtures("no_model_work")
@pytest.mark.parametrize(
    ("methods", "options", "error", "message"),
    [
        ([], {}, ConfigError, "no methods given"),
        (["fp32", "fp32"], {}, ConfigError, "unique"),
        (["fp32"], {"device": "nope"}, ConfigError, "--device must be"),
        (["fp32"], {"device": None}, ConfigError, "--device must be"),
        (["fp32"], {"threads": 0}, ConfigError, "--threads must be an integer >= 1, got 0"),
        (["fp32"], {"threads": -1}, ConfigError, "--threads must be"),
        (["fp32"], {"threads": 1.5}, ConfigError, "--threads must be"),
        (["fp32"], {"throughput_batch": 0}, ConfigError, "throughput_batch must be an integer >= 1, got 0"),
        (["fp32"], {"output": None}, ConfigError, "output must be a directory path"),
        (["fp32"], {"output": "/proc/modelpress-x"}, SaveError, "cannot write the benchmark results"),
    ],
)
def test_run_bench_bad_options_are_one_modelpress_error(
    tmp_path, small_splits, methods, options, error, message
):
    recipes = [(m, Recipe()) for m in methods]
    opts = BenchOptions(**{"output": tmp_path / "out", "progress": False, **options})
    with pytest.raises(error, match=message.replace("(", r"\(")):
        run_bench(_Adapter(small_splits), recipes, opts)


@pytest.mark.usefixtures("no_model_work")
@pytest.mark.parametrize("label", ["", ".", "..", "a/b"])
def test_run_bench_refuses_method_names_that_cannot_name_a_directory(tmp_path, small_splits, label):
    with pytest.raises(ConfigError, match="cannot name an artifact directory"):
        run_bench(_Adapter(small_splits), [(label, Recipe())], BenchOptions(tmp_path))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: resolve_model("minilm", seq_len=0), "--seq-len must be an integer >= 1, got 0"),
        (lambda s: resolve_model("minilm", seq_len=True), "--seq-len must be"),
        (lambda s: resolve_model("smollm2", eval_tokens=-1), "--eval-tokens must be"),
        (lambda s: _Adapter(s, seq_len=-1), "--seq-len must be"),
        (lambda s: _Adapter(s, eval_batch_size=0), "evaluation batch size must be"),
        (lambda s: _Adapter(s, seq_len=513), "max_position_embeddings 512"),
        (lambda s: CausalLMTask(local_source("u/m"), "text", eval_tokens=100), "--eval-tokens"),
        (lambda s: CausalLMTask(local_source("u/m"), "text", window=1), "evaluation window"),
        (lambda s: CausalLMTask(local_source("u/m"), "text", eval_batch_size=0), "batch size"),
    ],
)
def test_bad_counts_are_config_errors(small_splits, call, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        call(small_splits)


def test_too_little_text_for_the_timing_batch_is_a_data_error():
    task = CausalLMTask(local_source("u/m"), "text", eval_tokens=512, seq_len=64)
    task._tokens = torch.arange(2000)
    assert task.example_inputs(1)["input_ids"].shape == (1, 64)
    with pytest.raises(DataError, match="too little text for 32 examples of --seq-len 64"):
        task.example_inputs(32)


def test_write_reports_to_an_unwritable_place_is_a_save_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SaveError, match="cannot write the benchmark reports"):
        write_reports({"env": {}, "rows": []}, tmp_path / "f" / "sub")
    assert issubclass(SaveError, ModelpressError)
