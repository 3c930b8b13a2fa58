import dataclasses

import pytest
import torch

import modelpress as mp
from modelpress.formats import AffineQuantized
from modelpress.methods.quantization import AWQConfig, GPTQConfig, NonUniformConfig, WeightOnlyConfig
from modelpress.nn import DecodedEmbedding, DecodedLinear
from modelpress.primitives.quant import choose_qparams, dequantize, quantize


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_packed_affine_matches_reference_and_roundtrips(bits, symmetric):
    w = torch.randn(10, 256, generator=torch.Generator().manual_seed(bits))
    f = AffineQuantized.encode(w, bits, symmetric=symmetric, group_size=64)
    s, z = choose_qparams(w, bits, symmetric=symmetric, group_size=64)
    ref = dequantize(quantize(w, s, z, bits, group_size=64), s, z, group_size=64)
    assert torch.equal(f.decode(), ref)
    sd = f.to_storage()
    assert sd["qdata"].numel() == w.numel() * bits // 8  # exactly `bits` bits per weight on disk
    g = AffineQuantized.from_manifest(f.to_manifest(), {k: (tuple(v.shape), v.dtype) for k, v in sd.items()})
    g.from_storage(sd)
    assert torch.equal(g.decode(), ref)
    rows = torch.tensor([9, 0, 4])
    assert torch.equal(f.decode_rows(rows), ref[rows])


@pytest.mark.parametrize(("bits", "floor_db"), [(8, 38.0), (4, 18.0), (3, 12.0), (2, 5.0)])
def test_sqnr_floors(bits, floor_db):
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    w_hat = AffineQuantized.encode(w, bits, symmetric=False, group_size=128).decode()
    assert 20 * torch.log10(w.norm() / (w - w_hat).norm()) > floor_db


@pytest.mark.parametrize("preset", ["int8-weight", "int4-g128", "int3-g128", "int2-g64"])
def test_presets_save_load_equal(tmp_path, tiny_llama, preset):
    # the tiny model's rows are 64 wide: groups of 128 do not divide them, so use 32 there
    cfg = mp.Recipe(
        dataclasses.replace(c, group_size=None if c.group_size is None else 32)
        for c in mp.PRESETS.get(preset).build()
    )
    model = mp.compress(tiny_llama, cfg)
    assert isinstance(model.model.layers[0].mlp.up_proj, DecodedLinear)
    assert isinstance(model.model.embed_tokens, DecodedEmbedding)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    path = mp.save(model, tmp_path / preset)
    ids = torch.randint(0, 30522, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, mp.load(path)(input_ids=ids).logits)


def test_group_size_falls_back_to_a_divisor(tiny_bert, caplog):
    m = mp.compress(tiny_bert, WeightOnlyConfig(bits=4, group_size=64, embeddings=False))  # rows of 32 or 64
    assert m.bert.encoder.layer[0].output.dense.weight.group_size == 64  # 64 inputs: groups as asked
    assert m.classifier.weight.group_size == 32  # 32 inputs: the largest divisor below 64, logged
    assert "groups of 32 (not 64, which does not divide rows of 32)" in caplog.text
    m = mp.compress(tiny_bert, WeightOnlyConfig(bits=4, group_size=5, embeddings=False))
    assert m.classifier.weight.group_size == 4
    with pytest.raises(mp.ConfigError, match="include pattern 'nothing' matches no module"):
        mp.compress(tiny_bert, WeightOnlyConfig(bits=4, include=("nothing",)))
    with pytest.raises(mp.ConfigError, match="no Linear layer matched"):
        mp.compress(tiny_bert, WeightOnlyConfig(bits=4, embeddings=False, include=("*embeddings*",)))


@pytest.mark.parametrize(
    "config",
    [
        WeightOnlyConfig(bits=4, group_size=64, strict_groups=True),
        GPTQConfig(bits=4, group_size=64, strict_groups=True),
        AWQConfig(bits=4, group_size=64, strict_groups=True),
        NonUniformConfig(kind="nf4", group_size=64, strict_groups=True),
    ],
    ids=lambda c: c.name,
)
def test_strict_groups_reject_a_group_size_that_does_not_divide(tiny_bert, config):
    before = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    with pytest.raises(mp.ConfigError, match="group_size 64 does not divide rows of 32 weights"):
        mp.compress(tiny_bert, config)  # the classifier's rows are 32 wide; no data needed to fail
    after = tiny_bert.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-done
