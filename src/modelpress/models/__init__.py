"""Model loaders, task adapters and the architecture registry."""

from .architectures import ARCHITECTURES, register_architecture
from .tasks import TASKS, Evaluation, TaskAdapter

__all__ = ["ARCHITECTURES", "TASKS", "Evaluation", "TaskAdapter", "register_architecture"]
