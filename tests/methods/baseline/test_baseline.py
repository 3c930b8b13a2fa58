import pytest
import torch

import modelpress as mp
from modelpress.nn import Int8DynamicLinear, Int8Embedding


def test_int8_dynamic_replaces_linears_and_embeddings(tiny_bert):
    q = mp.compress(tiny_bert, "int8-dynamic")
    n_lin = sum(isinstance(m, torch.nn.Linear) for m in tiny_bert.modules())
    n_emb = sum(isinstance(m, torch.nn.Embedding) for m in tiny_bert.modules())
    assert sum(isinstance(m, Int8DynamicLinear) for m in q.modules()) == n_lin
    assert sum(isinstance(m, Int8Embedding) for m in q.modules()) == n_emb
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) for m in q.modules())


def test_int8_dynamic_include_exclude(tiny_bert):
    cfg = mp.Int8DynamicConfig(exclude=("classifier", "*pooler*"), embeddings=False)
    q = mp.compress(tiny_bert, cfg)
    assert isinstance(q.classifier, torch.nn.Linear) and isinstance(q.bert.pooler.dense, torch.nn.Linear)
    assert isinstance(q.bert.embeddings.word_embeddings, torch.nn.Embedding)
    with pytest.raises(mp.ConfigError, match=r"include pattern 'nothing\.\*' matches no module"):
        mp.compress(tiny_bert, mp.Int8DynamicConfig(include=("nothing.*",)))
    with pytest.raises(mp.ConfigError, match="no Embedding/Linear layer matched"):
        mp.compress(tiny_bert, mp.Int8DynamicConfig(include="bert.encoder"))


def test_int8_dynamic_quality_close_to_fp32(tiny_llama):
    ids = torch.randint(0, 30522, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_llama(input_ids=ids).logits
        got = mp.compress(tiny_llama, "int8-dynamic")(input_ids=ids).logits
    assert (got - ref).norm() / ref.norm() < 0.05


def test_tied_lm_head_shares_int8_weight(tiny_llama):
    q = mp.compress(tiny_llama, "int8-dynamic")
    assert q.lm_head.weight is q.model.embed_tokens.weight


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cast(tiny_bert, dtype):
    m = mp.compress(tiny_bert, mp.CastConfig(dtype))
    assert {p.dtype for p in m.parameters()} == {getattr(torch, dtype)}


def test_bad_config_types():
    assert mp.Int8DynamicConfig(include="*.attention.*").include == ("*.attention.*",)  # one pattern
    with pytest.raises(mp.ConfigError, match="int8-dynamic: include must be a list of strings"):
        mp.Int8DynamicConfig(include=("*", 3))
    with pytest.raises(mp.ConfigError, match="embeddings must be true or false"):
        mp.Int8DynamicConfig(embeddings="yes")
    with pytest.raises(mp.ConfigError, match="cast: dtype must be one of float16"):
        mp.CastConfig("int8")
