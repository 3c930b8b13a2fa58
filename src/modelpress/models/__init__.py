"""Model loaders, task adapters and the architecture registry."""

from .architectures import ARCHITECTURES, register_architecture
from .tasks import TASKS, Evaluation, TaskAdapter
from .tv import TorchvisionClassifier  # registers the "torchvision" architecture for load()

__all__ = [
    "ARCHITECTURES",
    "TASKS",
    "Evaluation",
    "TaskAdapter",
    "TorchvisionClassifier",
    "register_architecture",
]
