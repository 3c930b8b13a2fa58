"""Centroid fine-tuning: Deep Compression's "trained quantization".

Codes stay fixed; the shared values (codebooks) train, together with the parameters that
were not compressed (norms, biases, heads). Because a codebook entry is gathered into every
weight that uses it, autograd gives it the sum of those weights' gradients, the update rule
of Han et al. (2016). Runs through the one fine-tuning loop on the task's training data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...formats.codebook import Codebook
from ...training import TrainConfig, finetune_on_task, grads_on
from ..base import NON_NEGATIVE, POSITIVE, CompressContext, MethodConfig, param, register, register_config

__all__ = ["CentroidFineTuneConfig", "finetune_codebooks"]


@register_config
@dataclasses.dataclass(frozen=True)
class CentroidFineTuneConfig(MethodConfig):
    """Train codebooks (and the uncompressed parameters when ``train_other``) on ``data``."""

    name = "finetune-centroids"
    epochs: int = param(1, POSITIVE)
    lr: float = param(1e-4, POSITIVE)
    max_steps: int | None = param(None, POSITIVE)
    batch_size: int = param(32, POSITIVE)
    train_other: bool = True
    seed: int = param(0, NON_NEGATIVE)


def finetune_codebooks(model: nn.Module, config: CentroidFineTuneConfig, ctx: CompressContext) -> None:
    books = {id(m): m for m in model.modules() if isinstance(m, Codebook)}.values()
    if not books:
        raise ConfigError("finetune-centroids: the model has no codebook to train; put kmeans before it")
    data = ctx.require_data(config.name, "training data", score=True)
    originals: list[tuple[Codebook, torch.dtype]] = []
    params: list[Any] = []  # the float codebooks: plain tensors, not parameters
    for b in books:
        originals.append((b, b.codebook.dtype))
        cb = b.float_codebook().detach().clone().requires_grad_(True)
        # exact-zero centroids (an embedding's padding row, see kmeans.padding_rows) stay zero
        cb.register_hook(lambda g, keep=(cb != 0): g * keep.to(g.dtype))
        b._buffers["codebook"] = cb
        if b.scale is not None and b.granularity != "group-scaled":
            b._buffers["scale"] = None  # folded into the float codebook while training
        params.append(cb)
    others = list(model.parameters())
    train = TrainConfig(
        epochs=config.epochs, lr=config.lr, max_steps=config.max_steps, patience=None, seed=config.seed
    )
    try:
        # the uncompressed parameters train too, or are frozen (no gradients computed)
        with grads_on(others, on=config.train_other):
            finetune_on_task(
                model,
                data,
                train,
                batch_size=config.batch_size,
                seed=config.seed,
                params=params + others if config.train_other else params,
                progress=ctx.progress,
                desc="fine-tuning centroids",
            )
    finally:
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
    finetune_codebooks(model, config, ctx)
    return model
