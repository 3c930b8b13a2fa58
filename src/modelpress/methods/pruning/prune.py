"""Unstructured pruning: magnitude (local / global), Wanda, first-order Taylor, N:M patterns,
one-shot or gradual (cubic schedule), with an optional fine-tune that keeps masks fixed.

Papers: Han et al., "Learning both Weights and Connections" (arXiv 1506.02626); Sun et al.,
"Wanda" (arXiv 2306.11695); Molchanov et al., "Importance Estimation for Neural Network
Pruning" (arXiv 1906.10771); Mishra et al., "Accelerating Sparse Deep Neural Networks"
(N:M, arXiv 2104.08378); Zhu & Gupta, "To prune, or not to prune" (arXiv 1710.01878).

During a recipe the pruned layers stay ordinary modules whose weights hold exact zeros
(``storage="dense"``), so a later method sees them (k-means with ``sparsity="keep"`` codes
only the kept weights), or they become the ``sparse`` format at the end of this step
(``storage="sparse"``, the default: what a recipe ending in pruning must store).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...data.calibration import CalibrationData, calibration_batches, input_hooks, run_forward
from ...errors import ConfigError
from ...formats.sparse import SparseTensor
from ...models.blocks import weight_owners
from ...nn.rnn import DecodedRNN, rnn_matrices
from ...primitives.sparsity import (
    ActivationNorms,
    check_sparsity,
    cubic_sparsity,
    global_masks,
    local_mask,
    magnitude_scores,
    nm_mask,
    row_mask,
    taylor_scores,
)
from ...training import TrainConfig, fit, grads_on
from ..base import (
    NON_NEGATIVE,
    POSITIVE,
    CompressContext,
    MethodConfig,
    between,
    one_of,
    param,
    register,
    register_config,
    replace_module,
    select,
)
from ..transform import MatrixView
from .storage import INDEX_CHOICES, LAYER_TYPES, to_sparse

__all__ = ["CRITERIA", "LAYER_TYPES", "PRUNE_LAYERS", "PruneConfig", "compute_masks", "prune_targets"]

# the layer kinds prune selects: those of sparse storage, and recurrent layers: ``rnn``
# prunes every weight matrix of a GRU / LSTM / RNN, ``recurrent`` only its recurrent
# connections (the ``weight_hh`` matrices, shared by every time step)
PRUNE_LAYERS: dict[str, tuple[type[nn.Module], ...]] = {
    **LAYER_TYPES,
    "rnn": (nn.RNNBase,),
    "recurrent": (nn.RNNBase,),
}

log = logging.getLogger(__name__)

CRITERIA = ("magnitude", "wanda", "taylor")
HEAD = "@head"  # layer_sparsity pattern that names the model's output layer
Targets = dict[str, Any]  # layer name -> its Linear / Conv / Embedding module
_FRACTION = between(0, 1, hi_open=True)


def _parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    if pattern is None:
        return None
    try:
        n, m = (int(p) for p in str(pattern).split(":"))
    except ValueError:
        raise ConfigError(
            f"prune: pattern must look like '2:4' (N kept of every M), got {pattern!r}"
        ) from None
    if not 0 < n < m:
        raise ConfigError(f"prune: pattern N:M needs 0 < N < M, got {pattern}")
    return n, m


def _parse_layer_sparsity(entries: tuple[str, ...]) -> list[tuple[str, float]]:
    out = []
    for e in entries:
        pat, sep, val = str(e).rpartition("=")
        if not sep or not pat:
            raise ConfigError(f"prune: layer_sparsity entries look like 'fc1=0.9' or '@head=0.7', got {e!r}")
        try:
            s = float(val)
        except ValueError:
            raise ConfigError(f"prune: layer_sparsity {e!r}: '{val}' is not a number") from None
        out.append((pat, check_sparsity(s, f"prune: layer_sparsity {e!r}")))
    return out


@register_config
@dataclasses.dataclass(frozen=True)
class PruneConfig(MethodConfig):
    """Zero out the least important weights of the selected layers.

    sparsity: fraction removed, in [0, 1); ``layer_sparsity`` overrides it per layer with
    ``"name-pattern=value"`` entries (first match wins; ``@head`` is the output layer).
    criterion: ``magnitude`` |w|, ``wanda`` |w|·||x|| per output row (calibration inputs,
    Linear only), ``taylor`` sum over batches of |w·g| (calibration gradients).
    scope: ``local`` (exact count per layer) or ``global`` (one threshold for all layers;
    magnitude / taylor). pattern: ``"2:4"``, ``"4:8"`` ... N kept in every M consecutive
    inputs (then ``sparsity`` must be 1 - N/M).
    layers: from linear, conv, embedding, rnn (every matrix of a GRU / LSTM), recurrent (their
    ``weight_hh`` recurrent connections only); by default Linear layers except the output layer
    (``head=True`` prunes it too). include / exclude: module-name patterns.
    epochs > 0 fine-tunes on ``data`` with the masks fixed (lr, max_steps, batch_size);
    schedule ``cubic`` prunes gradually during that fine-tune, from ``initial_sparsity`` in
    ``prune_events`` steps spread over the first ``ramp`` fraction of it (Zhu & Gupta).
    storage: ``sparse`` (the sparse format, index ``auto|bitmask|relative4|relative8``) or
    ``dense`` (exact zeros in ordinary layers, for a method that follows).
    """

    name = "prune"
    notes_float_layers = True
    sparsity: float = param(0.5, _FRACTION)
    criterion: str = param("magnitude", one_of(*CRITERIA))
    scope: str = param("local", one_of("local", "global"))
    pattern: str | None = None
    layer_sparsity: tuple[str, ...] = ()
    layers: tuple[str, ...] = param(("linear",), one_of(*PRUNE_LAYERS), elements=True)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    head: bool = False
    calibration_samples: int = param(128, POSITIVE)
    epochs: int = param(0, NON_NEGATIVE)  # 0: no fine-tune
    lr: float = param(5e-5, POSITIVE)
    max_steps: int | None = param(None, POSITIVE)
    batch_size: int = param(32, POSITIVE)
    schedule: str = param("one-shot", one_of("one-shot", "cubic"))
    initial_sparsity: float = param(0.0, _FRACTION)
    prune_events: int = param(10, POSITIVE)
    ramp: float = param(0.75, between(0, 1, lo_open=True))
    storage: str = param("sparse", one_of("sparse", "dense"))
    index: str = param("auto", one_of(*INDEX_CHOICES))
    seed: int = param(0, NON_NEGATIVE)

    def validate(self) -> None:
        nm = _parse_pattern(self.pattern)
        if nm is not None and abs(self.sparsity - (1 - nm[0] / nm[1])) > 1e-9:
            raise self.error(
                f"pattern {self.pattern} keeps {nm[0]} of {nm[1]} weights: "
                f"set sparsity={1 - nm[0] / nm[1]:g} (got {self.sparsity})"
            )
        if nm is not None and (self.scope == "global" or self.layer_sparsity):
            raise self.error("an N:M pattern fixes every layer's sparsity; drop scope / layer_sparsity")
        if _parse_layer_sparsity(self.layer_sparsity) and self.scope == "global":
            raise self.error("layer_sparsity needs scope='local' (global uses one threshold)")
        if not self.layers:
            raise self.error(f"layers must list some of {', '.join(PRUNE_LAYERS)}")
        if self.criterion == "wanda" and set(self.layers) != {"linear"}:
            raise self.error("wanda scores Linear layers only (layers=['linear'])")
        if self.criterion == "wanda" and self.scope == "global":
            raise self.error("wanda compares weights within output rows; use scope='local'")
        if self.schedule == "cubic":
            if self.epochs < 1:
                raise self.error("the cubic schedule prunes during fine-tuning; set epochs >= 1")
            if self.criterion != "magnitude" or nm is not None:
                raise self.error("the cubic schedule prunes by magnitude, without an N:M pattern")
            if self.initial_sparsity > self.sparsity:
                raise self.error("initial_sparsity must not exceed sparsity")

    def handled_layers(self) -> tuple[type[nn.Module], ...]:
        return (nn.Linear, nn.Embedding, *(t for layer in self.layers for t in PRUNE_LAYERS[layer]))


# -- selection ------------------------------------------------------------------------------


def head_names(model: nn.Module) -> set[str]:
    """Names of the output layer: the HF output embeddings if any, else the last Linear."""
    out: set[str] = set()
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module):
        out |= {n for n, m in model.named_modules(remove_duplicate=False) if m is head}
    if not out:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        out |= set(linears[-1:])
    return out


def prune_targets(model: nn.Module, config: PruneConfig) -> Targets:
    """The selected layers, ``name -> module``, one entry per distinct weight; refuses a
    weight shared with a layer that is not selected (pruning it would prune both)."""
    heads = head_names(model)
    types = tuple(t for layer in config.layers for t in PRUNE_LAYERS[layer])
    selected = {n: m for n, m in select(model, config, types) if config.head or n not in heads}
    # a recurrent layer's matrices are targets of their own, ``name.weight_hh_l0`` ...,
    # seen through a view whose ``weight`` is the layer's very parameter
    only_hh = "recurrent" in config.layers and "rnn" not in config.layers
    for n, rnn in [(n, m) for n, m in selected.items() if isinstance(m, nn.RNNBase)]:
        del selected[n]
        for w in rnn_matrices(rnn):
            if not only_hh or w.startswith("weight_hh"):
                selected[f"{n}.{w}"] = MatrixView(getattr(rnn, w))
    if not selected:
        raise ConfigError("prune: no layer matched layers/include/exclude (the output layer needs head=True)")
    owners = weight_owners(model)
    by_weight: dict[int, str] = {}
    for n, m in selected.items():
        shared = [f"{o}.weight" for o in owners.get(id(m.weight), []) if o not in selected]
        if shared:
            raise ConfigError(
                f"prune: {n}.weight is tied to {', '.join(shared)} (shared weights); pruning it would "
                f"prune that layer too: exclude '{n}' or select every layer that shares the weight"
            )
        by_weight.setdefault(id(m.weight), n)
    return {n: selected[n] for n in by_weight.values()}


def _layer_sparsity(name: str, config: PruneConfig, heads: set[str]) -> float:
    for pat, s in _parse_layer_sparsity(config.layer_sparsity):
        if (pat == HEAD and name in heads) or fnmatch.fnmatchcase(name, pat):
            return s
    return config.sparsity


# -- scores ---------------------------------------------------------------------------------


def _calibration(config: PruneConfig, ctx: CompressContext) -> tuple[CalibrationData, list[Any]]:
    data = ctx.require_data(config.name, f"calibration data for criterion '{config.criterion}'")
    batches = calibration_batches(
        data,
        f"prune ({config.criterion})",
        batch_size=config.batch_size,
        n_samples=config.calibration_samples,
    )
    return data, batches


def _wanda_norms(
    model: nn.Module, targets: Targets, config: PruneConfig, ctx: CompressContext
) -> dict[str, torch.Tensor]:
    data, batches = _calibration(config, ctx)
    acc = {n: ActivationNorms(m.weight.shape[1]) for n, m in targets.items()}
    with input_hooks(targets, lambda n, x: acc[n].add(x)):
        run_forward(model, data, batches, desc="wanda calibration", progress=ctx.progress)
    return {n: a.norms() for n, a in acc.items()}


def _taylor(
    model: nn.Module, targets: Targets, config: PruneConfig, ctx: CompressContext
) -> dict[str, torch.Tensor]:
    data, batches = _calibration(config, ctx)
    weights = {n: m.weight for n, m in targets.items()}
    scores = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
    was_training = model.training
    model.eval()
    try:
        with grads_on(weights.values()):
            for b in tqdm(batches, desc="taylor importance", disable=not ctx.progress, leave=False):
                model.zero_grad(set_to_none=True)
                data.loss(model, b).backward()
                for n, w in weights.items():
                    if w.grad is not None:
                        scores[n] += taylor_scores(w, [w.grad])
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores


def compute_masks(
    model: nn.Module,
    targets: Targets,
    config: PruneConfig,
    ctx: CompressContext,
    sparsity_of: Callable[[str], float] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (weight-shaped) of every target, by the config's criterion."""
    heads = head_names(model)
    sparsity_of = sparsity_of or (lambda n: _layer_sparsity(n, config, heads))
    if config.criterion == "magnitude":
        scores = {n: magnitude_scores(m.weight) for n, m in targets.items()}
    elif config.criterion == "taylor":
        for m in targets.values():
            magnitude_scores(m.weight)  # NaN check before any backward pass
        scores = _taylor(model, targets, config, ctx)
    else:
        for m in targets.values():
            magnitude_scores(m.weight)
        norms = _wanda_norms(model, targets, config, ctx)
        scores = {n: m.weight.detach().float().abs() * norms[n].unsqueeze(0) for n, m in targets.items()}
    nm = _parse_pattern(config.pattern)
    if nm is not None:
        return {n: nm_mask(s, *nm) for n, s in scores.items()}
    if config.scope == "global":
        return global_masks(scores, sparsity_of(""))
    if config.criterion == "wanda":
        return {n: row_mask(s, sparsity_of(n)) for n, s in scores.items()}
    return {n: local_mask(s, sparsity_of(n)) for n, s in scores.items()}


