"""SmoothQuant W8A8 (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models", arXiv 2211.10438).

Activation outliers live in a few input channels; per-token INT8 cannot represent them and
the rest of the token at once. SmoothQuant divides each input channel ``j`` by
``s_j = max|X_j|^α / max|W_j|^(1-α)`` (``max|X_j|`` from calibration inputs, ``max|W_j|``
over the weight's output rows) and multiplies the weight's column ``j`` by it:
``X W^T = (X diag(1/s)) (W diag(s))^T`` exactly in float. Then W8A8 as ``int8-dynamic``:
per-channel INT8 weights, per-token dynamic INT8 activations, ``torch._int_mm``.

Where the divisor goes:

- **folded** into the norm that feeds the Linear when the model is pre-LN and the norm's
  output feeds nothing else: Llama / Mistral / Qwen2 (``input_layernorm`` -> q, k, v;
  ``post_attention_layernorm`` -> gate, up), Phi-3's fused projections, OPT
  (``self_attn_layer_norm`` -> q, k, v; ``final_layer_norm`` -> fc1). The Linears sharing the
  norm share one ``s`` (``max|W_j|`` over all of them) and become plain ``Int8DynamicLinear``;
  the norm's weight (and bias) are divided by ``s``. A fold is used only if calibration saw
  the Linears read the norm's very output tensor and the folded norm reproduces ``y / s`` on
  a test input; otherwise it falls back to the run-time divisor;
- **at run time** everywhere else (``Int8SmoothLinear`` divides its input by a stored
  ``(in,)`` vector): post-LN BERT, whose normed hidden state is also the residual, and the
  inputs of attention-output and down projections.

Linears whose weight is tied to another module (an LM head sharing the embedding) are not
smoothed: changing the weight would change the embedding too. They share the embedding's
INT8 weight, as in ``int8-dynamic``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from ...data.calibration import CalibrationData, calibration_batches, run_forward
from ...errors import ConfigError
from ...formats.affine import AffineQuantized
from ...models.blocks import tied_weight_ids
from ...nn.int8 import Int8DynamicLinear, Int8Embedding, Int8SmoothLinear
from ...primitives.activation import smoothing_factors
from ..base import (
    POSITIVE,
    CompressContext,
    MethodConfig,
    between,
    param,
    register,
    register_config,
    register_preset,
    select,
    select_modules,
)
from ..transform import transform_weights

__all__ = ["FOLD_PATTERNS", "SmoothQuantConfig", "smooth"]

log = logging.getLogger(__name__)

# (norm, Linears it alone feeds), relative to one pre-LN block
FOLD_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("input_layernorm", ("self_attn.qkv_proj",)),
    ("post_attention_layernorm", ("mlp.gate_up_proj",)),
    ("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("final_layer_norm", ("fc1",)),
)


@register_config
@dataclasses.dataclass(frozen=True)
class SmoothQuantConfig(MethodConfig):
    """SmoothQuant then dynamic W8A8 of Linear layers; weight-only INT8 for Embeddings.

    alpha: migration strength in [0, 1] (0.5 in the paper; larger moves more of the
    activation range into the weights); fold_norms: fold ``1/s`` into a preceding norm where
    possible (else every Linear divides its input at run time); n_samples / batch_size:
    calibration examples from the task's train split.
    """

    name = "smoothquant"
    notes_float_layers = True
    alpha: float = param(0.5, between(0.0, 1.0))
    fold_norms: bool = True
    n_samples: int = param(128, POSITIVE)
    batch_size: int = param(8, POSITIVE)
    embeddings: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


def _fold_groups(model: nn.Module, linears: dict[str, nn.Linear]) -> dict[str, list[str]]:
    """norm name -> names of the Linears it alone feeds (all of them selected)."""
    groups: dict[str, list[str]] = {}
    for prefix, block in model.named_modules():
        for norm_attr, lin_attrs in FOLD_PATTERNS:
            names = [f"{prefix}.{a}" if prefix else a for a in lin_attrs]
            norm_name = f"{prefix}.{norm_attr}" if prefix else norm_attr
            try:
                norm = block.get_submodule(norm_attr)
            except AttributeError:
                continue
            w = getattr(norm, "weight", None)
            if (
                norm_name not in groups
                and all(x in linears for x in names)
                and isinstance(w, nn.Parameter)
                and w.dim() == 1
                and w.shape[0] == linears[names[0]].in_features
            ):
                groups[norm_name] = names
    return groups


@torch.no_grad()
def _fold(norm: Any, s: torch.Tensor) -> bool:
    """Divide the norm's affine output by ``s``; True if it checks out numerically."""
    w = norm.weight
    x = torch.randn(4, w.shape[0], generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    before = norm(x).float()
    old_w, old_b = w.data.clone(), None
    w.data = (w.data.float() / s).to(w.dtype)
    b = getattr(norm, "bias", None)
    if isinstance(b, torch.Tensor):
        old_b = b.data.clone()
        b.data = (b.data.float() / s).to(b.dtype)
    after = norm(x).float()
    tol = 1e-2 if w.dtype in (torch.float16, torch.bfloat16) else 1e-4
    if torch.allclose(after * s, before, rtol=tol, atol=tol * float(before.abs().max())):
        return True
    w.data = old_w  # e.g. a norm computing x * (1 + w): not a plain scale
    if old_b is not None:
        b.data = old_b  # type: ignore[union-attr]
    return False


@torch.no_grad()
def smooth(
    model: nn.Module,
    config: SmoothQuantConfig,
    data: CalibrationData,
    *,
    progress: bool = False,
    batches: list[Any] | None = None,
    ctx: CompressContext | None = None,
) -> dict[str, torch.Tensor | None]:
    """SmoothQuant's float transform of the selected Linears of ``model``, in place.

    Calibrates ``max|X_j|`` per Linear input, folds ``1/s`` into the norms it can and
    multiplies every smoothed weight by ``s``. Returns, per selected Linear, the ``(in,)``
    divisor its input still needs at run time, or ``None`` when nothing is left to do (folded,
    tied, or never run). The model's float output is unchanged when those divisors are applied.
    A Linear that never ran is noted through ``ctx`` (else logged as a warning).
    """
    n = config.name
    linears: dict[str, Any] = dict(
        select_modules(model, (nn.Linear,), config.include, config.exclude, method=n)
    )
    if batches is None:
        batches = calibration_batches(data, n, batch_size=config.batch_size, n_samples=config.n_samples)
    tied = tied_weight_ids(model)
    groups = _fold_groups(model, linears) if config.fold_norms else {}
    group_of = {lin: norm for norm, names in groups.items() for lin in names}
    act_max: dict[str, torch.Tensor] = {}
    norm_out: dict[str, tuple[int, torch.Size]] = {}
    direct = dict.fromkeys(groups, True)  # calibration saw the Linears read the norm's output

    def lin_hook(name: str):
        def run(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            if not torch.isfinite(x).all():
                raise ConfigError(f"{n}: the input of {name} holds NaN or inf values")
            m = x.reshape(-1, x.shape[-1]).abs().amax(0).float()  # (in,)
            act_max[name] = torch.maximum(act_max[name], m) if name in act_max else m
            g = group_of.get(name)
            if g is not None and norm_out.get(g) != (x.data_ptr(), x.shape):
                direct[g] = False

        return run

    def norm_hook(name: str):
        def run(_mod: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
            if isinstance(out, torch.Tensor):
                norm_out[name] = (out.data_ptr(), out.shape)

        return run

    handles = [m.register_forward_pre_hook(lin_hook(name)) for name, m in linears.items()]
    handles += [model.get_submodule(g).register_forward_hook(norm_hook(g)) for g in groups]
    try:
        run_forward(model, data, batches, desc=f"{n}: activation ranges", progress=progress)
    finally:
        for h in handles:
            h.remove()

    out: dict[str, torch.Tensor | None] = {}
    n_norms = 0
    for norm_name, names in groups.items():
        if any(x not in act_max or id(linears[x].weight) in tied for x in names):
            continue
        if not direct[norm_name]:
            log.info("%s: %s does not feed %s directly; dividing at run time", n, norm_name, ", ".join(names))
            continue
        a = torch.stack([act_max[x] for x in names]).amax(0)
        wmax = torch.cat([linears[x].weight.detach().abs().float() for x in names]).amax(0)  # (in,)
        s = smoothing_factors(a, wmax, config.alpha).to(linears[names[0]].weight.device)
        if not _fold(model.get_submodule(norm_name), s):
            log.info("%s: %s is not a plain affine norm; dividing at run time", n, norm_name)
            continue
        n_norms += 1
        for x in names:
            w = linears[x].weight
            w.data = (w.data.float() * s).to(w.dtype)
            out[x] = None
    n_folded = len(out)
    for name, lin in linears.items():
        if name in out:
            continue
        if id(lin.weight) in tied:
            log.info("%s: %s shares its weight with another module; not smoothed", n, name)
            out[name] = None
        elif name not in act_max:
            message = f"{n}: {name} never ran on the calibration data; not smoothed"
            if ctx is not None:
                ctx.note(message, logger=log)
            else:
                log.warning("%s", message)
            out[name] = None
        else:
            s = smoothing_factors(act_max[name], lin.weight.detach().abs().float().amax(0), config.alpha)
            s = s.to(lin.weight.device)
            lin.weight.data = (lin.weight.data.float() * s).to(lin.weight.dtype)
            out[name] = s
    n_runtime = sum(1 for v in out.values() if v is not None)
    log.info(
        "%s: alpha=%g, %d Linears folded into %d norms, %d divide at run time, %d not smoothed",
        n,
        config.alpha,
        n_folded,
        n_norms,
        n_runtime,
        len(out) - n_folded - n_runtime,
    )
    return out


@register(SmoothQuantConfig)
def _smoothquant(model: nn.Module, config: SmoothQuantConfig, ctx: CompressContext) -> nn.Module:
    n = config.name
    targets = select(model, config, (nn.Linear, nn.Embedding) if config.embeddings else (nn.Linear,))
    data = ctx.require_data(n)
    batches = calibration_batches(data, n, batch_size=config.batch_size, n_samples=config.n_samples)
    divisors = smooth(model, config, data, progress=ctx.progress, batches=batches, ctx=ctx)
    divisor: dict[nn.Module, torch.Tensor | None] = {
        m: divisors[name] for name, m in targets if isinstance(m, nn.Linear)
    }

    def encode(_name: str, mod: Any) -> AffineQuantized:
        return AffineQuantized.encode(mod.weight.detach(), bits=8)  # a smoothed weight is W diag(s) by now

    def wrap(mod: Any, fmt: Any) -> nn.Module:
        if isinstance(mod, nn.Embedding):
            return Int8Embedding(fmt, mod.padding_idx)
        s = divisor[mod]
        return (
            Int8DynamicLinear.from_float(mod, fmt)
            if s is None
            else Int8SmoothLinear.from_float(mod, fmt, smooth=s)
        )

    # Embeddings first: a Linear tied to one (an LM head, never smoothed) shares its INT8 weight
    ordered = sorted(targets, key=lambda t: isinstance(t[1], nn.Linear))
    transform_weights(model, ordered, encode, wrap=wrap, ctx=ctx, method=n)
    return model


FAMILY = "quantization"


@register_preset(
    "smoothquant-w8a8",
    "SmoothQuant (alpha 0.5) then dynamic per-token INT8 activations x per-channel INT8 weights",
    FAMILY,
)
def _preset() -> list[MethodConfig]:
    return [SmoothQuantConfig()]
