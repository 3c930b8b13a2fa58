import pytest
import torch
from torch import nn

import modelpress as mp
from modelpress.data.calibration import calibration_batches, input_hooks, run_forward
from modelpress.data.datasets import political_speeches
from modelpress.methods.quantization import GPTQConfig, WeightOnlyConfig
from modelpress.models.causal_lm import CausalLMTask
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.nn import DecodedEmbedding, DecodedLinear


@pytest.fixture
def llama_task(tiny_llama_dir):
    return CausalLMTask(local_source(str(tiny_llama_dir)), political_speeches(), eval_tokens=512, window=128)


def test_gptq_on_llama_blocks_saves_and_loads(tmp_path, llama_task, monkeypatch):
    # the quantizations are compared, not the kernels a timing run happens to choose
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear=reference,embedding=reference")
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


def test_gptq_on_bert_blocks_and_head(tmp_path, tiny_bert_dir, small_splits, monkeypatch):
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear=reference,embedding=reference")
    task = TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)
    original = task.load_original()
    cfg = GPTQConfig(bits=4, group_size=16, n_samples=8, batch_size=4, embeddings=False, act_order=False)
    model = mp.compress(task.load_original(), cfg, data=task, progress=False)
    rtn = mp.compress(task.load_original(), WeightOnlyConfig(bits=4, group_size=16, embeddings=False))
    assert not isinstance(model.bert.embeddings.word_embeddings, DecodedEmbedding)
    linears = {n: m for n, m in original.named_modules() if isinstance(m, nn.Linear)}
    # every Linear's inputs on the calibration batches GPTQ drew, through the float model
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in linears}
    batches = calibration_batches(task, "gptq", batch_size=4, n_samples=8)
    with input_hooks(linears, lambda n, x: inputs[n].append(x)):
        run_forward(original, task, batches, progress=False)
    errors = {}
    for name, lin in linears.items():
        got, ref = model.get_submodule(name), rtn.get_submodule(name)
        assert isinstance(got, DecodedLinear), name  # the pooler and classifier too: a full pass
        w, x = lin.weight.detach(), torch.cat(inputs[name])
        w_g, w_r = got.weight.decode(), ref.weight.decode()
        assert 20 * torch.log10(w.norm() / (w - w_g).norm()) > 15.0, name  # SQNR floor of the weight
        errors[name] = (float((x @ (w_g - w).T).norm()), float((x @ (w_r - w).T).norm()))
    # the first block sees exactly the inputs GPTQ minimised its output error on: never worse than RTN
    for name, (e_g, e_r) in errors.items():
        if name.startswith("bert.encoder.layer.0."):
            assert e_g <= e_r, name
    assert sum(e for e, _ in errors.values()) < 0.9 * sum(e for _, e in errors.values())
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids).logits, mp.load(mp.save(model, tmp_path / "g"))(input_ids=ids).logits
        )


def test_gptq_needs_calibration_data(tiny_llama, llama_task):
    with pytest.raises(mp.ConfigError, match="needs calibration data"):
        mp.compress(tiny_llama, GPTQConfig())

    class Empty:
        def batches(self, *a, **k):
            return iter(())

        def loss(self, *a):
            raise AssertionError

    with pytest.raises(mp.ConfigError, match="gave no batches for calibration"):
        mp.compress(tiny_llama, GPTQConfig(), data=Empty())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 1}, r"bits must be an integer in \[2, 8\], got 1"),
        ({"group_size": 0}, "group_size must be a positive integer, got 0"),
        ({"damp": 0.0}, r"damp must be a number in \(0, 1\), got 0.0"),
        ({"n_samples": 0}, "n_samples must be a positive integer, got 0"),
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
