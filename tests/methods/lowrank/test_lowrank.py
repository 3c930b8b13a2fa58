"""Low-rank factorization: Eckart–Young oracles, whitening beats plain SVD on correlated
inputs, rank rules and skips, every preset round-trips through save/load, bad configs fail
with one clear error."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import modelpress as mp
from modelpress.errors import ConfigError
from modelpress.methods.base import PRESETS
from modelpress.methods.lowrank import LowRankConfig, svd
from modelpress.models.lowrank import LowRankLinear, breakeven_rank, saves_parameters
from modelpress.recipe import Recipe


class FakeTask:
    """Task adapter stand-in: random token batches, the model's own loss."""

    higher_is_better = True

    def __init__(self, causal: bool, n_batches: int = 3, vocab: int = 1000) -> None:
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


def _ids(vocab: int = 1000) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(1))


def _correlated(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """(n, d) inputs with strongly correlated, unevenly scaled channels."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    scales = torch.logspace(0, -3, d, dtype=torch.float64)
    return (z * scales) @ mix


# -- the math ------------------------------------------------------------------------------


def test_reconstruction_error_is_the_discarded_singular_values():
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = svd.spectrum(w)
    for r in (1, 5, 12, 24):
        a, b = svd.factorize(w, r)
        assert a.shape == (24, r) and b.shape == (r, 40)
        err = float(torch.linalg.matrix_norm(w - a @ b) ** 2)
        assert math.isclose(err, float((s[r:] ** 2).sum()), rel_tol=1e-9, abs_tol=1e-9)
    a, b = svd.factorize(w, 24)
    assert torch.allclose(a @ b, w, atol=1e-10)  # full rank: exact


def test_whitened_error_is_the_discarded_singular_values_of_w_l():
    """SVD-LLM: with L Lᵀ = XᵀX, ‖(W − Ŵ)Xᵀ‖² equals the discarded σ² of W·L."""
    x = _correlated(400, 16)
    w = torch.randn(12, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    L = svd.whitening_factor(x.T @ x, damping=0.0)
    s = svd.spectrum(w, L)
    for r in (2, 6, 11):
        a, b = svd.factorize(w, r, L)
        err = float(torch.linalg.matrix_norm((w - a @ b) @ x.T) ** 2)
        assert math.isclose(err, float((s[r:] ** 2).sum()), rel_tol=1e-6)


@pytest.mark.parametrize("rank", [2, 4, 8])
def test_whitening_beats_plain_svd_on_correlated_inputs(rank):
    x = _correlated(600, 32, seed=1)
    w = torch.randn(24, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def out_err(whiten):
        a, b = svd.factorize(w, rank, whiten)
        return float(torch.linalg.matrix_norm((w - a @ b) @ x.T))

    plain = out_err(None)
    white = out_err(svd.whitening_factor(x.T @ x, damping=1e-6))
    scaled = out_err(svd.activation_scale(x.abs().mean(0), alpha=0.5))
    assert white < 0.8 * plain
    assert white <= scaled + 1e-9  # the exact whitening is optimal in this metric


def test_asvd_scaling_beats_plain_svd_on_unevenly_scaled_channels():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(600, 32, generator=g, dtype=torch.float64) * torch.logspace(
        1, -2, 32, dtype=torch.float64
    )
    w = torch.randn(24, 32, generator=g, dtype=torch.float64)
    s = svd.activation_scale(x.abs().mean(0), alpha=0.5)
    for rank in (2, 4, 8):
        errs = [
            float(torch.linalg.matrix_norm((w - a @ b) @ x.T))
            for a, b in (svd.factorize(w, rank), svd.factorize(w, rank, s))
        ]
        assert errs[1] < errs[0]


def test_rank_rules():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert svd.rank_for_energy(s, 16 / 22) == 1
    assert svd.rank_for_energy(s, 0.8) == 2
    assert svd.rank_for_energy(s, 1.0) == 4
    # 32x32 with bias: 1056 parameters; 20% fewer leaves 844.8 - 32 for r·64 -> r = 12
    assert svd.rank_for_reduction(32, 32, 0.2, bias=True) == 12
    assert svd.rank_for_reduction(32, 32, 0.2, bias=False) == 12
    assert svd.rank_for_reduction(4, 4, 0.9, bias=True) == 0
    assert breakeven_rank(32, 64) == pytest.approx(2048 / 96)
    assert saves_parameters(32, 64, 21) and not saves_parameters(32, 64, 22)


def test_global_allocation_meets_the_budget_and_favours_important_directions():
    g = torch.Generator().manual_seed(0)
    flat = torch.ones(32, dtype=torch.float64)  # every direction matters equally
    steep = torch.logspace(0, -6, 32, dtype=torch.float64)  # a few directions carry it all
    shapes = [(32, 32), (32, 32)]
    budget = 20 * 64
    ranks = svd.allocate_ranks([flat, steep], shapes, budget)
    assert sum(r * 64 for r in ranks) <= budget
    assert ranks[0] > ranks[1] >= 1
    assert all(r < breakeven_rank(32, 32) for r in ranks)
    with pytest.raises(ValueError):
        svd.allocate_ranks([flat, steep], shapes, 64)
    m8 = svd.allocate_ranks(
        [flat, torch.rand(32, generator=g).sort(descending=True).values], shapes, budget, multiple=4
    )
    assert all(r % 4 == 0 for r in m8)


# -- the method on tiny transformers -------------------------------------------------------


def _block_linears(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


def _params(mods) -> int:
    return sum(p.numel() for m in mods for p in m.parameters())


def test_uniform_reduction_factorises_the_block_linears_only(tiny_bert):
    before = {n: m for n, m in tiny_bert.named_modules() if ".encoder.layer." in n and type(m) is nn.Linear}
    model = mp.compress(tiny_bert, LowRankConfig(reduction=0.2), progress=False)
    done = _block_linears(model)
    assert set(done) == set(before)
    assert isinstance(model.classifier, nn.Linear) and isinstance(model.bert.pooler.dense, nn.Linear)
    cut = 1 - _params(done.values()) / _params(before.values())
    assert 0.2 <= cut < 0.3
    q = done["bert.encoder.layer.0.attention.self.query"]
    assert (q.in_features, q.rank, q.out_features) == (32, 12, 32)
    assert q.down.bias is None and q.up.bias is not None


def test_llama_targets_leave_the_tied_head_and_embeddings(tiny_llama):
    model = mp.compress(tiny_llama, LowRankConfig(rank=8), progress=False)
    names = set(_block_linears(model))
    assert "model.layers.0.self_attn.k_proj" in names and "model.layers.1.mlp.down_proj" in names
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        model(input_ids=_ids())


def test_layers_that_would_not_save_are_skipped_with_the_reason(tiny_bert):
    # rank 16 of a 32x32 weight: 16·64 = 32·32, no saving; the 32->64 FFN layers save (16 < 21.3)
    model = mp.compress(tiny_bert, LowRankConfig(rank=16), progress=False)
    done = set(_block_linears(model))
    assert done == {
        f"bert.encoder.layer.{i}.{p}" for i in range(2) for p in ("intermediate.dense", "output.dense")
    }
    notes = mp.compression_notes(model)
    assert len(notes) == 8 and all("saves no parameters" in n for n in notes)
    assert any("attention.self.query left dense" in n for n in notes)


def test_energy_rule_keeps_the_asked_energy(tiny_bert):
    model = mp.compress(tiny_bert, LowRankConfig(energy=0.5), progress=False)
    name = "bert.encoder.layer.0.intermediate.dense"
    w = tiny_bert.get_submodule(name).weight.detach()
    s = svd.spectrum(w)
    r = model.get_submodule(name).rank
    kept = float((s[:r] ** 2).sum() / (s**2).sum())
    assert kept >= 0.5 and float((s[: r - 1] ** 2).sum() / (s**2).sum()) < 0.5


@pytest.mark.parametrize("variant", ["svd", "asvd", "svd-llm"])
def test_global_allocation_meets_the_global_budget(tiny_llama, variant):
    data = FakeTask(causal=True)
    before = {n: m for n, m in tiny_llama.named_modules() if ".layers." in n and type(m) is nn.Linear}
    model = mp.compress(
        tiny_llama,
        LowRankConfig(variant=variant, reduction=0.3, allocation="global"),
        data=data,
        progress=False,
    )
    after = [model.get_submodule(n) for n in before]
    assert 1 - _params(after) / _params(before.values()) >= 0.3
    ranks = {m.rank for m in after if isinstance(m, LowRankLinear)}
    assert len(ranks) > 1  # not uniform


def test_activation_aware_variants_beat_svd_on_the_calibration_outputs(tiny_bert):
    """The layer's output error on its calibration inputs: svd-llm < plain SVD."""
    data = FakeTask(causal=False)
    name = "bert.encoder.layer.1.intermediate.dense"
    xs: list[torch.Tensor] = []
    h = tiny_bert.get_submodule(name).register_forward_pre_hook(lambda _m, a: xs.append(a[0].reshape(-1, 32)))
    with torch.no_grad():
        for b in data.batches("train", 32, shuffle_seed=0):
            data.loss(tiny_bert, b)
    h.remove()
    x = torch.cat(xs)
    ref = tiny_bert.get_submodule(name)(x)
    errs = {}
    for variant in ("svd", "svd-llm"):
        m = mp.compress(tiny_bert, LowRankConfig(variant=variant, rank=4), data=data, progress=False)
        with torch.no_grad():
            errs[variant] = float((m.get_submodule(name)(x) - ref).norm())
    assert errs["svd-llm"] < errs["svd"]


@pytest.mark.parametrize("preset", [p for p in PRESETS.names() if PRESETS.get(p).family == "lowrank"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_every_preset_saves_and_loads_equal(preset, arch, tiny_bert, tiny_llama, tmp_path):
    model0 = tiny_bert if arch == "bert" else tiny_llama
    torch.manual_seed(0)
    model = mp.compress(model0, preset, data=FakeTask(causal=arch == "llama"), progress=False)
    assert _block_linears(model)
    loaded = mp.load(mp.save(model, tmp_path / "a"))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=_ids()).logits, model(input_ids=_ids()).logits)
    assert mp.recipe_of(loaded) == mp.recipe_of(model)


def test_finetune_of_the_factors_only(tiny_bert):
    model = mp.compress(
        tiny_bert,
        LowRankConfig(reduction=0.3, epochs=1, lr=1e-2, train_other=False),
        data=FakeTask(causal=False),
        progress=False,
    )
    plain = mp.compress(tiny_bert, LowRankConfig(reduction=0.3), progress=False)
    q, q0 = model.bert.encoder.layer[0].attention.self.query, plain.bert.encoder.layer[0].attention.self.query
    assert not torch.equal(q.down.weight, q0.down.weight)
    assert torch.equal(q.up.bias, q0.up.bias)  # not a factor: frozen
    assert torch.equal(model.classifier.weight, tiny_bert.classifier.weight)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"energy": 0}, r"^lowrank: energy must be a number in \(0, 1\], got 0$"),
        ({"energy": 1.5}, r"^lowrank: energy must be a number in \(0, 1\], got 1.5$"),
        ({"rank": 0}, r"^lowrank: rank must be a positive integer, got 0$"),
        ({"reduction": 1.0}, r"^lowrank: reduction must be a number in \(0, 1\), got 1.0$"),
        ({"reduction": 0.2, "rank": 4}, "set one of reduction, energy and rank"),
        ({"energy": 0.9, "allocation": "global"}, "set reduction, not energy"),
        ({"variant": "tucker"}, "variant must be one of svd, asvd, svd-llm"),
        ({"rank": 6, "rank_multiple": 4}, "not a multiple"),
    ],
)
def test_bad_configs_fail_with_one_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LowRankConfig(**kwargs)
    with pytest.raises(ConfigError, match=message):
        Recipe.from_yaml(
            "methods:\n  - method: lowrank\n" + "".join(f"    {k}: {v}\n" for k, v in kwargs.items())
        )


