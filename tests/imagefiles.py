"""Small image data sets written by tests: PNG folders, .npz arrays and IDX files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def class_image(label: int, i: int, size: tuple[int, int] = (12, 10), rgb: bool = True) -> np.ndarray:
    """An image whose class is easy to tell: class ``label`` lights one band of rows (noise on top)."""
    h, w = size
    rng = np.random.default_rng(1000 * label + i)
    img = rng.integers(0, 40, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
    band = slice(label * h // 4, label * h // 4 + max(1, h // 4))
    img[band] = 230
    return img


def write_image_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 12, size=(12, 10)
) -> Path:
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(class_image(c, i, size)).save(root / name / f"{i}.png")
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) as an IDX file, gzipped when ``path`` ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_idx_dir(root: Path, n_train: int = 60, n_test: int = 20, classes: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % classes
        x = np.stack([class_image(int(c), i, (28, 28), rgb=False) for i, c in enumerate(y)])
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y.astype(np.uint8))
    return root


def write_hf_image_model(
    root: Path, kind: str = "resnet", num_labels: int = 3, size: int = 16, labels=("cat", "dog", "fox")
) -> Path:
    """A tiny random Hugging Face image classifier (ResNet or ViT) with a preprocessor_config.json."""
    import json

    import torch
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    names = {i: labels[i] if i < len(labels) else str(i) for i in range(num_labels)}
    torch.manual_seed(0)
    if kind == "resnet":
        cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        cls = ResNetForImageClassification
    else:
        cfg = ViTConfig(
            image_size=size, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32,
        )  # fmt: skip
        cls = ViTForImageClassification
    cfg.num_labels = num_labels
    cfg.id2label = names
    cfg.label2id = {v: k for k, v in names.items()}
    cls(cfg).eval().save_pretrained(str(root))
    pre = {"do_resize": True, "size": {"height": size, "width": size}, "do_normalize": True,
           "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}  # fmt: skip
    (root / "preprocessor_config.json").write_text(json.dumps(pre))
    return root
