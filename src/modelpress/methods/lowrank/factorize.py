"""``lowrank``: replace Linear layers by two smaller Linears (truncated SVD, ASVD, SVD-LLM).

Each selected ``nn.Linear`` (``W (out, in)``) becomes a ``LowRankLinear``: ``down`` (in ->
r, no bias) then ``up`` (r -> out, the bias), with ``up.weight @ down.weight`` the best
rank-``r`` approximation of ``W`` in the variant's metric (``svd.factorize``). The result is an
ordinary dense model; the manifest's ``structure`` entry records each factorised layer, so it
saves, loads, and composes with quantization or clustering of the factors afterwards.

Papers: Eckart & Young 1936 (truncated SVD is the best rank-r approximation); Yuan et al. 2023,
"ASVD: Activation-aware Singular Value Decomposition for Compressing Large Language Models"
(arXiv 2312.05821); Wang et al. 2024, "SVD-LLM: Truncation-aware Singular Value Decomposition
for Large Language Model Compression" (arXiv 2403.07378).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...data.calibration import calibration_batches, run_forward
from ...errors import ConfigError
from ...models.blocks import block_list, tied_weight_ids
from ...models.lowrank import LowRankLinear, breakeven_rank, saves_parameters
from ...training import TrainConfig, finetune_on_task, grads_on
from ..base import (
    NON_NEGATIVE,
    POSITIVE,
    CompressContext,
    MethodConfig,
    between,
    check_patterns,
    matches,
    one_of,
    param,
    register,
    register_config,
    replace_module,
)
from . import svd

__all__ = ["VARIANTS", "LowRankConfig", "lowrank_targets", "plan_ranks"]

log = logging.getLogger(__name__)

VARIANTS = ("svd", "asvd", "svd-llm")
DEFAULT_REDUCTION = 0.2
FIT_DATA = "data to fine-tune the factors (or set epochs: 0)"


@register_config
@dataclasses.dataclass(frozen=True)
class LowRankConfig(MethodConfig):
    """Factorise Linear layers into two smaller ones.

    variant: ``svd`` (truncated SVD of the weight, no data), ``asvd`` (SVD of ``W·diag(s)``,
    ``s = mean|x|^alpha`` per input channel on calibration data) or ``svd-llm`` (SVD of
    ``W·L``, ``L Lᵀ = XᵀX + damping``: minimises the output error on calibration inputs).
    The rank of each layer comes from at most one of: ``reduction`` (the share of the
    targeted Linears' parameters removed, in (0, 1); the default, 0.2, when none is set),
    ``energy`` (the smallest rank keeping that share of ``Σσ²``, in (0, 1]) or ``rank`` (one
    rank for every layer; it must stay below each layer's ``min(in, out)``).
    allocation (with ``reduction``): ``uniform`` (every layer loses the same share) or
    ``global`` (per-layer ranks under one budget, the most important singular directions of
    all layers kept: ``svd.allocate_ranks``). rank_multiple: ranks are multiples of it.
    A layer where factorising would not save parameters (``r ≥ in·out / (in + out)``) is left
    as it is, with a note saying why.
    Targets: the Linears inside the transformer blocks (or, in a model without a block list,
    every Linear but the output layer); never embeddings, the classifier / LM head, a weight
    tied to another module, or the factors of an earlier low-rank pass. include / exclude:
    patterns on module names, applied to those targets.
    sequential (svd-llm; default false: not yet measured on a real LM): walk the blocks in
    order, each layer fitted on the inputs the blocks before it, already factorised, give
    it, to the original layer's outputs on the
    original model's inputs (``svd.compensated``: the error of earlier layers is corrected,
    not compounded); ``false``: every layer whitened by the original model's inputs at once.
    n_samples / batch_size: calibration examples (asvd, svd-llm) and the fine-tune's batch.
    epochs / lr / max_steps / seed: fine-tuning after factorising (epochs=0: none), of
    every parameter, or of the factors only with ``train_other: false``.
    """

    name = "lowrank"
    notes_float_layers = True
    variant: str = param("svd", one_of(*VARIANTS))
    reduction: float | None = param(None, between(0, 1, lo_open=True, hi_open=True))
    energy: float | None = param(None, between(0, 1, lo_open=True))
    rank: int | None = param(None, POSITIVE)
    allocation: str = param("uniform", one_of("uniform", "global"))
    rank_multiple: int = param(1, POSITIVE)
    alpha: float = param(0.5, between(0, 1, lo_open=True))
    damping: float = param(0.01, between(0, 1, hi_open=True))
    sequential: bool = False
    n_samples: int = param(128, POSITIVE)
    batch_size: int = param(32, POSITIVE)
    epochs: int = param(0, NON_NEGATIVE)
    lr: float = param(5e-5, POSITIVE)
    max_steps: int | None = param(None, POSITIVE)
    train_other: bool = True
    seed: int = param(0, NON_NEGATIVE)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        given = [f for f in ("reduction", "energy", "rank") if getattr(self, f) is not None]
        if len(given) > 1:
            raise self.error(f"set one of reduction, energy and rank, got {' and '.join(given)}")
        if self.allocation == "global" and given and given[0] != "reduction":
            raise self.error(f"allocation 'global' shares a parameter budget: set reduction, not {given[0]}")
        if self.rank is not None and self.rank % self.rank_multiple:
            raise self.error(f"rank {self.rank} is not a multiple of rank_multiple {self.rank_multiple}")

    @property
    def rule(self) -> str:
        """``reduction``, ``energy`` or ``rank``: what sets the ranks."""
        return "energy" if self.energy is not None else "rank" if self.rank is not None else "reduction"

    @property
    def target_reduction(self) -> float:
        return self.reduction if self.reduction is not None else DEFAULT_REDUCTION


# -- targets -------------------------------------------------------------------------------


def _output_layers(model: nn.Module) -> set[str]:
    """Names of the output layer: the HF output embeddings if any, else the last Linear."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    out = {n for n, m in model.named_modules(remove_duplicate=False) if head is not None and m is head}
    if not out:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        out = set(linears[-1:])
    return out


def lowrank_targets(model: nn.Module, config: LowRankConfig) -> list[tuple[str, nn.Linear]]:
    """The Linears ``config`` factorises (see ``LowRankConfig``), in module order."""
    check_patterns(model, config.name, config.include, config.exclude)
    try:
        prefix, _ = block_list(model, config.name)
        inside: Callable[[str], bool] = lambda n: n.startswith(prefix + ".")  # noqa: E731
    except ConfigError:  # an MLP or CNN: its hidden layers
        heads = _output_layers(model)
        inside = lambda n: n not in heads  # noqa: E731
    tied = tied_weight_ids(model)
    factors = {n for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    out = [
        (n, m)
        for n, m in model.named_modules()
        if type(m) is nn.Linear
        and n
        and inside(n)
        and id(m.weight) not in tied
        and n.rpartition(".")[0] not in factors
        and matches(n, config.include, config.exclude)
    ]
    if not out:
        raise config.error(
            "no Linear layer to factorise (the Linears inside the transformer blocks, or of an MLP / "
            "CNN every Linear but the output layer, that include / exclude select)"
        )
    return out


# -- calibration ---------------------------------------------------------------------------


class _Stop(Exception):
    """Raised from a hook to end a calibration forward pass early."""


def _calibrate(
    model: nn.Module, targets: list[tuple[str, nn.Linear]], config: LowRankConfig, ctx: CompressContext
) -> dict[str, torch.Tensor]:
    """Per target: ``mean|x|`` per input channel (asvd, ``(in,)``) or the Gram matrix ``XᵀX``
    (svd-llm, ``(in, in)``), float64, over the calibration batches' tokens. Layers that read
    the very same input tensor (q / k / v, gate / up) share one accumulator."""
    data = ctx.require_data(config.name, f"calibration data for variant '{config.variant}'")
    batches = calibration_batches(data, config.name, batch_size=config.batch_size, n_samples=config.n_samples)
    acc: dict[str, torch.Tensor] = {}
    tokens: dict[str, int] = {}
    alias: dict[str, str] = {}  # layer -> the layer whose input (and statistics) it shares
    # the last input seen and its first reader, on the first batch: readers of one tensor run
    # one after the other (q, k, v; gate, up); the reference keeps its id from being reused
    last: list[tuple[torch.Tensor, str]] = []
    first = True
    # the forward stops once every target has seen its input (no LM head logits computed)
    pending: set[str] = set()

    def hook(name: str) -> Callable[..., None]:
        def run(_m: nn.Module, args: tuple[Any, ...]) -> None:
            pending.discard(name)
            if name in alias:
                return _stop_when_done()
            x = args[0]
            if first:
                if last and last[0][0] is x:
                    alias[name] = last[0][1]
                    return _stop_when_done()
                last[:] = [(x, name)]
            x2 = x.detach().reshape(-1, x.shape[-1]).float()  # (tokens, in)
            if config.variant == "asvd":
                part = x2.abs().sum(0).double()
            else:  # one float32 Gram matrix per batch, summed in float64
                part = (x2.T @ x2).double()
            acc[name] = acc[name] + part if name in acc else part
            tokens[name] = tokens.get(name, 0) + x2.shape[0]
            _stop_when_done()

        return run

    def _stop_when_done() -> None:
        if not pending:
            raise _Stop

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in targets]
    try:
        for b in tqdm(batches, desc=f"{config.name} calibration", disable=not ctx.progress, leave=False):
            pending.update(n for n, _ in targets)
            try:
                run_forward(model, data, [b], progress=False)
            except _Stop:
                pass
            last.clear()
            first = False
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, _ in targets if n not in acc and n not in alias]
    if missing:
        raise config.error(f"calibration never reached {', '.join(missing[:3])} (is it used in forward?)")
    stats = {}
    for n, _ in targets:
        owner = alias.get(n, n)
        stats[n] = acc[owner] / tokens[owner] if config.variant == "asvd" else acc[owner]
    return stats


