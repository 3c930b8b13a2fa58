"""Weight clustering: k-means weight sharing (Han, Mao, Dally, "Deep Compression",
arXiv 1510.00149), optionally sensitivity-weighted (SqueezeLLM, arXiv 2306.07629).

Every selected Linear / Embedding / Conv weight becomes a ``Codebook``: ``bits``-bit codes
into ``2**bits`` shared values per tensor, output channel or group, stored bit-packed (or
entropy-coded) and decoded at run time.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...data.calibration import CalibrationData, calibration_batches
from ...errors import ConfigError
from ...formats.codebook import CODEBOOK_DTYPES, GRANULARITIES, Codebook
from ...nn.rnn import rnn_matrices
from ...primitives.kmeans import INITS, fit_kmeans, fit_kmeans_exact
from ...training import grads_on
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
    select,
)
from ..transform import Skip, transform_rnn_weights, transform_weights

__all__ = ["KMeansConfig", "cluster_weight"]

log = logging.getLogger(__name__)

LAYER_TYPES = {
    "linear": (nn.Linear,),
    "embedding": (nn.Embedding,),
    "conv": (nn.Conv1d, nn.Conv2d),
    # GRU / LSTM / RNN: each weight matrix clustered on its own, shared by every time step
    "rnn": (nn.RNNBase,),
}


@register_config
@dataclasses.dataclass(frozen=True)
class KMeansConfig(MethodConfig):
    """Cluster weights into ``2**bits`` shared values.

    granularity: ``tensor`` (one codebook per layer, as Deep Compression), ``channel`` (per
    output channel / embedding row), ``group`` (per ``group_size`` weights of a row), or
    ``group-scaled`` (one shared codebook, a float scale per group of ``group_size`` weights
    of a row, or per row when ``group_size`` is unset: any row length).
    init: ``linear`` | ``kmeans++`` | ``quantile``; ``exact=True`` uses the optimal dynamic
    programme instead of Lloyd (slow; small layers).
    importance: ``none`` or ``fisher`` (weights the k-means by squared gradients of the
    task loss on ``importance_batches`` training batches; needs ``data``).
    codebook_dtype: ``float32`` | ``float16`` | ``int8`` (with a scale per codebook).
    coding: ``packed`` (exactly ``bits`` per code), ``zstd`` (entropy-coded codes) or
    ``auto`` (whichever is smaller, per tensor).
    sparsity: ``keep`` keeps exact zeros exactly zero (a 1-bit mask; only kept weights are
    clustered and coded); ``auto`` does so when the mask pays for itself (zero fraction ×
    bits > 1, e.g. more than 25 % zeros at 4 bits: pruned weights); ``ignore`` clusters
    zeros like any value.
    """

    name = "kmeans"
    notes_float_layers = True
    bits: int = param(4, between(1, 8))  # 2..256 clusters
    granularity: str = param("tensor", one_of(*GRANULARITIES))
    group_size: int | None = param(None, POSITIVE)
    init: str = param("linear", one_of(*INITS))
    exact: bool = False
    importance: str = param("none", one_of("none", "fisher"))
    importance_batches: int = param(8, POSITIVE)
    codebook_dtype: str = param("float32", one_of(*CODEBOOK_DTYPES))
    coding: str = param("packed", one_of("packed", "zstd", "auto"))
    sparsity: str = param("auto", one_of("auto", "keep", "ignore"))
    layers: tuple[str, ...] = param(
        ("linear", "embedding", "conv", "rnn"), one_of(*LAYER_TYPES), elements=True
    )
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    max_iter: int = param(300, NON_NEGATIVE)
    seed: int = param(0, NON_NEGATIVE)

    def validate(self) -> None:
        if self.granularity == "group":
            if self.group_size is None:
                raise self.error(f"granularity '{self.granularity}' needs a group_size >= 1")
            if self.granularity == "group" and self.group_size < 2**self.bits:
                raise self.error(
                    f"a group of {self.group_size} weights cannot fill {2**self.bits} clusters; "
                    "use a larger group_size or fewer bits"
                )
        if self.codebook_dtype == "int8" and self.granularity == "group-scaled":
            raise self.error("group-scaled codebooks are scaled per group already; use float16/float32")

    def handled_layers(self) -> tuple[type[nn.Module], ...]:
        return (nn.Linear, nn.Embedding, *(t for layer in self.layers for t in LAYER_TYPES[layer]))


def _rows(w: torch.Tensor, config: KMeansConfig) -> torch.Tensor:
    """The batch of rows k-means runs on, one per codebook."""
    flat = w.reshape(w.shape[0], -1)
    if config.granularity == "tensor":
        return flat.reshape(1, -1)
    if config.granularity == "channel":
        return flat
    g = int(config.group_size or (flat.shape[1] if config.granularity == "group-scaled" else 1))
    if flat.shape[1] % g:
        raise ConfigError(f"kmeans: group_size {g} does not divide the row length {flat.shape[1]}")
    return flat.reshape(-1, g)


def padding_rows(mod: nn.Module) -> list[int]:
    """The padding row of an ``nn.Embedding`` when it is all zero (as torch initialises it),
    which a compressed embedding must keep exactly zero."""
    idx = getattr(mod, "padding_idx", None)
    if not isinstance(mod, nn.Embedding) or idx is None or bool(mod.weight[idx].any()):
        return []
    return [int(idx)]


def _zero_centroid(
    centroids: torch.Tensor, codes: torch.Tensor, shape: torch.Size, per_book: int, zero_rows: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes in weight order (``per_book`` weights per codebook row of ``centroids``): make
    the given all-zero rows decode to exact zeros."""
    centroids, codes = centroids.clone(), codes.clone()
    cols = int(shape[1:].numel())
    for r in zero_rows:
        lo, hi = r * cols, (r + 1) * cols
        for book in range(lo // per_book, (hi - 1) // per_book + 1):
            j = int(centroids[book].abs().argmin())
            centroids[book, j] = 0.0
            a, b = max(lo, book * per_book), min(hi, (book + 1) * per_book)
            codes[a:b] = j
    return centroids, codes


def cluster_weight(
    w: torch.Tensor,
    config: KMeansConfig,
    *,
    importance: torch.Tensor | None = None,
    name: str = "weight",
    zero_rows: Sequence[int] = (),
) -> Codebook:
    """Cluster one weight tensor into a ``Codebook`` format. ``zero_rows``: all-zero rows
    that must decode to exact zeros (an embedding's padding row): the centroid nearest 0 of
    each codebook they use is set to 0 and their codes point at it."""
    w = w.detach().float()
    if not torch.isfinite(w).all():
        raise ConfigError(f"kmeans: {name} holds NaN or inf values")
    k = 2**config.bits
    mask = None
    zeros = float((w == 0).float().mean())
    # a 1-bit mask pays for itself when it saves more code bits than it costs
    if (config.sparsity == "keep" and zeros > 0) or (config.sparsity == "auto" and zeros * config.bits > 1):
        mask = w != 0
    scale = None
    values = w
    row_cfg = config
    if config.granularity == "group-scaled":
        g = _rows(w, config)
        scale = g.abs().amax(1, keepdim=True).clamp_min(1e-12)  # (n_groups, 1)
        values = (g / scale).reshape(w.shape)
        row_cfg = dataclasses.replace(config, granularity="tensor")  # one shared codebook
    rows = _rows(values, row_cfg)
    weights = None if importance is None else _rows(importance.float(), row_cfg)
    if mask is not None:
        m = _rows(mask.float(), row_cfg)
        weights = m if weights is None else weights * m
    n_per_row = rows.shape[1] if mask is None else int(mask.sum())
    if k > n_per_row:
        raise ConfigError(f"kmeans: {name} has {n_per_row} weights per codebook, fewer than k = {k} clusters")
    if config.exact:
        results = [
            fit_kmeans_exact(r, k, weights=None if weights is None else weights[i])
            for i, r in enumerate(rows)
        ]
        centroids = torch.cat([r.centroids for r in results])
        codes = torch.cat([r.codes for r in results])
    else:
        res = fit_kmeans(
            rows, k, weights=weights, init=config.init, max_iter=config.max_iter, seed=config.seed
        )
        centroids, codes = res.centroids, res.codes
    codes = codes.reshape(-1)
    if zero_rows and mask is None:  # with a mask, zeros are exact already
        centroids, codes = _zero_centroid(centroids, codes, w.shape, rows.shape[1], zero_rows)
    if mask is not None:
        codes = codes[mask.reshape(-1)]

    def build(coding: str) -> Codebook:
        return Codebook.from_codes(
            w.shape,
            codes,
            centroids,
            bits=config.bits,
            granularity=config.granularity,
            group_size=config.group_size or (w[0].numel() if scale is not None else None),
            scale=scale,
            mask=mask,
            codebook_dtype=config.codebook_dtype,
            coding=coding,
        )

    if config.coding == "auto":
        packed, entropy = build("packed"), build("zstd")
        return entropy if entropy.stored_nbytes() < packed.stored_nbytes() else packed
    return build(config.coding)


def fisher_importance(
    model: nn.Module, params: dict[str, nn.Parameter], data: CalibrationData, n_batches: int, progress: bool
) -> dict[str, torch.Tensor]:
    """Sum of squared gradients of the task loss per weight (diagonal Fisher information)."""
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    batches = calibration_batches(data, "kmeans (importance='fisher')", batch_size=16, n_batches=n_batches)
    was_training = model.training
    model.eval()
    with grads_on(params.values()):
        for batch in tqdm(batches, desc="fisher importance", disable=not progress, leave=False):
            model.zero_grad(set_to_none=True)
            data.loss(model, batch).backward()
            for n, p in params.items():
                if p.grad is not None:
                    acc[n] += p.grad.detach().float() ** 2
        model.zero_grad(set_to_none=True)
    model.train(was_training)
    return acc


@register(KMeansConfig)
def _cluster(model: nn.Module, config: KMeansConfig, ctx: CompressContext) -> nn.Module:
    types = tuple(t for layer in config.layers for t in LAYER_TYPES[layer])
    selected: list[tuple[str, Any]] = select(model, config, types)
    rnns = [(n, m) for n, m in selected if isinstance(m, nn.RNNBase)]
    targets = [(n, m) for n, m in selected if not isinstance(m, nn.RNNBase)]
    k = 2**config.bits
    per_book = {n: _rows(m.weight, config).shape[1] for n, m in targets}
    per_book.update(
        {f"{n}.{w}": _rows(getattr(m, w), config).shape[1] for n, m in rnns for w in rnn_matrices(m)}
    )
    fits = [(n, m) for n, m in targets if per_book[n] >= k]
    if not fits and not any(v >= k for v in per_book.values()):
        raise ConfigError(
            f"kmeans: every matched layer has fewer weights per codebook than k = {k} clusters; "
            "use fewer bits or a coarser granularity"
        )
    importance: dict[str, torch.Tensor] = {}
    if config.importance == "fisher":
        data = ctx.require_data(config.name, "training data for importance='fisher'")
        params = {n: m.weight for n, m in fits}
        params.update(
            {f"{n}.{w}": getattr(m, w) for n, m in rnns for w in rnn_matrices(m) if per_book[f"{n}.{w}"] >= k}
        )
        importance = fisher_importance(model, params, data, config.importance_batches, ctx.progress)

    def encode(name: str, mod: Any) -> Codebook | Skip:
        if per_book[name] < k:
            return Skip(f"{per_book[name]} weights per codebook < k = {k}")
        return cluster_weight(
            mod.weight, config, importance=importance.get(name), name=name, zero_rows=padding_rows(mod)
        )

    done = transform_weights(
        model, targets, encode, ctx=ctx, method=config.name, desc=f"kmeans {config.bits}-bit"
    )
    transform_rnn_weights(model, rnns, encode, ctx=ctx, method=config.name)
    log.info(
        "kmeans: clustered %d layers to %d bits (%s)", len(done.replaced), config.bits, config.granularity
    )
    return model
