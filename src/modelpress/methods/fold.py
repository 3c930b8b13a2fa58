"""Fold BatchNorm into the convolution (or Linear) before it, for inference.

``y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta`` is ``conv'(x) + shift`` with the
kernel scaled per output channel by ``s = gamma / sqrt(var + eps)``. A method that
quantizes or clusters the conv then works on the kernel inference really uses (Jacob et
al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", arXiv 1712.05877, section 3.2).

The BatchNorm is not removed (the saved artifact must rebuild the very architecture it
came from): it becomes the identity plus a shift (``weight`` 1, ``running_mean`` 0,
``running_var`` 1 - eps, ``bias`` the shift when the conv has no bias of its own, else 0
and the shift goes into the conv's bias). Exact in eval mode; in training mode a BatchNorm
normalises with the batch's statistics, so fine-tune before folding, not after.

Pairs are found with ``torch.fx`` where the model traces (a BatchNorm whose only input is a
conv whose only user is that BatchNorm), else as successive children of an
``nn.Sequential``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any

import torch
from torch import nn

from .base import CompressContext, MethodConfig, register, register_config

__all__ = ["FoldBatchNormConfig", "batchnorm_pairs", "fold_batchnorm"]

log = logging.getLogger(__name__)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FOLDABLE = (*_CONVS, nn.Linear)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fx_pairs(model: nn.Module) -> list[tuple[str, str]] | None:
    try:
        import torch.fx

        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any model fx cannot trace falls back to Sequential pairs
        return None
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), _BNS):
            continue
        if len(node.all_input_nodes) != 1:
            continue
        prev = node.all_input_nodes[0]
        if (
            prev.op == "call_module"
            and isinstance(modules.get(str(prev.target)), _FOLDABLE)
            and len(prev.users) == 1
        ):
            pairs.append((str(prev.target), str(node.target)))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        children = list(mod.named_children())
        for (a, first), (b, second) in itertools.pairwise(children):
            if isinstance(first, _FOLDABLE) and isinstance(second, _BNS):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a, prefix + b))
    return pairs


def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv name, batchnorm name)`` of every BatchNorm fed by a conv / Linear alone."""
    pairs = _fx_pairs(model)
    if pairs is None:
        pairs = _sequential_pairs(model)
    # a conv used at several places (or a BatchNorm reused) is not folded
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    out = []
    for c, b in pairs:
        conv, bn = model.get_submodule(c), model.get_submodule(b)
        if uses[id(conv)] == 1 and uses[id(bn)] == 1 and getattr(bn, "running_var", None) is not None:
            out.append((c, b))
    return out


@torch.no_grad()
def _fold(conv: Any, bn: Any) -> None:
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)  # (out,)
    w = conv.weight
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        # (in, out/groups, *k): output channel o = g * (out/groups) + j sits at [g's inputs, j]
        g = conv.groups
        per = w.shape[1]
        sw = s.reshape(g, 1, per).expand(g, w.shape[0] // g, per).reshape(w.shape[0], per)
        w.copy_((w.double() * sw.reshape(*sw.shape, *([1] * (w.dim() - 2)))).to(w.dtype))
    else:
        w.copy_((w.double() * s.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype))
    shift = beta - s * mean
    if conv.bias is not None:
        conv.bias.copy_((s * conv.bias.double() + shift).to(conv.bias.dtype))
        shift = torch.zeros_like(shift)
    if bn.weight is not None:
        bn.weight.fill_(1.0)
    if bn.bias is not None:  # fold_batchnorm skips a pair where neither has a bias
        bn.bias.copy_(shift.to(bn.bias.dtype))
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)


def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every BatchNorm fed by a conv / Linear alone into it, in place (see the module
    docstring); returns the folded ``(conv, batchnorm)`` pairs. A BatchNorm without an
    affine bias after a conv without bias (where the shift has nowhere to go) is left as is."""
    done = []
    for c, b in batchnorm_pairs(model):
        conv: Any = model.get_submodule(c)
        bn: Any = model.get_submodule(b)
        if conv.bias is None and bn.bias is None:
            log.info("fold-batchnorm: %s kept (no bias to hold the shift of %s)", b, c)
            continue
        _fold(conv, bn)
        done.append((c, b))
    return done


@register_config
@dataclasses.dataclass(frozen=True)
class FoldBatchNormConfig(MethodConfig):
    """A recipe step: fold BatchNorm into the preceding conv / Linear (before a method that
    quantizes, clusters or prunes convs, so it works on the kernels inference uses)."""

    name = "fold-batchnorm"


@register(FoldBatchNormConfig)
def _fold_batchnorm(model: nn.Module, config: FoldBatchNormConfig, ctx: CompressContext) -> nn.Module:
    was_training = model.training
    model.eval()
    done = fold_batchnorm(model)
    model.train(was_training)
    if not done:
        ctx.note("fold-batchnorm: no BatchNorm follows a conv / Linear alone; nothing folded", logger=log)
    else:
        log.info("fold-batchnorm: folded %s", ", ".join(f"{b} into {c}" for c, b in done))
    return model
