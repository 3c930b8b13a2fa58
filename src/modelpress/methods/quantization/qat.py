"""Quantization-aware training (QAT) with learned step sizes (LSQ / LSQ+).

Every selected Linear (and Embedding) weight is seen through a fake quantizer
(``nn.fake_quant``) initialised from the min-max round-to-nearest parameters; the model —
latent float weights, scales, zero-point offsets, and everything left in float (norms,
biases) — trains on the task through the one fine-tuning loop; then each quantizer becomes
the ``affine`` format of post-training quantization (``AffineQuantized.from_ints``), so the
artifact is the same kind and size as RTN's (``weight-only``) with only the integers,
scales and zero points differing. The decode of the converted weights equals the
fake-quantized weights of the trained model exactly.

Esser et al., "Learned Step Size Quantization" (arXiv 1902.08153); Bhalgat et al., "LSQ+"
(arXiv 2004.09576); Jacob et al. (arXiv 1712.05877) for QAT with fake quantization.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ...formats.affine import AffineQuantized
from ...nn.decoded import wrap_decoded
from ...nn.fake_quant import FakeQuantEmbedding, FakeQuantLinear, WeightQuantizer
from ...training import FitResult, TrainConfig, finetune_on_task
from ..base import (
    NON_NEGATIVE,
    POSITIVE,
    CompressContext,
    MethodConfig,
    between,
    param,
    register,
    register_config,
    register_preset,
    replace_module,
)
from ..transform import transform_weights
from .calibration import group_for, quant_targets

__all__ = ["QATConfig", "convert_fake_quant", "prepare_fake_quant", "train_fake_quant"]


@register_config
@dataclasses.dataclass(frozen=True)
class QATConfig(MethodConfig):
    """LSQ quantization-aware training of Linear (and Embedding) weights on ``data``.

    bits / group_size / symmetric / embeddings as in ``weight-only`` (same format and size).
    learn_scale, learn_zero_point: train the scales (LSQ) and the asymmetric offsets
    (LSQ+); otherwise they stay at their RTN values. epochs, lr, max_steps, batch_size,
    seed: the fine-tuning run (AdamW, warm-up and linear decay, validation each epoch).
    """

    name = "qat"
    notes_float_layers = True
    bits: int = param(4, between(2, 8))
    group_size: int | None = param(128, POSITIVE)
    strict_groups: bool = False
    symmetric: bool = False
    embeddings: bool = True
    learn_scale: bool = True
    learn_zero_point: bool = True
    epochs: int = param(1, POSITIVE)
    lr: float = param(5e-5, POSITIVE)
    max_steps: int | None = param(None, POSITIVE)
    batch_size: int = param(32, POSITIVE)
    seed: int = param(0, NON_NEGATIVE)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


def prepare_fake_quant(model: nn.Module, config: QATConfig) -> list[WeightQuantizer]:
    """Replace the selected layers by fake-quantized ones (in place); one quantizer per
    weight, shared by tied layers. Returns the quantizers."""
    # not ``transform_weights``: a quantizer is a trainable module, not a stored format
    shared: dict[int, WeightQuantizer] = {}
    for name, mod in quant_targets(model, config):
        quantizer = shared.get(id(mod.weight))
        if quantizer is None:
            quantizer = shared[id(mod.weight)] = WeightQuantizer(
                mod.weight.detach(),
                config.bits,
                group_for(mod.weight.shape[1], config.group_size),
                symmetric=config.symmetric,
                learn_scale=config.learn_scale,
                learn_zero_point=config.learn_zero_point,
            )
        fake = FakeQuantLinear if isinstance(mod, nn.Linear) else FakeQuantEmbedding
        replace_module(model, name, fake(mod, quantizer))
    return list(shared.values())


def convert_fake_quant(model: nn.Module, ctx: CompressContext | None = None) -> nn.Module:
    """Turn every fake-quantized layer into a ``DecodedLinear`` / ``DecodedEmbedding``
    holding the ``affine`` format of its trained quantizer (tied layers share one)."""
    layers = [
        (n, m) for n, m in model.named_modules() if isinstance(m, (FakeQuantLinear, FakeQuantEmbedding))
    ]

    def encode(_name: str, mod: Any) -> AffineQuantized:
        return mod.quantizer.to_format(mod.weight.detach())

    def wrap(mod: Any, fmt: Any) -> nn.Module:
        return wrap_decoded(mod.linear if isinstance(mod, FakeQuantLinear) else mod.embedding, fmt)

    transform_weights(model, layers, encode, wrap=wrap, ctx=ctx, method="qat")
    return model


def train_fake_quant(model: nn.Module, config: QATConfig, data: object, progress: bool = True) -> FitResult:
    """Train a fake-quantized model: every parameter, and the quantizers' scales and offsets
    as their ``learn_*`` settings say."""
    quant = {id(p) for m in model.modules() if isinstance(m, WeightQuantizer) for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad or id(p) not in quant]
    return finetune_on_task(
        model,
        data,
        TrainConfig(
            epochs=config.epochs, lr=config.lr, max_steps=config.max_steps, patience=None, seed=config.seed
        ),
        batch_size=config.batch_size,
        seed=config.seed,
        params=params,
        progress=progress,
        desc=f"QAT int{config.bits}",
    )


@register(QATConfig)
def _qat(model: nn.Module, config: QATConfig, ctx: CompressContext) -> nn.Module:
    data = ctx.require_data(config.name, "training data", score=True)  # fail before touching the model
    prepare_fake_quant(model, config)
    train_fake_quant(model, config, data, ctx.progress)
    return convert_fake_quant(model, ctx)


FAMILY = "quantization"


@register_preset(
    "qat-int4",
    "INT4 groups of 128 (as int4-g128), trained with LSQ+ quantization-aware training on the task",
    FAMILY,
)
def _qat4() -> list[MethodConfig]:
    return [QATConfig(bits=4, group_size=128)]
