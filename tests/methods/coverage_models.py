"""Tiny plain ``nn.Module`` architectures, one per layer kind that real models hold next to
their Linears (grouped / depthwise / transposed convs, PReLU, BatchNorm, LayerNorm,
RMSNorm, GRU, LSTM, an Embedding with ``padding_idx``, tied embedding / output weights),
registered so that ``modelpress.save`` / ``load`` rebuild them, and a calibration-data
adapter over synthetic inputs (the ``CalibrationData`` protocol: ``batches`` + ``loss``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from modelpress.models.architectures import ARCHITECTURES, register_architecture

H = 64  # wide enough that the Linears are compressed, not skipped as too small
V = 48  # vocabulary of the id models


class _Probe(nn.Module):
    """A model with one layer kind under test; ``example(n)`` is a batch of ``n`` inputs."""

    kind = ""

    def arch_args(self) -> dict[str, Any]:
        return {}

    def example(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class _Image(_Probe):
    shape: tuple[int, ...] = ()

    def example(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, *self.shape, generator=generator)


class Conv1dGrouped(_Image):
    kind, shape = "conv1d-grouped", (8, 16)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 32, 3, groups=4, padding=1)
        self.fc1 = nn.Linear(32 * 16, H)
        self.fc2 = nn.Linear(H, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


class Conv2dDepthwise(_Image):
    kind, shape = "conv2d-depthwise", (8, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc1 = nn.Linear(16 * 8 * 8, H)
        self.fc2 = nn.Linear(H, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.pw(torch.relu(self.dw(x))))
        return self.fc2(torch.relu(self.fc1(y.flatten(1))))


class ConvTranspose(_Image):
    kind, shape = "conv-transpose2d", (8, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        # weight (in=8, out/groups=6, 3, 3): the output channels are on dim 1
        self.up = nn.ConvTranspose2d(8, 12, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.fc1 = nn.Linear(12 * 8 * 8, H)
        self.fc2 = nn.Linear(H, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.up(x)).flatten(1))))


class PReLUNet(_Image):
    kind, shape = "prelu", (H,)

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(H, H)
        self.act = nn.PReLU(H, init=0.1)
        self.fc2 = nn.Linear(H, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvBatchNorm(_Image):
    kind, shape = "batchnorm", (4, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(4, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.fc1 = nn.Linear(16 * 8 * 8, H)
        self.fc2 = nn.Linear(H, 10)
        with torch.no_grad():  # trained-looking statistics, so that folding is not a no-op
            g = torch.Generator().manual_seed(1)
            for bn in (self.features[1], self.features[4]):
                bn.running_mean.copy_(torch.randn(16, generator=g) * 0.3)
                bn.running_var.copy_(torch.rand(16, generator=g) + 0.5)
                bn.weight.copy_(torch.rand(16, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(16, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.features(x).flatten(1))))


class LayerNormNet(_Image):
    kind, shape = "layernorm", (H,)

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(H, H)
        self.norm = nn.LayerNorm(H)
        self.fc2 = nn.Linear(H, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x)))


class RMSNormNet(_Image):
    kind, shape = "rmsnorm", (H,)

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(H, H)
        self.norm = nn.RMSNorm(H)
        self.fc2 = nn.Linear(H, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x)))


class GRUNet(_Image):
    kind, shape = "gru", (6, 16)

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(16, H, batch_first=True)
        self.fc = nn.Linear(H, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class LSTMNet(_Image):
    kind, shape = "lstm", (6, 16)

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(16, H, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * H, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class _Ids(_Probe):
    def example(self, n: int, generator: torch.Generator) -> torch.Tensor:
        ids = torch.randint(0, V, (n, 12), generator=generator)
        ids[:, -3:] = 0  # padding
        return ids


class PaddedEmbedding(_Ids):
    kind = "embedding-padding"

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, H, padding_idx=0)
        self.fc1 = nn.Linear(H, H)
        self.fc2 = nn.Linear(H, 10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(ids).mean(1))))


class TiedEmbedding(_Ids):
    kind = "tied-weights"

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.fc = nn.Linear(H, H)
        self.head = nn.Linear(H, V, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc(self.emb(ids))))


PROBES: dict[str, type[_Probe]] = {
    c.kind: c
    for c in (
        Conv1dGrouped,
        Conv2dDepthwise,
        ConvTranspose,
        PReLUNet,
        ConvBatchNorm,
        LayerNormNet,
        RMSNormNet,
        GRUNet,
        LSTMNet,
        PaddedEmbedding,
        TiedEmbedding,
    )
}
for _kind, _cls in PROBES.items():
    if f"test-cov-{_kind}" not in ARCHITECTURES:
        register_architecture(f"test-cov-{_kind}")(_cls)


def build(kind: str, seed: int = 0) -> _Probe:
    torch.manual_seed(seed)
    return PROBES[kind]().eval()


class SyntheticData:
    """``CalibrationData`` over synthetic inputs: the train split is ``n`` random examples,
    the loss the squared error against the original model's outputs (a distillation-like
    target, so that training methods have something to fit)."""

    def __init__(self, model: _Probe, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.inputs = model.example(n, g)
        with torch.no_grad():
            self.targets = model(self.inputs)

    def batches(self, split: str, batch_size: int, *, shuffle_seed: int | None = None) -> Iterator[Any]:
        order = torch.arange(len(self.inputs))
        if shuffle_seed is not None:
            order = torch.randperm(len(self.inputs), generator=torch.Generator().manual_seed(shuffle_seed))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield self.inputs[idx], self.targets[idx]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(model(x).float(), y.float())

    def score(self, model: nn.Module, split: str = "validation") -> float:
        with torch.no_grad():
            return -float(self.loss(model, (self.inputs, self.targets)))


Forward = Callable[[torch.Tensor], torch.Tensor]
