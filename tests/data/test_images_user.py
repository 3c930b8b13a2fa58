"""A user's images: folders, .npz arrays and IDX files, preprocessing, splits, and bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from imagefiles import class_image, write_idx, write_idx_dir, write_image_folder
from modelpress.data.images import ImagePreprocess, read_idx, read_image_data
from modelpress.errors import ConfigError, DataError

RGB16 = ImagePreprocess(channels=3, size=(16, 16), mean=(0.5,), std=(0.25,))


def test_image_folder_is_split_with_its_seed_and_resized(tmp_path):
    root = write_image_folder(tmp_path / "pets")
    s = read_image_data(root, RGB16, seed=3)
    assert s.class_names == ("cat", "dog", "fox") and s.num_classes == 3
    assert s.train[0].dtype == torch.uint8 and s.image_shape == (3, 16, 16)
    sizes = [len(s.train[1]), len(s.validation[1]), len(s.test[1])]
    assert sizes == [27, 4, 5]  # 36 images: round(15 %) test, round(10 %) validation
    assert s.fingerprint() == read_image_data(root, RGB16, seed=3).fingerprint()
    assert s.fingerprint() != read_image_data(root, RGB16, seed=4).fingerprint()
    x = s.prepare(s.test[0][:2])  # scaled to [0, 1] then (x - 0.5) / 0.25 on each channel
    assert x.dtype == torch.float32
    assert torch.allclose(x, (s.test[0][:2].float() / 255 - 0.5) / 0.25)


def test_image_folder_with_given_splits_and_grey_conversion(tmp_path):
    write_image_folder(tmp_path / "d" / "train", per_class=6)
    write_image_folder(tmp_path / "d" / "test", per_class=2)
    s = read_image_data(tmp_path / "d", ImagePreprocess(channels=1, size=(28, 28)))
    assert len(s.test[1]) == 6 and len(s.train[1]) + len(s.validation[1]) == 18
    assert s.image_shape == (1, 28, 28) and "test split given" in s.split_note
    # grey by PIL's luma of the RGB image, then resized
    img = class_image(0, 0)
    grey = np.asarray(Image.fromarray(img).convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    first_cat = s.test[0][s.test[1] == 0][0, 0].numpy()
    assert np.array_equal(first_cat, grey)


def test_npz_arrays_plain_and_given_splits_with_string_labels(tmp_path):
    x = np.stack([class_image(i % 2, i, (8, 8), rgb=False) for i in range(40)])
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(40) % 2)
    s = read_image_data(tmp_path / "a.npz", ImagePreprocess(channels=3, size=None))
    assert s.image_shape == (3, 8, 8) and s.class_names == ("0", "1")
    assert sum(len(p[1]) for p in (s.train, s.validation, s.test)) == 40
    # channels-first floats in [0, 1], given splits, string labels shared by the splits
    xf = (x[:, None].astype(np.float32) / 255.0).repeat(3, axis=1)
    names = np.array(["odd", "even"])[np.arange(40) % 2]
    np.savez(tmp_path / "b.npz", x_train=xf[:30], y_train=names[:30], x_test=xf[30:], y_test=names[30:])
    s = read_image_data(tmp_path / "b.npz", ImagePreprocess(channels=3))
    assert s.class_names == ("even", "odd") and len(s.test[1]) == 10
    assert torch.equal(s.test[0][:, 0], torch.from_numpy(x[30:]))  # floats back to the same bytes
    assert s.test[1].tolist() == [1 if n == "odd" else 0 for n in names[30:]]


def test_idx_directory_takes_its_test_split_from_t10k(tmp_path):
    root = write_idx_dir(tmp_path / "mnist", n_train=60, n_test=20)
    s = read_image_data(root, ImagePreprocess(channels=1, size=(28, 28)), seed=0)
    assert len(s.test[1]) == 20 and len(s.train[1]) + len(s.validation[1]) == 60
    assert s.class_names == ("0", "1", "2", "3") and "t10k" in s.split_note
    x = read_idx(root / "t10k-images-idx3-ubyte.gz")
    assert x.shape == (20, 28, 28) and torch.equal(s.test[0][:, 0], torch.from_numpy(x.copy()))
    # uncompressed files as distributed by some mirrors load the same way
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in root.iterdir():
        (raw / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
    assert (
        read_image_data(raw, ImagePreprocess(channels=1)).fingerprint()
        == read_image_data(root, ImagePreprocess(channels=1)).fingerprint()
    )
    # without t10k files the test split is cut from train too
    for f in raw.glob("t10k-*"):
        f.unlink()
    s = read_image_data(raw, ImagePreprocess(channels=1))
    assert [len(s.train[1]), len(s.validation[1]), len(s.test[1])] == [45, 6, 9] and "seed 0" in s.split_note


def test_bad_image_data_is_one_clear_error(tmp_path):
    prep = ImagePreprocess(channels=3, size=(8, 8))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(class_image(0, 0)).save(flat / "a.png")
    with pytest.raises(DataError, match=r"no class folders .*1 images lie loose"):
        read_image_data(flat, prep)
    pets = write_image_folder(tmp_path / "pets", per_class=4)
    (pets / "dog" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot read image .*broken.png"):
        read_image_data(pets, prep)
    (pets / "dog" / "broken.png").unlink()
    (pets / "emu").mkdir()
    with pytest.raises(DataError, match=r"class folder .*emu holds no images"):
        read_image_data(pets, prep)
    (pets / "emu").rmdir()
    Image.fromarray(class_image(1, 9, (20, 20))).save(pets / "dog" / "big.png")
    with pytest.raises(DataError, match=r"images differ in size .*--image-size"):
        read_image_data(pets, ImagePreprocess(channels=3))
    x = np.zeros((10, 8, 8), np.uint8)
    np.savez(tmp_path / "m.npz", x=x, y=np.arange(9) % 2)
    with pytest.raises(DataError, match="10 images but 9 labels"):
        read_image_data(tmp_path / "m.npz", prep)
    np.savez(tmp_path / "k.npz", pixels=x)
    with pytest.raises(DataError, match="needs arrays 'x' and 'y'"):
        read_image_data(tmp_path / "k.npz", prep)
    (tmp_path / "z.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="cannot read"):
        read_image_data(tmp_path / "z.npz", prep)
    with pytest.raises(DataError, match="unsupported image data"):
        read_image_data(_touch(tmp_path / "x.csv"), prep)


def test_bad_idx_files_are_one_clear_error(tmp_path):
    prep = ImagePreprocess(channels=1)
    root = write_idx_dir(tmp_path / "m", n_train=30, n_test=10)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(DataError, match="10 images but 9 labels"):
        read_image_data(root, prep)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is missing"):
        read_image_data(root, prep)
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    bad = root / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-5]))
    with pytest.raises(DataError, match=r"header says .*the file holds"):
        read_image_data(root, prep)
    bad.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + bytes(100)))
    with pytest.raises(DataError, match="not an IDX file"):
        read_image_data(root, prep)


def test_preprocess_options_are_checked():
    with pytest.raises(ConfigError, match="1 or 3 image channels"):
        ImagePreprocess(channels=4)
    with pytest.raises(ConfigError, match="both --image-mean and --image-std"):
        ImagePreprocess(mean=(0.5,))
    with pytest.raises(ConfigError, match="--image-mean needs 1 or 3 values"):
        ImagePreprocess(mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(ConfigError, match="--image-std values must be > 0"):
        ImagePreprocess(mean=(0.5,), std=(0.0,))


def _touch(path):
    path.write_text("a,b\n")
    return path