def _whitening(
    targets: list[tuple[str, nn.Linear]], stats: dict[str, torch.Tensor], config: LowRankConfig
) -> dict[str, torch.Tensor | None]:
    """Per target: ``None`` (svd), the ASVD scales or the SVD-LLM Cholesky factor (shared by
    layers that read the same input)."""
    if config.variant == "svd":
        return {n: None for n, _ in targets}
    out: dict[str, torch.Tensor | None] = {}
    by_stats: dict[int, torch.Tensor] = {}
    for n, _ in targets:
        s = stats[n]
        if id(s) not in by_stats:
            try:
                by_stats[id(s)] = (
                    svd.activation_scale(s, config.alpha)
                    if config.variant == "asvd"
                    else svd.whitening_factor(s, config.damping)
                )
            except ValueError as e:
                raise config.error(f"{n}: {e}") from None
        out[n] = by_stats[id(s)]
    return out


# -- ranks ---------------------------------------------------------------------------------


def _dims(mod: nn.Linear) -> tuple[int, int, bool]:
    return mod.in_features, mod.out_features, mod.bias is not None


def plan_ranks(
    targets: list[tuple[str, nn.Linear]],
    whiten: dict[str, torch.Tensor | None],
    config: LowRankConfig,
) -> dict[str, int | str]:
    """Per target: its rank, or the reason it stays dense (a string)."""
    mult = config.rank_multiple
    plan: dict[str, int | str] = {}
    if config.rule == "rank":
        r = int(config.rank or 0)
        for n, mod in targets:
            m, k, _ = _dims(mod)
            if r >= min(m, k):
                raise config.error(
                    f"rank {r} must be below min(in, out) = {min(m, k)} of '{n}' ({k}x{m}); "
                    "lower it or exclude that layer"
                )
            plan[n] = r if saves_parameters(m, k, r) else _no_saving(r, m, k)
        return plan
    if config.rule == "energy":
        for n, mod in targets:
            m, k, _ = _dims(mod)
            r = svd.rank_for_energy(svd.spectrum(mod.weight.detach(), whiten[n]), float(config.energy or 1))
            r = -(-r // mult) * mult  # rounded up: at least that energy
            plan[n] = (
                r if saves_parameters(m, k, r) else _no_saving(r, m, k, f"energy {config.energy} needs ")
            )
        return plan
    rho = config.target_reduction
    if config.allocation == "uniform":
        for n, mod in targets:
            m, k, bias = _dims(mod)
            r = svd.rank_for_reduction(m, k, rho, bias) // mult * mult
            plan[n] = (
                r if r >= 1 else f"removing {rho:g} of its parameters leaves no rank (a multiple of {mult})"
            )
        return plan
    # global: one budget for all targets; layers too small for rank_multiple stay dense
    budget = 0.0
    for _, mod in targets:
        m, k, bias = _dims(mod)
        budget += (1 - rho) * (m * k + (k if bias else 0)) - (k if bias else 0)
    small = {n for n, mod in targets if not saves_parameters(mod.in_features, mod.out_features, mult)}
    for n in small:
        mod = dict(targets)[n]
        plan[n] = _no_saving(mult, mod.in_features, mod.out_features, "even the smallest ")
        budget -= mod.in_features * mod.out_features
    rest = [(n, mod) for n, mod in targets if n not in small]
    spectra = [svd.spectrum(mod.weight.detach(), whiten[n]) for n, mod in rest]
    try:
        ranks = svd.allocate_ranks(
            spectra, [(mod.in_features, mod.out_features) for _, mod in rest], int(budget), multiple=mult
        )
    except ValueError:
        raise config.error(
            f"reduction {rho:g} is more than rank {mult} in every layer allows; lower it"
        ) from None
    plan.update({n: r for (n, _), r in zip(rest, ranks, strict=True)})
    return plan


def _no_saving(r: int, m: int, k: int, what: str = "") -> str:
    return (
        f"{what}rank {r}, which saves no parameters ({r}·({m}+{k}) ≥ {m}·{k}; "
        f"a factorisation saves only below rank {breakeven_rank(m, k):.1f})"
    )


# -- the method ----------------------------------------------------------------------------


def _factorised(
    mod: nn.Linear, rank: int, whiten: torch.Tensor | None, target: torch.Tensor | None = None
) -> LowRankLinear:
    """``mod`` as a rank-``rank`` LowRankLinear approximating ``target`` (default: its own
    weight) in the metric of ``whiten``."""
    w = mod.weight.detach()
    t = w if target is None else target.to(w.device)
    a, b = svd.factorize(t, rank, None if whiten is None else whiten.to(w.device))
    new = LowRankLinear(
        mod.in_features, rank, mod.out_features, bias=mod.bias is not None, device=w.device, dtype=w.dtype
    )
    with torch.no_grad():
        new.down.weight.copy_(b.to(w.dtype))
        new.up.weight.copy_(a.to(w.dtype))
        if mod.bias is not None:
            assert new.up.bias is not None
            new.up.bias.copy_(mod.bias.detach())
    new.train(mod.training)
    return new


def _finetune(
    model: nn.Module, config: LowRankConfig, ctx: CompressContext, factors: list[nn.Parameter]
) -> None:
    data = ctx.require_data(config.name, FIT_DATA, score=True)
    train = TrainConfig(
        epochs=config.epochs, lr=config.lr, max_steps=config.max_steps, patience=None, seed=config.seed
    )
    others = [p for p in model.parameters() if all(p is not f for f in factors)]
    with grads_on(others, on=config.train_other):
        finetune_on_task(
            model,
            data,
            train,
            batch_size=config.batch_size,
            seed=config.seed,
            params=None if config.train_other else factors,
            progress=ctx.progress,
            desc=f"{config.name} fine-tune",
        )


def _sequential_svdllm(
    model: nn.Module,
    targets: list[tuple[str, nn.Linear]],
    config: LowRankConfig,
    ctx: CompressContext,
    put: Callable[..., None],
) -> None:
    """SVD-LLM block by block (``sequential``): each layer's Gram matrix ``G = XᵀX`` comes from
    its inputs in the model as factorised so far, and the cross term ``C = XᵀX₀`` pairs them
    with the original model's inputs of the same tokens; the layer becomes the best rank-r
    approximation of ``svd.compensated(W, C, L)`` in the metric of ``L Lᵀ = G + damping``.
    Ranks: ``uniform`` and ``rank`` as without it; ``global`` planned on the original
    model's statistics first (one more calibration pass); ``energy`` per layer, on the
    compensated weight's whitened spectrum."""
    from ..quantization.sequential import by_blocks

    fixed: dict[str, int | str] | None = None
    if config.rule == "reduction" and config.allocation == "global":
        stats = _calibrate(model, targets, config, ctx)
        fixed = plan_ranks(targets, _whitening(targets, stats, config), config)
        del stats
    elif config.rule != "energy":
        fixed = plan_ranks(targets, {n: None for n, _ in targets}, config)
    data = ctx.require_data(config.name, f"calibration data for variant '{config.variant}'")
    batches = calibration_batches(data, config.name, batch_size=config.batch_size, n_samples=config.n_samples)
    gram: dict[str, torch.Tensor] = {}
    cross: dict[str, torch.Tensor] = {}
    stash: dict[str, torch.Tensor] = {}

    def observe_original(name: str, x: torch.Tensor) -> None:
        stash[name] = x.float()

    def observe(name: str, x: torch.Tensor) -> None:
        x = x.float()
        xo = stash.pop(name, x)  # (outside the blocks: the model's own inputs)
        g, c = (x.T @ x).double(), (x.T @ xo).double()
        gram[name] = gram[name] + g if name in gram else g
        cross[name] = cross[name] + c if name in cross else c

    def apply(items: list[tuple[str, nn.Module]]) -> None:
        for n, mod in items:
            assert isinstance(mod, nn.Linear)
            if n not in gram:
                raise config.error(f"calibration never reached {n} (is it used in forward?)")
            try:
                L = svd.whitening_factor(gram.pop(n), config.damping)
            except ValueError as e:
                raise config.error(f"{n}: {e}") from None
            target = svd.compensated(mod.weight.detach(), cross.pop(n), L)
            if fixed is not None:
                r: int | str = fixed[n]
            else:
                m, k, _ = _dims(mod)
                mult = config.rank_multiple
                need = svd.rank_for_energy(svd.spectrum(target, L), float(config.energy or 1))
                need = -(-need // mult) * mult  # rounded up: at least that energy
                why = _no_saving(need, m, k, f"energy {config.energy} needs ")
                r = need if saves_parameters(m, k, need) else why
            put(n, mod, r, L, target)

    by_blocks(
        model,
        dict(targets),
        data,
        batches,
        observe,
        apply,
        ctx,
        desc=f"{config.name} (sequential)",
        observe_original=observe_original,
    )


@register(LowRankConfig)
def _lowrank(model: nn.Module, config: LowRankConfig, ctx: CompressContext) -> nn.Module:
    if config.epochs:  # checked before the model is touched
        ctx.require_data(config.name, FIT_DATA, score=True)
    targets = lowrank_targets(model, config)
    if config.rule == "rank":  # a rank too large is a config error before any calibration
        plan_ranks(targets, {n: None for n, _ in targets}, config)
    counts = [0, 0]  # parameters of the targets before, after
    factors: list[nn.Parameter] = []

    def put(n: str, mod: nn.Linear, r: int | str, whiten: torch.Tensor | None, target: Any = None) -> None:
        size = sum(p.numel() for p in mod.parameters())
        counts[0] += size
        if isinstance(r, str):
            ctx.note(f"{config.name}: {n} left dense: {r}", logger=log)
            counts[1] += size
            return
        new = _factorised(mod, r, whiten, target)
        replace_module(model, n, new)
        factors.extend([new.down.get_parameter("weight"), new.up.get_parameter("weight")])
        counts[1] += sum(p.numel() for p in new.parameters())
        log.info("%s: %s (%d x %d) -> rank %d", config.name, n, mod.out_features, mod.in_features, r)

    if config.variant == "svd-llm" and config.sequential:
        _sequential_svdllm(model, targets, config, ctx, put)
    else:
        stats = _calibrate(model, targets, config, ctx) if config.variant != "svd" else {}
        whiten = _whitening(targets, stats, config)
        del stats
        plan = plan_ranks(targets, whiten, config)
        for n, mod in tqdm(targets, desc=config.name, disable=not ctx.progress, leave=False):
            put(n, mod, plan[n], whiten[n])
            whiten[n] = None
    before, after = counts
    log.info(
        "%s (%s): targeted Linears %d -> %d parameters (%.1f%% fewer)",
        config.name,
        config.variant,
        before,
        after,
        100 * (1 - after / max(before, 1)),
    )
    if config.epochs and factors:
        _finetune(model, config, ctx, factors)
    return model
