import logging

import pytest
import torch
from torch import nn

import modelpress as mp
from modelpress.data.calibration import calibration_batches
from modelpress.formats.affine import AffineQuantized
from modelpress.methods.quantization import MixedPrecisionConfig
from modelpress.methods.quantization.mixed import (
    LayerSensitivity,
    choose_bits,
    measure_sensitivity,
    quantizable_weights,
)
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.nn import DecodedEmbedding, DecodedLinear


@pytest.fixture
def tiny_task(tiny_bert_dir, small_splits):
    return TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)


FAST = {"n_samples": 32, "batch_size": 16, "group_size": 32}


def _formats(model: nn.Module) -> dict[str, AffineQuantized]:
    return {
        n: m.weight
        for n, m in model.named_modules()
        if isinstance(m, (DecodedLinear, DecodedEmbedding)) and isinstance(m.weight, AffineQuantized)
    }


def _avg_stored_bits(model: nn.Module) -> float:
    unique = {id(f): f for f in _formats(model).values()}.values()
    return 8 * sum(f.stored_nbytes() for f in unique) / sum(f.numel() for f in unique)


def test_sensitivity_is_measured_per_layer(tiny_task):
    model = tiny_task.load_original()
    cfg = MixedPrecisionConfig(**FAST)
    layers = quantizable_weights(model, cfg)
    n_selected = sum(isinstance(m, (nn.Linear, nn.Embedding)) for m in model.modules())
    assert len(layers) == n_selected  # no tied weights in BERT
    batches = calibration_batches(tiny_task, "test", batch_size=16, n_samples=32)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    base = measure_sensitivity(model, layers, tiny_task, batches, (2, 3, 4, 8), progress=False)
    assert base > 0
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)  # left as it was
    assert all(type(model.get_submodule(la.name)) in (nn.Linear, nn.Embedding) for la in layers)
    for layer in layers:
        assert set(layer.loss_increase) == set(layer.nbytes) == {2, 3, 4, 8}
        assert layer.nbytes[2] < layer.nbytes[3] < layer.nbytes[4] < layer.nbytes[8]
    total = {b: sum(abs(la.loss_increase[b]) for la in layers) for b in (2, 8)}
    assert total[2] > 10 * total[8]  # 2-bit rounding hurts far more than 8-bit


