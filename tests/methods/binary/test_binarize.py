"""Binarization / ternarization methods: STE gradients by hand, forward = the op on decoded
weights, trained weights converted exactly, save -> load for every preset, first / last
layer defaults, the size on disk, and bad configs as one clear error."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelpress as mp
from modelpress.api import artifact_bytes
from modelpress.errors import ConfigError
from modelpress.formats import BinaryTensor, TernaryTensor
from modelpress.kernels.binary import binarize_input
from modelpress.methods.base import PRESETS
from modelpress.methods.binary import BinaryConfig, TernaryConfig
from modelpress.methods.binary.binarize import _fake_to_formats, _prepare, binary_targets
from modelpress.models.classification import TextClassificationTask
from modelpress.models.lenet import LeNet300100
from modelpress.models.sources import local_source
from modelpress.nn import DecodedLinear
from modelpress.nn.binary import FakeBinaryLinear, WeightBinarizer, XnorLinear, binarize_activations

FAMILY_PRESETS = [p for p in PRESETS.names() if PRESETS.get(p).family == "binary"]


@pytest.fixture(scope="module")
def task_and_original(tmp_path_factory, bert_config, minilm_dir, small_splits):
    """A tiny BERT classifier task (a few short training steps per epoch) and its original
    model, built once for the module (its head is trained at the first load)."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from modelpress.data.datasets import TextSplits
    from modelpress.models.classification import ClassifierTraining
    from modelpress.training import TrainConfig

    d = tmp_path_factory.mktemp("binary") / "bert"
    torch.manual_seed(0)
    bert = BertForSequenceClassification(bert_config)
    bert.config.id2label, bert.config.label2id = {0: "rotten", 1: "fresh"}, {"rotten": 0, "fresh": 1}
    bert.save_pretrained(str(d))
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(d))
    cut = TextSplits(small_splits.train, small_splits.validation, small_splits.test, "rt-small", 0)
    training = ClassifierTraining(train=TrainConfig(epochs=1, lr=1e-3, patience=None), batch_size=32)
    task = TextClassificationTask(local_source(str(d)), cut, seq_len=16, training=training)
    return task, task.load_original(progress=False)


@pytest.fixture
def tiny_task(task_and_original):
    return task_and_original[0]


@pytest.fixture
def original(task_and_original):
    return copy.deepcopy(task_and_original[1])


# -- the straight-through estimator, by hand ------------------------------------------------


