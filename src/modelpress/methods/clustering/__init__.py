"""Weight clustering (k-means weight sharing); see README.md here."""

from . import finetune, kmeans, pq, presets
from .finetune import CentroidFineTuneConfig
from .kmeans import KMeansConfig, cluster_weight
from .pq import ProductQuantConfig

__all__ = [
    "CentroidFineTuneConfig",
    "KMeansConfig",
    "ProductQuantConfig",
    "cluster_weight",
    "finetune",
    "kmeans",
    "pq",
    "presets",
]
