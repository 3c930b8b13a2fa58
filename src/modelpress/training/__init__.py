"""The one fine-tuning loop, and what methods that train share."""

from .helpers import finetune_on_task, grads_on
from .loop import Checkpointing, FitResult, TrainConfig, fit, seed_everything

__all__ = [
    "Checkpointing",
    "FitResult",
    "TrainConfig",
    "finetune_on_task",
    "fit",
    "grads_on",
    "seed_everything",
]
