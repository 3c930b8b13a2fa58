"""Benchmark names of the distillation family."""

from __future__ import annotations

from ..base import MethodConfig, register_preset
from ..baseline.int8_dynamic import Int8DynamicConfig
from .distill import DistillConfig

FAMILY = "distillation"


def _three_layers() -> DistillConfig:
    return DistillConfig(student="layer-drop")


@register_preset(
    "distill-3l",
    "DistilBERT-style student keeping every other block (6 -> 3), distilled on the task "
    "(soft targets at T=2 mixed with the labels)",
    FAMILY,
)
def _distill_3l() -> list[MethodConfig]:
    return [_three_layers()]


@register_preset("distill-3l+int8", "distill-3l, then dynamic INT8 (int8-dynamic) of the student", FAMILY)
def _distill_3l_int8() -> list[MethodConfig]:
    return [_three_layers(), Int8DynamicConfig()]


@register_preset(
    "distill-half-width",
    "student at half the width (hidden size, heads, FFN; LeNet hidden units) initialised from "
    "slices of the teacher, distilled on the task",
    FAMILY,
)
def _distill_half() -> list[MethodConfig]:
    return [DistillConfig(student="narrow", width=0.5)]
