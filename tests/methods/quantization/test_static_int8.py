import logging

import pytest
import torch
from torch import nn

import modelpress as mp
from modelpress import kernels
from modelpress.methods.base import HANDLERS, CompressContext
from modelpress.methods.quantization import StaticInt8Config
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.nn import Int8DynamicLinear, Int8Embedding, Int8StaticLinear
from modelpress.primitives.activation import (
    ActivationObserver,
    act_qparams,
    fake_quantize_act,
)


@pytest.fixture
def tiny_task(tiny_bert_dir, small_splits):
    return TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)


class ToyData:
    """A task adapter in miniature: fixed batches, the loss is the sum of the outputs."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.xs = batches

    def batches(self, split, batch_size, *, shuffle_seed=None):
        yield from self.xs

    def loss(self, model, batch):
        return model(batch).sum()


# -- observers -----------------------------------------------------------------------------


def _chunks(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(50, 40, generator=g) * (i + 1) + i for i in range(4)]


def test_minmax_observer_is_exact():
    obs = ActivationObserver("minmax", symmetric=False)
    xs = _chunks()
    for x in xs:
        obs.add(x)
    allx = torch.cat(xs)
    assert obs.range() == (float(allx.min()), float(allx.max()))
    scale, zp = obs.qparams()
    assert (scale, zp) == act_qparams(float(allx.min()), float(allx.max()), False)
    sym = ActivationObserver("minmax", symmetric=True)
    for x in xs:
        sym.add(x)
    assert sym.qparams() == (float(allx.abs().max()) / 127, 0)


@pytest.mark.parametrize("symmetric", [True, False])
def test_percentile_observer_matches_torch_quantile(symmetric):
    obs = ActivationObserver("percentile", percentile=99.0, symmetric=symmetric)
    xs = _chunks(1)
    for x in xs:
        obs.add(x)
    allx = torch.cat(xs).flatten()
    if symmetric:
        a = float(torch.quantile(allx.abs(), 0.99))
        assert obs.range() == pytest.approx((-a, a))
    else:
        expected = (float(torch.quantile(allx, 0.01)), float(torch.quantile(allx, 0.99)))
        assert obs.range() == pytest.approx(expected)


def test_sample_stays_bounded_and_representative():
    obs = ActivationObserver("percentile", percentile=99.0, symmetric=True, sample_size=4096)
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        obs.add(torch.randn(1000, 8, generator=g))
    assert obs.sample is not None and obs.sample.numel() <= 4096 and obs.n == 160_000
    # the 99th percentile of |N(0,1)| is 2.576
    assert obs.range()[1] == pytest.approx(2.576, abs=0.15)


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_observer_clips_no_wider_and_errs_no_more(symmetric):
    torch.manual_seed(3)
    x = torch.distributions.StudentT(2.0).sample((20_000,))  # heavy tails stretch min-max
    mse, mm = (
        ActivationObserver("mse", symmetric=symmetric),
        ActivationObserver("minmax", symmetric=symmetric),
    )
    mse.add(x)
    mm.add(x)
    (lo, hi), (mlo, mhi) = mse.range(), mm.range()
    if symmetric:  # one symmetric range: compare the clip to the largest magnitude
        assert lo == -hi and 0 < hi < max(-mlo, mhi)
    else:
        assert mlo <= lo <= 0 <= hi <= mhi and hi - lo < mhi - mlo

    def err(q: tuple[float, int]) -> float:
        return float(((fake_quantize_act(x, *q, symmetric) - x) ** 2).mean())

    assert err(mse.qparams()) <= err(mm.qparams())


def test_observer_rejects_nan_and_unknown_method():
    with pytest.raises(ValueError, match="unknown observer"):
        ActivationObserver("entropy")
    with pytest.raises(ValueError, match="NaN"):
        ActivationObserver().add(torch.tensor([1.0, float("nan")]))


# -- the module ----------------------------------------------------------------------------


def _reference(lin: nn.Linear, q: Int8StaticLinear, x: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """Plain static W8A8: integer operands, an int64 matmul, then the two scales."""
    s, z = float(q.act_scale), int(q.act_zero_point)
    lo = -127 if symmetric else -128
    xq = (torch.round(x.double().reshape(-1, x.shape[-1]).float() / s) + z).clamp(lo, 127).long()
    wq = q.weight.qdata.long()
    acc = (xq - z) @ wq.t()  # int64
    y = acc.double() * s * q.weight.scale.double().reshape(1, -1) + lin.bias.double()
    return y.float().reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("symmetric", [True, False])
def test_static_linear_equals_integer_reference(device, symmetric):
    torch.manual_seed(0)
    lin = nn.Linear(48, 24).to(device)
    x = torch.randn(3, 8, 48, device=device) + 0.5  # 24 rows: CUDA's int8 GEMM needs more than 16
    lo, hi = -2.0, 3.0  # some inputs lie outside: clamped
    scale, zp = act_qparams(lo, hi, symmetric)
    q = Int8StaticLinear.from_float(lin, scale, zp, act_symmetric=symmetric)
    torch.testing.assert_close(q(x), _reference(lin, q, x, symmetric), rtol=1e-5, atol=1e-4)
    assert ((q(x) - lin(x)).norm() / lin(x).norm()) < 0.05


def test_static_linear_float_fallback(monkeypatch):
    torch.manual_seed(1)
    lin = nn.Linear(32, 16)
    x = torch.randn(5, 32)
    scale, zp = act_qparams(-3.0, 2.5, False)
    q = Int8StaticLinear.from_float(lin, scale, zp, act_symmetric=False)
    fast = q(x)
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear_a8_static=reference")
    assert (
        kernels.chosen("linear_a8_static", q.weight, torch.zeros(5, 32, dtype=torch.int8)).name == "reference"
    )
    torch.testing.assert_close(q(x), fast, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q(x), _reference(lin, q, x, False), rtol=1e-5, atol=1e-5)
    assert q(torch.randn(0, 32)).shape == (0, 16)


# -- the method ----------------------------------------------------------------------------


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_static_int8_on_bert_close_and_save_load_equal(tmp_path, tiny_task, observer):
    original = tiny_task.load_original()
    cfg = StaticInt8Config(observer=observer, n_samples=16, batch_size=8)
    model = mp.compress(tiny_task.load_original(), cfg, data=tiny_task, progress=False)
    q = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(q, Int8StaticLinear) and q.act_zero_point.dtype == torch.int32
    assert isinstance(model.bert.embeddings.word_embeddings, Int8Embedding)
    assert not any(type(m) is nn.Linear for m in model.modules())  # nothing out of line here
    batch = next(tiny_task.batches("validation", 8))
    with torch.no_grad():
        ref = original(input_ids=batch["input_ids"]).logits
        got = model(input_ids=batch["input_ids"]).logits
        assert (got - ref).norm() / ref.norm() < 0.1
        path = mp.save(model, tmp_path / observer)
        loaded = mp.load(path)
        assert torch.equal(loaded(input_ids=batch["input_ids"]).logits, got)
    assert [c.name for c in mp.recipe_of(loaded)] == ["static-int8"]


def test_preset_and_config_round_trip():
    r = mp.Recipe([StaticInt8Config(observer="percentile", max_error=None, exclude=("classifier",))])
    assert mp.Recipe.from_yaml(r.to_yaml()) == r
    from modelpress.methods.base import PRESETS

    assert PRESETS.get("int8-static").build() == [StaticInt8Config()]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"observer": "kl"}, "observer must be one of minmax, percentile, mse"),
        ({"percentile": 30.0}, "percentile"),
        ({"weight_granularity": "group"}, "weight_granularity"),
        ({"fallback": "int4"}, "fallback"),
        ({"n_samples": 0}, "n_samples"),
        ({"max_error_ratio": 0.5}, "max_error_ratio"),
        ({"max_error": -1.0}, "max_error"),
    ],
)
def test_bad_configs(kwargs, message):
    with pytest.raises(mp.ConfigError, match=message):
        StaticInt8Config(**kwargs)


def test_needs_calibration_data(tiny_bert):
    with pytest.raises(mp.ConfigError, match="needs calibration data"):
        mp.compress(tiny_bert, StaticInt8Config())
    with pytest.raises(mp.ConfigError, match="gave no batches for calibration"):
        mp.compress(tiny_bert, StaticInt8Config(), data=ToyData([]))


# -- out-of-line layers --------------------------------------------------------------------


class Spiky(nn.Module):
    """Four Linears side by side on the same input; ``spiky`` sees one channel blown up in
    some tokens (its weight column there is small, so the outputs stay ordinary)."""

    def __init__(self, every: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c, self.spiky = (nn.Linear(32, 32) for _ in range(4))
        with torch.no_grad():
            self.spiky.weight[:, 0] *= 1e-3
        self.every = every

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.clone()
        s[:: self.every, 0] = 300.0
        return self.a(x) + self.b(x) + self.c(x) + self.spiky(s)


def _spiky_data() -> ToyData:
    g = torch.Generator().manual_seed(0)
    return ToyData([torch.randn(256, 32, generator=g) for _ in range(4)])


@pytest.mark.parametrize(
    ("every", "fallback", "expected"),
    [(256, "dynamic", Int8DynamicLinear), (256, "float", nn.Linear), (1, "dynamic", nn.Linear)],
)
def test_out_of_line_layer_kept_and_reported(caplog, monkeypatch, every, fallback, expected):
    # the decision logic against per-token INT8 (int_mm); fbgemm's asymmetric uint8 range is
    # finer on this layer's one-sided outliers, which would keep it "in line"
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear_a8=int_mm")
    data = _spiky_data()
    cfg = StaticInt8Config(observer="minmax", fallback=fallback, n_samples=4, batch_size=1)
    ctx = CompressContext(data=data, progress=False)
    with caplog.at_level(logging.WARNING):
        model = HANDLERS[StaticInt8Config](Spiky(every), cfg, ctx)
    assert type(model.spiky) is expected  # outlier in 1 of 256 tokens: per-token INT8 copes
    assert all(isinstance(getattr(model, n), Int8StaticLinear) for n in "abc")
    assert len(ctx.notes) == 1 and "spiky" in ctx.notes[0] and "out of line" in ctx.notes[0]
    assert any("spiky" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
