import pytest
import torch

import modelpress as mp
from modelpress.data.datasets import political_speeches
from modelpress.methods.quantization import GPTQConfig, WeightOnlyConfig
from modelpress.models.causal_lm import CausalLMTask
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.nn import DecodedEmbedding, DecodedLinear


@pytest.fixture
def llama_task(tiny_llama_dir):
    return CausalLMTask(local_source(str(tiny_llama_dir)), political_speeches(), eval_tokens=512, window=128)


def test_gptq_on_llama_blocks_saves_and_loads(tmp_path, llama_task):
    original = llama_task.load_original()
    cfg = GPTQConfig(bits=3, group_size=32, n_samples=8, batch_size=4)
    model = mp.compress(llama_task.load_original(), cfg, data=llama_task, progress=False)
    layer = model.model.layers[1]
    for lin in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
        assert isinstance(lin, DecodedLinear) and lin.weight.bits == 3 and lin.weight.group_size == 32
    assert isinstance(model.model.embed_tokens, DecodedEmbedding)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: stored once, rounded to nearest
    rtn = mp.compress(llama_task.load_original(), WeightOnlyConfig(bits=3, group_size=32))
    # same format, so the same bytes; the integers differ
    size = lambda p: sum(f.stat().st_size for f in p.iterdir())  # noqa: E731
    pg, pr = mp.save(model, tmp_path / "gptq"), mp.save(rtn, tmp_path / "rtn")
    assert abs(size(pg) - size(pr)) < 2000
    ids = torch.randint(0, 30522, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, mp.load(pg)(input_ids=ids).logits)
        # block outputs: GPTQ's error on calibration-like text is no larger than RTN's
        batch = next(llama_task.batches("train", 4, shuffle_seed=0))
        ref = original(input_ids=batch["input_ids"]).logits
        e_g = (model(input_ids=batch["input_ids"]).logits - ref).norm()
        e_r = (rtn(input_ids=batch["input_ids"]).logits - ref).norm()
    assert e_g < e_r
    assert [c.name for c in mp.recipe_of(model)] == ["gptq"]


def test_gptq_on_bert_blocks_and_head(tiny_bert_dir, small_splits):
    task = TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)
    cfg = GPTQConfig(bits=4, group_size=16, n_samples=8, batch_size=4, embeddings=False, act_order=False)
    model = mp.compress(task.load_original(), cfg, data=task, progress=False)
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, DecodedLinear)
    assert isinstance(model.classifier, DecodedLinear)  # outside the blocks: calibrated by a full pass
    assert not isinstance(model.bert.embeddings.word_embeddings, DecodedEmbedding)


def test_gptq_needs_calibration_data(tiny_llama, llama_task):
    with pytest.raises(mp.ConfigError, match="needs calibration data"):
        mp.compress(tiny_llama, GPTQConfig())

    class Empty:
        def batches(self, *a, **k):
            return iter(())

        def loss(self, *a):
            raise AssertionError

    with pytest.raises(mp.ConfigError, match="calibration set is empty"):
        mp.compress(tiny_llama, GPTQConfig(), data=Empty())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 1}, "bits must be an integer in 2..8"),
        ({"group_size": 0}, "group_size must be a positive integer"),
        ({"damp": 0.0}, "damp must lie in"),
        ({"n_samples": 0}, "n_samples must be a positive integer"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(mp.ConfigError, match=message):
        GPTQConfig(**kwargs)


def test_nan_weight_is_refused(tiny_llama, llama_task):
    model = llama_task.load_original()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mp.compress(model, GPTQConfig(n_samples=4, batch_size=4), data=llama_task, progress=False)
