"""Deep Compression (prune -> fine-tune -> sparsity-preserving k-means -> centroid fine-tune ->
entropy coding) end to end on LeNet-5 with a tiny synthetic image task."""

import pytest
import torch
import torch.nn.functional as F

import modelpress as mp
from modelpress.formats import Codebook
from modelpress.methods.pruning import SparseStorageConfig
from modelpress.methods.pruning.presets import deep_compression
from modelpress.models.lenet import LeNet5, LeNet300100


class ToyImages:
    """64 train / 32 validation random 28x28 images, labels from a fixed random projection."""

    higher_is_better = True

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(96, 1, 28, 28, generator=g)
        y = (x.flatten(1) @ torch.randn(784, 10, generator=g)).argmax(1)
        self.splits = {"train": (x[:64], y[:64]), "validation": (x[64:], y[64:])}

    def batches(self, split, batch_size, *, shuffle_seed=None):
        x, y = self.splits[split]
        order = torch.arange(len(y))
        if shuffle_seed is not None:
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(shuffle_seed))
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            yield {"x": x[idx], "labels": y[idx]}

    def loss(self, model, batch):
        return F.cross_entropy(model(batch["x"]), batch["labels"])

    def score(self, model, split="validation"):
        x, y = self.splits[split]
        with torch.no_grad():
            return (model(x).argmax(1) == y).float().mean().item()


def test_deep_compression_lenet5(tmp_path):
    torch.manual_seed(0)
    net, data = LeNet5().eval(), ToyImages()
    model = mp.compress(net, "deep-compression", data=data, progress=False)
    books = {n: m.weight for n, m in model.named_children()}
    assert all(isinstance(b, Codebook) for b in books.values())
    assert {n: b.bits for n, b in books.items()} == {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}
    kept = {n: int(b.mask.sum()) for n, b in books.items()}
    # the paper's per-layer rates, exact counts (fc2 is the output layer: '@head')
    assert kept == {"conv1": 330, "conv2": 3000, "fc1": 12000, "fc2": 1300}
    assert all(b.coding == "zstd" and b.mask_coding == "zstd" for b in books.values())
    assert [c.name for c in mp.recipe_of(model)] == ["prune", "kmeans", "kmeans", "finetune-centroids"]

    path = mp.save(model, tmp_path / "dc")
    loaded = mp.load(path)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for n, b in books.items():
        assert torch.equal(loaded.get_submodule(n).weight.decode(), b.decode())

    fp32 = mp.artifact_bytes(mp.save(net, tmp_path / "fp32"))
    prune_cfg = deep_compression()[0]
    pruned = mp.compress(net, [prune_cfg, SparseStorageConfig()], data=data, progress=False)
    sparse = mp.artifact_bytes(mp.save(pruned, tmp_path / "pruned"))
    final = mp.artifact_bytes(path)
    # random (untrained) weights: each stage still shrinks the artifact several-fold
    assert final < sparse / 2.5 and sparse < fp32 / 15 and final < fp32 / 40


def test_conv_recipe_needs_conv_layers():
    with pytest.raises(mp.ConfigError, match="kmeans: no Conv1d/Conv2d layer matched"):
        mp.compress(LeNet300100(), deep_compression(conv=True)[1:2])
