"""Binarization (BWN, XNOR-Net, BNN) and ternarization (BitNet b1.58) of Linear weights,
post-training or trained with the straight-through estimator, optionally distilled from
the original model.

``binary`` (``BinaryConfig``): ``scheme`` ``bwn`` (sign weights times α = mean|W| per row
or group, float activations; the ``binary`` format in a ``DecodedLinear``), ``xnor`` (the
same weights, and inputs binarized per token as ``sign(x)·mean|x|``: ``XnorLinear``),
``bnn`` (``sign(W)`` and ``sign(x)``, no scales). ``ternary`` (``TernaryConfig``): BitNet
b1.58's absmean, ``γ·RoundClip(W/γ, -1, 1)`` with γ per tensor or per row (the
``ternary`` format: 2 bits, or 1.6 bits packed 5 per byte, per weight).

Which layers (the defaults, and why):

- Embeddings stay in float unless ``embeddings: true``: a binary embedding row keeps only
  the signs of a token's vector, and the embeddings are the transformer's first layer,
  which XNOR-Net, BinaryBERT and BitNet all keep at full precision. An include pattern
  that names an Embedding without ``embeddings: true`` is a ``ConfigError``.
- The output layer (classifier / LM head) stays in float (``keep_head: true``): the same
  practice, it is a small share of a classifier's weights, and an LM head is usually tied
  to the embeddings.
- In a model without embeddings, the first Linear stays in float when its input would be
  binarized (``keep_first: null`` = only for ``xnor`` / ``bnn``): signs of raw inputs
  (pixels) lose most of their information, while binary *weights* on raw inputs cost
  little (BinaryConnect binarizes every layer of its MNIST MLP, and LeNet-300-100's first
  layer holds 88 % of its weights, so keeping it in float would cap the saving at 8x).
- ``keep``: module-name patterns kept at higher precision (the multi-precision path, e.g.
  the first and last blocks), in float or, with ``keep_bits`` 8 or 4, as symmetric
  per-channel RTN integers (the ``affine`` format).

Training (``epochs > 0``): each selected layer keeps its latent float weight and computes
with its binarized value (``nn.binary.FakeBinaryLinear``); gradients reach the latent
weight through the clipped STE (passes where ``|w| ≤ ste_clip``). The whole model trains
through the one loop: on the task (``finetune_on_task``), or, with ``distill: true``,
against the teacher (``compress(teacher=...)``, else the model as this step received it)
with soft targets (``kd_alpha``, ``kd_temperature``) and optional hidden-state MSE
(``kd_hidden``; BinaryBERT / TernaryBERT's logits + hidden-state distillation), through
``methods.distillation.distill``. Then every layer becomes the same stored format as
post-training binarization, its decode equal to the trained binarized weight.

Papers: Rastegari et al., "XNOR-Net" (BWN and XNOR, arXiv 1603.05279); Courbariaux et
al., "Binarized Neural Networks" (arXiv 1602.02830); Ma et al., "The Era of 1-bit LLMs"
(BitNet b1.58, arXiv 2402.17764); Bai et al., "BinaryBERT" (arXiv 2012.15701).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import logging
from typing import Any

from torch import nn

from ...errors import ConfigError
from ...formats.affine import AffineQuantized
from ...formats.base import CompressedTensor
from ...formats.binary import BinaryTensor
from ...models.blocks import weight_owners
from ...nn.binary import FakeBinaryEmbedding, FakeBinaryLinear, WeightBinarizer, XnorLinear
from ...nn.decoded import wrap_decoded
from ...training import TrainConfig, finetune_on_task
from ..base import (
    NON_NEGATIVE,
    POSITIVE,
    CompressContext,
    MethodConfig,
    between,
    check_patterns,
    one_of,
    param,
    register,
    register_config,
    replace_module,
    select,
)
from ..pruning.prune import head_names
from ..transform import Skip, transform_weights

__all__ = ["BinaryConfig", "TernaryConfig", "binary_targets"]

log = logging.getLogger(__name__)

SCHEMES = ("bwn", "xnor", "bnn")
_WILDCARDS = set("*?[")


@dataclasses.dataclass(frozen=True)
class _BinaryFamily(MethodConfig):
    """Fields every binarization method shares (selection, training, distillation)."""

    notes_float_layers = True

    embeddings: bool = False
    keep_head: bool = True
    keep_first: bool | None = None
    keep: tuple[str, ...] = ()
    keep_bits: int | None = param(None, one_of(4, 8))
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    epochs: int = param(0, NON_NEGATIVE)  # 0: post-training
    lr: float | None = param(None, POSITIVE)  # None: the task's own learning rate
    max_steps: int | None = param(None, POSITIVE)
    batch_size: int | None = param(None, POSITIVE)
    seed: int = param(0, NON_NEGATIVE)
    ste_clip: float | None = param(1.0, POSITIVE)
    distill: bool = False
    kd_alpha: float = param(0.5, between(0, 1))
    kd_temperature: float = param(1.0, POSITIVE)
    kd_hidden: float = param(0.0, NON_NEGATIVE)

    def validate(self) -> None:
        if self.distill and self.epochs == 0:
            raise self.error("distill trains the binarized model: set epochs >= 1")
        if not self.distill and (self.kd_hidden or self.kd_alpha != 0.5 or self.kd_temperature != 1.0):
            raise self.error("kd_alpha / kd_temperature / kd_hidden need distill: true")
        if self.epochs == 0 and (self.max_steps is not None or self.lr is not None):
            raise self.error("lr / max_steps set a training run: set epochs >= 1 (0 is post-training)")
        if self.keep_bits is not None and not self.keep:
            raise self.error("keep_bits applies to the layers of `keep`: name them (module-name patterns)")

    # -- what a subclass says --------------------------------------------------------------
    @property
    def binary_inputs(self) -> bool:
        return False

    def binarizer(self) -> WeightBinarizer:
        raise NotImplementedError

    def wrap(self, mod: nn.Module, fmt: CompressedTensor) -> nn.Module:
        return wrap_decoded(mod, fmt)


@register_config
@dataclasses.dataclass(frozen=True)
class BinaryConfig(_BinaryFamily):
    """Binary weights (1 bit each + a scale per row or group): BWN, XNOR-Net or BNN.

    scheme: ``bwn`` (α·sign(W), float inputs), ``xnor`` (and inputs binarized per token to
    sign(x)·mean|x|), ``bnn`` (sign(W), sign(x), no scales). group_size: one α per run of
    that many columns (bwn only; default one per row). Layer selection, training and
    distillation fields: see the module docstring (``methods/binary/README.md``).
    """

    name = "binary"
    scheme: str = param("bwn", one_of(*SCHEMES))
    group_size: int | None = param(None, POSITIVE)
    # xnor / bnn: binarize each token's deviation from its mean, the mean added back exactly
    center: bool = True

    def validate(self) -> None:
        super().validate()
        if self.group_size is not None and self.scheme != "bwn":
            raise self.error(
                f"group_size applies to scheme bwn (xnor / bnn scale per row), got {self.scheme}"
            )

    @property
    def binary_inputs(self) -> bool:
        return self.scheme != "bwn"

    def binarizer(self) -> WeightBinarizer:
        mode = "sign" if self.scheme == "bnn" else "binary"
        return WeightBinarizer(mode, group_size=self.group_size, clip=self.ste_clip)

    def wrap(self, mod: nn.Module, fmt: CompressedTensor) -> nn.Module:
        if self.binary_inputs and isinstance(mod, nn.Linear):
            assert isinstance(fmt, BinaryTensor)
            return XnorLinear.wrap(mod, fmt, act_scaled=self.scheme == "xnor", centered=self.center)
        return wrap_decoded(mod, fmt)


@register_config
@dataclasses.dataclass(frozen=True)
class TernaryConfig(_BinaryFamily):
    """Ternary weights {-1, 0, +1} times BitNet b1.58's absmean scale γ = mean|W|.

    granularity: one γ per ``channel`` (output row, the default: 4 bytes a row for a lower
    error) or per ``tensor`` (the paper's). packing: ``auto`` (5 codes per byte, 1.6 bits,
    where that is smaller than 4 per byte; it is for any layer of more than 4 weights),
    ``2bit`` or ``base3``. Layer selection, training and distillation fields: see the
    module docstring (``methods/binary/README.md``).
    """

    name = "ternary"
    granularity: str = param("channel", one_of("channel", "tensor"))
    packing: str = param("auto", one_of("auto", "2bit", "base3"))

    def binarizer(self) -> WeightBinarizer:
        return WeightBinarizer(
            "ternary", granularity=self.granularity, packing=self.packing, clip=self.ste_clip
        )


# -- selection ------------------------------------------------------------------------------


def _check_embedding_patterns(model: nn.Module, config: _BinaryFamily) -> None:
    """An include pattern that names an Embedding (exactly, or matching embeddings only)
    while ``embeddings`` is off is a mistake to say, not a layer to skip silently."""
    if config.embeddings:
        return
    embs = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and n]
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding)) and n]
    for p in config.include:
        if p == "*":
            continue
        hit = [n for n in embs if fnmatch.fnmatchcase(n, p)]
        if not hit:
            continue
        exact = not (_WILDCARDS & set(p))
        only = all(n in embs for n in layers if fnmatch.fnmatchcase(n, p))  # no Linear matched
        if exact or only:
            raise ConfigError(
                f"{config.name}: include pattern '{p}' selects the embedding {hit[0]}, but embeddings are "
                "kept in float unless asked: set embeddings: true to binarize them"
            )


def _first_linear(model: nn.Module) -> str | None:
    """The Linear that reads the model's input, if one does: none in a model with
    embeddings (they are its first layer) or whose first weight layer is a convolution
    (not binarized here), else its first Linear."""
    if any(isinstance(m, nn.Embedding) for m in model.modules()):
        return None
    layers = (nn.Linear, nn.modules.conv._ConvNd)
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, layers) and n), None)
    return first[0] if first is not None and isinstance(first[1], nn.Linear) else None


def binary_targets(
    model: nn.Module, config: _BinaryFamily
) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]], dict[str, str]]:
    """``(binarized, kept_quantized, kept_float)``: the selected layers to binarize, those
    of ``keep`` to store as ``keep_bits`` integers, and the layers kept in float with the
    reason. Refuses an Embedding named without ``embeddings``, and a weight shared with a
    layer left out (a tied LM head without its embedding)."""
    if config.keep:
        check_patterns(model, config.name, config.keep, ())
    _check_embedding_patterns(model, config)
    types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding) if config.embeddings else (nn.Linear,)
    selected = select(model, config, types)
    heads = head_names(model) if config.keep_head else set()
    keep_first = config.binary_inputs if config.keep_first is None else config.keep_first
    first = _first_linear(model) if keep_first else None
    binarized: list[tuple[str, nn.Module]] = []
    quantized: list[tuple[str, nn.Module]] = []
    kept: dict[str, str] = {}
    for name, mod in selected:
        if name in heads:
            kept[name] = "the output layer stays in float (keep_head)"
        elif name == first:
            kept[name] = "the first layer stays in float (keep_first: its input would be binarized)"
        elif any(fnmatch.fnmatchcase(name, p) for p in config.keep):
            if config.keep_bits is None:
                kept[name] = "kept in float (keep)"
            else:
                quantized.append((name, mod))
        else:
            binarized.append((name, mod))
    if not binarized:
        raise ConfigError(
            f"{config.name}: no layer left to binarize (the output layer, the first layer and `keep` "
            "stay at higher precision)"
        )
    owners = weight_owners(model)
    chosen = {n for n, _ in binarized} | {n for n, _ in quantized}
    for name, mod in [*binarized, *quantized]:
        others = [o for o in owners.get(id(mod.weight), []) if o not in chosen]
        if others:
            raise ConfigError(
                f"{config.name}: {name}.weight is tied to {', '.join(others)}; binarizing it would change "
                f"that layer too: exclude '{name}'"
                + (" or set embeddings: true and keep_head: false" if not config.embeddings else "")
            )
    return binarized, quantized, kept


# -- the methods ----------------------------------------------------------------------------


def _convert(model: nn.Module, config: _BinaryFamily, targets: list[tuple[str, nn.Module]], ctx: Any) -> None:
    binarizer = config.binarizer()

    def encode(_name: str, mod: Any) -> CompressedTensor:
        return binarizer.to_format(mod.weight.detach())

    transform_weights(model, targets, encode, wrap=config.wrap, ctx=ctx, method=config.name)


def _prepare(model: nn.Module, config: _BinaryFamily, targets: list[tuple[str, nn.Module]]) -> None:
    """Layers computing with binarized latent weights (tied layers share one binarizer)."""
    act = (
        None
        if not config.binary_inputs
        else ("scaled" if getattr(config, "scheme", "") == "xnor" else "sign")
    )
    for name, mod in targets:
        b = config.binarizer()
        if isinstance(mod, nn.Linear):
            centered = bool(getattr(config, "center", False))
            replace_module(model, name, FakeBinaryLinear(mod, b, act, centered))
        else:
            assert isinstance(mod, nn.Embedding)
            replace_module(model, name, FakeBinaryEmbedding(mod, b))


def _fake_to_formats(model: nn.Module, config: _BinaryFamily, ctx: CompressContext) -> None:
    layers = [
        (n, m) for n, m in model.named_modules() if isinstance(m, (FakeBinaryLinear, FakeBinaryEmbedding))
    ]

    def encode(_name: str, mod: Any) -> CompressedTensor:
        return mod.binarizer.to_format(mod.weight.detach())

    def wrap(mod: Any, fmt: CompressedTensor) -> nn.Module:
        inner = mod.linear if isinstance(mod, FakeBinaryLinear) else mod.embedding
        return config.wrap(inner, fmt)

    transform_weights(model, layers, encode, wrap=wrap, ctx=ctx, method=config.name)


def _train(
    model: nn.Module, teacher: nn.Module | None, config: _BinaryFamily, data: Any, progress: bool
) -> None:
    training = getattr(data, "training", None)
    task_train = getattr(training, "train", None)
    task_train = task_train if isinstance(task_train, TrainConfig) else TrainConfig(lr=5e-5)
    task_bs = getattr(training, "batch_size", None)
    batch_size = config.batch_size or (task_bs if isinstance(task_bs, int) else 32)
    lr = config.lr or task_train.lr
    if teacher is not None:
        from ..distillation.distill import DistillConfig, distill

        first = next(iter(data.batches("train", batch_size, shuffle_seed=config.seed)), None)
        if not isinstance(first, dict):
            raise ConfigError(
                f"{config.name}: distill: true takes batches that are dicts of model inputs (a task "
                f"adapter's), got a {type(first).__name__}; use distill: false to train on the task loss"
            )
        hidden = config.kd_hidden
        if hidden and not hasattr(getattr(model, "config", None), "to_dict"):
            log.warning(
                "%s: kd_hidden ignored: %s is not a transformers model", config.name, type(model).__name__
            )
            hidden = 0.0

        kd = DistillConfig(
            student="input",
            alpha=config.kd_alpha,
            temperature=config.kd_temperature,
            hidden=hidden,
            epochs=config.epochs,
            lr=lr,
            batch_size=batch_size,
            max_steps=config.max_steps,
            seed=config.seed,
        )
        distill(model, teacher, data, kd, progress=progress)
        return
    train = dataclasses.replace(
        task_train, epochs=config.epochs, lr=lr, max_steps=config.max_steps, patience=None, seed=config.seed
    )
    finetune_on_task(
        model,
        data,
        train,
        batch_size=batch_size,
        seed=config.seed,
        progress=progress,
        desc=f"{config.name} STE",
    )


def _apply(model: nn.Module, config: _BinaryFamily, ctx: CompressContext) -> nn.Module:
    data = ctx.require_data(config.name, "training data", score=True) if config.epochs else None
    binarized, quantized, kept = binary_targets(model, config)
    for name, reason in kept.items():
        log.info("%s: %s: %s", config.name, name, reason)
    if kept:
        shown = ", ".join(list(kept)[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
        ctx.note(
            f"{config.name}: {len(kept)} layer(s) kept in float ({shown}): first/last-layer practice or keep"
        )
    teacher = None
    if config.distill:  # the model as this step received it, before anything is rounded
        teacher = ctx.teacher if ctx.teacher is not None else copy.deepcopy(model).eval()
    if quantized:
        bits = config.keep_bits
        assert bits is not None

        def rtn(_name: str, mod: Any) -> CompressedTensor | Skip:
            return AffineQuantized.encode(mod.weight.detach(), bits, symmetric=True)

        transform_weights(model, quantized, rtn, ctx=ctx, method=config.name, desc=f"keep int{bits}")
    if not config.epochs:
        _convert(model, config, binarized, ctx)
        return model
    _prepare(model, config, binarized)
    _train(model, teacher, config, data, ctx.progress)
    _fake_to_formats(model, config, ctx)
    return model.eval()


@register(BinaryConfig)
def _binary(model: nn.Module, config: BinaryConfig, ctx: CompressContext) -> nn.Module:
    return _apply(model, config, ctx)


@register(TernaryConfig)
def _ternary(model: nn.Module, config: TernaryConfig, ctx: CompressContext) -> nn.Module:
    return _apply(model, config, ctx)
