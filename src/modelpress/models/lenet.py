"""The LeNets of Deep Compression, registered so their artifacts load without pickle.

- ``LeNet300100``: fully connected 784-300-100-10 (266,610 parameters; 1,070 KB in fp32);
  ``hidden`` sets other hidden widths (e.g. the half-width student 784-150-50-10).
- ``LeNet5``: Caffe's LeNet-5 — conv 20@5x5, max-pool, conv 50@5x5, max-pool, fc 800-500,
  fc 500-10 (431,080 parameters; 1,720 KB in fp32).

Both take ``num_classes`` and optional ``class_names`` (kept in the artifact's manifest, so
the names of a user's classes travel with the model).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import register_architecture

__all__ = ["LeNet5", "LeNet300100", "check_class_names"]


def check_class_names(names: list[str] | None, num_classes: int) -> list[str] | None:
    """``names`` as a list of ``num_classes`` strings (or None); ``ValueError`` otherwise."""
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"class_names must be a list of strings, got {names!r}")
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class_names for {num_classes} classes")
    return list(names)


_check_names = check_class_names


@register_architecture("lenet-300-100")
class LeNet300100(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        hidden: tuple[int, int] | list[int] = (300, 100),
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if len(hidden) != 2 or any(int(h) < 1 for h in hidden):
            raise ValueError(f"LeNet300100 needs two positive hidden widths, got {hidden!r}")
        self.num_classes = num_classes
        self.class_names = _check_names(class_names, num_classes)
        self.hidden = (int(hidden[0]), int(hidden[1]))
        self.fc1 = nn.Linear(784, self.hidden[0])
        self.fc2 = nn.Linear(self.hidden[0], self.hidden[1])
        self.fc3 = nn.Linear(self.hidden[1], num_classes)

    def arch_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"num_classes": self.num_classes}
        if self.hidden != (300, 100):  # artifacts of the standard net keep their manifest
            args["hidden"] = list(self.hidden)
        if self.class_names is not None:
            args["class_names"] = list(self.class_names)
        return args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


@register_architecture("lenet-5")
class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_names = _check_names(class_names, num_classes)
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def arch_args(self) -> dict[str, Any]:
        if self.class_names is not None:
            return {"num_classes": self.num_classes, "class_names": list(self.class_names)}
        return {"num_classes": self.num_classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)  # (n, 20, 12, 12)
        x = F.max_pool2d(self.conv2(x), 2)  # (n, 50, 4, 4)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))