def test_a_rank_of_min_dims_or_more_is_one_clear_error(tiny_bert):
    with pytest.raises(
        ConfigError, match=r"rank 32 must be below min\(in, out\) = 32 of 'bert\.encoder"
    ) as e:
        mp.compress(tiny_bert, LowRankConfig(rank=32), progress=False)
    assert "\n" not in str(e.value)


def test_activation_aware_variants_need_data(tiny_bert):
    with pytest.raises(ConfigError, match="lowrank needs calibration data for variant 'svd-llm'"):
        mp.compress(tiny_bert, LowRankConfig(variant="svd-llm"), progress=False)
    with pytest.raises(ConfigError, match="lowrank needs data to fine-tune"):
        mp.compress(tiny_bert, LowRankConfig(epochs=1), progress=False)


def test_patterns_and_empty_selection(tiny_bert):
    with pytest.raises(ConfigError, match="include pattern 'nope' matches no module"):
        mp.compress(tiny_bert, LowRankConfig(include="nope"), progress=False)
    with pytest.raises(ConfigError, match="no Linear layer to factorise"):
        mp.compress(tiny_bert, LowRankConfig(include="classifier"), progress=False)
    model = mp.compress(tiny_bert, LowRankConfig(include="*.attention.*", exclude="*.value"), progress=False)
    done = set(_block_linears(model))
    assert done and all(".attention." in n and not n.endswith("value") for n in done)