def test_binary_weight_ste_by_hand():
    w = torch.tensor([[0.5, -2.0, 0.0, 1.0]], requires_grad=True)
    out = WeightBinarizer("binary", clip=1.0)(w)
    alpha = (0.5 + 2.0 + 0.0 + 1.0) / 4
    assert out.tolist() == [[alpha, -alpha, alpha, alpha]]  # sign(0) = +1
    (out * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert w.grad.tolist() == [[1.0, 0.0, 3.0, 4.0]]  # zero where |w| > 1


def test_ternary_weight_ste_by_hand():
    w = torch.tensor([[0.3, -2.0, 0.05, 1.2]], requires_grad=True)
    out = WeightBinarizer("ternary", clip=1.0)(w)
    gamma = (0.3 + 2.0 + 0.05 + 1.2) / 4  # codes round(w / gamma) clipped: 0, -1, 0, +1
    torch.testing.assert_close(out, torch.tensor([[0.0, -gamma, 0.0, gamma]]))
    (out * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert w.grad.tolist() == [[1.0, 0.0, 3.0, 0.0]]


def test_unclipped_ste_and_activations_by_hand():
    w = torch.tensor([[3.0, -0.1]], requires_grad=True)
    out = WeightBinarizer("sign", clip=None)(w)
    assert out.tolist() == [[1.0, -1.0]]
    (out * torch.tensor([[5.0, 7.0]])).sum().backward()
    assert w.grad.tolist() == [[5.0, 7.0]]  # plain STE: the identity
    x = torch.tensor([[0.5, -1.5, 2.0]], requires_grad=True)
    xb = binarize_activations(x, scaled=True, clip=1.0)
    beta = 4.0 / 3.0
    torch.testing.assert_close(xb, torch.tensor([[beta, -beta, beta]]))
    (xb * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0, 0.0]]


# -- forward equals the op on decoded weights -------------------------------------------------

CONFIGS = [
    BinaryConfig(),
    BinaryConfig(group_size=16),
    BinaryConfig(scheme="xnor"),
    BinaryConfig(scheme="bnn"),
    TernaryConfig(),
    TernaryConfig(granularity="tensor", packing="2bit"),
]


@pytest.mark.parametrize(
    "config", CONFIGS, ids=["bwn", "bwn-g16", "xnor", "bnn", "ternary", "ternary-tensor-2bit"]
)
def test_compressed_layers_equal_the_op_on_decoded(config, tiny_bert):
    model = mp.compress(tiny_bert, config, progress=False)
    layers = [m for m in model.modules() if isinstance(m, (DecodedLinear, XnorLinear))]
    assert layers and isinstance(model.classifier, nn.Linear)  # the head stays in float
    x = torch.randn(3, 5, layers[0].in_features)
    for m in layers:
        x = torch.randn(3, 5, m.in_features)
        w = m.weight.decode()
        assert isinstance(m.weight, TernaryTensor if config.name == "ternary" else BinaryTensor)
        xin = x
        if isinstance(m, XnorLinear):
            assert m.centered  # the default
            mu = x.mean(-1, keepdim=True)
            xin = binarize_input(x - mu, m.act_scaled) + mu
        with torch.no_grad():
            torch.testing.assert_close(m(x), F.linear(xin, w, m.bias), rtol=2e-2, atol=2e-2)
    assert isinstance(model.bert.embeddings.word_embeddings, nn.Embedding)  # embeddings stay in float


def test_trained_weights_convert_exactly(tiny_bert):
    for config in (
        BinaryConfig(scheme="xnor"),
        TernaryConfig(granularity="tensor"),
        BinaryConfig(group_size=8),
    ):
        model = mp.compress(tiny_bert, "fp32", progress=False)
        targets, _, _ = binary_targets(model, config)
        _prepare(model, config, targets)
        fakes = {n: m for n, m in model.named_modules() if isinstance(m, FakeBinaryLinear)}
        with torch.no_grad():  # stand-in for training: move the latent weights
            for m in fakes.values():
                m.linear.weight.add_(0.05 * torch.randn_like(m.linear.weight))
        trained = {n: m.binarizer(m.linear.weight).detach().clone() for n, m in fakes.items()}
        from modelpress.methods.base import CompressContext

        _fake_to_formats(model, config, CompressContext(progress=False))
        for n, w in trained.items():
            assert torch.equal(model.get_submodule(n).weight.decode(), w), n


def test_qat_with_distillation_trains_and_round_trips(tiny_task, original, tmp_path):
    torch.manual_seed(0)
    for config in (
        TernaryConfig(epochs=1, max_steps=2, distill=True, kd_alpha=0.9, kd_hidden=1.0),
        BinaryConfig(scheme="xnor", epochs=1, max_steps=2),
    ):
        model = mp.compress(original, config, data=tiny_task, progress=False)
        assert not any(isinstance(m, FakeBinaryLinear) for m in model.modules())
        loaded = mp.load(mp.save(model, tmp_path / config.name))
        x = tiny_task.example_inputs(2)
        with torch.no_grad():
            assert torch.equal(model(**x).logits, loaded(**x).logits)
    # the original (the teacher) is untouched
    assert isinstance(original.bert.encoder.layer[0].attention.self.query, nn.Linear)


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_every_preset_saves_and_loads_equal(preset, tiny_task, original, tmp_path):
    torch.manual_seed(0)
    model = mp.compress(original, preset, data=tiny_task, progress=False)
    loaded = mp.load(mp.save(model, tmp_path / preset))
    x = tiny_task.example_inputs(2)
    with torch.no_grad():
        assert torch.equal(model(**x).logits, loaded(**x).logits)
    assert mp.recipe_of(loaded) == mp.recipe_of(model)


def test_presets_are_registered():
    assert {
        "binary-bwn",
        "binary-xnor",
        "ternary-b158",
        "ternary-b158-kd",
        "ternary-b158-kd+emb4",
        "prune-50+ternary-b158",
    } <= set(FAMILY_PRESETS)


# -- first / last layers, size on disk ---------------------------------------------------------


def test_lenet_first_and_last_layers_and_size(tmp_path):
    torch.manual_seed(0)
    net = LeNet300100().eval()
    bwn = mp.compress(net, BinaryConfig(), progress=False)
    assert isinstance(bwn.fc1.weight, BinaryTensor) and isinstance(bwn.fc2.weight, BinaryTensor)
    assert isinstance(bwn.fc3, nn.Linear)  # the classifier stays in float
    xnor = mp.compress(net, BinaryConfig(scheme="xnor"), progress=False)
    assert isinstance(xnor.fc1, nn.Linear) and isinstance(xnor.fc2, XnorLinear)  # raw pixels not binarized
    full = artifact_bytes(mp.save(mp.compress(net, "fp32", progress=False), tmp_path / "fp32"))
    small = artifact_bytes(mp.save(bwn, tmp_path / "bwn"))
    assert full / small >= 20, (full, small)
    ternary = artifact_bytes(mp.save(mp.compress(net, TernaryConfig(), progress=False), tmp_path / "t"))
    assert full / ternary >= 15, (full, ternary)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(mp.load(tmp_path / "bwn")(x), bwn(x))


def test_keep_blocks_at_higher_precision(tiny_bert):
    from modelpress.formats import AffineQuantized

    model = mp.compress(tiny_bert, TernaryConfig(keep=("*.layer.0.*",), keep_bits=8), progress=False)
    q = model.bert.encoder.layer[0].attention.self.query.weight
    assert isinstance(q, AffineQuantized) and q.bits == 8
    assert isinstance(model.bert.encoder.layer[1].attention.self.query.weight, TernaryTensor)
    model = mp.compress(tiny_bert, BinaryConfig(keep=("*.layer.1.*",)), progress=False)
    assert isinstance(model.bert.encoder.layer[1].output.dense, nn.Linear)


def test_embeddings_only_when_asked(tiny_bert, tiny_llama):
    model = mp.compress(tiny_bert, BinaryConfig(embeddings=True), progress=False)
    emb = model.bert.embeddings.word_embeddings
    ids = torch.tensor([[1, 5, 5, 7]])
    assert torch.equal(emb(ids), F.embedding(ids, emb.weight.decode()))
    with pytest.raises(ConfigError, match="embeddings: true"):
        mp.compress(tiny_bert, BinaryConfig(include=("bert.embeddings.word_embeddings",)), progress=False)
    with pytest.raises(ConfigError, match="embeddings: true"):
        mp.compress(tiny_bert, TernaryConfig(include=("*embeddings*",)), progress=False)
    with pytest.raises(ConfigError, match="tied"):  # the LM head shares the embedding's weight
        mp.compress(tiny_llama, TernaryConfig(keep_head=False), progress=False)
    llama = mp.compress(tiny_llama, TernaryConfig(), progress=False)
    assert isinstance(llama.model.layers[0].mlp.up_proj.weight, TernaryTensor)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: BinaryConfig(scheme="xnr"), "scheme must be one of"),
        (lambda: BinaryConfig(distill=True), "set epochs"),
        (lambda: BinaryConfig(scheme="xnor", group_size=8), "group_size"),
        (lambda: TernaryConfig(keep_bits=8), "keep_bits"),
        (lambda: TernaryConfig(keep_bits=3, keep=("x",)), "keep_bits must be one of"),
        (lambda: TernaryConfig(kd_hidden=1.0), "distill"),
        (lambda: TernaryConfig(lr=1e-3), "epochs"),
        (lambda: TernaryConfig(packing="3bit"), "packing"),
    ],
)
def test_bad_configs_are_one_clear_error(make, match):
    with pytest.raises(ConfigError, match=match) as e:
        make()
    assert "\n" not in str(e.value)


