"""Benchmark names of the pruning family (and Deep Compression, which starts with pruning).

Fine-tunes are capped by ``max_steps`` so that each preset runs in minutes on a laptop CPU
for MiniLM (about one epoch of Rotten Tomatoes at batch 32).
"""

from __future__ import annotations

from ..base import MethodConfig, register_preset
from ..clustering.finetune import CentroidFineTuneConfig
from ..clustering.kmeans import KMeansConfig
from .prune import PruneConfig

FAMILY = "pruning"
_FT = {"epochs": 1, "max_steps": 300, "lr": 5e-5}


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
    """Han et al. (arXiv 1510.00149): prune (per-layer rates of the paper's LeNets), fine-tune
    with masks fixed, cluster only the kept weights (conv 8-bit, fc 5-bit, linear init),
    fine-tune the centroids; codes and masks entropy-coded (zstd in place of Huffman).
    ``conv=False``: the variant for models without convolutions (a k-means step that
    matches no layer is an error)."""
    kmeans: list[MethodConfig] = [
        KMeansConfig(bits=5, layers=("linear",), sparsity="keep", init="linear", coding="zstd")
    ]
    if conv:
        kmeans.insert(
            0, KMeansConfig(bits=8, layers=("conv",), sparsity="keep", init="linear", coding="zstd")
        )
    return [
        PruneConfig(
            sparsity=0.92,
            layer_sparsity=("conv1=0.34", "conv2=0.88", "@head=0.74"),
            layers=("linear", "conv") if conv else ("linear",),
            head=True,
            epochs=8,
            lr=1e-3,
            storage="dense",
        ),
        *kmeans,
        CentroidFineTuneConfig(epochs=3, lr=1e-4),
    ]


@register_preset(
    "deep-compression",
    "Deep Compression for CNNs: prune ~92% + fine-tune, k-means of kept weights (conv 8-bit, fc 5-bit) "
    "+ centroid fine-tune, entropy-coded codes and masks",
    FAMILY,
)
def _dc() -> list[MethodConfig]:
    return deep_compression(conv=True)


@register_preset(
    "deep-compression-fc",
    "Deep Compression for models without convolutions (MLPs, transformers): fc layers only",
    FAMILY,
)
def _dc_fc() -> list[MethodConfig]:
    return deep_compression(conv=False)
