import copy
import itertools

import pytest
import torch
from torch import nn

import modelpress as mp
from modelpress.formats.affine import AffineQuantized
from modelpress.methods.quantization import QATConfig, WeightOnlyConfig
from modelpress.methods.quantization.qat import convert_fake_quant, prepare_fake_quant, train_fake_quant
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.nn import DecodedEmbedding, DecodedLinear
from modelpress.nn.fake_quant import FakeQuantEmbedding, FakeQuantLinear, WeightQuantizer
from modelpress.primitives.lsq import lsq_fake_quantize, lsq_grad_scale
from modelpress.primitives.quant import qrange


@pytest.fixture
def tiny_task(tiny_bert_dir, small_splits):
    return TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)


def _perturb(quantizers, seed: int = 0) -> None:
    """Stand-in for training: move scales and offsets so zero points and steps change."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for q in quantizers:
            q.scale.mul_(1 + 0.2 * torch.randn(q.scale.shape, generator=g))
            if q.offset is not None:
                q.offset.add_(2 * q.scale * torch.randn(q.offset.shape, generator=g))


@pytest.mark.parametrize(
    ("bits", "symmetric", "group_size"), list(itertools.product((2, 3, 4, 8), (False, True), (None, 64)))
)
def test_fake_quant_at_init_is_rtn(bits, symmetric, group_size):
    w = torch.randn(12, 128, generator=torch.Generator().manual_seed(bits)) * 0.05
    q = WeightQuantizer(w, bits, group_size, symmetric=symmetric)
    ref = AffineQuantized.encode(w, bits, symmetric=symmetric, group_size=group_size).decode()
    assert torch.equal(q(w), ref)  # quantize -> dequantize, bit for bit


def _lsq_reference(w, s, z, bits, group, gscale):
    """LSQ as written in the paper, by plain autograd: ŵ = (round(clip(w/s + z)) - z)·s with
    straight-through rounding and the gradient-scale trick on s and z."""
    qmin, qmax = qrange(bits, z is None)

    def ste(x):
        return x + (torch.round(x) - x).detach()

    def gs(x):
        return x * gscale + (x - x * gscale).detach()

    rows, cols = w.shape
    wg = w.reshape(rows, cols // group, group)
    s = gs(s).unsqueeze(-1)
    zi = 0 if z is None else ste(gs(z)).unsqueeze(-1)
    v = torch.clamp(wg / s + zi, qmin, qmax)
    return ((ste(v) - zi) * s).reshape(w.shape)


@pytest.mark.parametrize("symmetric", [False, True])
def test_ste_gradients_match_lsq(symmetric):
    gen = torch.Generator().manual_seed(0)
    bits, group = 3, 32
    w0 = torch.randn(6, 64, generator=gen)
    quant = WeightQuantizer(w0, bits, group, symmetric=symmetric)
    s0, z0 = quant.qparams()
    s0 = (s0 * 0.6).detach()  # a narrower range than min-max: some weights are clipped
    z0 = None if z0 is None else (z0.detach() + 0.3)
    upstream = torch.randn(6, 64, generator=gen)
    gscale = lsq_grad_scale(group, bits, symmetric)

    w, s = w0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    z = None if z0 is None else z0.clone().requires_grad_(True)
    out = lsq_fake_quantize(w, s, z, bits, group_size=group)
    (out * upstream).sum().backward()

    wr, sr = w0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    zr = None if z0 is None else z0.clone().requires_grad_(True)
    ref = _lsq_reference(wr, sr, zr, bits, group, gscale)
    (ref * upstream).sum().backward()

    torch.testing.assert_close(out, ref.detach())
    # the weight gradient passes straight through inside the range and is 0 where clipped
    qmin, qmax = qrange(bits, symmetric)
    u = (w0.reshape(6, 2, group) / s0.unsqueeze(-1)).reshape(6, 64)
    if z0 is not None:
        u = u + torch.round(z0).repeat_interleave(group, dim=1)
    clipped = (u < qmin) | (u > qmax)
    assert clipped.any() and (~clipped).any()
    assert torch.equal(w.grad[clipped], torch.zeros(int(clipped.sum())))
    assert torch.equal(w.grad[~clipped], upstream[~clipped])
    torch.testing.assert_close(w.grad, wr.grad)
    # the scale (LSQ) and the zero point (LSQ+) get gradients, as the paper's formula says
    assert s.grad.abs().sum() > 0
    torch.testing.assert_close(s.grad, sr.grad, rtol=1e-5, atol=1e-6)
    if z is not None:
        assert z.grad.abs().sum() > 0
        torch.testing.assert_close(z.grad, zr.grad, rtol=1e-5, atol=1e-6)


def test_quantizer_parameters_get_gradients_through_a_layer():
    lin = nn.Linear(64, 8)
    quant = WeightQuantizer(lin.weight.detach(), 4, 32)
    layer = FakeQuantLinear(lin, quant)
    layer(torch.randn(5, 64)).pow(2).sum().backward()
    for p in (lin.weight, lin.bias, quant.scale, quant.offset):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert quant.scale.dim() == 1 and quant.offset.dim() == 1  # kept out of weight decay by fit


def test_conversion_equals_fake_quant_exactly(tiny_bert, monkeypatch):
    # exactly: the reference kernel (the faster ones round activations: tests/kernels)
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear=reference,embedding=reference")
    cfg = QATConfig(bits=4, group_size=16)
    quantizers = prepare_fake_quant(tiny_bert, cfg)
    _perturb(quantizers)
    with torch.no_grad():  # and the latent weights, as training moves them
        for p in tiny_bert.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fake = {
        n: m.quantizer(m.weight).detach()
        for n, m in tiny_bert.named_modules()
        if isinstance(m, (FakeQuantLinear, FakeQuantEmbedding))
    }
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = tiny_bert(input_ids=ids).logits
    convert_fake_quant(tiny_bert)
    for name, w in fake.items():
        mod = tiny_bert.get_submodule(name)
        assert isinstance(mod, (DecodedLinear, DecodedEmbedding)), name
        assert isinstance(mod.weight, AffineQuantized) and mod.weight.bits == 4
        assert torch.equal(mod.weight.decode(), w), name
    with torch.no_grad():
        assert torch.equal(tiny_bert(input_ids=ids).logits, before)


def test_tied_weights_share_one_quantizer_and_format(tiny_llama):
    cfg = QATConfig(bits=4, group_size=32)
    quantizers = prepare_fake_quant(tiny_llama, cfg)
    assert tiny_llama.lm_head.quantizer is tiny_llama.model.embed_tokens.quantizer
    assert len(quantizers) == len({id(q) for q in quantizers})
    convert_fake_quant(tiny_llama)
    assert tiny_llama.lm_head.weight is tiny_llama.model.embed_tokens.weight


class ToyRegression:
    """A task adapter in miniature: regress a float teacher MLP's outputs (learnable in a
    few steps, unlike sentiment with a random tiny BERT)."""

    higher_is_better = True

    def __init__(self, teacher: nn.Module, n: int = 256) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = {s: torch.randn(n, 32, generator=g) for s in ("train", "validation")}
        with torch.no_grad():
            self.y = {s: teacher(x) for s, x in self.x.items()}

    def batches(self, split, batch_size, *, shuffle_seed=None):
        n = len(self.x[split])
        order = (
            torch.arange(n)
            if shuffle_seed is None
            else torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
        )
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield {"x": self.x[split][idx], "y": self.y[split][idx]}

    def loss(self, model, batch):
        return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])

    @torch.no_grad()
    def score(self, model, split="validation"):
        return -float(self.loss(model, {"x": self.x[split], "y": self.y[split]}))


def _toy_teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()


def test_qat_loss_goes_down_and_beats_rtn():
    teacher = _toy_teacher()
    task = ToyRegression(teacher)
    cfg = QATConfig(bits=2, group_size=16, lr=3e-3, epochs=4, batch_size=16, embeddings=False)
    model = copy.deepcopy(teacher)
    prepare_fake_quant(model, cfg)
    history = train_fake_quant(model, cfg, task, progress=False).history
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    model = convert_fake_quant(model)
    rtn = mp.compress(teacher, WeightOnlyConfig(bits=2, group_size=16))
    assert isinstance(model[0], DecodedLinear) and model[0].weight.bits == 2
    rtn_loss, qat_loss = -task.score(rtn, "train"), -task.score(model, "train")
    assert qat_loss < 0.5 * rtn_loss  # the converted (real integer) model, not the fake one


def test_qat_trains_on_a_text_task(tiny_task):
    model = tiny_task.load_original()
    cfg = QATConfig(bits=4, group_size=16, lr=1e-3, max_steps=4, batch_size=16)
    quantizers = prepare_fake_quant(model, cfg)
    scales = [q.scale.detach().clone() for q in quantizers]
    result = train_fake_quant(model, cfg, tiny_task, progress=False)
    assert result.steps == 4 and "metric" in result.history[0]  # evaluated after the epoch
    assert all(not torch.equal(q.scale, s) for q, s in zip(quantizers, scales, strict=True))
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_qat_compress_save_load_same_size_as_rtn(tmp_path, tiny_task):
    original = tiny_task.load_original()
    cfg = QATConfig(bits=4, group_size=16, lr=1e-3, max_steps=3, batch_size=16)
    model = mp.compress(original, cfg, data=tiny_task, progress=False)
    assert not any(isinstance(m, (FakeQuantLinear, FakeQuantEmbedding)) for m in model.modules())
    assert not any(type(m) in (nn.Linear, nn.Embedding) for m in model.modules())
    assert [c.name for c in mp.recipe_of(model)] == ["qat"]
    rtn = mp.compress(original, WeightOnlyConfig(bits=4, group_size=16))
    pq, pr = mp.save(model, tmp_path / "qat"), mp.save(rtn, tmp_path / "rtn")
    assert (pq / "model.safetensors").stat().st_size == (pr / "model.safetensors").stat().st_size
    q_codes = {n: m.weight.int_values() for n, m in model.named_modules() if isinstance(m, DecodedLinear)}
    r_codes = {n: m.weight.int_values() for n, m in rtn.named_modules() if isinstance(m, DecodedLinear)}
    assert q_codes.keys() == r_codes.keys()
    assert any(not torch.equal(q_codes[n], r_codes[n]) for n in q_codes)  # it did train
    loaded = mp.load(pq)
    assert mp.recipe_of(loaded) == mp.recipe_of(model)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_qat_preset_and_config_roundtrip():
    [cfg] = mp.PRESETS.get("qat-int4").build()
    assert cfg == QATConfig(bits=4, group_size=128, symmetric=False)
    assert mp.Recipe.from_yaml(mp.Recipe([cfg]).to_yaml()).methods == (cfg,)


def test_qat_bad_input(tiny_bert):
    with pytest.raises(mp.ConfigError, match="qat needs training data"):
        mp.compress(tiny_bert, QATConfig(), progress=False)
    for bad in ({"bits": 1}, {"bits": 9}, {"lr": 0}, {"epochs": 0}, {"max_steps": 0}, {"group_size": 0}):
        with pytest.raises(mp.ConfigError, match="qat:"):
            QATConfig(**bad)
    with pytest.raises(mp.ConfigError, match=r"include pattern 'nothing\*' matches no module"):
        prepare_fake_quant(tiny_bert, QATConfig(include=("nothing*",)))
    with pytest.raises(mp.ConfigError, match="no Linear layer matched"):
        prepare_fake_quant(tiny_bert, QATConfig(embeddings=False, include=("*embeddings*",)))
