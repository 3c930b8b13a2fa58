"""Structured pruning: the pruned model equals the equivalently masked model, parameter
counts are exact, the artifact round-trips and is smaller, bad input fails clearly."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelpress as mp
from modelpress.api import MANIFEST_FILE, WEIGHTS_FILE
from modelpress.errors import ConfigError
from modelpress.methods.structured import (
    PruneChannelsConfig,
    PruneFFNConfig,
    PruneHeadsConfig,
    PruneLayersConfig,
)
from modelpress.models.architectures import register_architecture
from modelpress.models.lenet import LeNet5, LeNet300100
from modelpress.recipe import Recipe


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _kept_blocks(orig: torch.Tensor, pruned: torch.Tensor, block: int, dim: int = 0) -> list[int]:
    """Which blocks of ``orig`` (along ``dim``) survive in ``pruned``, found by value."""
    o, p = orig.movedim(dim, 0), pruned.movedim(dim, 0)
    kept = []
    for j in range(p.shape[0] // block):
        for i in range(o.shape[0] // block):
            if torch.equal(o[i * block : (i + 1) * block], p[j * block : (j + 1) * block]):
                kept.append(i)
                break
    assert kept == sorted(kept) and len(kept) == p.shape[0] // block
    return kept


def _zero_rows(lin: nn.Linear, removed: list[int], block: int) -> None:
    with torch.no_grad():
        for r in removed:
            lin.weight[r * block : (r + 1) * block] = 0
            if lin.bias is not None:
                lin.bias[r * block : (r + 1) * block] = 0


class FakeTask:
    """Task adapter stand-in: random token batches, the model's own loss."""

    higher_is_better = True

    def __init__(self, causal: bool, n_batches: int = 4, vocab: int = 1000) -> None:
        self.causal, self.n, self.vocab = causal, n_batches, vocab

    def batches(self, split: str, batch_size: int, *, shuffle_seed: int | None = None):
        g = torch.Generator().manual_seed(0 if shuffle_seed is None else shuffle_seed)
        for _ in range(self.n):
            ids = torch.randint(0, self.vocab, (4, 9), generator=g)
            b = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            b["labels"] = ids if self.causal else torch.randint(0, 2, (4,), generator=g)
            yield b

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return model(**batch).loss

    def score(self, model: nn.Module, split: str = "validation") -> float:
        with torch.no_grad():
            return -float(sum(self.loss(model, b) for b in self.batches(split, 4)))


@pytest.fixture
def bert4(bert_config):
    """tiny BERT with 4 heads of 8 (hidden 32) so that pruning leaves several heads."""
    from transformers import BertForSequenceClassification

    cfg = copy.deepcopy(bert_config)
    cfg.num_attention_heads = 4
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).eval()


def _bert_x():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding exercises the attention mask
    return {"input_ids": ids, "attention_mask": mask}


def _llama_x():
    return {"input_ids": torch.randint(0, 30522, (2, 11), generator=torch.Generator().manual_seed(2))}


# -- oracles: pruned == masked ---------------------------------------------------------------


