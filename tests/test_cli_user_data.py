"""End to end: `modelpress bench` on the user's data and image models, each on tiny data made here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import save_file
from typer.testing import CliRunner

import modelpress as mp
from imagefiles import write_hf_image_model, write_idx_dir, write_image_folder
from modelpress.cli import app
from modelpress.models.tv import TorchvisionClassifier

runner = CliRunner()
FAST = [
    "--methods",
    "fp32,int8-dynamic",
    "--no-progress",
    "--threads",
    "1",
    "--rounds",
    "1",
    "--throughput-batch",
    "2",
]


def _err(res) -> str:
    return " ".join((res.stderr or res.output).split())


def _bench(tmp_path, *args: str, memory: bool = False):
    out = tmp_path / "res"
    res = runner.invoke(
        app, ["bench", *args, *FAST, "--output", str(out), *([] if memory else ["--no-memory"])]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["fp32", "int8-dynamic"]
    assert "fp32" in res.output and "int8-dynamic" in res.output and "Quality" in res.output
    return res, out, rows


def test_bench_hf_image_model_on_an_image_folder(tmp_path):
    model = write_hf_image_model(tmp_path / "tiny-resnet", "resnet", num_labels=3, size=16)
    data = write_image_folder(tmp_path / "pets", per_class=12)
    _res, out, rows = _bench(tmp_path, "--model", str(model), "--data", str(data))
    md = (out / "results.md").read_text()
    assert "tiny-resnet — image-classification" in md and "pets (train 27, validation 4, test 5" in md
    assert "3 classes" in md and "as given" in md
    assert all(0.0 <= r["quality"] <= 1.0 for r in rows) and rows[0]["agreement"] == 1.0
    assert mp.load(out / "artifacts" / "int8-dynamic").config.id2label == {0: "cat", 1: "dog", 2: "fox"}


def test_bench_torchvision_weights_on_idx_files(tmp_path):
    data = write_idx_dir(tmp_path / "mnist", n_train=60, n_test=20, classes=4)
    net = TorchvisionClassifier("shufflenet_v2_x0_5", 4).net
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    args = [
        "--model",
        "shufflenet_v2_x0_5",
        "--weights",
        str(tmp_path / "w.safetensors"),
        "--data",
        str(data),
    ]
    # peak RAM in a fresh process: the worker rebuilds the torchvision architecture from the manifest
    _res, out, rows = _bench(tmp_path, *args, "--image-size", "32", memory=True)
    md = (out / "results.md").read_text()
    assert "test 20" in md and "t10k" in md and "with the weights of w.safetensors, as given" in md
    assert all(r["peak_rss_mb"] > 0 for r in rows)
    assert rows[1]["size_bytes"] < rows[0]["size_bytes"]


def test_bench_builtin_lenet_on_user_images(tmp_path):
    data = write_idx_dir(tmp_path / "digits", n_train=60, n_test=20, classes=4)
    res, out, _rows = _bench(tmp_path, "--model", "lenet-5", "--data", str(data))
    assert (
        "LeNet-5" in res.output
        and "digits (train 53, validation 7, test 20" in (out / "results.md").read_text()
    )
    assert mp.load(out / "artifacts" / "fp32").num_classes == 4
    # each row's artifact keeps what serving needs: the grey 28x28 input and the class names
    from modelpress.data.images import ImageInput

    served = ImageInput.read(out / "artifacts" / "fp32" / "preprocessing.json")
    assert served.shape == (1, 28, 28) and served.class_names == ("0", "1", "2", "3")


def test_bench_causal_lm_on_a_text_file(tmp_path, tiny_llama_dir):
    book = tmp_path / "book.txt"
    book.write_text(" ".join(f"word{i % 97}" for i in range(900)), encoding="utf-8")
    _res, out, rows = _bench(
        tmp_path,
        "--model",
        str(tiny_llama_dir),
        "--data",
        str(book),
        "--seq-len",
        "16",
        "--decode-tokens",
        "2",
    )
    assert "book.txt: first 512 tokens" in (out / "results.md").read_text()
    assert all(r["quality"] > 1.0 for r in rows)  # perplexities


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "lenet-5", "--data", "{flat}"], "no class folders"),
        (["--model", "lenet-5", "--data", "{broken}"], "cannot read image"),
        (["--model", "resnet", "--task", "image-classification", "--data", "{pets}"], "not a torchvision"),
        (["--model", "shufflenet_v2_x0_5", "--data", "{pets}", "--image-size", "3x"], "--image-size takes"),
        (["--model", "shufflenet_v2_x0_5", "--data", "{pets}", "--weights", "{w7}"], "does not fit"),
        (["--model", "smollm2", "--data", "{empty}"], "is empty"),
        (["--model", "minilm", "--data", "{pets}", "--image-size", "32"], "--image-size applies to"),
        (["--model", "lenet-300-100", "--data", "{npz}"], "10 images but 9 labels"),
    ],
)
def test_bad_user_input_is_one_error_line(tmp_path, args, message):
    flat = tmp_path / "flat"
    flat.mkdir()
    pets = write_image_folder(tmp_path / "pets", per_class=4)
    broken = write_image_folder(tmp_path / "broken", per_class=4)
    (broken / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "empty.txt").write_text("")
    w7 = TorchvisionClassifier("shufflenet_v2_x0_5", 7).net.state_dict()
    save_file({k: v.contiguous() for k, v in w7.items()}, str(tmp_path / "w7.safetensors"))
    paths = {"flat": flat, "pets": pets, "broken": broken, "empty": tmp_path / "empty.txt"}
    paths["w7"] = tmp_path / "w7.safetensors"
    np.savez(tmp_path / "m.npz", x=np.zeros((10, 28, 28), np.uint8), y=np.arange(9) % 2)
    paths["npz"] = tmp_path / "m.npz"
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]
    res = runner.invoke(app, ["bench", *argv, *FAST, "--no-memory", "--output", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert _err(res).startswith("error:") and message in _err(res) and "Traceback" not in res.output


@pytest.mark.slow
def test_bench_builtin_minilm_on_a_user_csv_with_three_string_labels(tmp_path):
    """The real MiniLM fine-tuned on 70 examples (one epoch), evaluated on 11."""
    words = {
        "good": "a wonderful, delightful film",
        "bad": "a dull and tedious mess",
        "meh": "it was fine, I guess",
    }
    rows = ["text,label"] + [f'"{words[lab]} ({i})",{lab}' for i in range(24) for lab in words]
    (tmp_path / "my.csv").write_text("\n".join(rows[:73]) + "\n")
    res, out, _rows = _bench(
        tmp_path, "--model", "minilm", "--data", str(tmp_path / "my.csv"), "--seq-len", "16"
    )
    assert "all-MiniLM-L6-v2" in res.output and "my.csv (train" in (out / "results.md").read_text()
    assert mp.load(out / "artifacts" / "fp32").config.id2label == {0: "bad", 1: "good", 2: "meh"}


@pytest.mark.slow
def test_bench_builtin_smollm2_on_a_user_text_file(tmp_path):
    """The real SmolLM2 on a short UTF-8 text: the evaluation slice fits the text (one window)."""
    line = "The quick brown fox jumps over the lazy dog, and the dog sleeps on — café au lait. "
    (tmp_path / "book.txt").write_text(line * 80, encoding="utf-8")
    res, out, rows = _bench(
        tmp_path, "--model", "smollm2", "--data", str(tmp_path / "book.txt"), "--seq-len", "16",
        "--decode-tokens", "0",
    )  # fmt: skip
    assert "SmolLM2-135M" in res.output and "book.txt: first 512 tokens" in (out / "results.md").read_text()
    assert rows[0]["quality"] < 50  # a repeated text is easy to predict