def _layer(name: str, sens: dict[int, float], numel: int = 1024) -> LayerSensitivity:
    # stored bytes as the affine format writes them: codes + a float32 scale and an int16
    # zero point per group of 128
    nbytes = {b: numel * b // 8 + (numel // 128) * 6 for b in sens}
    return LayerSensitivity(name, [name], numel, 128, dict(sens), nbytes)


def test_more_sensitive_layer_gets_more_bits():
    hot = _layer("hot", {2: 5.0, 3: 2.0, 4: 0.5, 8: 0.0})
    cold = _layer("cold", {2: 0.2, 3: 0.1, 4: 0.05, 8: 0.0})
    for avg in (2.5, 3.4, 4.4, 6.4, 8.4):
        budget = avg * 2048 / 8
        bits = choose_bits([hot, cold], budget_bytes=budget)
        assert bits["hot"] >= bits["cold"], avg
        assert hot.nbytes[bits["hot"]] + cold.nbytes[bits["cold"]] <= budget
    assert choose_bits([hot, cold], budget_bytes=6.4 * 2048 / 8) == {"hot": 8, "cold": 4}
    # a quality tolerance: the smallest model within it
    assert choose_bits([hot, cold], max_loss_increase=0.6) == {"hot": 4, "cold": 3}
    assert choose_bits([hot, cold], max_loss_increase=0.0) == {"hot": 8, "cold": 8}
    # pinned layers keep their width and count in the budget
    bits = choose_bits([hot, cold], budget_bytes=6.4 * 2048 / 8, fixed={"hot": 3})
    assert bits == {"hot": 3, "cold": 8}
    # noise (a negative increase) does not buy bits
    noisy = _layer("noisy", {2: 0.0, 3: 0.0, 4: -0.01, 8: 0.0})
    assert choose_bits([noisy], budget_bytes=8.4 * 1024 / 8) == {"noisy": 2}


class TwoPaths(nn.Module):
    """``out = 10·A(x) + 0.1·B(x)``: A's rounding error counts 100 times more than B's."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 16), nn.Linear(64, 16)

    def forward(self, x):
        return 10 * self.a(x) + 0.1 * self.b(x)


class ToyRegression:
    higher_is_better = True

    def __init__(self, teacher: nn.Module, n: int = 64) -> None:
        self.x = torch.randn(n, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.y = teacher(self.x)

    def batches(self, split, batch_size, *, shuffle_seed=None):
        for i in range(0, len(self.x), batch_size):
            yield {"x": self.x[i : i + batch_size], "y": self.y[i : i + batch_size]}

    def loss(self, model, batch):
        return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])

    def score(self, model, split="validation"):
        return -float(self.loss(model, {"x": self.x, "y": self.y}))


def test_sensitive_layer_gets_more_bits_end_to_end(caplog):
    torch.manual_seed(0)
    model = TwoPaths().eval()
    # groups of 32 cost 1.5 bits of scale and zero point: 2, 4, 8 bits cost 3.5, 5.5, 9.5,
    # so the budget allows 8 + 2 (6.5) but not 8 + 3 (7)
    cfg = MixedPrecisionConfig(avg_bits=6.6, group_size=32, n_samples=64, batch_size=32)
    with caplog.at_level(logging.INFO, logger="modelpress.methods.quantization.mixed"):
        out = mp.compress(model, cfg, data=ToyRegression(model), progress=False)
    [recorded] = mp.recipe_of(out).methods
    bits = dict(recorded.assignment)
    assert bits["a"] > bits["b"]
    assert out.a.weight.bits == bits["a"] and out.b.weight.bits == bits["b"]
    assert _avg_stored_bits(out) <= 6.6
    assert "mixed-precision assignment" in caplog.text and "dloss@2" in caplog.text


def test_budget_respected_and_recipe_reproduces(tmp_path, tiny_task):
    original = tiny_task.load_original()
    cfg = MixedPrecisionConfig(avg_bits=4.5, **FAST)
    model = mp.compress(original, cfg, data=tiny_task, progress=False)
    assert not any(type(m) in (nn.Linear, nn.Embedding) for m in model.modules())
    assert _avg_stored_bits(model) <= 4.5
    [recorded] = mp.recipe_of(model).methods
    assert recorded == MixedPrecisionConfig(avg_bits=4.5, assignment=recorded.assignment, **FAST)
    bits = dict(recorded.assignment)
    assert bits == {n: f.bits for n, f in _formats(model).items()}
    # the saved recipe (YAML) reproduces the same model without data or measurement
    recipe = mp.Recipe.from_yaml(mp.recipe_of(model).to_yaml())
    assert recipe == mp.recipe_of(model)
    again = mp.compress(original, recipe, progress=False)
    assert mp.recipe_of(again) == recipe
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        assert torch.equal(again(input_ids=ids).logits, ref)
    loaded = mp.load(mp.save(model, tmp_path / "mixed"))
    assert mp.recipe_of(loaded) == mp.recipe_of(model)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, ref)


def test_tied_weights_are_one_choice(tiny_llama):
    layers = quantizable_weights(tiny_llama, MixedPrecisionConfig(group_size=32))
    [emb] = [la for la in layers if la.name == "model.embed_tokens"]
    assert emb.modules == ["model.embed_tokens", "lm_head"]
    bits = {la.name: 3 if la is emb else 4 for la in layers}
    out = mp.compress(tiny_llama, MixedPrecisionConfig(group_size=32, assignment=bits))
    assert out.lm_head.weight is out.model.embed_tokens.weight and out.lm_head.weight.bits == 3


def test_tolerance_mode(tiny_task):
    original = tiny_task.load_original()
    cfg = MixedPrecisionConfig(avg_bits=None, max_loss_increase=0.0, candidate_bits=(2, 8), **FAST)
    model = mp.compress(original, cfg, data=tiny_task, progress=False)
    bits = dict(mp.recipe_of(model).methods[0].assignment)
    assert set(bits.values()) <= {2, 8} and 8 in bits.values()


def test_preset_and_yaml():
    [cfg] = mp.PRESETS.get("mixed-4bit-avg").build()
    assert cfg.avg_bits == 4.0 and cfg.candidate_bits == (2, 3, 4, 8) and cfg.assignment == ()
    text = "- method: mixed-precision\n  assignment: {a: 4, b: 8}\n  pin: {'*emb*': 8}\n"
    [c] = mp.Recipe.from_yaml(text).methods
    assert c.assignment == (("a", 4), ("b", 8)) and c.pin == (("*emb*", 8),)
    assert mp.Recipe.from_yaml(mp.Recipe([c]).to_yaml()).methods == (c,)


class EmptyTask(ToyRegression):
    def batches(self, split, batch_size, *, shuffle_seed=None):
        return iter(())


def test_bad_input(tiny_bert):
    with pytest.raises(mp.ConfigError, match="needs calibration data"):
        mp.compress(tiny_bert, MixedPrecisionConfig(), progress=False)
    model = TwoPaths()
    with pytest.raises(mp.ConfigError, match="gave no batches for calibration"):
        mp.compress(model, MixedPrecisionConfig(group_size=32), data=EmptyTask(model), progress=False)
    with pytest.raises(mp.ConfigError, match="below the smallest possible size"):
        mp.compress(model, MixedPrecisionConfig(avg_bits=1.5, group_size=32), data=ToyRegression(model))
    bad = [
        ({"avg_bits": 0}, r"avg_bits must be a positive finite number"),
        ({"avg_bits": -4.0}, r"avg_bits must be a positive finite number"),
        ({"avg_bits": float("nan")}, r"avg_bits must be a positive finite number"),
        ({"avg_bits": float("inf")}, r"avg_bits must be a positive finite number"),
        ({"avg_bits": None}, "exactly one of avg_bits"),
        ({"max_loss_increase": 0.1}, "exactly one of avg_bits"),
        ({"avg_bits": None, "max_loss_increase": -1.0}, "max_loss_increase must be a non-negative number"),
        (
            {"candidate_bits": (1, 4)},
            r"candidate_bits must be a list whose every element is an integer in \[2, 8",
        ),
        (
            {"candidate_bits": (4, 9)},
            r"candidate_bits must be a list whose every element is an integer in \[2, 8",
        ),
        ({"candidate_bits": (4, 4.5)}, "candidate_bits must be a list of integers"),
        ({"candidate_bits": ()}, r"candidate_bits must be a non-empty list of integers in \[2, 8\]"),
        ({"assignment": (("a", 9),)}, "bits must be integers in 2..8"),
        ({"pin": {"*": 1}}, "bits must be integers in 2..8"),
        ({"n_samples": 0}, "n_samples must be a positive integer"),
    ]
    for kwargs, msg in bad:
        with pytest.raises(mp.ConfigError, match=msg):
            MixedPrecisionConfig(**kwargs)
    with pytest.raises(mp.ConfigError, match="assignment does not fit this model"):
        mp.compress(model, MixedPrecisionConfig(assignment={"a": 4, "c": 4}))
