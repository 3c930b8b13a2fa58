"""Benchmark names of the binarization family.

Trained presets cap the run with ``max_steps`` (as the pruning presets do) so that each runs
in minutes on a laptop CPU for MiniLM; learning rates and batch sizes are the task's own.
"""

from __future__ import annotations

from ..base import MethodConfig, register_preset
from ..clustering.kmeans import KMeansConfig
from ..pruning.prune import PruneConfig
from .binarize import BinaryConfig, TernaryConfig

FAMILY = "binary"
_STEPS = 300


@register_preset(
    "binary-bwn",
    "BWN: Linear weights as sign(W)·α (α = mean|W| per output row, 1 bit per weight), trained with "
    "the clipped straight-through estimator on the task; embeddings and the output layer in float",
    FAMILY,
)
def _bwn() -> list[MethodConfig]:
    return [BinaryConfig(scheme="bwn", epochs=3, max_steps=_STEPS)]


@register_preset(
    "binary-bwn-kd",
    "binary-bwn trained with the clipped STE and distilled from the original model (soft targets and "
    "hidden states, as ternary-b158-kd)",
    FAMILY,
)
def _bwn_kd() -> list[MethodConfig]:
    return [BinaryConfig(scheme="bwn", epochs=3, max_steps=_STEPS, distill=True, kd_alpha=0.9, kd_hidden=1.0)]


@register_preset(
    "binary-xnor",
    "XNOR-Net: binary weights (α per row) and inputs binarized per token (sign(x)·mean|x|), trained with "
    "the clipped STE; embeddings, the first layer of models without them and the output layer in float",
    FAMILY,
)
def _xnor() -> list[MethodConfig]:
    return [BinaryConfig(scheme="xnor", epochs=3, max_steps=_STEPS)]


@register_preset(
    "ternary-b158",
    "BitNet b1.58 post-training ternarization: Linear weights in {-1, 0, +1} times the absmean per row, "
    "5 codes per byte (1.6 bits); embeddings and the output layer in float",
    FAMILY,
)
def _b158() -> list[MethodConfig]:
    return [TernaryConfig()]


@register_preset(
    "ternary-b158-kd",
    "ternary-b158 trained with the clipped STE and distilled from the original model (soft targets and "
    "hidden states, BinaryBERT / TernaryBERT-style)",
    FAMILY,
)
def _b158_kd(lr: float = 2e-4) -> list[MethodConfig]:
    # lr 2e-4 (4x the task's 5e-5): on MiniLM / Rotten Tomatoes, -2.88 pt vs -6.01 pt at 5e-5 (RESULTS
    # §32); at 3e-4 it lost 3.24 pt (§34)
    return [TernaryConfig(epochs=3, max_steps=_STEPS, distill=True, kd_alpha=0.9, kd_hidden=1.0, lr=lr)]


@register_preset(
    "ternary-b158-kd+emb4",
    "ternary-b158-kd at lr 3e-4, then the embeddings clustered to 4 bits (one shared 16-centroid "
    "codebook, a scale per row): ternary encoder Linears and 4-bit embeddings, ~10x smaller than fp32 on "
    "MiniLM",
    FAMILY,
)
def _b158_kd_emb4() -> list[MethodConfig]:
    # after the training, not before: clustered first, the student lost 3.61 pt vs 3.14 (RESULTS §33)
    # a scale per row: on MiniLM the same as the measured group_size 384 (its rows are 384 long)
    # lr 3e-4: -2.61 / -2.30 pt (seeds 0 / 1) vs -3.14 at 2e-4 (RESULTS §34)
    emb = KMeansConfig(bits=4, granularity="group-scaled", layers=("embedding",))
    return [*_b158_kd(lr=3e-4), emb]


@register_preset(
    "prune-50+ternary-b158",
    "prune-50's magnitude pruning of Linear weights (fine-tuned, kept as exact zeros), then ternary-b158: "
    "pruned weights stay 0 (code 0), the format is ternary-b158's",
    FAMILY,
)
def _prune_ternary() -> list[MethodConfig]:
    return [PruneConfig(sparsity=0.5, storage="dense", epochs=1, max_steps=_STEPS, lr=5e-5), TernaryConfig()]
