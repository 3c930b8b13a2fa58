"""The one fine-tuning loop."""

from .loop import Checkpointing, FitResult, TrainConfig, fit, seed_everything

__all__ = ["Checkpointing", "FitResult", "TrainConfig", "fit", "seed_everything"]
