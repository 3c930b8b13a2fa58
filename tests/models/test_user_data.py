"""Built-in models on the user's data, and user image models (torchvision by name, HF dirs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import modelpress as mp
from imagefiles import write_hf_image_model, write_idx_dir, write_image_folder
from modelpress.models.builtin import ImageOptions, resolve_model
from modelpress.models.causal_lm import CausalLMTask
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import minilm_source, smollm2_source
from modelpress.models.tv import TorchvisionClassifier
from modelpress.models.vision import ImageClassificationTask, ImageModel, ImageTraining
from modelpress.training import TrainConfig

FEW_STEPS = ImageTraining(TrainConfig(epochs=2, max_steps=6, lr=2e-3, patience=None), batch_size=16)


def _csv(path, n=60):
    labels = ["negative", "neutral", "positive"]
    rows = ["text,label"] + [f"example number {i} is {labels[i % 3]},{labels[i % 3]}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_builtin_minilm_takes_a_csv_with_string_labels(tmp_path):
    task = resolve_model("minilm", data=str(_csv(tmp_path / "my.csv")))
    assert isinstance(task, TextClassificationTask)
    assert task.source.path == minilm_source().path and task.model_name == "all-MiniLM-L6-v2"
    assert task.num_labels == 3 and task.splits.train.label_names == ("negative", "neutral", "positive")
    assert task.splits.name == "my.csv" and len(task.splits.test) == 9
    assert task.cache_parts()["labels"] == ("negative", "neutral", "positive")


def test_builtin_smollm2_takes_a_text_file(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("It was a dark and stormy night.\n" * 50, encoding="utf-8")
    task = resolve_model("smollm2", data=str(book))
    assert isinstance(task, CausalLMTask) and task.source.path == smollm2_source().path
    assert task.text.startswith("It was a dark") and task.text_name == "book.txt"


def test_bad_text_files_are_one_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    with pytest.raises(mp.DataError, match=r"empty.txt is empty"):
        resolve_model("smollm2", data=str(empty))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(mp.DataError, match="not UTF-8 text"):
        resolve_model("smollm2", data=str(latin))
    with pytest.raises(mp.DataError, match=r"a .txt file holds text without labels"):
        resolve_model("minilm", data=str(latin))
    with pytest.raises(mp.DataError, match="need at least 50 labelled examples"):
        resolve_model("minilm", data=str(_csv(tmp_path / "few.csv", n=20)))
    with pytest.raises(mp.ConfigError, match="--image-size applies to image models"):
        resolve_model("minilm", image=ImageOptions(size=[32]))


def test_user_causal_lm_fits_its_evaluation_slice_to_a_short_text(tmp_path, tiny_llama_dir):
    book = tmp_path / "book.txt"
    book.write_text(" ".join(f"word{i % 97}" for i in range(900)), encoding="utf-8")
    task = resolve_model(str(tiny_llama_dir), data=str(book), seq_len=16)
    n = len(task.tokens)
    assert task.eval_tokens % 512 == 0 and task.eval_tokens + task.eval_tokens // 2 + 512 <= n
    ev = task.evaluate(task.load_original(progress=False), progress=False)
    assert ev.metric == "perplexity" and np.isfinite(ev.value)
    short = tmp_path / "short.txt"
    short.write_text("only a few words here", encoding="utf-8")
    with pytest.raises(mp.DataError, match="too little text"):
        _ = resolve_model(str(tiny_llama_dir), data=str(short)).tokens


def test_lenet_trains_on_user_images_and_keeps_their_class_names(tmp_path):
    root = write_image_folder(tmp_path / "pets", per_class=10, size=(20, 24))  # RGB, not 28x28
    task = resolve_model("lenet-5", data=str(root))
    assert isinstance(task, ImageClassificationTask) and task.splits.image_shape == (1, 28, 28)
    task.training = FEW_STEPS
    model = task.load_original(progress=False)
    assert model.num_classes == 3 and model.class_names == ["cat", "dog", "fox"]
    assert task.evaluate(model, progress=False).predictions.shape == (len(task.splits.test[1]),)
    loaded = mp.load(mp.save(model, tmp_path / "art"))
    assert loaded.class_names == ["cat", "dog", "fox"]
    with pytest.raises(mp.ConfigError, match="takes 28x28 images"):
        resolve_model("lenet-5", data=str(root), image=ImageOptions(size=[32]))


def test_torchvision_architecture_with_weights_is_used_as_given(tmp_path):
    root = write_idx_dir(tmp_path / "mnist", n_train=40, n_test=12, classes=4)
    torch.manual_seed(0)
    net = TorchvisionClassifier("squeezenet1_1", 4).eval()
    save_file({k: v.contiguous() for k, v in net.net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    task = resolve_model(
        "squeezenet1_1",
        data=str(root),
        weights=str(tmp_path / "w.safetensors"),
        image=ImageOptions(size=[32]),
    )
    assert task.splits.image_shape == (3, 32, 32) and len(task.splits.test[1]) == 12  # t10k
    assert task.splits.mean == (0.485, 0.456, 0.406)  # ImageNet's, torchvision's convention
    model = task.load_original(progress=False)
    x = task.example_inputs(3)["x"]
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert "as given" in task.describe()["data"]
    # the class count of the weights must be the data's
    seven = TorchvisionClassifier("squeezenet1_1", 7).net.state_dict()
    save_file({k: v.contiguous() for k, v in seven.items()}, str(tmp_path / "w7.safetensors"))
    task7 = resolve_model("squeezenet1_1", data=str(root), weights=str(tmp_path / "w7.safetensors"))
    with pytest.raises(mp.DataError, match=r"classifier\.1\.\w+ .*7 outputs, the data has 4 classes"):
        task7.load_original()


def test_bad_weights_and_architectures_are_one_clear_error(tmp_path):
    root = write_idx_dir(tmp_path / "mnist", n_train=30, n_test=10, classes=3)
    other = TorchvisionClassifier("resnet18", 3).net.state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "resnet.safetensors"))
    task = resolve_model("squeezenet1_1", data=str(root), weights=str(tmp_path / "resnet.safetensors"))
    with pytest.raises(mp.DataError, match=r"does not fit: .*tensors missing"):
        task.load_original()
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(mp.DataError, match="cannot read the weights file"):
        resolve_model(
            "squeezenet1_1", data=str(root), weights=str(tmp_path / "junk.safetensors")
        ).load_original()
    (tmp_path / "w.pt").write_bytes(b"pickle")
    with pytest.raises(mp.DataError, match=r"must be a .safetensors file"):
        resolve_model("squeezenet1_1", data=str(root), weights=str(tmp_path / "w.pt")).load_original()
    with pytest.raises(mp.ConfigError, match="'resnet' is not a torchvision architecture; did you mean"):
        resolve_model("resnet", task="image-classification", data=str(root))
    with pytest.raises(mp.ConfigError, match="--weights applies to a torchvision architecture"):
        resolve_model("lenet-5", data=str(root), weights=str(tmp_path / "w.pt"))
    with pytest.raises(mp.ConfigError, match="needs --data"):
        resolve_model("squeezenet1_1")


def test_torchvision_architecture_without_weights_is_trained_here(tmp_path):
    root = write_image_folder(tmp_path / "pets", per_class=8)
    task = resolve_model("squeezenet1_1", data=str(root), image=ImageOptions(size=[32]))
    task.training = FEW_STEPS
    model = task.load_original(progress=False)
    assert "random init, trained here" in task.describe()["data"]
    assert isinstance(model, TorchvisionClassifier) and model.class_names == ["cat", "dog", "fox"]
    again = task.load_original(progress=False)  # from the cache: the same weights
    pairs = zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_hf_image_directory_uses_its_preprocessing_and_head(tmp_path):
    d = write_hf_image_model(tmp_path / "tiny-resnet", "resnet", num_labels=3, size=16)
    root = write_image_folder(tmp_path / "pets", per_class=6)
    task = resolve_model(str(d), data=str(root))  # the task is told by the config
    assert task.task == "image-classification" and task.splits.image_shape == (3, 16, 16)
    assert task.splits.mean == (0.5, 0.5, 0.5) and task.splits.std == (0.25, 0.25, 0.25)
    model = task.load_original(progress=False)
    assert "as given" in task.describe()["data"] and model.config.num_labels == 3
    art = mp.save(mp.compress(model, "int8-dynamic"), tmp_path / "art")
    x = task.example_inputs(2)
    with torch.no_grad():
        assert mp.load(art)(**x).logits.shape == (2, 3)
    # a head of another size: fine-tuned with a new head for the data's classes
    d4 = write_hf_image_model(tmp_path / "tiny-vit", "vit", num_labels=4, size=16)
    task4 = ImageClassificationTask(ImageModel("hf", d4.name, source=task.spec.source.__class__(
        d4.name, str(d4), "test:vit")), task.splits, training=FEW_STEPS)  # fmt: skip
    tuned = task4.load_original(progress=False)
    assert tuned.config.id2label == {0: "cat", 1: "dog", 2: "fox"} and "fine-tuned" in task4.origin
    with pytest.raises(mp.ConfigError, match="takes 16x16 images"):
        resolve_model(str(d4), data=str(root), image=ImageOptions(size=[32]))
    bad = json.loads((d / "config.json").read_text())
    bad["architectures"] = ["SomethingElse"]
    (d / "config.json").write_text(json.dumps(bad))
    assert resolve_model(str(d), data=str(root)).task == "image-classification"  # pixels in: num_channels
    del bad["num_channels"]
    (d / "config.json").write_text(json.dumps(bad))
    with pytest.raises(mp.ConfigError, match="cannot tell the task"):
        resolve_model(str(d), data=str(root))


def test_a_generic_directory_name_gives_way_to_the_models_own_name(tmp_path):
    from modelpress.models.sources import local_source

    d = write_hf_image_model(tmp_path / "model", "resnet")
    assert local_source(str(d)).name == "ResNetForImageClassification"
    cfg = json.loads((d / "config.json").read_text())
    cfg["_name_or_path"] = "microsoft/resnet-18"
    (d / "config.json").write_text(json.dumps(cfg))
    assert local_source(str(d)).name == "microsoft/resnet-18"
    cfg["_name_or_path"] = str(tmp_path)  # a local path is never shown
    (d / "config.json").write_text(json.dumps(cfg))
    assert local_source(str(d)).name == "ResNetForImageClassification"
    assert local_source(str(write_hf_image_model(tmp_path / "my-resnet", "resnet"))).name == "my-resnet"
