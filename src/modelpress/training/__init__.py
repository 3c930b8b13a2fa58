"""The one fine-tuning loop."""

from .loop import FitResult, TrainConfig, fit, seed_everything

__all__ = ["FitResult", "TrainConfig", "fit", "seed_everything"]
