import pytest
import torch
from torch import nn

import modelpress as mp
from modelpress.data.datasets import political_speeches
from modelpress.methods.quantization import SmoothQuantConfig
from modelpress.methods.quantization.smoothquant import smooth
from modelpress.models.causal_lm import CausalLMTask
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.nn import Int8DynamicLinear, Int8Embedding, Int8SmoothLinear
from modelpress.primitives.activation import smoothing_factors


@pytest.fixture
def llama_task(tiny_llama_dir):
    return CausalLMTask(local_source(str(tiny_llama_dir)), political_speeches(), eval_tokens=512, window=128)


@pytest.fixture
def bert_task(tiny_bert_dir, small_splits):
    return TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)


CFG = SmoothQuantConfig(n_samples=8, batch_size=4)


def _apply_divisors(model: nn.Module, divisors: dict) -> None:
    """The float model SmoothQuant describes: each run-time divisor as an input hook."""
    for name, s in divisors.items():
        if s is not None:
            model.get_submodule(name).register_forward_pre_hook(lambda _m, a, s=s: (a[0] / s,))


def _outlier_llama(task: CausalLMTask) -> nn.Module:
    """The tiny Llama with a few activation outlier channels that leave its function as is:
    input_layernorm channels scaled up x60, the q/k/v weight columns scaled down to match."""
    model = task.load_original()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[:4] *= 60.0
            for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                p.weight[:, :4] /= 60.0
    return model


def test_smoothing_factor_formula():
    a, w = torch.tensor([4.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0])
    torch.testing.assert_close(smoothing_factors(a, w, 0.5)[:2], torch.tensor([2.0, 0.5]))
    assert smoothing_factors(a, w, 0.5)[2] > 0  # a dead channel does not divide by zero
    torch.testing.assert_close(smoothing_factors(a[:2], w[:2], 1.0), a[:2])
    torch.testing.assert_close(smoothing_factors(a[:2], w[:2], 0.0), 1 / w[:2])


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_llama_smoothing_folds_norms_and_keeps_float_output(llama_task, alpha):
    original = llama_task.load_original()
    model = llama_task.load_original()
    divisors = smooth(model, SmoothQuantConfig(alpha=alpha, n_samples=8, batch_size=4), llama_task)
    for i in range(2):
        p = f"model.layers.{i}."
        for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            assert divisors[p + n] is None  # folded into input_ / post_attention_layernorm
        for n in ("self_attn.o_proj", "mlp.down_proj"):
            assert divisors[p + n] is not None
    assert divisors["lm_head"] is None  # tied to the embedding: not smoothed
    assert not torch.equal(
        model.model.layers[0].input_layernorm.weight, original.model.layers[0].input_layernorm.weight
    )
    _apply_divisors(model, divisors)
    ids = next(llama_task.batches("validation", 2))["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, original(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )


def test_bert_smoothing_divides_at_run_time_and_keeps_float_output(bert_task):
    original = bert_task.load_original()
    model = bert_task.load_original()
    divisors = smooth(model, CFG, bert_task)
    assert all(s is not None for s in divisors.values())  # post-LN: nothing folds
    _apply_divisors(model, divisors)
    ids = next(bert_task.batches("validation", 4))["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, original(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )


def test_smooth_linear_equals_dynamic_on_divided_input():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    s = torch.rand(32) + 0.5
    q = Int8SmoothLinear.from_float(lin, smooth=s)
    x = torch.randn(5, 32)
    dyn = Int8DynamicLinear(q.weight, lin.bias.detach())
    assert torch.equal(q(x), dyn(x / s))
    assert (q(x) - lin(x)).norm() / lin(x).norm() < 0.02


def test_smoothquant_llama_beats_int8_dynamic_on_outliers_and_saves(tmp_path, llama_task):
    original = _outlier_llama(llama_task)
    model = mp.compress(original, CFG, data=llama_task, progress=False)
    layer = model.model.layers[0]
    assert type(layer.self_attn.q_proj) is Int8DynamicLinear and type(layer.mlp.up_proj) is Int8DynamicLinear
    assert isinstance(layer.self_attn.o_proj, Int8SmoothLinear) and isinstance(
        layer.mlp.down_proj, Int8SmoothLinear
    )
    assert isinstance(model.model.embed_tokens, Int8Embedding)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: one INT8 tensor
    dynamic = mp.compress(original, "int8-dynamic")
    ids = next(llama_task.batches("validation", 2))["input_ids"]
    with torch.no_grad():
        ref = original(input_ids=ids).logits
        got = model(input_ids=ids).logits
        err_sq = float((got - ref).norm() / ref.norm())
        err_dyn = float((dynamic(input_ids=ids).logits - ref).norm() / ref.norm())
        assert err_sq < 0.05 and err_sq < 0.5 * err_dyn
        loaded = mp.load(mp.save(model, tmp_path / "sq"))
        assert torch.equal(loaded(input_ids=ids).logits, got)


def test_smoothquant_bert_close_and_save_load_equal(tmp_path, bert_task):
    original = bert_task.load_original()
    model = mp.compress(original, CFG, data=bert_task, progress=False)
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, Int8SmoothLinear)
    ids = next(bert_task.batches("validation", 8))["input_ids"]
    with torch.no_grad():
        ref = original(input_ids=ids).logits
        got = model(input_ids=ids).logits
        assert (got - ref).norm() / ref.norm() < 0.05
        assert torch.equal(mp.load(mp.save(model, tmp_path / "sq"))(input_ids=ids).logits, got)


def test_old_int8_dynamic_artifacts_still_load(tmp_path, tiny_bert):
    model = mp.compress(tiny_bert, "int8-dynamic")
    path = mp.save(model, tmp_path / "dyn")
    manifest = (path / "manifest.json").read_text()
    assert "int8_smooth_linear" not in manifest
    ids = torch.randint(0, 1000, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(mp.load(path)(input_ids=ids).logits, model(input_ids=ids).logits)


def test_preset():
    from modelpress.methods.base import PRESETS

    assert PRESETS.get("smoothquant-w8a8").build() == [SmoothQuantConfig()]
    r = mp.Recipe([SmoothQuantConfig(alpha=0.75, fold_norms=False)])
    assert mp.Recipe.from_yaml(r.to_yaml()) == r


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "0.5", True])
def test_alpha_outside_unit_interval(alpha):
    with pytest.raises(mp.ConfigError, match="alpha must be a number"):
        SmoothQuantConfig(alpha=alpha)


def test_needs_calibration_data(tiny_bert):
    with pytest.raises(mp.ConfigError, match="needs calibration data"):
        mp.compress(tiny_bert, SmoothQuantConfig())

    class Empty:
        def batches(self, *a, **k):
            return iter(())

        def loss(self, model, batch):
            raise AssertionError

    with pytest.raises(mp.ConfigError, match="gave no batches for calibration"):
        mp.compress(tiny_bert, SmoothQuantConfig(), data=Empty())
    with pytest.raises(mp.ConfigError, match="n_samples"):
        SmoothQuantConfig(n_samples=0)
