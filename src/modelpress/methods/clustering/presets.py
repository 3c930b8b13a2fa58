"""Benchmark names of the clustering family."""

from __future__ import annotations

from ..base import MethodConfig, register_preset
from .finetune import CentroidFineTuneConfig
from .kmeans import KMeansConfig
from .pq import ProductQuantConfig

FAMILY = "clustering"


@register_preset("cluster-8bit", "k-means weight sharing, 256 shared values per layer", FAMILY)
def _c8() -> list[MethodConfig]:
    return [KMeansConfig(bits=8, granularity="tensor")]


@register_preset("cluster-4bit", "k-means weight sharing, 16 shared values per layer", FAMILY)
def _c4() -> list[MethodConfig]:
    return [KMeansConfig(bits=4, granularity="tensor")]


@register_preset("cluster-3bit", "k-means weight sharing, 8 shared values per layer", FAMILY)
def _c3() -> list[MethodConfig]:
    return [KMeansConfig(bits=3, granularity="tensor")]


@register_preset("cluster-4bit-ft", "cluster-4bit, then centroids fine-tuned on the task", FAMILY)
def _c4ft() -> list[MethodConfig]:
    return [KMeansConfig(bits=4, granularity="tensor"), CentroidFineTuneConfig()]


@register_preset("cluster-3bit-ft", "cluster-3bit, then centroids fine-tuned on the task", FAMILY)
def _c3ft() -> list[MethodConfig]:
    return [KMeansConfig(bits=3, granularity="tensor"), CentroidFineTuneConfig()]


@register_preset(
    "cluster-4bit+int8cb", "4-bit codes, one INT8 codebook (with a scale) per output channel", FAMILY
)
def _c4int8() -> list[MethodConfig]:
    return [KMeansConfig(bits=4, granularity="channel", codebook_dtype="int8")]


@register_preset(
    "cluster-pq", "vector quantization: 256 shared 4-weight sub-vectors per layer (2 bits/weight)", FAMILY
)
def _pq() -> list[MethodConfig]:
    return [ProductQuantConfig(bits=8, dim=4)]
