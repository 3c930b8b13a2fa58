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


def test_small_image_data_trains_until_validation_stops_and_says_so():
    from modelpress.data.images import ImageSplits
    from modelpress.models.vision import DEFAULT_TRAINING
    from modelpress.training.loop import DataSizedSchedule

    full = mnist_5k(seed=0)
    small = ImageSplits(
        (full.train[0][:128], full.train[1][:128]), full.validation, full.test, "mnist-tiny", 0
    )
    assert DEFAULT_TRAINING.schedule is not None
    assert ImageClassificationTask("lenet-300-100", full).train_plan()[1] is None  # MNIST-5k unchanged
    training = ImageTraining(
        TrainConfig(epochs=1, lr=3e-3, patience=None), schedule=DataSizedSchedule(target_steps=24)
    )
    task = ImageClassificationTask("lenet-300-100", small, training=training)
    cfg, why = task.train_plan()
    assert cfg.epochs == 12 and cfg.min_steps == 12 and "small (2 steps an epoch)" in why
    task.load_original(progress=False)
    note = task.describe()["original_training"]
    assert (
        note.startswith("trained by modelpress on the train split: ")
        and "validation accuracy by epoch" in note
    )
    assert "stopped: " in note and "planned for 12 epochs" in note
