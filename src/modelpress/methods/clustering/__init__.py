"""Weight clustering (k-means weight sharing); see README.md here."""

from . import finetune, kmeans, presets
from .finetune import CentroidFineTuneConfig
from .kmeans import KMeansConfig, cluster_weight

__all__ = ["CentroidFineTuneConfig", "KMeansConfig", "cluster_weight", "finetune", "kmeans", "presets"]
