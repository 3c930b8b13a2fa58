"""Benchmark names of the pruning family (and Deep Compression, which starts with pruning).

Fine-tunes are capped by ``max_steps`` so that each preset runs in minutes on a laptop CPU
for MiniLM (about one epoch of Rotten Tomatoes at batch 32).
"""

from __future__ import annotations

from typing import Any

from ..base import MethodConfig, register_preset
from ..clustering.finetune import CentroidFineTuneConfig
from ..clustering.kmeans import KMeansConfig
from .prune import PruneConfig

FAMILY = "pruning"
_FT: dict[str, Any] = {"epochs": 1, "max_steps": 300, "lr": 5e-5}


@register_preset(
    "prune-50",
    "50% of every Linear and embedding weight removed by magnitude per layer, "
    "one fine-tune epoch, sparse format",
    FAMILY,
)
def _p50() -> list[MethodConfig]:
    return [PruneConfig(sparsity=0.5, layers=("linear", "embedding"), **_FT)]


@register_preset(
    "prune-global-70", "70% of Linear weights removed by one global magnitude threshold, fine-tuned", FAMILY
)
def _pg70() -> list[MethodConfig]:
    return [PruneConfig(sparsity=0.7, scope="global", **_FT)]


@register_preset("prune-2:4", "2:4 semi-structured magnitude pruning of Linear layers, fine-tuned", FAMILY)
def _p24() -> list[MethodConfig]:
    return [PruneConfig(sparsity=0.5, pattern="2:4", **_FT)]


@register_preset(
    "prune-wanda-50",
    "Wanda: 50% per output row by |w|·||x|| on 128 calibration examples, no retraining",
    FAMILY,
)
def _pw50() -> list[MethodConfig]:
    return [PruneConfig(sparsity=0.5, criterion="wanda")]


@register_preset(
    "prune-gradual-80", "80% by magnitude, reached gradually on the cubic schedule during fine-tuning", FAMILY
)
def _pgr80() -> list[MethodConfig]:
    return [PruneConfig(sparsity=0.8, schedule="cubic", epochs=1, max_steps=300, lr=1e-4)]


def deep_compression(conv: bool = True) -> list[MethodConfig]:
    """Han et al. (arXiv 1510.00149): prune, fine-tune with masks fixed, cluster only the
    kept weights (conv 8-bit, fc 5-bit, linear init), fine-tune the centroids; codes and
    masks entropy-coded (zstd in place of Huffman).

    Rates chosen on the MNIST-5k validation split (``benchmarks/deep_compression.py``), from
    the paper's per-layer rates (conv1 34 %, conv2 88 %, output layer 74 % removed):
    ``conv=True`` (LeNet-5-like CNNs): fc layers 97 % one-shot, 8 epochs with fixed masks;
    ``conv=False`` (MLPs, transformers; a k-means step that matches no layer is an error):
    fc layers 95 % on the cubic schedule over 16 epochs (validation 94.0 % vs 93.6 % for
    one-shot at the same rate on LeNet-300-100)."""
    kmeans: list[MethodConfig] = [
        KMeansConfig(bits=5, layers=("linear",), sparsity="keep", init="linear", coding="zstd")
    ]
    if conv:
        kmeans.insert(
            0, KMeansConfig(bits=8, layers=("conv",), sparsity="keep", init="linear", coding="zstd")
        )
    prune = PruneConfig(
        sparsity=0.97 if conv else 0.95,
        layer_sparsity=("conv1=0.34", "conv2=0.88", "@head=0.74"),
        layers=("linear", "conv") if conv else ("linear",),
        head=True,
        epochs=8 if conv else 16,
        lr=1e-3,
        schedule="one-shot" if conv else "cubic",
        storage="dense",
    )
    return [prune, *kmeans, CentroidFineTuneConfig(epochs=3, lr=1e-4)]


@register_preset(
    "deep-compression",
    "Deep Compression for CNNs: prune (fc 97%) + fine-tune, k-means of kept weights (conv 8-bit, fc 5-bit) "
    "+ centroid fine-tune, entropy-coded codes and masks",
    FAMILY,
)
def _dc() -> list[MethodConfig]:
    return deep_compression(conv=True)


@register_preset(
    "deep-compression-fc",
    "Deep Compression for models without convolutions (MLPs, transformers): fc 95% gradually, 5-bit",
    FAMILY,
)
def _dc_fc() -> list[MethodConfig]:
    return deep_compression(conv=False)