def test_a_second_pass_does_not_factorise_the_factors(tiny_bert):
    once = mp.compress(tiny_bert, LowRankConfig(reduction=0.2, include="*.intermediate.*"), progress=False)
    twice = mp.compress(once, LowRankConfig(reduction=0.2), progress=False)
    assert set(_block_linears(once)) < set(_block_linears(twice))
    assert not any(isinstance(m, LowRankLinear) for f in _block_linears(twice).values() for m in f.children())


def test_compensated_weight_is_w_when_the_inputs_did_not_change():
    g0 = torch.Generator().manual_seed(3)
    x = torch.randn(400, 16, dtype=torch.float64, generator=g0) @ torch.randn(
        16, 16, dtype=torch.float64, generator=g0
    )
    w = torch.randn(8, 16, dtype=torch.float64, generator=g0)
    g = x.T @ x
    L = svd.whitening_factor(g, 1e-12)
    assert torch.allclose(svd.compensated(w, g, L), w, atol=1e-6)


def test_compensated_rank_r_layer_fits_the_original_outputs_on_changed_inputs():
    """min ‖X₀Wᵀ − XW'ᵀ‖ over rank-r W': factorize(compensated(...)) beats SVD-LLM on X alone,
    and at full rank it is the least-squares solution."""
    g0 = torch.Generator().manual_seed(1)
    x0 = torch.randn(500, 16, dtype=torch.float64, generator=g0) @ torch.randn(
        16, 16, dtype=torch.float64, generator=g0
    )
    x = x0 + 0.3 * torch.randn(
        500, 16, dtype=torch.float64, generator=g0
    )  # the inputs after earlier layers changed
    w = torch.randn(12, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    L = svd.whitening_factor(x.T @ x, 1e-12)
    target = svd.compensated(w, x.T @ x0, L)
    lstsq = torch.linalg.lstsq(x, x0 @ w.T).solution.T
    assert torch.allclose(target, lstsq, atol=1e-5 * float(lstsq.abs().max()))

    def err(wr: torch.Tensor) -> float:
        return float((x0 @ w.T - x @ wr.T).norm())

    for r in (2, 5, 8):
        a, b = svd.factorize(target, r, L)
        a2, b2 = svd.factorize(w, r, L)
        assert err(a @ b) < err(a2 @ b2)


class _Stack(nn.Module):
    """Residual MLP blocks in a ModuleList (what the sequential walk steps through)."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 48), nn.Linear(48, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc2(torch.tanh(self.fc1(x)))

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([self.Block() for _ in range(4)])
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.layers:
            x = b(x)
        return self.head(x)


class _StackData:
    def __init__(self) -> None:
        self.xs = [_correlated(256, 16, seed=s).float() for s in range(4)]

    def batches(self, split: str, batch_size: int, *, shuffle_seed: int | None = None):
        yield from ({"x": x} for x in self.xs)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return model(batch["x"]).pow(2).mean()


def test_sequential_svd_llm_is_closer_to_the_original_than_one_pass():
    """On the calibration inputs (what both fit), block by block with the compensated target
    ends nearer the original's outputs than every layer whitened by the original's inputs."""
    model, data = _Stack().eval(), _StackData()
    x = torch.cat(data.xs)
    with torch.no_grad():
        ref = model(x)
    errs = {}
    for seq in (False, True):
        cfg = LowRankConfig(variant="svd-llm", reduction=0.5, sequential=seq)
        m = mp.compress(model, cfg, data=data, progress=False)
        assert all(isinstance(b.fc1, LowRankLinear) for b in m.layers)
        with torch.no_grad():
            errs[seq] = float((m(x) - ref).norm() / ref.norm())
    assert errs[True] < errs[False], errs
