"""What the quantization methods share: the layers they quantize, the group size each
layer takes, and round to nearest as an ``encode`` for ``transform_weights``.

Calibration passes (``calibration_batches``, ``run_forward``, ``input_hooks``) live in
``data/calibration.py``; block-by-block calibration in ``sequential.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ...data.calibration import CalibrationData, calibration_batches
from ...errors import ConfigError
from ...formats.affine import AffineQuantized
from ...models.blocks import tied_weight_ids
from ..base import CompressContext, select

log = logging.getLogger(__name__)

__all__ = ["calibrated_split", "group_for", "log_group_fallbacks", "quant_targets", "rtn_encode"]


def group_for(cols: int, group_size: int | None) -> int | None:
    """The group size used for rows of ``cols`` weights: ``group_size`` if it divides them,
    else the largest divisor of ``cols`` below it (SmolLM2's rows of 576 take groups of 96
    for a requested 128), so a layer is never left unquantized for its width."""
    if group_size is None or cols % group_size == 0:
        return group_size
    return max(d for d in range(1, min(group_size, cols) + 1) if cols % d == 0)


def log_group_fallbacks(
    method: str, targets: Sequence[tuple[str, Any]], group_size: int | None, strict: bool = False
) -> None:
    """Say, once per row width, which layers take a smaller group than asked (``group_for``);
    with ``strict`` (the configs' ``strict_groups``) such a layer is a ``ConfigError`` instead,
    raised before anything is quantized."""
    by_width: dict[int, list[str]] = {}
    for name, mod in targets:
        cols = int(mod.weight.shape[1])
        if group_for(cols, group_size) != group_size:
            by_width.setdefault(cols, []).append(name)
    for cols, names in sorted(by_width.items()):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        if strict:
            raise ConfigError(
                f"{method}: group_size {group_size} does not divide rows of {cols} weights "
                f"({shown}); choose a divisor of {cols}, group_size null (per channel), or "
                f"strict_groups false (groups of {group_for(cols, group_size)} there)"
            )
        log.warning(
            "%s: groups of %d (not %d, which does not divide rows of %d) for %s",
            method,
            group_for(cols, group_size),
            group_size,
            cols,
            shown,
        )


def quant_targets(model: nn.Module, config: Any, *, grouped: bool = True) -> list[tuple[str, Any]]:
    """The Linear (and, with ``config.embeddings``, Embedding) layers ``config`` selects;
    with ``grouped``, the layers whose rows ``config.group_size`` does not divide are logged
    (or refused, with ``config.strict_groups``) before anything is quantized."""
    types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding) if config.embeddings else (nn.Linear,)
    targets = select(model, config, types)
    if grouped:
        log_group_fallbacks(config.name, targets, config.group_size, config.strict_groups)
    return targets


def rtn_encode(config: Any) -> Callable[[str, nn.Module], AffineQuantized]:
    """Round to nearest with ``config``'s bits, group size and symmetry (the ``affine``
    format; a layer takes ``group_for`` its width)."""

    def encode(_name: str, mod: Any) -> AffineQuantized:
        w = mod.weight.detach()
        group = group_for(int(w.shape[1]), config.group_size)
        return AffineQuantized.encode(w, config.bits, symmetric=config.symmetric, group_size=group)

    return encode


def calibrated_split(
    model: nn.Module, config: Any, ctx: CompressContext
) -> tuple[dict[str, Any], list[tuple[str, Any]], CalibrationData, list[Any]]:
    """For GPTQ and AWQ: ``(calibrated, rounded, data, batches)``: the selected Linears
    quantized from their calibration inputs, the layers rounded to nearest instead
    (embeddings, and Linears whose weight is tied to another module: the inputs of an LM
    head say nothing about the embedding lookup sharing its weight), the data and its
    calibration batches."""
    targets = quant_targets(model, config)
    tied = tied_weight_ids(model)
    rounded = [(n, m) for n, m in targets if not isinstance(m, nn.Linear) or id(m.weight) in tied]
    calibrated = {n: m for n, m in targets if (n, m) not in rounded}
    data = ctx.require_data(config.name)
    batches = calibration_batches(data, config.name, batch_size=config.batch_size, n_samples=config.n_samples)
    return calibrated, rounded, data, batches
