"""The manifest's ``structure`` entry: structurally changed models save and load; only
whitelisted classes, arguments and int attributes are accepted."""

from __future__ import annotations

import json

import pytest
import torch

import modelpress as mp
from modelpress.api import MANIFEST_FILE, manifest_digest
from modelpress.errors import ArtifactError
from modelpress.models.architectures import apply_structure, build_base, describe_base, describe_structure
from modelpress.models.lenet import LeNet5


def _ids():
    return torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(1))


def test_unchanged_models_record_no_structure(tmp_path, tiny_bert):
    path = mp.save(tiny_bert, tmp_path / "a")
    assert json.loads((path / MANIFEST_FILE).read_text())["structure"] == {"modules": {}, "attributes": {}}


def _shrunk_bert(tiny_bert):
    """Head 1 of layer 0 removed by hand (BERT heads of 16): the rewrite prune-heads does."""
    from torch import nn

    model = tiny_bert
    sa = model.bert.encoder.layer[0].attention.self
    out = model.bert.encoder.layer[0].attention.output.dense
    for p in ("query", "key", "value"):
        old = getattr(sa, p)
        new = nn.Linear(32, 16)
        with torch.no_grad():
            new.weight.copy_(old.weight[:16])
            new.bias.copy_(old.bias[:16])
        setattr(sa, p, new)
    new_out = nn.Linear(16, 32)
    with torch.no_grad():
        new_out.weight.copy_(out.weight[:, :16])
        new_out.bias.copy_(out.bias)
    model.bert.encoder.layer[0].attention.output.dense = new_out
    sa.num_attention_heads, sa.all_head_size = 1, 16
    return model


def test_structure_entry_rebuilds_a_hand_shrunk_model(tmp_path, tiny_bert):
    model = _shrunk_bert(tiny_bert)
    structure = describe_structure(model)
    assert structure["attributes"] == {
        "bert.encoder.layer.0.attention.self": {"all_head_size": 16, "num_attention_heads": 1}
    }
    assert structure["modules"]["bert.encoder.layer.0.attention.output.dense"] == {
        "class": "Linear",
        "args": {"in_features": 16, "out_features": 32, "bias": True},
    }
    assert len(structure["modules"]) == 4
    base = build_base(describe_base(model))
    apply_structure(base, structure)
    assert base.bert.encoder.layer[0].attention.self.query.weight.shape == (16, 32)
    assert base.bert.encoder.layer[0].attention.self.query.weight.device.type == "meta"
    loaded = mp.load(mp.save(model, tmp_path / "s"))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=_ids()).logits, model(input_ids=_ids()).logits)


def test_artifacts_without_a_structure_entry_still_load(tmp_path, tiny_bert):
    path = mp.save(tiny_bert, tmp_path / "old")
    mpath = path / MANIFEST_FILE
    manifest = json.loads(mpath.read_text())
    del manifest["structure"], manifest["digests"]  # as an older version wrote it
    mpath.write_text(json.dumps(manifest))
    with torch.no_grad():
        assert torch.equal(mp.load(path)(input_ids=_ids()).logits, tiny_bert(input_ids=_ids()).logits)


def _tamper(path, fn):
    mpath = path / MANIFEST_FILE
    manifest = json.loads(mpath.read_text())
    fn(manifest["structure"])
    manifest["digests"]["manifest"] = manifest_digest(manifest)  # edited on purpose
    mpath.write_text(json.dumps(manifest))


def _saved_shrunk(tmp_path, tiny_bert, name):
    return mp.save(_shrunk_bert(tiny_bert), tmp_path / name)


Q = "bert.encoder.layer.0.attention.self.query"
SA = "bert.encoder.layer.0.attention.self"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda s: s["modules"][Q].update({"class": "Sequential"}), "unsupported structure class"),
        (lambda s: s["modules"][Q].update({"class": "Conv2d"}), "arguments"),
        (lambda s: s["modules"][Q]["args"].update({"in_features": "32"}), "bad Linear argument"),
        (lambda s: s["modules"][Q]["args"].update({"in_features": -1}), "bad Linear argument"),
        (lambda s: s["modules"][Q]["args"].update({"device": "cuda"}), "expected"),
        (lambda s: s["modules"].update({"bert.nothing.here": s["modules"][Q]}), "does not have"),
        (lambda s: s["modules"].update({"bert.pooler.activation": s["modules"][Q]}), "base model has a Tanh"),
        (lambda s: s["attributes"][SA].update({"forward": 1}), "does not accept"),
        (lambda s: s["attributes"][SA].update({"num_attention_heads": "1"}), "must be an integer"),
        (lambda s: s["attributes"][SA].update({"num_attention_heads": True}), "must be an integer"),
        (lambda s: s.update({"code": "import os"}), "malformed"),
    ],
)
def test_bad_structure_entries_fail_with_one_sentence(tmp_path, tiny_bert, tamper, message):
    path = _saved_shrunk(tmp_path, tiny_bert, "bad")
    _tamper(path, tamper)
    with pytest.raises(ArtifactError, match=message):
        mp.load(path)


