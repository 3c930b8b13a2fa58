"""Benchmark presets of low-rank factorization (family "lowrank").

Percentages are parameters removed from the targeted Linears (those inside the transformer
blocks), every layer the same share (uniform ranks, so the speed-up is predictable).
"""

from __future__ import annotations

from ..base import MethodConfig, register_preset
from ..baseline.int8_dynamic import Int8DynamicConfig
from .factorize import LowRankConfig

__all__ = ["FAMILY"]

FAMILY = "lowrank"


@register_preset(
    "lowrank-svd-20",
    "low-rank: truncated SVD of every block Linear, 20% fewer parameters there (no data)",
    FAMILY,
)
def _svd20() -> list[MethodConfig]:
    return [LowRankConfig(variant="svd", reduction=0.2)]


@register_preset(
    "lowrank-svdllm-20",
    "low-rank: SVD-LLM (SVD of the weight whitened by calibration inputs), 20% fewer block Linear parameters",
    FAMILY,
)
def _svdllm20() -> list[MethodConfig]:
    return [LowRankConfig(variant="svd-llm", reduction=0.2)]


@register_preset(
    "lowrank-30-ft",
    "low-rank: SVD-LLM, 30% fewer block Linear parameters, then one epoch fine-tuning on the task",
    FAMILY,
)
def _ft30() -> list[MethodConfig]:
    return [LowRankConfig(variant="svd-llm", reduction=0.3, epochs=1)]


@register_preset(
    "lowrank-svdllm-20+int8",
    "low-rank SVD-LLM 20% (as lowrank-svdllm-20), then dynamic INT8 of every Linear, factors included",
    FAMILY,
)
def _svdllm20_int8() -> list[MethodConfig]:
    return [LowRankConfig(variant="svd-llm", reduction=0.2), Int8DynamicConfig()]