def test_training_needs_data_and_patterns_must_match(tiny_bert):
    with pytest.raises(ConfigError, match="training data"):
        mp.compress(tiny_bert, BinaryConfig(epochs=1), progress=False)
    with pytest.raises(ConfigError, match="matches no module"):
        mp.compress(tiny_bert, BinaryConfig(keep=("*.layer.7.*",)), progress=False)


def test_configs_round_trip_through_dicts():
    for c in [*CONFIGS, TernaryConfig(epochs=2, distill=True, kd_hidden=0.5, keep=("a",), keep_bits=4)]:
        assert type(c).from_dict(c.to_dict()) == c


def test_centered_xnor_tells_non_negative_tokens_apart():
    """After a ReLU every input is >= 0: uncentered signs are all +1, so every token gives
    the same output up to a scale; centred, the tokens' variation survives binarization."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    fmt = BinaryTensor.encode(lin.weight.detach())
    x = torch.relu(torch.randn(32, 64))
    ref = F.linear(x, fmt.decode(), lin.bias)
    outs = {}
    for centered in (False, True):
        m = XnorLinear.wrap(lin, fmt, centered=centered)
        with torch.no_grad():
            outs[centered] = m(x)
    sv = torch.linalg.svdvals(outs[False] - lin.bias.detach())
    assert sv[1] < 1e-4 * sv[0]  # every token: one output direction, scaled by its mean|x|
    assert torch.linalg.svdvals(outs[True] - lin.bias.detach())[1] > 0.1 * sv[0]
    corr = torch.corrcoef(torch.stack([outs[True].flatten(), ref.flatten()]))[0, 1]
    assert corr > 0.5


def test_xnor_args_without_centered_load_uncentered():
    lin = nn.Linear(16, 4)
    fmt = BinaryTensor.encode(lin.weight.detach())
    m = XnorLinear.build_empty({"bias": True, "act_scaled": True}, {"weight": fmt})
    assert not m.centered
    with pytest.raises(ValueError, match="centered"):
        XnorLinear.build_empty({"bias": True, "centered": "yes"}, {"weight": fmt})
