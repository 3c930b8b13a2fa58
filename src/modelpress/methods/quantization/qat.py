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
import logging

from torch import nn

from ...errors import ConfigError
from ...nn.decoded import wrap_decoded
from ...nn.fake_quant import FakeQuantEmbedding, FakeQuantLinear, WeightQuantizer
from ...training.loop import FitResult, TrainConfig, fit
from ..base import (
    CompressContext,
    MethodConfig,
    register,
    register_config,
    register_preset,
    replace_module,
    select_modules,
)
from .calibration import group_for, log_group_fallbacks

__all__ = ["QATConfig", "convert_fake_quant", "prepare_fake_quant", "train_fake_quant"]

log = logging.getLogger(__name__)


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
    bits: int = 4
    group_size: int | None = 128
    strict_groups: bool = False
    symmetric: bool = False
    embeddings: bool = True
    learn_scale: bool = True
    learn_zero_point: bool = True
    epochs: int = 1
    lr: float = 5e-5
    max_steps: int | None = None
    batch_size: int = 32
    seed: int = 0
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"qat: bits must be an integer in 2..8, got {self.bits!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ConfigError(f"qat: group_size must be a positive integer or null, got {self.group_size!r}")
        for f in ("epochs", "batch_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"qat: {f} must be a positive integer, got {v!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ConfigError(f"qat: max_steps must be a positive integer or null, got {self.max_steps!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"qat: lr must be > 0, got {self.lr!r}")


def prepare_fake_quant(model: nn.Module, config: QATConfig) -> list[WeightQuantizer]:
    """Replace the selected layers by fake-quantized ones (in place); one quantizer per
    weight, shared by tied layers. Returns the quantizers."""
    types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding) if config.embeddings else (nn.Linear,)
    targets = select_modules(model, types, config.include, config.exclude)
    if not targets:
        raise ConfigError("qat: no layer to quantize (check include/exclude)")
    log_group_fallbacks("qat", targets, config.group_size, config.strict_groups)
    shared: dict[int, WeightQuantizer] = {}
    for name, mod in targets:
        quantizer = shared.get(id(mod.weight))
        if quantizer is None:
            quantizer = WeightQuantizer(
                mod.weight.detach(),
                config.bits,
                group_for(mod.weight.shape[1], config.group_size),
                symmetric=config.symmetric,
                learn_scale=config.learn_scale,
                learn_zero_point=config.learn_zero_point,
            )
            shared[id(mod.weight)] = quantizer
        wrapped = (
            FakeQuantLinear(mod, quantizer)
            if isinstance(mod, nn.Linear)
            else FakeQuantEmbedding(mod, quantizer)
        )
        replace_module(model, name, wrapped)
    return list(shared.values())


def convert_fake_quant(model: nn.Module) -> nn.Module:
    """Turn every fake-quantized layer into a ``DecodedLinear`` / ``DecodedEmbedding``
    holding the ``affine`` format of its trained quantizer (tied layers share one)."""
    formats: dict[int, object] = {}
    layers = [
        (n, m) for n, m in model.named_modules() if isinstance(m, (FakeQuantLinear, FakeQuantEmbedding))
    ]
    for name, mod in layers:
        inner = mod.linear if isinstance(mod, FakeQuantLinear) else mod.embedding
        fmt = formats.get(id(mod.quantizer))
        if fmt is None:
            fmt = formats[id(mod.quantizer)] = mod.quantizer.to_format(inner.weight.detach())
        replace_module(model, name, wrap_decoded(inner, fmt))  # type: ignore[arg-type]
    return model


def _require_data(data: object) -> None:
    for attr in ("batches", "loss", "score"):
        if not hasattr(data, attr):
            raise ConfigError("qat needs training data: pass a task adapter (batches, loss, score) as `data`")


def train_fake_quant(model: nn.Module, config: QATConfig, data: object, progress: bool = True) -> FitResult:
    """Train a fake-quantized model (every parameter, scales and offsets included)."""
    _require_data(data)
    flags = {p: p.requires_grad for p in model.parameters()}
    quant_params = {id(p) for m in model.modules() if isinstance(m, WeightQuantizer) for p in m.parameters()}
    for p in model.parameters():
        if id(p) not in quant_params:  # quantizer parameters keep their learn_* setting
            p.requires_grad_(True)
    try:
        return fit(
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
            progress=progress,
            desc=f"QAT int{config.bits}",
        )
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)


@register(QATConfig)
def _qat(model: nn.Module, config: QATConfig, ctx: CompressContext) -> nn.Module:
    _require_data(ctx.data)  # fail before touching the model
    quantizers = prepare_fake_quant(model, config)
    result = train_fake_quant(model, config, ctx.data, ctx.progress)
    log.info(
        "qat: %d quantized weights trained for %d steps in %.0f s: %s",
        len(quantizers),
        result.steps,
        result.seconds,
        result.history,
    )
    return convert_fake_quant(model)


FAMILY = "quantization"


@register_preset(
    "qat-int4",
    "INT4 groups of 128 (as int4-g128), trained with LSQ+ quantization-aware training on the task",
    FAMILY,
)
def _qat4() -> list[MethodConfig]:
    return [QATConfig(bits=4, group_size=128)]
