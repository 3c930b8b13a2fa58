"""The tokenizer of ``modelpress compress`` (issue 14): a chat template name that would be
written outside the tokenizer's directory is refused before anything is written, and a
tokenizer that fails to save leaves no half-written artifact (an old one stays as it was)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import modelpress as mp
from modelpress.api import MANIFEST_FILE
from modelpress.cli import app
from modelpress.errors import SaveError
from modelpress.models.text import check_chat_templates

runner = CliRunner()


def _tokenizer(chat_template=None):
    """A tiny tokenizer built offline (a two-word vocabulary)."""
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(
            tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")
        ),
        unk_token="[UNK]",
    )
    tok.chat_template = chat_template
    return tok


def _lenet() -> torch.nn.Module:
    from modelpress.models.lenet import LeNet300100

    torch.manual_seed(0)
    return LeNet300100(hidden=(8, 4)).eval()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def _one_error_line(res) -> str:
    text = res.stderr or res.output
    assert res.exit_code == 2, text
    assert "Traceback" not in text and text.count("error:") == 1, text
    return " ".join(text.split())


@pytest.mark.parametrize("name", ["../../evil", "a/b", "/abs", "a\\b", "", "  ", "..", "x..y", "a\x00b", 5])
def test_chat_template_names_must_be_plain_file_names(name):
    tok = _tokenizer({"default": "{{ messages }}", name: "x"})
    with pytest.raises(mp.ConfigError, match=r"names a chat template .* plain file name"):
        check_chat_templates(tok)


def test_plain_chat_templates_pass_and_save_inside_the_directory(tmp_path):
    for templates in (None, "{{ messages }}", {"default": "d", "tool_use": "t", "rag.v2": "r"}):
        tok = _tokenizer(templates)
        check_chat_templates(tok)
        tok.save_pretrained(str(tmp_path / "t"))
    assert (tmp_path / "t" / "additional_chat_templates" / "rag.v2.jinja").read_text() == "r"
    with pytest.raises(mp.ConfigError, match="'tool_use' as a list, not text"):
        check_chat_templates(_tokenizer({"default": "d", "tool_use": ["t"]}))


def test_save_writes_extras_into_the_artifact_before_the_swap(tmp_path):
    tok = _tokenizer({"default": "d", "tool_use": "t"})
    path = mp.save(_lenet(), tmp_path / "a", extras={"tokenizer": lambda d: tok.save_pretrained(str(d))})
    assert (path / "tokenizer" / "tokenizer.json").is_file()
    assert (path / "tokenizer" / "additional_chat_templates" / "tool_use.jinja").is_file()
    assert isinstance(mp.load(path), torch.nn.Module)
    # an artifact with a tokenizer is replaced as a whole (the new one has none)
    mp.save(_lenet(), path)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.safetensors"]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "extras",
    [{"evil": lambda d: None}, {"model.safetensors": lambda d: None}, {"tokenizer": "not a function"}],
)
def test_save_adds_only_known_entries(tmp_path, extras):
    with pytest.raises(mp.ConfigError, match=r"save can add only preprocessing\.json, tokenizer"):
        mp.save(_lenet(), tmp_path / "a", extras=extras)
    assert list(tmp_path.iterdir()) == []


def test_an_extra_that_fails_leaves_no_artifact_and_the_old_one_as_it_was(tmp_path):
    def half_then_fail(d: Path) -> None:
        d.mkdir()
        (d / "tokenizer.json").write_text("{half")
        raise ValueError("Invalid chat template name: '../x'")

    with pytest.raises(SaveError, match=r"cannot write 'tokenizer' into the artifact .* Invalid chat"):
        mp.save(_lenet(), tmp_path / "new", extras={"tokenizer": half_then_fail})
    assert list(tmp_path.iterdir()) == []

    tok = _tokenizer()
    old = mp.save(_lenet(), tmp_path / "old", extras={"tokenizer": lambda d: tok.save_pretrained(str(d))})
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    with pytest.raises(SaveError):
        mp.save(_lenet(), old, extras={"tokenizer": half_then_fail})
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    assert _leftovers(tmp_path) == [] and isinstance(mp.load(old), torch.nn.Module)


def _bad_template_model_dir(tiny_bert_dir: Path) -> Path:
    """A local model directory whose tokenizer_config.json names a chat template '../../evil'."""
    cfg_path = tiny_bert_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = [
        {"name": "default", "template": "{{ messages }}"},
        {"name": "../../evil", "template": "owned"},
    ]
    cfg_path.write_text(json.dumps(cfg))
    return tiny_bert_dir


def test_compress_refuses_an_escaping_chat_template_before_anything_is_written(
    tmp_path, tiny_bert_dir, monkeypatch
):
    import modelpress.api

    def no_work(*a, **k):  # pragma: no cover - reached only if the check is gone
        raise AssertionError("compress ran before the tokenizer was checked")

    monkeypatch.setattr(modelpress.api, "compress", no_work)
    model_dir = _bad_template_model_dir(tiny_bert_dir)
    art = tmp_path / "out" / "art"
    res = runner.invoke(app, ["compress", str(art), "--methods", "fp32", "--model", str(model_dir)])
    msg = _one_error_line(res)
    assert "names a chat template '../../evil'" in msg and "before anything is written" in msg
    assert not art.exists() and not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.rglob("*evil*")]


def test_compress_leaves_no_half_written_artifact_when_the_tokenizer_fails(
    tmp_path, tiny_bert_dir, monkeypatch
):
    from transformers import PreTrainedTokenizerBase

    art = tmp_path / "art"
    cmd = ["compress", str(art), "--methods", "fp32", "--model", str(tiny_bert_dir)]
    assert runner.invoke(app, cmd).exit_code == 0
    before = {p.relative_to(art): p.read_bytes() for p in art.rglob("*") if p.is_file()}
    assert Path("tokenizer/tokenizer.json") in before

    def half_then_fail(self, save_directory, **kwargs):
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        (Path(save_directory) / "tokenizer_config.json").write_text("{half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", half_then_fail)
    msg = _one_error_line(runner.invoke(app, cmd))
    assert "cannot write 'tokenizer' into the artifact" in msg and "No space left on device" in msg
    assert {p.relative_to(art): p.read_bytes() for p in art.rglob("*") if p.is_file()} == before
    fresh = tmp_path / "fresh"
    _one_error_line(runner.invoke(app, ["compress", str(fresh), *cmd[2:]]))
    assert not fresh.exists() and _leftovers(tmp_path) == []
    assert json.loads((art / MANIFEST_FILE).read_text())["format"] == "modelpress"


def test_training_an_original_refuses_such_a_tokenizer_before_training(
    tmp_path, tiny_bert_dir, small_splits, monkeypatch
):
    """``bench`` / ``compress`` of a model without a trained head train it first and save its
    tokenizer with it (in the cache): the tokenizer is checked before minutes of training."""
    import modelpress.models.classification as classification
    from modelpress.models.sources import local_source

    def no_training(*a, **k):  # pragma: no cover - reached only if the check is gone
        raise AssertionError("trained before the tokenizer was checked")

    monkeypatch.setattr(classification, "fit", no_training)
    model_dir = _bad_template_model_dir(tiny_bert_dir)
    task = classification.TextClassificationTask(local_source(str(model_dir)), small_splits)
    with pytest.raises(mp.ConfigError, match=r"names a chat template '\.\./\.\./evil'"):
        task._train_original(tmp_path / "cache", progress=False)
    assert not [p for p in tmp_path.rglob("*evil*")]
