import pytest
import torch

import modelpress as mp
from modelpress.formats import Codebook
from modelpress.methods.quantization import NonUniformConfig
from modelpress.methods.quantization.nonuniform import encode_nf4, encode_quantile, nf4_levels
from modelpress.nn import DecodedEmbedding, DecodedLinear

# QLoRA's published NF4 table (bitsandbytes)
NF4 = [-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
       0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0]  # fmt: skip


def test_nf4_levels_match_qlora():
    torch.testing.assert_close(nf4_levels(), torch.tensor(NF4), atol=1e-6, rtol=0)


def test_nf4_decodes_to_nearest_level_times_absmax():
    w = torch.randn(6, 128, generator=torch.Generator().manual_seed(0))
    f = encode_nf4(w, 64, "float32")
    assert isinstance(f, Codebook) and f.granularity == "group-scaled" and f.bits == 4
    groups = w.reshape(-1, 64)
    absmax = groups.abs().amax(1, keepdim=True)
    lv = torch.tensor(NF4)
    ref = lv[((groups / absmax).unsqueeze(-1) - lv).abs().argmin(-1)] * absmax
    torch.testing.assert_close(f.decode(), ref.reshape(w.shape), atol=1e-6, rtol=0)
    # embedding-style row decoding agrees with the full decode
    torch.testing.assert_close(f.decode_rows(torch.tensor([5, 0])), f.decode()[[5, 0]])
    # exactly 4 bits per weight + one fp16... here fp32 scale per 64 + the 16-entry codebook
    assert f.stored_nbytes() == 6 * 128 // 2 + 12 * 4 + 16 * 4


def test_quantile_codes_are_nearest_percentiles():
    w = torch.randn(4, 256, generator=torch.Generator().manual_seed(1))
    f = encode_quantile(w, 3, "float32")
    q = torch.quantile(w, (torch.arange(8) + 0.5) / 8, dim=1).T  # (rows, 8)
    torch.testing.assert_close(f.float_codebook(), q)
    ref = torch.gather(q, 1, (w.unsqueeze(-1) - q.unsqueeze(1)).abs().argmin(-1))
    torch.testing.assert_close(f.decode(), ref)


@pytest.mark.parametrize(("kind", "floor_db"), [("nf4", 18.0), ("quantile", 15.0)])
def test_sqnr_floor_and_save_load(tmp_path, tiny_llama, kind, floor_db):
    w = tiny_llama.model.layers[0].mlp.up_proj.weight.detach().clone()
    model = mp.compress(tiny_llama, NonUniformConfig(kind=kind, group_size=32))
    up = model.model.layers[0].mlp.up_proj
    assert isinstance(up, DecodedLinear) and isinstance(model.model.embed_tokens, DecodedEmbedding)
    assert 20 * torch.log10(w.norm() / (w - up.weight.decode()).norm()) > floor_db
    ids = torch.randint(0, 30522, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids).logits, mp.load(mp.save(model, tmp_path / kind))(input_ids=ids).logits
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "nf3"}, "kind must be one of nf4, quantile"),
        ({"kind": "nf4", "bits": 3}, "nf4 has 4 bits"),
        ({"group_size": 0}, "group_size"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(mp.ConfigError, match=message):
        NonUniformConfig(**kwargs)
