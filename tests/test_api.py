import json
import os

import pytest
import torch

import modelpress as mp
from modelpress.api import MANIFEST_FILE, WEIGHTS_FILE, manifest_digest

METHODS = ["fp32", "fp16", "bf16", "int8-dynamic"]


def _bert_inputs():
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(0, 1000, (2, 9), generator=g),
        "attention_mask": torch.ones(2, 9, dtype=torch.long),
    }


@pytest.mark.parametrize("method", METHODS)
def test_bert_save_load_equals_in_memory(tmp_path, tiny_bert, method):
    model = mp.compress(tiny_bert, method)
    path = mp.save(model, tmp_path / method)
    loaded = mp.load(path)
    x = _bert_inputs()
    with torch.no_grad():
        assert torch.equal(model(**x).logits, loaded(**x).logits)
    # the reported size is the bytes of the files on disk
    on_disk = sum(f.stat().st_size for f in path.iterdir())
    assert mp.artifact_bytes(path) == on_disk
    assert mp.recipe_of(loaded) == mp.recipe_of(model)
    assert sorted(os.listdir(path)) == [MANIFEST_FILE, WEIGHTS_FILE]


@pytest.mark.parametrize("method", METHODS)
def test_llama_save_load_equals_in_memory(tmp_path, tiny_llama, method):
    model = mp.compress(tiny_llama, method)
    path = mp.save(model, tmp_path / method)
    loaded = mp.load(path)
    ids = torch.randint(0, 30522, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    # tied LM head: stored once, and the loaded model shares the tensor again
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert any(k.startswith("lm_head.weight") for k in manifest["aliases"])
    lm, emb = loaded.lm_head.weight, loaded.model.embed_tokens.weight
    if method == "int8-dynamic":
        assert lm.qdata.data_ptr() == emb.qdata.data_ptr()
    else:
        assert lm is emb


def test_compress_leaves_input_untouched_and_sizes_shrink(tmp_path, tiny_bert):
    before = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    sizes = {m: mp.artifact_bytes(mp.save(mp.compress(tiny_bert, m), tmp_path / m)) for m in METHODS}
    assert all(torch.equal(before[k], v) for k, v in tiny_bert.state_dict().items())
    assert sizes["fp16"] < 0.55 * sizes["fp32"] and sizes["bf16"] < 0.55 * sizes["fp32"]
    assert sizes["int8-dynamic"] < 0.30 * sizes["fp32"]


def test_int8_artifact_really_holds_int8(tmp_path, tiny_bert):
    from safetensors import safe_open

    path = mp.save(mp.compress(tiny_bert, "int8-dynamic"), tmp_path / "q")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    q_key = "bert.encoder.layer.0.attention.self.query.weight.qdata"
    assert manifest["tensors"][q_key]["dtype"] == "int8"
    entry = manifest["modules"]["bert.encoder.layer.0.attention.self.query"]
    assert entry["class"] == "int8_dynamic_linear" and entry["formats"]["weight"]["format"] == "affine"
    assert manifest["recipe"] == [
        {"method": "int8-dynamic", "include": ["*"], "exclude": [], "embeddings": True}
    ]
    with safe_open(str(path / WEIGHTS_FILE), "pt") as f:
        assert f.get_tensor(q_key).dtype == torch.int8
        assert f.get_tensor("bert.embeddings.word_embeddings.weight.qdata").dtype == torch.int8


def test_recipe_composes_across_compress_calls(tiny_bert):
    m = mp.compress(mp.compress(tiny_bert, "fp16"), mp.CastConfig("float32"))
    assert [c.name for c in mp.recipe_of(m)] == ["cast", "cast"]


def test_save_is_atomic_and_refuses_foreign_dirs(tmp_path, tiny_bert):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(mp.ModelpressError, match="refusing to overwrite"):
        mp.save(tiny_bert, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    # an existing artifact is replaced; no temp dirs are left behind
    p = mp.save(tiny_bert, tmp_path / "a")
    mp.save(mp.compress(tiny_bert, "fp16"), p)
    assert mp.load(p).bert.embeddings.word_embeddings.weight.dtype == torch.float16
    assert [x.name for x in tmp_path.iterdir() if ".tmp-" in x.name or ".old-" in x.name] == []


def test_save_failure_leaves_nothing(tmp_path, tiny_bert, monkeypatch):
    import modelpress.api as api

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(api, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        mp.save(tiny_bert, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_save_any_module_and_refuse_what_is_none(tmp_path):
    # any nn.Module saves (its class path as information); it loads into a fresh instance
    lin = torch.nn.Linear(2, 2)
    mp.save(lin, tmp_path / "lin")
    with pytest.raises(mp.ArtifactError, match=r"load\(path, model=Linear\(\.\.\.\)\)"):
        mp.load(tmp_path / "lin")
    assert torch.equal(mp.load(tmp_path / "lin", model=torch.nn.Linear(2, 2)).weight, lin.weight)
    with pytest.raises(mp.ModelpressError, match=r"takes a torch nn\.Module"):
        mp.save("not a model", tmp_path / "str")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lin"]


@pytest.fixture
def artifact(tmp_path, tiny_bert):
    return mp.save(mp.compress(tiny_bert, "int8-dynamic"), tmp_path / "art")


def _edit_manifest(path, fn):
    """Edit the manifest on purpose and record its digest again (what reaches the checks
    behind the integrity check)."""
    m = json.loads((path / MANIFEST_FILE).read_text())
    fn(m)
    m["digests"]["manifest"] = manifest_digest(m)
    (path / MANIFEST_FILE).write_text(json.dumps(m))


def test_load_missing_dir(tmp_path):
    with pytest.raises(mp.ArtifactError, match="no modelpress artifact"):
        mp.load(tmp_path / "nope")


def test_load_truncated_weights(artifact):
    w = artifact / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(mp.ArtifactError, match="corrupt or truncated"):
        mp.load(artifact)


def test_load_corrupt_manifest(artifact):
    (artifact / MANIFEST_FILE).write_text('{"format": "modelpress", "vers')
    with pytest.raises(mp.ArtifactError, match="corrupt or truncated"):
        mp.load(artifact)


def test_load_unknown_format_name(artifact):
    def f(m):
        m["modules"]["bert.encoder.layer.0.attention.self.query"]["formats"]["weight"]["format"] = (
            "zstd-magic"
        )

    _edit_manifest(artifact, f)
    with pytest.raises(mp.ArtifactError, match="unknown tensor format 'zstd-magic'"):
        mp.load(artifact)


def test_load_unknown_module_and_model_class(artifact):
    def f(m):
        m["modules"]["bert.pooler.dense"]["class"] = "evil_module"

    _edit_manifest(artifact, f)
    with pytest.raises(mp.ArtifactError, match="unknown compressed module 'evil_module'"):
        mp.load(artifact)

    def g(m):
        m["modules"]["bert.pooler.dense"]["class"] = "int8_dynamic_linear"
        m["base"]["class"] = "os.system"

    _edit_manifest(artifact, g)
    with pytest.raises(mp.ArtifactError, match="unknown transformers model class"):
        mp.load(artifact)


def test_load_shape_or_dtype_mismatch(artifact):
    key = "bert.encoder.layer.0.attention.self.query.weight.qdata"

    def f(m):
        m["tensors"][key]["shape"] = [1, 2]

    _edit_manifest(artifact, f)
    with pytest.raises(mp.ArtifactError, match=r"in the manifest"):
        mp.load(artifact)

    def g(m):
        m["tensors"][key]["shape"] = [32, 32]
        m["tensors"][key]["dtype"] = "float32"

    _edit_manifest(artifact, g)
    with pytest.raises(mp.ArtifactError, match=r"is int8\[32, 32\] in model.safetensors but float32"):
        mp.load(artifact)


def test_load_version_mismatch(artifact):
    _edit_manifest(artifact, lambda m: m.update(version=99))
    with pytest.raises(mp.ArtifactError, match="format version 99"):
        mp.load(artifact)
