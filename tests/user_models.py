"""Small models of the user's own kind (no transformers, nothing registered) and their data,
shared by tests/test_user_module.py and tests/bench/test_bench_api.py."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class PReLUNet(nn.Module):
    """A small CNN in the style of MTCNN's ONet: conv + per-channel PReLU + pooling, then
    Linear + PReLU; 3x12x12 inputs, 4 classes."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3)
        self.prelu1 = nn.PReLU(width)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3)
        self.prelu2 = nn.PReLU(2 * width)
        self.fc1 = nn.Linear(2 * width * 9, 32)
        self.prelu3 = nn.PReLU(32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.prelu1(self.conv1(x)))  # (B, w, 5, 5)
        x = self.prelu2(self.conv2(x))  # (B, 2w, 3, 3)
        return self.fc2(self.prelu3(self.fc1(torch.flatten(x, 1))))


class TinyEncoder(nn.Module):
    """A plain torch transformer classifier: embedding, 2 encoder layers, mean pool, head."""

    def __init__(self, vocab: int = 50, dim: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(1))


def image_data(n: int = 64, batch_size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 12, 12, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()  # 4 classes
    return x, y


def image_loader(n: int = 64, batch_size: int = 16, labels: bool = True) -> DataLoader:
    x, y = image_data(n)
    return DataLoader(TensorDataset(x, y) if labels else TensorDataset(x), batch_size=batch_size)


def token_loader(n: int = 32, seq: int = 8, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (n, seq), generator=g)
    y = ids[:, 0] % 3
    return DataLoader(TensorDataset(ids, y), batch_size=batch_size)


def accuracy_on(loader: DataLoader):
    """An eval_fn: accuracy of a model on the (inputs, labels) batches of ``loader``."""

    def accuracy(model: nn.Module) -> float:
        hits = total = 0
        for x, y in loader:
            hits += int((model(x).argmax(-1) == y).sum())
            total += len(y)
        return hits / total

    return accuracy
