"""Knowledge distillation; see README.md here."""

from . import distill, losses, presets, students
from .distill import DistillConfig

__all__ = ["DistillConfig", "distill", "losses", "presets", "students"]
