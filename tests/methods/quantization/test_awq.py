import pytest
import torch

import modelpress as mp
from modelpress.data.datasets import political_speeches
from modelpress.formats import AffineQuantized
from modelpress.methods.quantization import AWQConfig, WeightOnlyConfig
from modelpress.methods.quantization.awq import awq_search
from modelpress.models.causal_lm import CausalLMTask
from modelpress.models.sources import local_source
from modelpress.nn import DecodedLinear
from modelpress.primitives.quant import choose_qparams, dequantize, quantize


def outlier_inputs(n: int = 512, cols: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, cols, generator=g)
    x[:, :4] *= 30  # a few salient input channels, as in LLM activations
    return x


def test_search_beats_round_to_nearest_on_salient_channels():
    x = outlier_inputs()
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    alpha, _s, err = awq_search(w, x, x.abs().mean(0), 3, group_size=32, symmetric=False)
    sc, z = choose_qparams(w, 3, symmetric=False, group_size=32)
    rtn = dequantize(quantize(w, sc, z, 3, group_size=32), sc, z, group_size=32)
    err_rtn = float((x @ (rtn - w).T).pow(2).mean())
    assert alpha > 0 and err < 0.8 * err_rtn
    # alpha = 0 (plain RTN) is in the grid: never worse than RTN, whatever the inputs
    x2 = torch.randn(64, 128, generator=torch.Generator().manual_seed(2))
    _, _, err0 = awq_search(w, x2, x2.abs().mean(0), 3, group_size=32, symmetric=False)
    assert err0 <= float((x2 @ (rtn - w).T).pow(2).mean()) * (1 + 1e-5)


def test_in_scale_decodes_and_roundtrips(tmp_path):
    w = torch.randn(8, 64)
    s = torch.rand(64) + 0.5
    sc, z = choose_qparams(w * s, 4, symmetric=False, group_size=16)
    q = quantize(w * s, sc, z, 4, group_size=16)
    f = AffineQuantized.from_ints(w.shape, q, sc, z, 4, 16, in_scale=s)
    ref = dequantize(q, sc, z, group_size=16) / s
    torch.testing.assert_close(f.decode(), ref)
    torch.testing.assert_close(f.decode_rows(torch.tensor([3, 1])), ref[[3, 1]])
    sd = f.to_storage()
    g = AffineQuantized.from_manifest(f.to_manifest(), {k: (tuple(v.shape), v.dtype) for k, v in sd.items()})
    g.from_storage(sd)
    assert torch.equal(g.decode(), f.decode())


def test_awq_on_llama_saves_loads_and_beats_rtn(tmp_path, tiny_llama_dir, monkeypatch):
    # the quantization is compared, not the kernels: a timed kernel choice (int_mm_requant adds
    # per-token activation rounding) would make the margin depend on the machine and the run
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear=reference,embedding=reference")
    task = CausalLMTask(local_source(str(tiny_llama_dir)), political_speeches(), eval_tokens=512, window=128)
    original = task.load_original()
    model = mp.compress(
        task.load_original(),
        AWQConfig(bits=3, group_size=32, n_samples=8, batch_size=4),
        data=task,
        progress=False,
    )
    up = model.model.layers[0].mlp.up_proj
    assert isinstance(up, DecodedLinear) and up.weight.in_scale is not None
    assert model.model.embed_tokens.weight.in_scale is None  # embeddings: round to nearest
    rtn = mp.compress(task.load_original(), WeightOnlyConfig(bits=3, group_size=32))
    path = mp.save(model, tmp_path / "awq")
    batch = next(task.batches("train", 4, shuffle_seed=0))["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=batch).logits, mp.load(path)(input_ids=batch).logits)
        ref = original(input_ids=batch).logits
        assert (model(input_ids=batch).logits - ref).norm() < (rtn(input_ids=batch).logits - ref).norm()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"bits": 9}, "bits must be"), ({"grid": 0}, "grid must be"), ({"group_size": -1}, "group_size")],
)
def test_bad_config(kwargs, message):
    with pytest.raises(mp.ConfigError, match=message):
        AWQConfig(**kwargs)


def test_awq_needs_data(tiny_llama):
    with pytest.raises(mp.ConfigError, match="needs calibration data"):
        mp.compress(tiny_llama, AWQConfig())
