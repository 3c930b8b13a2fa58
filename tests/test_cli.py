import json

import pytest
from typer.testing import CliRunner

import modelpress as mp
from modelpress.api import manifest_digest
from modelpress.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "cmd", [[], ["bench"], ["compress"], ["eval"], ["inspect"], ["methods"], ["export"], ["serve"]]
)
def test_help(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_methods_lists_presets():
    res = runner.invoke(app, ["methods", "--json"])
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert {"fp32", "fp16", "bf16", "int8-dynamic"} <= set(data["presets"])


def _err(res) -> str:
    return " ".join((res.stderr or res.output).split())


def test_bench_unknown_method(tmp_path):
    res = runner.invoke(app, ["bench", "--methods", "fp32,int9", "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown benchmark method 'int9'" in _err(res)
    assert not (tmp_path / "o").exists()


def test_bench_missing_model_dir(tmp_path):
    res = runner.invoke(app, ["bench", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "model directory not found" in _err(res)
    assert not (tmp_path / "o").exists()


def test_bench_unreadable_dataset(tmp_path, tiny_bert_dir):
    bad = tmp_path / "data.csv"
    bad.write_bytes(b"\xff\xfe\x81" * 20)
    res = runner.invoke(
        app, ["bench", "--model", str(tiny_bert_dir), "--data", str(bad), "--output", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "cannot read" in _err(res)


def test_bench_and_compress_on_a_local_model(tmp_path, tiny_bert_dir, small_splits):
    data = tmp_path / "d.jsonl"
    rows = zip(small_splits.train.texts, small_splits.train.labels, strict=True)
    data.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows))
    out = tmp_path / "res"
    res = runner.invoke(
        app,
        [
            "bench",
            "--model",
            str(tiny_bert_dir),
            "--data",
            str(data),
            "--methods",
            "fp32,int8-dynamic",
            "--output",
            str(out),
            "--no-progress",
            "--no-memory",
            "--seq-len",
            "16",
            "--threads",
            "1",
            "--rounds",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "int8-dynamic" in res.output
    assert "round-robin, 2 rounds" in (out / "results.md").read_text()
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.csv", "results.md", "results.png"}
    # a small user dataset: intervals, the within-noise mark (fp32 = the original), the header's warning
    md = (out / "results.md").read_text()
    assert "% acc [" in md and "+0.00 pt (n.s.)" in md and "too small to resolve 1 point" in md
    art = tmp_path / "art"
    res = runner.invoke(
        app,
        [
            "compress",
            str(art),
            "--methods",
            "int8-dynamic",
            "--model",
            str(tiny_bert_dir),
            "--data",
            str(data),
        ],
    )
    assert res.exit_code == 0, res.output
    assert isinstance(mp.load(art), type(mp.load(out / "artifacts" / "fp32")))
    assert (art / "tokenizer" / "tokenizer.json").is_file()
    res = runner.invoke(app, ["inspect", str(art)])
    assert res.exit_code == 0 and "int8_dynamic_linear" in res.output


def test_corrupt_or_unknown_artifacts(tmp_path, tiny_bert):
    path = mp.save(mp.compress(tiny_bert, "int8-dynamic"), tmp_path / "a")
    m = json.loads((path / "manifest.json").read_text())
    m["modules"]["classifier"]["formats"]["weight"]["format"] = "unknown-fmt"
    m["digests"]["manifest"] = manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))
    res = runner.invoke(app, ["inspect", str(path)])
    assert res.exit_code == 0  # inspect only reads the manifest
    res = runner.invoke(app, ["eval", str(path)])
    assert res.exit_code == 2 and "unknown tensor format 'unknown-fmt'" in _err(res)
    (path / "manifest.json").write_text("{trunc")
    res = runner.invoke(app, ["inspect", str(path)])
    assert res.exit_code == 2 and "corrupt or truncated" in _err(res)


def _one_error_line(res) -> str:
    """Bad input: exit code 2 and one ``error:`` line, no traceback."""
    text = res.stderr or res.output
    assert res.exit_code == 2, text
    assert "Traceback" not in text and text.count("error:") == 1, text
    return " ".join(text.split())


def _sealed_edit(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    m["digests"]["manifest"] = manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_bad_input_is_one_error_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    from modelpress.models.lenet import LeNet300100

    path = mp.save(LeNet300100(hidden=(8, 4)), tmp_path / "a")
    assert "unknown device 'nope'" in _one_error_line(
        runner.invoke(app, ["eval", str(path), "--device", "nope"])
    )
    res = runner.invoke(app, ["--debug", "eval", str(path), "--device", "nope"])
    assert res.exit_code == 2 and "Traceback" in (res.stderr or res.output)

    for edit, message in [
        (lambda m: m.update(recipe=[{"method": "no-such-method"}]), "recipe cannot be read"),
        (lambda m: m.update(base=["BertModel"]), "'base' must be an object"),
        (lambda m: m["modules"].update(fc1={"version": 1}), "'modules.fc1.class' is missing"),
    ]:
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        mp.save(mp.compress(LeNet300100(hidden=(8, 4)), "int8-dynamic"), bad)
        _sealed_edit(bad, edit)
        assert message in _one_error_line(runner.invoke(app, ["inspect", str(bad)]))

    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    msg = _one_error_line(runner.invoke(app, ["compress", ".", "--methods", "fp32"]))
    assert "current directory" in msg and (work / "keep.txt").read_text() == "mine"
    msg = _one_error_line(runner.invoke(app, ["compress", "/proc/modelpress-x", "--methods", "fp32"]))
    assert "cannot write an artifact at /proc/modelpress-x" in msg
    msg = _one_error_line(runner.invoke(app, ["bench", "--model", "models/nope", "--methods", "fp32"]))
    assert "model 'models/nope' not found" in msg


def test_serve_bad_options_are_one_error_line(tmp_path):
    res = runner.invoke(app, ["serve", str(tmp_path / "nope"), "--max-batch-size", "0"])
    assert res.exit_code == 2 and "max_batch_size must be" in res.output
    res = runner.invoke(app, ["serve", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "error:" in res.output
