import pytest
import torch

import modelpress as mp
from modelpress.data.images import mnist_5k
from modelpress.models.vision import ImageClassificationTask, ImageTraining, LeNet5, LeNet300100
from modelpress.training import TrainConfig


def test_mnist_split():
    s = mnist_5k(seed=0)
    assert s.train[0].shape == (3500, 1, 28, 28) and s.test[0].shape == (1000, 1, 28, 28)
    assert float(s.train[0].max()) <= 1.0 and set(s.test[1].tolist()) == set(range(10))
    assert mnist_5k(seed=0).fingerprint() == s.fingerprint() != mnist_5k(seed=1).fingerprint()


def test_lenet_shapes_and_param_counts():
    assert sum(p.numel() for p in LeNet300100().parameters()) == 266_610
    assert sum(p.numel() for p in LeNet5().parameters()) == 431_080
    assert LeNet5()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("arch", ["lenet-300-100", "lenet-5"])
def test_image_task_trains_clusters_and_roundtrips(tmp_path, arch):
    task = ImageClassificationTask(
        arch, mnist_5k(seed=0), training=ImageTraining(TrainConfig(epochs=1, max_steps=30, lr=2e-3))
    )
    model = task.load_original(progress=False)
    ev = task.evaluate(model, progress=False)
    assert ev.value > 0.5  # a few steps already beat chance by far
    recipe = [mp.methods.clustering.KMeansConfig(bits=5, layers=("linear", "conv"))]
    clustered = mp.compress(model, recipe)
    path = mp.save(clustered, tmp_path / arch)
    loaded = mp.load(path)
    x = task.example_inputs(4)["x"]
    with torch.no_grad():
        assert torch.equal(loaded(x), clustered(x))
    assert mp.artifact_bytes(path) < mp.artifact_bytes(mp.save(model, tmp_path / "fp32")) / 5


def test_fresh_process_loads_registered_architecture(tmp_path):
    """The memory worker imports only modelpress.api: registered models must load there."""
    from safetensors.torch import save_file

    from modelpress.bench.measure import measure_memory

    path = mp.save(LeNet5(), tmp_path / "lenet5")
    save_file({"x": torch.zeros(1, 1, 28, 28)}, str(tmp_path / "in.safetensors"))
    mem = measure_memory(path, tmp_path / "in.safetensors")
    assert mem["peak_rss_mb"] > 0