def test_structure_that_does_not_fit_the_weights_is_refused(tmp_path, tiny_bert):
    path = _saved_shrunk(tmp_path, tiny_bert, "misfit")
    _tamper(path, lambda s: s["modules"][Q]["args"].update({"out_features": 8}))
    with pytest.raises(ArtifactError, match="does not fit its base model"):
        mp.load(path)


def test_conv_and_linear_dims_of_a_registered_architecture(tmp_path):
    from torch import nn

    torch.manual_seed(0)
    net = LeNet5().eval()
    net.conv2 = nn.Conv2d(20, 30, 5)
    net.fc1 = nn.Linear(480, 500)
    structure = describe_structure(net)
    assert structure["modules"]["conv2"] == {
        "class": "Conv2d",
        "args": {
            "in_channels": 20,
            "out_channels": 30,
            "kernel_size": [5, 5],
            "stride": [1, 1],
            "padding": [0, 0],
            "dilation": [1, 1],
            "groups": 1,
            "bias": True,
            "padding_mode": "zeros",
        },
    }
    loaded = mp.load(mp.save(net, tmp_path / "n"))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


# -- low-rank factorization: a LowRankLinear where the base has a Linear ---------------------


def _lowrank(model):
    from modelpress.methods.lowrank import LowRankConfig

    return mp.compress(model, LowRankConfig(reduction=0.2), progress=False)


def test_lowrank_layers_are_recorded_with_their_rank(tiny_bert):
    structure = describe_structure(_lowrank(tiny_bert))
    assert structure["modules"][Q] == {
        "class": "LowRankLinear",
        "args": {"in_features": 32, "rank": 12, "out_features": 32, "bias": True},
    }
    assert not any(n.endswith((".down", ".up")) for n in structure["modules"])
    assert structure["attributes"] == {}


@pytest.mark.parametrize("then", [None, "int8-dynamic", "int4-g128"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_lowrank_then_quantized_saves_and_loads_equal(tmp_path, tiny_bert, tiny_llama, arch, then):
    from modelpress.models.lowrank import LowRankLinear

    model = _lowrank(tiny_bert if arch == "bert" else tiny_llama)
    if then is not None:
        model = mp.compress(model, then, progress=False)
        assert type(model.get_submodule(_first_lowrank(model) + ".down")).__name__ != "Linear"
    loaded = mp.load(mp.save(model, tmp_path / "lr"))
    assert isinstance(loaded.get_submodule(_first_lowrank(model)), LowRankLinear)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=_ids()).logits, model(input_ids=_ids()).logits)
    assert mp.recipe_of(loaded) == mp.recipe_of(model)


def _first_lowrank(model):
    from modelpress.models.lowrank import LowRankLinear

    return next(n for n, m in model.named_modules() if isinstance(m, LowRankLinear))


def test_pruned_then_lowrank_saves_and_loads_equal(tmp_path, tiny_bert):
    model = _lowrank(_shrunk_bert(tiny_bert))
    assert describe_structure(model)["modules"][Q]["args"]["out_features"] == 16
    loaded = mp.load(mp.save(model, tmp_path / "plr"))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=_ids()).logits, model(input_ids=_ids()).logits)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda s: s["modules"][Q]["args"].update({"rank": 0}), "cannot take"),
        (lambda s: s["modules"][Q]["args"].update({"rank": "12"}), "bad LowRankLinear argument"),
        (lambda s: s["modules"][Q]["args"].update({"rank": 8}), "does not fit its base model"),
        (lambda s: s["modules"][Q]["args"].pop("rank"), "expected"),
        (lambda s: s["modules"].update({"bert.pooler.activation": s["modules"][Q]}), "base model has a Tanh"),
        (lambda s: s["modules"].update({"bert.embeddings.LayerNorm": s["modules"][Q]}), "has a LayerNorm"),
    ],
)
def test_bad_lowrank_structure_entries_fail_with_one_sentence(tmp_path, tiny_bert, tamper, message):
    path = mp.save(_lowrank(tiny_bert), tmp_path / "bad")
    _tamper(path, tamper)
    with pytest.raises(ArtifactError, match=message) as e:
        mp.load(path)
    assert "\n" not in str(e.value)
