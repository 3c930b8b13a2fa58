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

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import ConfigError
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
from ...training.loop import TrainConfig, fit
from ..base import CompressContext, MethodConfig, matches, register, register_config
from ..quantization.calibration import calibration_batches, input_hooks, run_forward
from .storage import INDEX_CHOICES, to_sparse

__all__ = ["CRITERIA", "LAYER_TYPES", "PruneConfig", "compute_masks", "prune_targets"]

log = logging.getLogger(__name__)

CRITERIA = ("magnitude", "wanda", "taylor")
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d),
    "embedding": (nn.Embedding,),
}
HEAD = "@head"  # layer_sparsity pattern that names the model's output layer


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
    layers: from linear, conv, embedding; by default Linear layers except the output layer
    (``head=True`` prunes it too). include / exclude: module-name patterns.
    epochs > 0 fine-tunes on ``data`` with the masks fixed (lr, max_steps, batch_size);
    schedule ``cubic`` prunes gradually during that fine-tune, from ``initial_sparsity`` in
    ``prune_events`` steps spread over the first ``ramp`` fraction of it (Zhu & Gupta).
    storage: ``sparse`` (the sparse format, index ``auto|bitmask|relative4|relative8``) or
    ``dense`` (exact zeros in ordinary layers, for a method that follows).
    """

    name = "prune"
    sparsity: float = 0.5
    criterion: str = "magnitude"
    scope: str = "local"
    pattern: str | None = None
    layer_sparsity: tuple[str, ...] = ()
    layers: tuple[str, ...] = ("linear",)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    head: bool = False
    calibration_samples: int = 128
    epochs: int = 0
    lr: float = 5e-5
    max_steps: int | None = None
    batch_size: int = 32
    schedule: str = "one-shot"
    initial_sparsity: float = 0.0
    prune_events: int = 10
    ramp: float = 0.75
    storage: str = "sparse"
    index: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity, "prune: sparsity")
        if self.criterion not in CRITERIA:
            raise ConfigError(
                f"prune: criterion must be one of {', '.join(CRITERIA)}, got '{self.criterion}'"
            )
        if self.scope not in ("local", "global"):
            raise ConfigError(f"prune: scope must be 'local' or 'global', got '{self.scope}'")
        nm = _parse_pattern(self.pattern)
        if nm is not None and abs(self.sparsity - (1 - nm[0] / nm[1])) > 1e-9:
            raise ConfigError(
                f"prune: pattern {self.pattern} keeps {nm[0]} of {nm[1]} weights: "
                f"set sparsity={1 - nm[0] / nm[1]:g} (got {self.sparsity})"
            )
        if nm is not None and (self.scope == "global" or self.layer_sparsity):
            raise ConfigError(
                "prune: an N:M pattern fixes every layer's sparsity; drop scope / layer_sparsity"
            )
        layer_overrides = _parse_layer_sparsity(self.layer_sparsity)
        if layer_overrides and self.scope == "global":
            raise ConfigError("prune: layer_sparsity needs scope='local' (global uses one threshold)")
        if isinstance(self.layers, str) or not self.layers or set(self.layers) - set(LAYER_TYPES):
            raise ConfigError(
                f"prune: layers must be a list from {', '.join(LAYER_TYPES)}, got {self.layers!r}"
            )
        if self.criterion == "wanda" and set(self.layers) != {"linear"}:
            raise ConfigError("prune: wanda scores Linear layers only (layers=['linear'])")
        if self.criterion == "wanda" and self.scope == "global":
            raise ConfigError("prune: wanda compares weights within output rows; use scope='local'")
        for f in ("calibration_samples", "batch_size", "prune_events"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"prune: {f} must be a positive integer, got {v!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"prune: epochs must be an integer >= 0 (0: no fine-tune), got {self.epochs!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ConfigError(f"prune: max_steps must be a positive integer or null, got {self.max_steps!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"prune: lr must be > 0, got {self.lr!r}")
        if self.schedule not in ("one-shot", "cubic"):
            raise ConfigError(f"prune: schedule must be 'one-shot' or 'cubic', got '{self.schedule}'")
        if self.schedule == "cubic":
            if self.epochs < 1:
                raise ConfigError("prune: the cubic schedule prunes during fine-tuning; set epochs >= 1")
            if self.criterion != "magnitude" or nm is not None:
                raise ConfigError("prune: the cubic schedule prunes by magnitude, without an N:M pattern")
            check_sparsity(self.initial_sparsity, "prune: initial_sparsity")
            if self.initial_sparsity > self.sparsity:
                raise ConfigError("prune: initial_sparsity must not exceed sparsity")
            if not 0 < self.ramp <= 1:
                raise ConfigError(f"prune: ramp must be in (0, 1], got {self.ramp}")
        if self.storage not in ("sparse", "dense"):
            raise ConfigError(f"prune: storage must be 'sparse' or 'dense', got '{self.storage}'")
        if self.index not in INDEX_CHOICES:
            raise ConfigError(f"prune: index must be one of {', '.join(INDEX_CHOICES)}, got '{self.index}'")


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


def prune_targets(model: nn.Module, config: PruneConfig) -> dict[str, nn.Module]:
    """The selected layers, ``name -> module``, one entry per distinct weight; refuses a
    weight shared with a layer that is not selected (pruning it would prune both)."""
    types = tuple(t for layer in config.layers for t in LAYER_TYPES[layer])
    heads = head_names(model)
    selected = {
        n: m
        for n, m in model.named_modules()
        if n
        and isinstance(m, types)
        and matches(n, config.include, config.exclude)
        and (config.head or n not in heads)
    }
    if not selected:
        raise ConfigError("prune: no layer matched layers/include/exclude")
    owners: dict[int, list[str]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    by_weight: dict[int, str] = {}
    for n, m in selected.items():
        shared = [o for o in owners.get(id(m.weight), []) if o.rpartition(".")[0] not in selected]
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


def _wanda_norms(
    model: nn.Module, targets: dict[str, nn.Module], config: PruneConfig, ctx: CompressContext
) -> dict[str, torch.Tensor]:
    batches = calibration_batches(ctx.data, "prune (wanda)", config.calibration_samples, config.batch_size)
    acc = {n: ActivationNorms(m.weight.shape[1]) for n, m in targets.items()}
    with input_hooks(targets, lambda n, x: acc[n].add(x)):
        run_forward(model, ctx.data, batches, desc="wanda calibration", progress=ctx.progress)
    return {n: a.norms() for n, a in acc.items()}


def _taylor(
    model: nn.Module, targets: dict[str, nn.Module], config: PruneConfig, ctx: CompressContext
) -> dict[str, torch.Tensor]:
    batches = calibration_batches(ctx.data, "prune (taylor)", config.calibration_samples, config.batch_size)
    weights = {n: m.weight for n, m in targets.items()}
    scores = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    try:
        for w in weights.values():
            w.requires_grad_(True)
        for b in tqdm(batches, desc="taylor importance", disable=not ctx.progress, leave=False):
            model.zero_grad(set_to_none=True)
            ctx.data.loss(model, b).backward()
            for n, w in weights.items():
                if w.grad is not None:
                    scores[n] += taylor_scores(w, [w.grad])
    finally:
        model.zero_grad(set_to_none=True)
        for p, f in flags.items():
            p.requires_grad_(f)
        model.train(was_training)
    return scores


def compute_masks(
    model: nn.Module,
    targets: dict[str, nn.Module],
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


def _require_data(data: object, why: str) -> None:
    for attr in ("batches", "loss", "score"):
        if not hasattr(data, attr):
            raise ConfigError(
                f"prune: {why} needs training data: pass a task adapter (batches, loss, score) as `data`"
            )


@torch.no_grad()
def apply_masks(targets: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    for n, m in targets.items():
        m.weight.mul_(masks[n].to(m.weight.device, m.weight.dtype))


def _finetune(
    model: nn.Module,
    targets: dict[str, nn.Module],
    masks: dict[str, torch.Tensor],
    config: PruneConfig,
    ctx: CompressContext,
) -> None:
    """Fine-tune every parameter with the masks fixed: masked gradients (so Adam's moments
    stay zero there) and masks re-applied after each step (weight decay, rounding). With the
    cubic schedule the masks grow at the pruning events (magnitude of the current weights)."""
    data = ctx.data
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
    hooks = [m.weight.register_hook(lambda g, n=n: g * masks[n].to(g.dtype)) for n, m in targets.items()]
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)

    def after_step(m: nn.Module, step: int) -> None:
        if gradual and step % freq == 0 and step <= n_events * freq:
            prune_at(step)
        else:
            apply_masks(targets, masks)

    try:
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
            # gradual pruning keeps the last weights (an earlier epoch is less sparse)
            evaluate=None if gradual else (lambda m: data.score(m, "validation")),
            higher_is_better=bool(getattr(data, "higher_is_better", True)),
            steps_per_epoch=steps_per_epoch,
            after_step=after_step,
            progress=ctx.progress,
            desc="pruned fine-tune" + (" (gradual)" if gradual else ""),
        )
    finally:
        for h in hooks:
            h.remove()
        for p, f in flags.items():
            p.requires_grad_(f)
    if gradual:  # the final sparsity exactly, whatever step the run stopped at
        prune_at(n_events * freq)
    apply_masks(targets, masks)
    log.info("prune: fine-tuned %d steps in %.0f s: %s", result.steps, result.seconds, result.history)


@register(PruneConfig)
def _prune(model: nn.Module, config: PruneConfig, ctx: CompressContext) -> nn.Module:
    if config.criterion != "magnitude":
        for attr in ("batches", "loss"):
            if not hasattr(ctx.data, attr):
                raise ConfigError(
                    f"prune: criterion '{config.criterion}' needs calibration data (a task adapter as `data`)"
                )
    if config.epochs > 0:
        _require_data(ctx.data, "fine-tuning (epochs > 0)")
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
        to_sparse(model, {n: (m, masks[n]) for n, m in targets.items()}, index=config.index)
    return model
