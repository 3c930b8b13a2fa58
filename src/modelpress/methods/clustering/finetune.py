"""Centroid fine-tuning: Deep Compression's "trained quantization".

Codes stay fixed; the shared values (codebooks) train, together with the parameters that
were not compressed (norms, biases, heads). Because a codebook entry is gathered into every
weight that uses it, autograd gives it the sum of those weights' gradients, the update rule
of Han et al. (2016). Runs through the one fine-tuning loop on the task's training data.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from ...errors import ConfigError
from ...formats.codebook import Codebook
from ...training.loop import TrainConfig, fit
from ..base import CompressContext, MethodConfig, register, register_config

__all__ = ["CentroidFineTuneConfig", "finetune_codebooks"]

log = logging.getLogger(__name__)


@register_config
@dataclasses.dataclass(frozen=True)
class CentroidFineTuneConfig(MethodConfig):
    """Train codebooks (and the uncompressed parameters when ``train_other``) on ``data``."""

    name = "finetune-centroids"
    epochs: int = 1
    lr: float = 1e-4
    max_steps: int | None = None
    batch_size: int = 32
    train_other: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("finetune-centroids: epochs and batch_size must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"finetune-centroids: lr must be > 0, got {self.lr}")


def _require_data(data: object) -> None:
    for attr in ("batches", "loss", "score"):
        if not hasattr(data, attr):
            raise ConfigError(
                "finetune-centroids needs training data: pass a task adapter (batches, loss, score) as `data`"
            )


def finetune_codebooks(
    model: nn.Module, config: CentroidFineTuneConfig, data: object, progress: bool
) -> None:
    books = {id(m): m for m in model.modules() if isinstance(m, Codebook)}.values()
    if not books:
        raise ConfigError("finetune-centroids: the model has no codebook to train; put kmeans before it")
    _require_data(data)
    originals: list[tuple[Codebook, torch.dtype]] = []
    params: list[torch.Tensor] = []
    for b in books:
        originals.append((b, b.codebook.dtype))
        cb = b.float_codebook().detach().clone().requires_grad_(True)
        b._buffers["codebook"] = cb
        if b.scale is not None and b.granularity != "group-scaled":
            b._buffers["scale"] = None  # folded into the float codebook while training
        params.append(cb)
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(config.train_other)
    if config.train_other:
        params += list(model.parameters())
    try:
        fit(
            model,
            data.loss,  # type: ignore[attr-defined]
            lambda epoch: data.batches("train", config.batch_size, shuffle_seed=config.seed + epoch),  # type: ignore[attr-defined]
            TrainConfig(
                epochs=config.epochs,
                lr=config.lr,
                max_steps=config.max_steps,
                patience=None,
                seed=config.seed,
            ),
            evaluate=lambda m: data.score(m, "validation"),  # type: ignore[attr-defined]
            higher_is_better=bool(getattr(data, "higher_is_better", True)),
            params=params,
            progress=progress,
            desc="fine-tuning centroids",
        )
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
        for b, dtype in originals:
            cb = b.codebook.detach()
            if dtype == torch.int8:
                s = cb.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
                b._buffers["codebook"] = torch.round(cb / s).clamp(-127, 127).to(torch.int8)
                b._buffers["scale"] = s
            else:
                b._buffers["codebook"] = cb.to(dtype)


@register(CentroidFineTuneConfig)
def _finetune(model: nn.Module, config: CentroidFineTuneConfig, ctx: CompressContext) -> nn.Module:
    finetune_codebooks(model, config, ctx.data, ctx.progress)
    return model
