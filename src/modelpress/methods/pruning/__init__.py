"""Unstructured pruning and sparse storage; see README.md here."""

from . import presets, prune, storage
from .prune import PruneConfig, compute_masks, prune_targets
from .storage import SparseStorageConfig, to_sparse

__all__ = [
    "PruneConfig",
    "SparseStorageConfig",
    "compute_masks",
    "presets",
    "prune",
    "prune_targets",
    "storage",
    "to_sparse",
]
