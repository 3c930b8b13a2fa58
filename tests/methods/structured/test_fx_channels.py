"""Channel pruning through any fx-traceable CNN: residual adds, concatenations, depthwise and
grouped convs, BatchNorm, PReLU, squeeze-excitation, flatten -> Linear.

The oracle: removing channels must equal the original model whose consumers ignore those
channels (their input columns zeroed), since every use of a free channel is a consumer's
input; with nothing removed the pruned model is the original, bit for bit."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelpress as mp
from modelpress.errors import ConfigError
from modelpress.methods.structured import PruneChannelsConfig
from modelpress.methods.structured.channels import prunable_channels
from modelpress.methods.structured.graph import ChannelGroup, channel_graph, prune_channel_groups
from modelpress.models.architectures import register_architecture


@register_architecture("test-fx-zoo")
class Zoo(nn.Module):
    """stem conv-BN-PReLU -> residual block -> depthwise-separable block with SE and a
    residual -> two branches concatenated -> grouped conv -> pool(2) -> flatten -> MLP head."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.stem_act = nn.PReLU(8)
        self.res1 = nn.Conv2d(8, 8, 3, padding=1)
        self.res1_bn = nn.BatchNorm2d(8)
        self.res2 = nn.Conv2d(8, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 12, 1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.dw_bn = nn.BatchNorm2d(12)
        self.se1 = nn.Conv2d(12, 4, 1)  # squeeze-excitation: 12 -> 4 -> 12
        self.se2 = nn.Conv2d(4, 12, 1)
        self.project = nn.Conv2d(12, 8, 1)
        self.branch_a = nn.Conv2d(8, 6, 3, padding=1)
        self.branch_b = nn.Conv2d(8, 10, 1)
        self.mix = nn.Conv2d(16, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(8 * 4, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def arch_args(self) -> dict:
        return {"num_classes": self.num_classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        x = x + self.res2(F.relu(self.res1_bn(self.res1(x))))
        y = F.silu(self.dw_bn(self.dw(F.relu6(self.expand(x)))))
        y = y * torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        x = x + self.project(y)
        x = torch.cat([F.relu(self.branch_a(x)), self.branch_b(x)], dim=1)
        x = self.grouped(F.relu(self.mix(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.fc2(F.relu(self.fc1(x)))


def _zoo() -> Zoo:
    torch.manual_seed(0)
    net = Zoo()
    with torch.no_grad():  # non-trivial statistics and slopes
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        net.stem_act.weight.uniform_(0.05, 0.5)
    return net.eval()


def _x(n: int = 3, size: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _by_member(groups: list[ChannelGroup]) -> dict[str, ChannelGroup]:
    return {m: g for g in groups for m in g.members}


def test_groups_follow_residuals_concat_depthwise_and_se():
    groups, skipped = channel_graph(_zoo())
    g = _by_member(groups)
    # the residual stream: stem, res2 and project add into the same channels
    assert g["stem"] is g["res2"] is g["project"] and g["stem"].n == 8
    roles = {(s.name, s.role) for s in g["stem"].slices}
    assert {("stem_bn", "norm"), ("stem_act", "prelu"), ("res1", "in"), ("expand", "in")} <= roles
    assert {("branch_a", "in"), ("branch_b", "in")} <= roles
    # the expanded channels: expand, the depthwise filters, their BN and the SE product
    assert g["expand"] is g["se2"] and g["expand"].n == 12
    roles = {(s.name, s.role) for s in g["expand"].slices}
    assert {("dw", "depthwise"), ("dw_bn", "norm"), ("se1", "in"), ("project", "in")} <= roles
    assert g["se1"].n == 4 and [s.name for s in g["se1"].slices if s.role == "in"] == ["se2"]
    # the concatenation: branch_b's channels sit at offset 6 of mix's input
    assert [(s.offset, s.factor) for s in g["branch_b"].slices if s.name == "mix"] == [(6, 1)]
    # the grouped conv (and mix, which feeds it) is kept whole; fc1's neurons are read by fc2
    assert "groups=2" in skipped["grouped"] and "mix" in skipped  # mix feeds the grouped conv
    assert [(s.name, s.factor) for s in g["fc1"].slices if s.role == "in"] == [("fc2", 1)]
    assert skipped["fc2"] == "it reaches the model's output"


def test_keep_all_is_the_original_bit_for_bit():
    net = _zoo()
    pruned = mp.compress(copy.deepcopy(net), PruneChannelsConfig(fraction=0.0))
    x = _x()
    with torch.no_grad():
        assert torch.equal(pruned(x), net(x))


def _removed(n: int, keep: list[int]) -> list[int]:
    return [i for i in range(n) if i not in keep]


def test_pruned_equals_original_with_consumers_masked(caplog):
    net = _zoo()
    pruned = copy.deepcopy(net)
    with caplog.at_level(logging.INFO, logger="modelpress"):
        groups = prunable_channels(pruned)
    assert "'grouped' is kept whole: it is a grouped convolution" in caplog.text
    keeps = [list(range(0, g.n, 2)) if g.n > 4 else [1, 3] for g in groups]
    n_before = {g.name: g.n for g in groups}
    prune_channel_groups(groups, keeps)
    masked = copy.deepcopy(net)
    for g, keep in zip(channel_graph(masked)[0], keeps, strict=True):
        assert g.name in n_before
        gone = _removed(g.n, keep)
        with torch.no_grad():
            for s in g.slices:
                if s.role == "in":
                    w = s.module.weight
                    for c in gone:
                        w[:, (s.offset + c) * s.factor : (s.offset + c + 1) * s.factor] = 0
    assert (pruned.stem.out_channels, pruned.stem_act.num_parameters, pruned.res2.out_channels) == (4, 4, 4)
    assert pruned.dw.groups == pruned.dw.in_channels == pruned.dw.out_channels == 6
    assert (pruned.se1.out_channels, pruned.se2.in_channels, pruned.se2.out_channels) == (2, 2, 6)
    assert pruned.mix.in_channels == 3 + 5 and pruned.grouped.in_channels == 8
    assert (pruned.fc1.in_features, pruned.fc1.out_features, pruned.fc2.in_features) == (32, 8, 8)
    # mix's input columns: branch_a's kept channels, then branch_b's at offset 6
    cols = [0, 2, 4] + [6 + c for c in (0, 2, 4, 6, 8)]
    assert torch.equal(pruned.mix.weight, net.mix.weight[:, cols])
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-4)


def test_flatten_spatial_factor_without_global_pool():
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3)
            self.fc = nn.Linear(6 * 4 * 4, 3)
            self.out = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.fc(self.conv(x).flatten(1)))

    torch.manual_seed(0)
    net = Flat().eval()
    pruned = mp.compress(copy.deepcopy(net), PruneChannelsConfig(fraction=0.5, exclude=("fc",)))
    assert pruned.conv.out_channels == 3 and pruned.fc.in_features == 3 * 16
    kept = [i for i in range(6) if any(torch.equal(net.conv.weight[i], w) for w in pruned.conv.weight)]
    cols = torch.cat([torch.arange(c * 16, (c + 1) * 16) for c in kept])
    assert torch.equal(pruned.fc.weight, net.fc.weight[:, cols])


@pytest.mark.parametrize("importance", ["l2", "activation", "taylor"])
def test_importances_run_and_outputs_stay_finite(importance):
    class Images:
        def batches(self, split, batch_size, *, shuffle_seed=None):
            g = torch.Generator().manual_seed(shuffle_seed or 0)
            for _ in range(2):
                yield (
                    torch.randn(batch_size, 3, 8, 8, generator=g),
                    torch.randint(0, 5, (batch_size,), generator=g),
                )

        def loss(self, model, batch):
            return F.cross_entropy(model(batch[0]), batch[1])

    net = _zoo()
    cfg = PruneChannelsConfig(fraction=0.5, importance=importance, calibration_batches=2, batch_size=4)
    pruned = mp.compress(copy.deepcopy(net), cfg, data=Images())
    assert pruned.stem.out_channels == 4 and pruned.expand.out_channels == 6
    with torch.no_grad():
        assert torch.isfinite(pruned(_x())).all()


def test_pruned_zoo_round_trips(tmp_path):
    pruned = mp.compress(_zoo(), PruneChannelsConfig(fraction=0.5))
    loaded = mp.load(mp.save(pruned, tmp_path / "zoo"))
    x = _x()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert loaded.dw.groups == 6 and loaded.stem_act.num_parameters == 4


def test_exclude_keeps_a_coupled_group_whole():
    pruned = mp.compress(_zoo(), PruneChannelsConfig(fraction=0.5, exclude=("res2",)))
    assert pruned.stem.out_channels == pruned.project.out_channels == 8  # res2's residual stream
    assert pruned.expand.out_channels == 6


def test_untraceable_model_is_refused_with_the_reason():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if y.sum() > 0:  # data-dependent control flow
                y = -y
            return self.fc(y.mean((2, 3)))

    with pytest.raises(
        ConfigError, match=r"cannot trace Branchy \(TraceError: symbolically traced variables"
    ):
        mp.compress(Branchy(), PruneChannelsConfig(fraction=0.5))


def test_explicitly_included_layer_that_is_kept_whole_is_refused():
    with pytest.raises(ConfigError, match="cannot prune 'grouped': it is a grouped convolution"):
        mp.compress(_zoo(), PruneChannelsConfig(fraction=0.5, include=("grouped",)))


def _torchvision(name: str) -> nn.Module:
    from modelpress.models.tv import torchvision_architecture

    try:
        return torchvision_architecture(name, num_classes=10)  # random weights: nothing downloaded
    except ConfigError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_cnns_at_half_the_channels(name):
    torch.manual_seed(0)
    net = _torchvision(name).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(mp.compress(copy.deepcopy(net), PruneChannelsConfig(fraction=0.0))(x), net(x))
    pruned = mp.compress(copy.deepcopy(net), PruneChannelsConfig(fraction=0.5))
    with torch.no_grad():
        y = pruned(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    small = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    # every conv keeps half its filters (the stem's RGB input stays)
    assert all(b.out_channels * 2 == a.out_channels for a, b in zip(convs, small, strict=True))
    assert small[0].in_channels == 3
    if name == "resnet18":
        assert pruned.fc.in_features == 256 and pruned.layer1[1].conv2.out_channels == 32
    else:
        dws = [m for m in small if m.groups > 1]
        assert dws and all(m.groups == m.in_channels == m.out_channels for m in dws)