@pytest.mark.parametrize("importance", ["l2", "activation", "taylor"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_bert_heads_equal_masked_model(bert4, importance, scope):
    cfg = PruneHeadsConfig(fraction=0.5, importance=importance, scope=scope, calibration_batches=2)
    pruned = mp.compress(bert4, cfg, data=FakeTask(causal=False))
    masked = copy.deepcopy(bert4)
    d, removed_params = 8, 0
    for layer_o, layer_p, layer_m in zip(
        bert4.bert.encoder.layer, pruned.bert.encoder.layer, masked.bert.encoder.layer, strict=True
    ):
        so, sp = layer_o.attention.self, layer_p.attention.self
        kept = _kept_blocks(so.query.weight, sp.query.weight, d)
        assert kept == _kept_blocks(so.value.weight, sp.value.weight, d)
        assert kept == _kept_blocks(
            layer_o.attention.output.dense.weight, layer_p.attention.output.dense.weight, d, 1
        )
        assert sp.num_attention_heads == len(kept) and sp.all_head_size == len(kept) * d
        removed = [h for h in range(4) if h not in kept]
        sm = layer_m.attention.self
        for lin in (sm.query, sm.key, sm.value):  # a head with zero values contributes nothing
            _zero_rows(lin, removed, d)
        removed_params += len(removed) * d * (3 * (32 + 1) + 32)
    if scope == "layer":
        assert all(layer.attention.self.num_attention_heads == 2 for layer in pruned.bert.encoder.layer)
    assert _n_params(bert4) - _n_params(pruned) == removed_params == 8 * 2 * 2 * (3 * 33 + 32)
    x = _bert_x()
    with torch.no_grad():
        torch.testing.assert_close(pruned(**x).logits, masked(**x).logits, atol=1e-5, rtol=1e-4)


def test_llama_gqa_removes_whole_key_value_groups(tiny_llama):
    # 4 query heads, 2 KV heads of 16: a unit is one KV head + its 2 query heads
    pruned = mp.compress(tiny_llama, PruneHeadsConfig(fraction=0.5))
    masked = copy.deepcopy(tiny_llama)
    hd, g = 16, 2
    for lo, lp, lm in zip(tiny_llama.model.layers, pruned.model.layers, masked.model.layers, strict=True):
        ao, ap = lo.self_attn, lp.self_attn
        kept = _kept_blocks(ao.k_proj.weight, ap.k_proj.weight, hd)
        assert len(kept) == 1
        assert kept == _kept_blocks(ao.v_proj.weight, ap.v_proj.weight, hd)
        assert kept == _kept_blocks(ao.q_proj.weight, ap.q_proj.weight, hd * g)
        assert kept == _kept_blocks(ao.o_proj.weight, ap.o_proj.weight, hd * g, 1)
        assert ap.num_key_value_groups == 2  # the query-to-KV ratio is unchanged
        _zero_rows(lm.self_attn.v_proj, [1 - kept[0]], hd)  # zero values: the group's heads add nothing
    # per layer: q and o lose 2 heads x 16 x 64, k and v one head x 16 x 64 (no biases)
    assert _n_params(tiny_llama) - _n_params(pruned) == 2 * (2 * 2 * 16 * 64 + 2 * 16 * 64)
    x = _llama_x()
    with torch.no_grad():
        torch.testing.assert_close(pruned(**x).logits, masked(**x).logits, atol=1e-5, rtol=1e-4)
        # generation with the KV cache runs on the smaller attention
        out = pruned.generate(x["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


@pytest.mark.parametrize("importance", ["l2", "activation", "taylor"])
def test_bert_ffn_equals_masked_model(tiny_bert, importance):
    pruned = mp.compress(
        tiny_bert,
        PruneFFNConfig(fraction=0.25, importance=importance, calibration_batches=2),
        data=FakeTask(False),
    )
    masked = copy.deepcopy(tiny_bert)
    layers = (tiny_bert.bert.encoder.layer, pruned.bert.encoder.layer, masked.bert.encoder.layer)
    for lo, lp, lm in zip(*layers, strict=True):
        kept = _kept_blocks(lo.intermediate.dense.weight, lp.intermediate.dense.weight, 1)
        assert kept == _kept_blocks(lo.output.dense.weight, lp.output.dense.weight, 1, 1)
        assert len(kept) == 48
        _zero_rows(lm.intermediate.dense, [i for i in range(64) if i not in kept], 1)  # gelu(0) = 0
    assert _n_params(tiny_bert) - _n_params(pruned) == 2 * 16 * (32 + 1 + 32)
    x = _bert_x()
    with torch.no_grad():
        torch.testing.assert_close(pruned(**x).logits, masked(**x).logits, atol=1e-5, rtol=1e-4)


def test_llama_ffn_equals_masked_model(tiny_llama):
    pruned = mp.compress(tiny_llama, PruneFFNConfig(fraction=0.5, scope="global"))
    masked = copy.deepcopy(tiny_llama)
    n_kept = 0
    for lo, lp, lm in zip(tiny_llama.model.layers, pruned.model.layers, masked.model.layers, strict=True):
        kept = _kept_blocks(lo.mlp.gate_proj.weight, lp.mlp.gate_proj.weight, 1)
        assert kept == _kept_blocks(lo.mlp.up_proj.weight, lp.mlp.up_proj.weight, 1)
        assert kept == _kept_blocks(lo.mlp.down_proj.weight, lp.mlp.down_proj.weight, 1, 1)
        assert lp.mlp.intermediate_size == len(kept)
        n_kept += len(kept)
        _zero_rows(lm.mlp.gate_proj, [i for i in range(128) if i not in kept], 1)  # silu(0) * up = 0
    assert n_kept == 128  # global: half of all 256 neurons
    assert _n_params(tiny_llama) - _n_params(pruned) == 128 * 3 * 64
    x = _llama_x()
    with torch.no_grad():
        torch.testing.assert_close(pruned(**x).logits, masked(**x).logits, atol=1e-5, rtol=1e-4)


def test_lenet5_channels_equal_masked_model_and_exact_counts(device):
    torch.manual_seed(0)
    net = LeNet5().eval().to(device)
    pruned = mp.compress(net, PruneChannelsConfig(fraction=0.5))
    masked = copy.deepcopy(net)
    k1 = _kept_blocks(net.conv1.weight, pruned.conv1.weight, 1)
    k2 = _kept_blocks(net.conv2.weight[:, k1], pruned.conv2.weight, 1)  # its inputs follow conv1
    cols = torch.cat([torch.arange(c * 16, (c + 1) * 16) for c in k2]).to(device)
    k3 = _kept_blocks(net.fc1.weight[:, cols], pruned.fc1.weight, 1)
    assert (len(k1), len(k2), len(k3)) == (10, 25, 250)
    # fc1's inputs: each kept conv2 channel keeps its 4x4 block of columns, in order
    assert torch.equal(pruned.fc1.weight, net.fc1.weight[k3][:, cols])
    assert pruned.fc2.out_features == 10  # the output layer is kept whole
    for lin, kept, n in ((masked.conv1, k1, 20), (masked.conv2, k2, 50), (masked.fc1, k3, 500)):
        with torch.no_grad():
            for r in (i for i in range(n) if i not in kept):
                lin.weight[r] = 0
                lin.bias[r] = 0
    expected = (10 * 25 + 10) + (25 * 10 * 25 + 25) + (400 * 250 + 250) + (250 * 10 + 10)
    assert _n_params(pruned) == expected == 109_295
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-4)


@register_architecture("test-bn-cnn")
class BNCNN(nn.Module):
    """conv-BN-relu -> conv-BN -> relu -> global pool -> flatten -> linear."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, num_classes)

    def arch_args(self) -> dict:
        return {"num_classes": self.num_classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _bn_cnn() -> BNCNN:
    torch.manual_seed(0)
    net = BNCNN()
    with torch.no_grad():  # non-trivial running statistics
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return net.eval()


def test_batchnorm_follows_its_conv_and_equals_masked_consumers(tmp_path):
    net = _bn_cnn()
    pruned = mp.compress(net, PruneChannelsConfig(fraction=0.5))
    k1 = _kept_blocks(net.conv1.weight, pruned.conv1.weight, 1)
    k2 = _kept_blocks(net.conv2.weight[:, k1], pruned.conv2.weight, 1)
    assert (len(k1), len(k2)) == (4, 3)
    assert torch.equal(pruned.bn1.running_mean, net.bn1.running_mean[k1]) and pruned.bn1.num_features == 4
    assert torch.equal(pruned.bn2.weight, net.bn2.weight[k2])
    # BN of a zero channel is not zero, so the oracle masks the consumers' input channels
    masked = copy.deepcopy(net)
    with torch.no_grad():
        masked.conv2.weight[:, [i for i in range(8) if i not in k1]] = 0
        masked.fc.weight[:, [i for i in range(6) if i not in k2]] = 0
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-4)
    loaded = mp.load(mp.save(pruned, tmp_path / "bn"))
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert loaded.bn2.num_features == 3 and torch.equal(loaded.bn2.running_var, pruned.bn2.running_var)


def test_mlp_neurons_follow_linear_chain():
    torch.manual_seed(0)
    net = LeNet300100().eval()
    pruned = mp.compress(net, PruneChannelsConfig(fraction=0.5, exclude=("fc2",)))
    assert (pruned.fc1.out_features, pruned.fc2.in_features, pruned.fc2.out_features) == (150, 150, 100)


# -- whole blocks ----------------------------------------------------------------------------


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_bert_layer_drop_equals_shorter_model(tiny_bert, importance, tmp_path):
    from transformers import BertForSequenceClassification

    pruned = mp.compress(
        tiny_bert,
        PruneLayersConfig(fraction=0.5, importance=importance, calibration_batches=2),
        data=FakeTask(False),
    )
    assert pruned.config.num_hidden_layers == 1 and len(pruned.bert.encoder.layer) == 1
    kept = next(
        i
        for i in range(2)
        if torch.equal(
            tiny_bert.bert.encoder.layer[i].output.dense.weight,
            pruned.bert.encoder.layer[0].output.dense.weight,
        )
    )
    # oracle: a model built with one layer, holding the kept layer's weights as layer 0
    cfg = copy.deepcopy(tiny_bert.config)
    cfg.num_hidden_layers = 1
    short = BertForSequenceClassification(cfg).eval()
    state = {
        k.replace(f"encoder.layer.{kept}.", "encoder.layer.0."): v
        for k, v in tiny_bert.state_dict().items()
        if not k.startswith("bert.encoder.layer.") or k.startswith(f"bert.encoder.layer.{kept}.")
    }
    short.load_state_dict(state)
    x = _bert_x()
    with torch.no_grad():
        assert torch.equal(pruned(**x).logits, short(**x).logits)
    loaded = mp.load(mp.save(pruned, tmp_path / "layers"))
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, pruned(**x).logits)


def test_llama_layer_drop_renumbers_cache_layers(tiny_llama, tmp_path):
    pruned = mp.compress(tiny_llama, PruneLayersConfig(fraction=0.5), data=FakeTask(True, vocab=30522))
    assert pruned.config.num_hidden_layers == 1 and pruned.model.layers[0].self_attn.layer_idx == 0
    x = _llama_x()
    with torch.no_grad():
        out = pruned.generate(x["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)
    path = mp.save(pruned, tmp_path / "l")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["structure"] == {"modules": {}, "attributes": {}}  # the config says it all
    loaded = mp.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, pruned(**x).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


# -- save / load -----------------------------------------------------------------------------


def test_pruned_bert_round_trips_and_is_smaller(bert4, tmp_path):
    pruned = mp.compress(
        bert4, [PruneHeadsConfig(fraction=0.5, scope="global"), PruneFFNConfig(fraction=0.5, scope="global")]
    )
    path = mp.save(pruned, tmp_path / "p")
    full = mp.save(bert4, tmp_path / "full")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    entry = manifest["structure"]["modules"]["bert.encoder.layer.0.attention.self.query"]
    assert entry["class"] == "Linear" and entry["args"]["in_features"] == 32
    heads = pruned.bert.encoder.layer[0].attention.self.num_attention_heads
    assert (
        manifest["structure"]["attributes"]["bert.encoder.layer.0.attention.self"]["num_attention_heads"]
        == heads
    )
    loaded = mp.load(path)
    x = _bert_x()
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, pruned(**x).logits)
    assert _n_params(loaded) == _n_params(pruned)
    assert [layer.attention.self.num_attention_heads for layer in loaded.bert.encoder.layer] == [
        layer.attention.self.num_attention_heads for layer in pruned.bert.encoder.layer
    ]
    # the weights file shrinks by the removed float32 parameters (embeddings dominate here)
    removed = _n_params(bert4) - _n_params(pruned)
    saved = (full / WEIGHTS_FILE).stat().st_size - (path / WEIGHTS_FILE).stat().st_size
    assert 4 * removed - 200 <= saved <= 4 * removed + 200
    assert mp.artifact_bytes(path) < mp.artifact_bytes(full)
    assert mp.recipe_of(loaded) == mp.recipe_of(pruned)


def test_pruned_llama_round_trips_with_tied_embeddings(tiny_llama, tmp_path):
    pruned = mp.compress(tiny_llama, [PruneHeadsConfig(fraction=0.5), PruneFFNConfig(fraction=0.5)])
    loaded = mp.load(mp.save(pruned, tmp_path / "p"))
    x = _llama_x()
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, pruned(**x).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_pruned_lenet_round_trips(tmp_path):
    torch.manual_seed(0)
    pruned = mp.compress(LeNet5().eval(), PruneChannelsConfig(fraction=0.5))
    path = mp.save(pruned, tmp_path / "p")
    loaded = mp.load(path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert mp.artifact_bytes(path) < 0.3 * mp.artifact_bytes(mp.save(LeNet5(), tmp_path / "full"))


def test_pruning_then_quantization_round_trips(bert4, tmp_path):
    model = mp.compress(bert4, [PruneHeadsConfig(fraction=0.25), PruneFFNConfig(fraction=0.5)])
    model = mp.compress(model, "int8-dynamic")
    loaded = mp.load(mp.save(model, tmp_path / "q"))
    x = _bert_x()
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, model(**x).logits)


def test_finetune_after_pruning_runs_through_the_loop(tiny_bert):
    before = copy.deepcopy(tiny_bert)
    cfg = PruneFFNConfig(fraction=0.5, epochs=1, max_steps=2, lr=1e-3)
    pruned = mp.compress(tiny_bert, cfg, data=FakeTask(False), progress=False)
    assert pruned.classifier.weight.requires_grad == before.classifier.weight.requires_grad
    assert not torch.equal(pruned.classifier.weight, before.classifier.weight)  # it trained
    assert pruned.bert.encoder.layer[0].intermediate.dense.out_features == 32


# -- configs and bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        PruneHeadsConfig(fraction=0.25, scope="global", importance="taylor", epochs=1, max_steps=10),
        PruneFFNConfig(),
        PruneChannelsConfig(fraction=0.3, exclude=("fc1",)),
        PruneLayersConfig(fraction=0.5, importance="taylor"),
    ],
)
def test_configs_round_trip(cfg, tmp_path):
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    Recipe([cfg]).save(tmp_path / "r.yaml")
    assert list(Recipe.load(tmp_path / "r.yaml")) == [cfg]


@pytest.mark.parametrize(
    "make",
    [
        lambda: PruneHeadsConfig(fraction=1.0),
        lambda: PruneFFNConfig(fraction=-0.1),
        lambda: PruneHeadsConfig(importance="random"),
        lambda: PruneFFNConfig(scope="model"),
        lambda: PruneChannelsConfig(epochs=-1),
        lambda: PruneHeadsConfig(max_steps=0),
        lambda: PruneLayersConfig(importance="l2"),
    ],
)
def test_bad_configs_are_rejected(make):
    with pytest.raises(ConfigError):
        make()


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"prune-heads: fraction must be a number in \[0, 1\), got 1.0"):
        PruneHeadsConfig(fraction=1.0)
    with pytest.raises(ConfigError, match="prune-layers: a block's weight norm"):
        PruneLayersConfig(importance="l2")
    assert PruneFFNConfig(include="*.layer.0").include == ("*.layer.0",)  # one pattern, not its letters


def test_include_selects_structures_by_module_name(tiny_bert):
    pruned = mp.compress(copy.deepcopy(tiny_bert), PruneFFNConfig(fraction=0.5, include="*.layer.0"))
    assert [layer.intermediate.dense.out_features for layer in pruned.bert.encoder.layer] == [32, 64]
    with pytest.raises(ConfigError, match=r"include pattern '\*\.layr\.0' matches no module"):
        mp.compress(copy.deepcopy(tiny_bert), PruneFFNConfig(include="*.layr.0"))
    with pytest.raises(ConfigError, match="no structure to prune"):  # a module, but no FFN block
        mp.compress(copy.deepcopy(tiny_bert), PruneFFNConfig(include="*.layer.0.output.dense"))


def test_removing_every_head_is_refused(tiny_bert):
    # 2 heads per layer: 0.9 rounds to removing both
    with pytest.raises(ConfigError, match="removes all 2 heads"):
        mp.compress(tiny_bert, PruneHeadsConfig(fraction=0.9))


def test_removing_every_block_is_refused(tiny_bert):
    with pytest.raises(ConfigError, match="removes all 2 blocks"):
        mp.compress(tiny_bert, PruneLayersConfig(fraction=0.8), data=FakeTask(False))


def test_tied_weights_are_refused(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    model.model.layers[1].mlp.up_proj.weight = model.model.layers[0].mlp.up_proj.weight
    with pytest.raises(ConfigError, match="tied"):
        mp.compress(model, PruneFFNConfig(fraction=0.5))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        y = y + self.conv2(F.relu(y))  # residual: conv1 and conv2 channels are coupled
        return self.fc(y.mean((2, 3)))


def test_residual_add_couples_its_producers():
    torch.manual_seed(0)
    pruned = mp.compress(Residual().eval(), PruneChannelsConfig(fraction=0.5))
    # conv1 and conv2 feed the same sum: they keep the same 4 channels, and fc reads those
    assert (pruned.conv1.out_channels, pruned.conv2.in_channels, pruned.conv2.out_channels) == (4, 4, 4)
    assert pruned.fc.in_features == 4
    with pytest.raises(ConfigError, match=r"cannot prune 'fc'.*the model's output"):
        mp.compress(Residual().eval(), PruneChannelsConfig(fraction=0.5, include=("fc",)))


def test_channels_on_a_transformer_is_refused(tiny_bert):
    with pytest.raises(ConfigError, match="prune-heads / prune-ffn"):
        mp.compress(tiny_bert, PruneChannelsConfig(fraction=0.5))


def test_data_is_required_where_needed(tiny_bert):
    with pytest.raises(ConfigError, match="task adapter"):
        mp.compress(tiny_bert, PruneHeadsConfig(importance="taylor"))
    with pytest.raises(ConfigError, match="task adapter"):
        mp.compress(tiny_bert, PruneFFNConfig(epochs=1))


def test_heads_on_a_cnn_is_refused():
    with pytest.raises(ConfigError, match="no attention"):
        mp.compress(LeNet5(), PruneHeadsConfig())


def test_pruning_a_quantized_layer_is_refused(tiny_bert):
    with pytest.raises(ConfigError, match="before methods that replace layers"):
        mp.compress(mp.compress(tiny_bert, "int8-dynamic"), PruneFFNConfig())


def test_presets_are_registered():
    from modelpress.methods.base import PRESETS

    for name in ("prune-heads-25", "prune-ffn-50", "prune-structured", "prune-channels-50"):
        preset = PRESETS.get(name)
        assert preset.family == "pruning"
        configs = preset.build()
        assert configs[-1].epochs >= 1  # each ends with its fine-tune
    kinds = [type(c) for c in PRESETS.get("prune-structured").build()]
    assert kinds == [PruneHeadsConfig, PruneFFNConfig]


def test_structured_recipe_on_a_text_task_round_trips(tmp_path, tiny_bert_dir, small_splits):
    from modelpress.models.classification import TextClassificationTask
    from modelpress.models.sources import local_source

    task = TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)
    original = task.load_original(progress=False)
    # the preset's recipe, cut short: Taylor scores on 2 train batches, 3 fine-tune steps
    recipe = [
        PruneHeadsConfig(fraction=0.5, importance="taylor", calibration_batches=2, batch_size=16),
        PruneFFNConfig(
            fraction=0.5, importance="taylor", calibration_batches=2, batch_size=16, epochs=1, max_steps=3
        ),
    ]
    model = mp.compress(original, recipe, data=task, progress=False)
    assert [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer] == [1, 1]
    assert _n_params(model) < _n_params(original)
    loaded = mp.load(mp.save(model, tmp_path / "s"))
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert 0.0 <= task.score(loaded) <= 1.0