# -- fine-tuning with fixed masks -----------------------------------------------------------


@torch.no_grad()
def apply_masks(targets: Targets, masks: dict[str, torch.Tensor]) -> None:
    for n, m in targets.items():
        m.weight.mul_(masks[n].to(m.weight.device, m.weight.dtype))


def _finetune(
    model: nn.Module,
    targets: Targets,
    masks: dict[str, torch.Tensor],
    config: PruneConfig,
    ctx: CompressContext,
) -> None:
    """Fine-tune every parameter with the masks fixed: masked gradients (so Adam's moments
    stay zero there) and masks re-applied after each step (weight decay, rounding). With the
    cubic schedule the masks grow at the pruning events (magnitude of the current weights).

    Through ``fit`` itself, not ``finetune_on_task``: the masks need its ``after_step`` hook,
    and gradual pruning keeps the last weights (no validation, no best-epoch restore: an
    earlier epoch is less sparse)."""
    data = ctx.require_data(config.name, "training data for fine-tuning (epochs > 0)", score=True)
    steps_per_epoch = sum(1 for _ in data.batches("train", config.batch_size, shuffle_seed=config.seed))
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    heads = head_names(model)
    span = max(1, int(config.ramp * total))
    freq = max(1, span // config.prune_events)
    n_events = max(1, span // freq)

    def prune_at(step: int) -> None:
        def sparsity_of(name: str) -> float:
            final = _layer_sparsity(name, config, heads) if name else config.sparsity
            initial = min(config.initial_sparsity, final)
            return cubic_sparsity(
                step, initial=initial, final=final, begin=0, n_events=n_events, frequency=freq
            )

        masks.update(compute_masks(model, targets, config, ctx, sparsity_of))
        apply_masks(targets, masks)

    gradual = config.schedule == "cubic"
    if gradual:
        prune_at(0)

    def after_step(m: nn.Module, step: int) -> None:
        if gradual and step % freq == 0 and step <= n_events * freq:
            prune_at(step)
        else:
            apply_masks(targets, masks)

    hooks = [m.weight.register_hook(lambda g, n=n: g * masks[n].to(g.dtype)) for n, m in targets.items()]
    try:
        with grads_on(model.parameters()):
            result = fit(
                model,
                data.loss,
                lambda epoch: data.batches("train", config.batch_size, shuffle_seed=config.seed + epoch),
                TrainConfig(
                    epochs=config.epochs,
                    lr=config.lr,
                    max_steps=config.max_steps,
                    patience=None,
                    seed=config.seed,
                ),
                # no score (a user's batches without eval_fn): the last epoch is kept
                evaluate=None
                if gradual or not hasattr(data, "score")
                else (lambda m: data.score(m, "validation")),
                higher_is_better=bool(getattr(data, "higher_is_better", True)),
                steps_per_epoch=steps_per_epoch,
                after_step=after_step,
                progress=ctx.progress,
                desc="pruned fine-tune" + (" (gradual)" if gradual else ""),
            )
    finally:
        for h in hooks:
            h.remove()
    if gradual:  # the final sparsity exactly, whatever step the run stopped at
        prune_at(n_events * freq)
    apply_masks(targets, masks)
    log.info("prune: fine-tuned %d steps in %.0f s: %s", result.steps, result.seconds, result.history)


@register(PruneConfig)
def _prune(model: nn.Module, config: PruneConfig, ctx: CompressContext) -> nn.Module:
    # the data is checked before anything is pruned
    if config.criterion != "magnitude":
        ctx.require_data(config.name, f"calibration data for criterion '{config.criterion}'")
    if config.epochs > 0:
        ctx.require_data(config.name, "training data for fine-tuning (epochs > 0)", score=True)
    targets = prune_targets(model, config)
    if config.schedule == "cubic":
        masks: dict[str, torch.Tensor] = {}
    else:
        masks = compute_masks(model, targets, config, ctx)
        apply_masks(targets, masks)
    if config.epochs > 0:
        _finetune(model, targets, masks, config, ctx)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    log.info(
        "prune: %d layers, %.1f%% of their weights removed", len(targets), 100 * (1 - kept / max(1, total))
    )
    if config.storage == "sparse":
        views = {n: m for n, m in targets.items() if isinstance(m, MatrixView)}
        to_sparse(
            model,
            {n: (m, masks[n]) for n, m in targets.items() if n not in views},
            index=config.index,
            ctx=ctx,
        )
        _sparse_rnns(model, views, masks, config.index)
    return model


def _sparse_rnns(
    model: nn.Module, views: dict[str, MatrixView], masks: dict[str, torch.Tensor], index: str
) -> None:
    """Put a ``DecodedRNN`` holding the pruned matrices in the ``sparse`` format (the others
    and the biases float) where each pruned recurrent layer is."""
    by_layer: dict[str, dict[str, SparseTensor]] = {}
    for full, view in views.items():
        layer, _, matrix = full.rpartition(".")
        by_layer.setdefault(layer, {})[matrix] = SparseTensor.encode(
            view.weight.detach(), masks[full], index=index
        )
    for layer, formats in by_layer.items():
        rnn = model.get_submodule(layer)
        assert isinstance(rnn, nn.RNNBase)
        replace_module(model, layer, DecodedRNN.wrap(rnn, dict(formats)))
