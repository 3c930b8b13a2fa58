"""The public entry points: ``compress``, ``save`` and ``load``.

On-disk format (one directory per artifact):

- ``model.safetensors``: every tensor of the model's state dict, flat keys
  (``bert.encoder.layer.0.attention.self.query.weight.qdata`` ...); tensors shared between
  keys (tied weights) are stored once;
- ``manifest.json``: the format name and version, the base model (class + config), the
  recipe, every compressed module with its formats (name, version, meta), the shape and
  dtype of every tensor, the aliases of tied tensors, and the ``structure`` of a
  structurally rewritten model (layers whose dims differ from what the base config builds,
  changed head counts; see ``models.architectures.describe_structure``).

Loading reads only JSON and safetensors (no pickle), accepts only registered names, and
checks every name, shape and dtype against the manifest before touching the model.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import sys
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import manifest_schema
from . import methods as _methods  # noqa: F401 - registers the built-in methods
from .data.user import ForwardFn, LossFn, UserData, as_data
from .errors import ArtifactError, ConfigError, ModelpressError, SaveError
from .formats.base import MAX_DIM, MAX_NUMEL, CompressedTensor
from .methods.base import HANDLERS, PRESETS, CompressContext, MethodConfig
from .models import lenet as _lenet  # noqa: F401 - registers the built-in architectures
from .models.architectures import (
    USER_LIBRARY,
    apply_structure,
    build_base,
    class_path,
    describe_base,
    describe_structure,
    user_base_error,
)
from .nn.base import MODULES, CompressedModule
from .recipe import Recipe

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "compress",
    "compression_notes",
    "load",
    "manifest_digest",
    "recipe_of",
    "recover_interrupted_save",
    "save",
    "tensor_digest",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "modelpress"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
_RECIPE_ATTR = "_modelpress_recipe"
_NOTES_ATTR = "_modelpress_notes"
_ORIGINAL_ATTR = "_modelpress_original"

_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}


def _dtype_name(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def recipe_of(model: nn.Module) -> Recipe:
    """The recipe applied to ``model`` so far (empty for an original model)."""
    return getattr(model, _RECIPE_ATTR, Recipe())


def _as_recipe(obj: Recipe | MethodConfig | Sequence[MethodConfig] | str | os.PathLike) -> Recipe:
    if isinstance(obj, Recipe):
        return obj
    if isinstance(obj, MethodConfig):
        return Recipe([obj])
    if isinstance(obj, (str, os.PathLike)):
        s = os.fspath(obj)
        if s in PRESETS:
            return Recipe(PRESETS.get(s).build())
        if Path(s).is_file():
            return Recipe.load(s)
        raise ConfigError(f"'{s}' is neither a benchmark method name nor a recipe file")
    if isinstance(obj, Sequence):
        return Recipe(typing.cast(Sequence[MethodConfig], obj))
    raise ConfigError(f"expected a Recipe, a method config or a method name, got {type(obj).__name__}")


def compression_notes(model: nn.Module) -> list[str]:
    """What the methods applied to ``model`` by ``compress`` said the user should know
    (layers left uncompressed and why, fallbacks ...), in order; empty for an original."""
    return list(getattr(model, _NOTES_ATTR, []))


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device '{device}' (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' was asked for, but torch sees no CUDA device here")
    return dev


def compress(
    model: nn.Module,
    recipe_or_config: Recipe | MethodConfig | Sequence[MethodConfig] | str,
    *,
    data: Any = None,
    teacher: nn.Module | None = None,
    device: str | torch.device | None = None,
    inplace: bool = False,
    progress: bool = True,
    forward_fn: ForwardFn | None = None,
    loss_fn: LossFn | None = None,
    eval_fn: typing.Callable[[nn.Module], float] | None = None,
    higher_is_better: bool = True,
) -> nn.Module:
    """Apply a recipe (or one method config, or a benchmark method name) to ``model``.

    The input model is left untouched unless ``inplace=True``. ``data`` is the calibration /
    training data a method needs: any iterable of batches (a ``DataLoader``, a list; see
    ``data.user`` for the batch shapes), or a task adapter (anything with ``batches`` and
    ``loss``; ``data.calibration.CalibrationData``). With plain batches, ``forward_fn(model,
    batch)`` replaces the default forward, ``loss_fn(model, batch) -> scalar tensor`` is the
    loss of methods that take gradients or train (default: cross-entropy for ``(inputs,
    integer labels)`` batches), and ``eval_fn(model) -> float`` the metric of methods that
    keep the best epoch or a quality tolerance (``higher_is_better``). ``teacher``: the
    teacher of distillation methods. ``device``: where the methods run (the model and
    teacher are moved there first; the result stays there; default: the CPU). Returns the
    compressed model; ``save`` stores it, ``compression_notes(model)`` gives what the
    methods noted.
    """
    recipe = _as_recipe(recipe_or_config)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"compress takes a torch nn.Module, got {type(model).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ConfigError(f"teacher must be a torch nn.Module, got {type(teacher).__name__}")
    data = as_data(
        data, forward_fn=forward_fn, loss_fn=loss_fn, eval_fn=eval_fn, higher_is_better=higher_is_better
    )
    previous = recipe_of(model)
    notes = compression_notes(model)
    dev = _device(device)
    if not inplace:
        model = copy.deepcopy(model)
    _keep_original(model)
    model = model.to(dev)
    if teacher is not None:
        teacher = teacher.to(dev)
    ctx = CompressContext(data=data, teacher=teacher, device=dev, progress=progress)
    _check_finite(model, "the model to compress")
    applied: list[MethodConfig] = []
    for config in recipe:
        handler = HANDLERS.get(type(config))
        if handler is None:
            raise ConfigError(f"method '{config.name}' has no registered handler")
        log.info("applying %s", config.name)
        ctx.recorded = None
        if isinstance(data, UserData):
            data.method = config.name  # named in the errors of the user's data
        model = handler(model, config, ctx)
        applied.append(ctx.recorded or config)  # a handler may record its resolved config
    if applied:
        _check_finite(model, "the result of " + " + ".join(c.name for c in applied))
    setattr(model, _RECIPE_ATTR, previous + Recipe(applied))
    setattr(model, _NOTES_ATTR, notes + ctx.notes)
    return model.eval()


class _Original:
    """The original of a user's own module, on the meta device (no memory): what ``save``
    compares a structurally rewritten model with for the manifest's ``structure`` (a
    registered or transformers base is rebuilt from its config instead). A plain object,
    not a module: it is no submodule of the model it is attached to."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module


def _meta_clone(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every parameter and buffer on the meta device (nothing
    copied but the modules and their attributes)."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = (
            nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
        )
    holder = getattr(model, _ORIGINAL_ATTR, None)
    if holder is not None:
        memo[id(holder)] = None  # the clone needs no original of its own
    return copy.deepcopy(model, memo)


def _keep_original(model: nn.Module) -> None:
    """Attach a meta copy of a user's own module before the first method changes it (kept
    through later ``compress`` calls: the first original is the base)."""
    if getattr(model, _ORIGINAL_ATTR, None) is None and describe_base(model)["library"] == USER_LIBRARY:
        setattr(model, _ORIGINAL_ATTR, _Original(_meta_clone(model)))


def _structure(model: nn.Module, base: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``structure``: against a build of the base, or for a user's own module
    against the original ``compress`` kept (none kept: the model is its own original)."""
    if base["library"] != USER_LIBRARY:
        return describe_structure(model, base)
    holder = getattr(model, _ORIGINAL_ATTR, None)
    if not isinstance(holder, _Original):
        return {"modules": {}, "attributes": {}}
    return describe_structure(model, base=holder.module)


def _check_finite(model: nn.Module, what: str) -> None:
    """One check for every method: no NaN / Inf in the weights (parameters, persistent
    buffers, compressed formats' fields) going into ``compress`` or coming out of it."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"compress takes a torch nn.Module, got {type(model).__name__}")
    for key, t in model.state_dict(keep_vars=True).items():
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t.detach()).all()):
            raise ConfigError(
                f"{what} holds NaN or Inf values in '{key}' (e.g. a diverged training run, a corrupt "
                "checkpoint, or values beyond float16's range 65504); compress refuses non-finite weights"
            )


# -- save ----------------------------------------------------------------------------------


# An integrity checksum (catches corrupt or accidentally altered bytes), not a signature:
# anyone who can rewrite the file can rewrite its digests. XXH3-128 runs at ~25 GB/s per core
# against sha256's ~1.7 GB/s with SHA-NI (benchmarks/artifact_digest_cost.py), which keeps the
# check within 10 % of a warm load; artifacts written with sha256 digests are still verified.
DIGEST_ALGORITHM = "xxh3-128"
_DIGEST_HEX_LEN = manifest_schema.DIGEST_HEX_LEN


def _hasher(algorithm: str) -> Any:
    return xxhash.xxh3_128() if algorithm == "xxh3-128" else hashlib.sha256()


def tensor_digest(t: torch.Tensor, algorithm: str = DIGEST_ALGORITHM) -> str:
    """Digest (hex) of a tensor's bytes as safetensors stores them (C order, little endian):
    XXH3-128 by default, ``algorithm="sha256"`` for artifacts of older versions."""
    h = _hasher(algorithm)
    if t.numel():
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().data)  # the buffer itself, no copy
    return str(h.hexdigest())


def _canonical(manifest: dict[str, Any]) -> bytes:
    """The manifest's canonical form (sorted keys, no whitespace), without its own digest."""
    m = dict(manifest)
    if isinstance(m.get("digests"), dict):
        m["digests"] = {k: v for k, v in m["digests"].items() if k != "manifest"}
    return json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The digest ``save`` records as ``manifest["digests"]["manifest"]``: the manifest's
    canonical form without that field, hashed with the manifest's own ``digests.algorithm``
    (tools that edit a manifest on purpose record it again; an integrity check, not a
    signature)."""
    h = _hasher(_digest_algorithm(manifest))
    h.update(_canonical(manifest))
    return str(h.hexdigest())


def _digest_algorithm(manifest: dict[str, Any]) -> str:
    d = manifest.get("digests")
    algo = d.get("algorithm") if isinstance(d, dict) else None
    return algo if algo in _DIGEST_HEX_LEN else DIGEST_ALGORITHM


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _collect(
    model: nn.Module,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]], dict[str, str], dict[str, Any]]:
    """Unique tensors to write, specs of every key, aliases (tied key -> stored key), and
    compressed module entries.

    The state dict holds the in-memory layout; each format's fields are replaced, in place
    (same key order), by its stored layout (``to_storage``), computed once per format object
    so that tied modules, which share one format, yield the very same tensors (stored once).
    """
    state = model.state_dict()
    stored_of: dict[int, dict[str, torch.Tensor]] = {}
    for prefix, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, CompressedTensor) and prefix:
            stored = stored_of.get(id(mod))
            if stored is None:
                stored = stored_of[id(mod)] = mod.to_storage()
            for field, t in stored.items():
                state[f"{prefix}.{field}"] = t
    tensors: dict[str, torch.Tensor] = {}
    specs: dict[str, dict[str, Any]] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, t in state.items():
        if t.device.type == "meta":
            raise ModelpressError(f"cannot save: tensor '{key}' has no data (meta device)")
        specs[key] = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
        if t.numel() > 0:
            sk = _storage_key(t)
            if sk in seen:
                aliases[key] = seen[sk]
                continue
            seen[sk] = key
        tensors[key] = t.detach().to("cpu").contiguous()
    modules = {
        name: m.to_manifest()
        for name, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, CompressedModule)
    }
    return tensors, specs, aliases, modules


def _rebuilt_buffers(model: nn.Module, specs: dict[str, Any]) -> dict[str, str]:
    return {n: _dtype_name(b.dtype) for n, b in model.named_buffers() if n not in specs}


# What a directory written by ``save`` (and ``modelpress compress``: tokenizer/, or an image
# model's preprocessing.json, ``data.images.PREPROCESSING_FILE``) may hold; anything else in it
# is the user's, and ``save`` refuses to replace such a directory.
ARTIFACT_ENTRIES = frozenset({WEIGHTS_FILE, MANIFEST_FILE, "tokenizer", "preprocessing.json"})


def _is_artifact(path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME


def check_directory_target(
    path: Path, *, kind: str, is_ours: typing.Callable[[Path], bool], entries: typing.Collection[str]
) -> None:
    """A directory modelpress may write a ``kind`` (artifact, ONNX export) into: new,
    empty, or one of ours (``is_ours``) holding only ``entries``; anything else is refused
    with one ``ModelpressError``, never deleted."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise ModelpressError(f"refusing to write an {kind} at {path}: it exists and is not a directory")
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return
    if not is_ours(path):
        raise ModelpressError(
            f"refusing to overwrite {path}: it is not empty and not a modelpress {kind} "
            f"(holds {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}); choose another directory"
        )
    foreign = [e for e in names if e not in entries]
    if foreign:
        raise ModelpressError(
            f"refusing to overwrite the {kind} at {path}: it also holds files modelpress did not "
            f"write ({', '.join(foreign[:5])}); move them away or choose another directory"
        )


def _check_target(path: Path) -> None:
    """``save`` writes into a new or empty directory, or replaces a modelpress artifact
    that holds nothing else; anything else is refused, never deleted."""
    check_directory_target(path, kind="artifact", is_ours=_is_artifact, entries=ARTIFACT_ENTRIES)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted_save(path: str | os.PathLike) -> list[str]:
    """Clean up after a ``save`` of ``path`` that was killed: a finished artifact parked as
    ``.NAME.old-*`` while the path is empty is moved back; temporary ``.NAME.tmp-*`` and
    stale ``.NAME.old-*`` directories of processes that are gone are removed. Returns what
    was done (also logged); ``save`` and ``load`` call this first."""
    path = Path(path)
    done: list[str] = []
    parent = path.parent
    if not parent.is_dir():
        return done
    for leftover in sorted(parent.glob(f".{path.name}.*-*")):
        kind, _, rest = leftover.name[len(path.name) + 2 :].partition("-")
        pid_s = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid_s.isdigit() or not leftover.is_dir():
            continue
        if int(pid_s) != os.getpid() and _pid_alive(int(pid_s)):
            continue  # another save is at work
        if kind == "old" and not path.exists() and _is_artifact(leftover):
            leftover.rename(path)
            done.append(f"recovered the artifact at {path} from an interrupted save")
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            done.append(f"removed {leftover.name}, left by an interrupted save")
    for msg in done:
        log.warning("%s", msg)
    return done


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux ``renameat2(RENAME_EXCHANGE)``); ``False``
    where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_file(path: Path, write: Any) -> None:
    write(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(path, 0o644)


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    extras: typing.Mapping[str, typing.Callable[[Path], object]] | None = None,
) -> Path:
    """Write ``model`` to the directory ``path`` (``model.safetensors`` + ``manifest.json``).

    ``path`` must be new, empty, or a modelpress artifact holding nothing else (which is
    replaced); anything else is refused and left as it is. The artifact is built in a
    temporary sibling directory, synced, and swapped in by one atomic rename (Linux: an
    exchange of the two directories), so a kill at any instant leaves the old complete
    artifact or the new one at ``path``; leftovers of a killed save are cleaned (or the old
    artifact recovered) by the next ``save`` or ``load``.

    ``extras``: more entries of the artifact, by name (only ``"tokenizer"`` and
    ``"preprocessing.json"``, see ``ARTIFACT_ENTRIES``; an image model's is written by
    ``data.images.ImageInput.write``) -> a function that writes that entry at the path it is given,
    inside the temporary directory, before the swap: an entry that fails to be written
    (``SaveError``) leaves no artifact behind, and an old one at ``path`` as it was.
    """
    given = Path(path)
    path = check_save_target(given)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"save takes a torch nn.Module, got {type(model).__name__}")
    extras = dict(extras or {})
    addable = ARTIFACT_ENTRIES - {WEIGHTS_FILE, MANIFEST_FILE}
    unknown = sorted(str(name) for name in extras if name not in addable)
    if unknown or not all(callable(w) for w in extras.values()):
        raise ConfigError(
            f"save can add only {', '.join(sorted(addable))} to an artifact, each by a function that "
            f"writes it (got {', '.join(map(repr, unknown)) or 'an entry that is not a function'})"
        )
    tensors, specs, aliases, modules = _collect(model)
    base = describe_base(model)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "base": base,
        # layers and head counts that differ from what the base config builds (structured
        # pruning); empty for every other model
        "structure": _structure(model, base),
        "recipe": recipe_of(model).to_list(),
        "modules": modules,
        "tensors": specs,
        "aliases": aliases,
        # dtypes of buffers that are rebuilt by the constructor rather than stored (rotary
        # frequencies, position ids): a cast model gets them back in the same dtype
        "rebuilt_buffers": _rebuilt_buffers(model, specs),
        # integrity: XXH3-128 of every stored tensor's bytes, and of this manifest's canonical
        # form (``digests.manifest`` left out); ``load`` verifies both
        "digests": {
            "algorithm": DIGEST_ALGORITHM,
            "tensors": {k: tensor_digest(t) for k, t in tensors.items()},
        },
    }
    try:
        # what a reader parses (tuples as lists, ``default=str`` values as strings)
        manifest = json.loads(json.dumps(manifest, default=str, allow_nan=False))
    except ValueError:
        raise ConfigError(
            "cannot save: the model's config or a method's record holds NaN or Inf numbers, "
            "which JSON cannot store"
        ) from None
    manifest["digests"]["manifest"] = manifest_digest(manifest)
    try:
        manifest_schema.validate(manifest)  # save writes only what load reads
    except ValueError as e:
        raise SaveError(f"cannot save: the manifest would be malformed: {e}") from None
    text = json.dumps(manifest, indent=1)
    try:
        _write_artifact(path, tensors, text, extras)
    except OSError as e:
        if isinstance(e, SaveError):
            raise
        raise SaveError(f"cannot write the artifact at {given}: {e.strerror or e}") from e
    return given


def check_save_target(path: str | os.PathLike) -> Path:
    """Where ``save(model, path)`` would write (the absolute path), or the ``ModelpressError``
    it would raise: recovers an interrupted save there first, then refuses anything but a
    new or empty directory or a modelpress artifact that holds nothing else, and refuses the
    current directory (or one that holds it) and the file system root."""
    given = Path(path)
    target = Path(os.path.abspath(given))
    if not target.name:
        raise ModelpressError(f"refusing to write an artifact at {given}: name a new directory")
    with contextlib.suppress(OSError):
        cwd = Path.cwd().resolve()
        resolved = target.resolve()
        if cwd == resolved or resolved in cwd.parents:
            raise ModelpressError(
                f"refusing to write an artifact at {given}: it is the current directory or holds it; "
                "name a new directory"
            )
    try:
        recover_interrupted_save(target)
        _check_target(target)
        _probe_writable(target)
    except OSError as e:
        raise SaveError(f"cannot write an artifact at {given}: {e.strerror or e}") from e
    return target


def _probe_writable(target: Path) -> None:
    """Create and remove a directory where ``save`` will build the artifact (the nearest
    existing ancestor), so that an unwritable place (``/proc``, a read-only mount) is
    refused before any work; raises ``OSError``."""
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(20, "not a directory", str(ancestor))
    probe = ancestor / f".{target.name}.tmp-{os.getpid()}-probe{secrets.token_hex(2)}"
    probe.mkdir()
    probe.rmdir()


def _write_artifact(
    path: Path,
    tensors: dict[str, torch.Tensor],
    manifest_text: str,
    extras: typing.Mapping[str, typing.Callable[[Path], object]] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.parent / f".{path.name}.tmp-{token}"
    try:
        tmp.mkdir()
        _write_file(
            tmp / WEIGHTS_FILE,
            # one metadata key: safetensors writes a map in no fixed order
            lambda p: save_file(tensors, str(p), metadata={"format": "pt"}),
        )
        _write_file(tmp / MANIFEST_FILE, lambda p: p.write_text(manifest_text))
        for name, write in (extras or {}).items():
            try:
                write(tmp / name)
            except ModelpressError:
                raise
            except Exception as e:  # whatever the writer raises (transformers: ValueError ...)
                why = (e.strerror if isinstance(e, OSError) else None) or str(e).strip() or type(e).__name__
                raise SaveError(
                    f"cannot write '{name}' into the artifact at {path}: {why.splitlines()[0][:300]}"
                ) from e
            for root, dirs, files in os.walk(tmp / name):
                for f in files:
                    with contextlib.suppress(OSError), open(os.path.join(root, f), "rb") as fh:
                        os.fsync(fh.fileno())
                for d in dirs:
                    _fsync_dir(Path(root) / d)
            _fsync_dir(tmp / name)
        _fsync_dir(tmp)
        if path.exists() and any(path.iterdir()):
            if _exchange(tmp, path):  # tmp now holds the old artifact
                _fsync_dir(path.parent)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            # no atomic exchange here: park the old artifact; a kill before the second
            # rename is undone by recover_interrupted_save
            old = path.parent / f".{path.name}.old-{token}"
            path.rename(old)
            tmp.rename(path)
            _fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.exists():
                path.rmdir()  # empty
            tmp.rename(path)
            _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def artifact_files(path: str | os.PathLike) -> list[Path]:
    """The files ``save`` wrote for an artifact (what its size on disk counts)."""
    path = Path(path)
    return [path / WEIGHTS_FILE, path / MANIFEST_FILE]


def artifact_bytes(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in artifact_files(path))


# -- load ----------------------------------------------------------------------------------
#
# Everything ``load`` reads is checked before it is used, in this order: the manifest (strict
# JSON, its schema, its digest), the tensor specs and aliases, a build of the whole model on
# the meta device (config keys that reach the network refused; config dims, compressed
# modules and format metadata cross-checked against the stored shapes; a memory estimate),
# then the tensors (each verified against its digest while it is read), then the real build.
# Any failure is one ``ArtifactError`` sentence.

MAX_MANIFEST_BYTES = 64 << 20
#: memory ``load`` may allocate beyond the files: stored bytes x factor + slack
MEMORY_FACTOR = 16
MEMORY_SLACK = 256 << 20

_REQUIRED_KEYS = tuple(k for k, f in manifest_schema.Manifest.model_fields.items() if f.is_required())


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _strict_json(text: str, where: Path) -> Any:
    """JSON as written by ``save``: duplicate keys, NaN / Infinity and numbers beyond float
    range are refused (``json`` would keep the last key, or read ``inf``)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise ArtifactError(f"{where} repeats the key '{k}' in one object")
            out[k] = v
        return out

    def constant(name: str) -> Any:
        raise ArtifactError(f"{where} holds {name}, which is not JSON")

    def number(text: str) -> float:
        v = float(text)
        if not math.isfinite(v):
            raise ArtifactError(f"{where} holds the number {text[:20]}, beyond float range")
        return v

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant, parse_float=number)
    except ArtifactError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError, too many digits, too deep
        raise ArtifactError(f"{where} is corrupt or truncated: {str(e)[:200]}") from None


def _artifact_file(path: Path, name: str) -> Path:
    """``path/name`` as a regular file inside ``path`` (a link out of the directory is refused)."""
    f = path / name
    if f.is_symlink():
        try:
            target = f.resolve(strict=True)
        except (OSError, RuntimeError):
            raise ArtifactError(f"{f} is a broken or looping link") from None
        if path.resolve() not in target.parents:
            raise ArtifactError(
                f"{f} is a link out of the artifact directory ({target}); refusing to follow it"
            )
    if not f.is_file():
        raise ArtifactError(f"{f} is missing" if not f.exists() else f"{f} is not a regular file")
    return f


def _schema_error(mpath: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{mpath} is malformed: {what}")


def _check_schema(m: dict[str, Any], mpath: Path) -> None:
    """Every section against the declared schema (modelpress/manifest_schema.py: types,
    bounds, known keys); values inside configs, args and format metadata are checked where
    they are used."""
    try:
        manifest_schema.validate(m)
    except ValueError as e:
        raise _schema_error(mpath, str(e)) from None


def _read_manifest(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest, checked: strict JSON, format name and version, section types, and (when
    it has one, ``verify``) its digest."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"no modelpress artifact at {path} (expected a directory)")
    if not (path / MANIFEST_FILE).exists() and not (path / MANIFEST_FILE).is_symlink():
        raise ArtifactError(f"{path} is not a modelpress artifact: {MANIFEST_FILE} is missing")
    mpath = _artifact_file(path, MANIFEST_FILE)
    try:
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(
                f"{mpath} is larger than {MAX_MANIFEST_BYTES >> 20} MB; not a modelpress manifest"
            )
        raw = mpath.read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read {mpath}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{mpath} is corrupt or truncated: {e}") from None
    manifest = _strict_json(text, mpath)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{mpath} is not a modelpress manifest")
    version = manifest.get("version")
    if not _is_int(version) or version != FORMAT_VERSION:
        raise ArtifactError(f"{mpath} has format version {version!r}; this modelpress reads {FORMAT_VERSION}")
    for key in _REQUIRED_KEYS:
        if key not in manifest:
            raise ArtifactError(f"{mpath} is incomplete: '{key}' is missing")
    _check_schema(manifest, mpath)
    if verify and "digests" in manifest:
        if manifest_digest(manifest) != manifest["digests"]["manifest"]:
            raise ArtifactError(f"{mpath} does not match its digest: the manifest was altered or is corrupt")
    return manifest


def _specs(manifest: dict[str, Any]) -> dict[str, tuple[Sequence[int], torch.dtype]]:
    out: dict[str, tuple[Sequence[int], torch.dtype]] = {}
    for key, spec in manifest["tensors"].items():
        dt = _DTYPES.get(spec.get("dtype")) if isinstance(spec.get("dtype"), str) else None
        if dt is None:
            raise ArtifactError(f"manifest gives tensor '{key}' an unknown dtype {spec.get('dtype')!r}")
        shape = spec.get("shape")
        if not (
            isinstance(shape, list)
            and len(shape) <= 8
            and all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape)
            and math.prod(shape) <= MAX_NUMEL
        ):
            raise ArtifactError(f"manifest gives tensor '{key}' a malformed shape {shape!r}")
        out[key] = (list(shape), dt)
    return out


def _aliases(manifest: dict[str, Any], specs: dict[str, tuple[Sequence[int], torch.dtype]]) -> dict[str, str]:
    aliases: dict[str, str] = dict(manifest["aliases"])
    for alias, target in aliases.items():
        if alias not in specs or target not in specs or target in aliases:
            raise ArtifactError(f"manifest aliases '{alias}' to '{target}', which is not stored")
        if specs[alias] != specs[target]:
            raise ArtifactError(f"manifest ties '{alias}' to '{target}', a tensor of another shape or dtype")
    return aliases


def _tensor_digests(manifest: dict[str, Any], stored: Sequence[str], mpath: Path) -> dict[str, str] | None:
    digests = manifest.get("digests")
    if digests is None:
        log.warning(
            "%s has no integrity digests (written by an older modelpress): its tensor bytes are not verified",
            mpath,
        )
        return None
    tensors: dict[str, str] = digests["tensors"]
    if set(tensors) != set(stored):
        odd = sorted(set(tensors) ^ set(stored))
        raise ArtifactError(f"{mpath}: the digests do not cover exactly the stored tensors ({odd[:3]})")
    return tensors


def _read_tensors(
    wpath: Path,
    specs: dict[str, tuple[Sequence[int], torch.dtype]],
    digests: dict[str, str] | None = None,
    *,
    header_only: bool = False,
    algorithm: str = DIGEST_ALGORITHM,
) -> dict[str, torch.Tensor]:
    """The stored tensors (mmapped), each checked against the manifest's shape and dtype and,
    with ``digests``, hashed and compared with its recorded digest (which pages them in).
    ``header_only``: check the names, shapes and dtypes of the safetensors header, read
    nothing."""
    try:
        with safe_open(str(wpath), framework="pt") as f:
            keys = set(f.keys())
            missing, extra = sorted(set(specs) - keys), sorted(keys - set(specs))
            if missing or extra:
                raise ArtifactError(
                    f"{wpath} does not match its manifest: missing {missing[:3]}, unexpected {extra[:3]}"
                )
            out = {}
            for key, (shape, dtype) in specs.items():
                sl = f.get_slice(key)
                got_shape, got_dtype = list(sl.get_shape()), sl.get_dtype()
                if got_shape != list(shape) or _DTYPES.get(_st_dtype(got_dtype)) != dtype:
                    raise ArtifactError(
                        f"tensor '{key}' is {_st_dtype(got_dtype)}{got_shape} in {wpath.name} "
                        f"but {_dtype_name(dtype)}{shape} in the manifest"
                    )
                if header_only:
                    continue
                t = f.get_tensor(key)
                if digests is not None:
                    if tensor_digest(t, algorithm) != digests[key]:
                        raise ArtifactError(
                            f"tensor '{key}' in {wpath} does not match its digest: "
                            "the file is corrupt or was altered"
                        )
                out[key] = t
            return out
    except ArtifactError:
        raise
    except Exception as e:
        raise ArtifactError(f"{wpath} is corrupt or truncated: {str(e)[:200]}") from None


_ST = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "U8": "uint8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "BOOL": "bool",
}


def _st_dtype(name: str) -> str:
    return _ST.get(name, name)


@contextlib.contextmanager
def _as_artifact_error(where: str) -> Iterator[None]:
    """What a bad manifest value makes library code raise, as one ``ArtifactError``."""
    try:
        yield
    except ArtifactError:
        raise
    except ConfigError as e:  # an unknown registered name, a config field out of range
        raise ArtifactError(f"{where}: {e}") from None
    except (
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        AttributeError,
        ArithmeticError,
        AssertionError,
        MemoryError,
    ) as e:
        raise ArtifactError(
            f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
        ) from None
    except RuntimeError as e:
        raise ArtifactError(
            f"{where}: {str(e).splitlines()[0] if str(e) else 'RuntimeError'}"[:400]
        ) from None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        raise ArtifactError(f"manifest names module '{name}', which the base model does not have") from None
    setattr(parent, child, new)


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = key.rpartition(".")
    try:
        return (model.get_submodule(mod_name) if mod_name else model), attr
    except AttributeError:
        raise ArtifactError(f"manifest names tensor '{key}', which the model does not have") from None


def _same(a: Any, b: Any) -> bool:
    """Conv arguments compare as lists (tuples in a module, lists in JSON)."""
    norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731
    return norm(a) == norm(b)


def _check_replacement(name: str, old: nn.Module, new: nn.Module, *, restructured: bool = False) -> None:
    """A compressed module must stand where the base (or the ``structure`` entry) has a
    layer of the very same dims: its formats' logical shapes equal the replaced layer's
    weights, its bias and its embedding / conv arguments match.

    ``restructured``: the model was structurally rewritten (a non-empty ``structure``) and
    then compressed; the ``structure`` entry records plain layers only, so a compressed
    layer's dims may differ from what the base builds there and only its rank is compared
    (its formats' own checks still tie their tensors to their logical shapes)."""
    if isinstance(old, (CompressedModule, CompressedTensor)):
        raise ArtifactError(f"manifest replaces '{name}', which is already a compressed module")
    for attr in getattr(new, "format_attrs", ()):
        fmt, ref = getattr(new, attr, None), getattr(old, attr, None)
        if not isinstance(fmt, CompressedTensor) or not isinstance(ref, torch.Tensor):
            raise ArtifactError(f"manifest compresses '{name}.{attr}', which the base model does not have")
        if len(fmt.shape) != len(ref.shape) or (not restructured and tuple(fmt.shape) != tuple(ref.shape)):
            raise ArtifactError(
                f"manifest gives '{name}.{attr}' the shape {list(fmt.shape)}, but the base model "
                f"(its config and structure) builds {list(ref.shape)}"
            )
    if hasattr(old, "bias") and hasattr(new, "bias") and (old.bias is None) != (new.bias is None):
        raise ArtifactError(
            f"manifest gives '{name}' a bias where the base model has {'none' if old.bias is None else 'one'}"
        )
    if isinstance(old, nn.Embedding) and getattr(new, "padding_idx", old.padding_idx) != old.padding_idx:
        raise ArtifactError(f"manifest gives '{name}' another padding index than the base model")
    if isinstance(old, nn.modules.conv._ConvNd):
        conv = getattr(new, "conv", None)
        if not isinstance(conv, dict):
            raise ArtifactError(
                f"manifest replaces the convolution '{name}' by a module without conv arguments"
            )
        for arg in ("stride", "padding", "dilation", "groups"):
            if arg not in conv or not _same(conv[arg], getattr(old, arg)):
                raise ArtifactError(
                    f"manifest gives '{name}' {arg}={conv.get(arg)!r}, "
                    f"the base model has {getattr(old, arg)!r}"
                )


def _tensor_bytes(module: nn.Module) -> int:
    """Bytes of every tensor a model holds (buffers, and tensors kept as plain attributes)."""
    seen: set[int] = set()
    total = 0
    for m in module.modules():
        tensors = [b for b in m._buffers.values() if b is not None]
        tensors += [v for v in vars(m).values() if isinstance(v, torch.Tensor)]
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def _assemble(
    manifest: dict[str, Any],
    specs: dict[str, Any],
    mpath: Path,
    *,
    meta: bool,
    into: nn.Module | None = None,
) -> tuple[nn.Module, int]:
    """The base model with the ``structure`` applied and the compressed modules in place
    (their fields empty). ``meta``: everything on the meta device. Also returns the bytes of
    the tensors the base constructor allocates (its buffers) when built for real.
    ``into``: the user's fresh instance stands for the base (a meta copy of it with ``meta``,
    else the instance itself, rewritten in place)."""
    if into is not None:
        model = _meta_clone(into) if meta else into
    else:
        # a generous bound on the modules a base of this many tensors has (parameter-free
        # layers included): a config asking for millions of layers is refused while building
        model = build_base(manifest["base"], meta=meta, max_modules=16 * len(specs) + 1024)
    built = _tensor_bytes(model)
    with _as_artifact_error(f"{mpath}: 'structure'"):
        apply_structure(model, manifest.get("structure"))  # absent in artifacts of older versions
    structure = manifest.get("structure")
    restructured = isinstance(structure, dict) and bool(structure.get("modules"))
    for name, entry in manifest["modules"].items():
        where = f"{mpath}: module '{name}'"
        with _as_artifact_error(where):
            cls = MODULES.get(entry["class"])
            try:
                old = model.get_submodule(name)
            except AttributeError:
                raise ArtifactError(
                    f"manifest names module '{name}', which the base model does not have"
                ) from None
            prefix = name + "."
            mspecs = {k[len(prefix) :]: v for k, v in specs.items() if k.startswith(prefix)}
            try:
                new = cls.from_manifest(entry, mspecs)
            except ArtifactError as e:
                raise ArtifactError(f"{where}: {e}") from None
            _check_replacement(name, old, new, restructured=restructured)
            _set_submodule(model, name, new)
    return model, built


def _precheck(
    manifest: dict[str, Any],
    specs: dict[str, tuple[Sequence[int], torch.dtype]],
    path: Path,
    mpath: Path,
    into: nn.Module | None = None,
) -> None:
    """Build the whole model on the meta device (nothing allocated) and refuse, before any
    real allocation: a model whose tensors differ from the stored ones (config dims such as
    ``max_position_embeddings`` or ``vocab_size`` against the embedding rows), and one whose
    construction and decoded formats would need more memory than the files justify."""
    model, built = _assemble(manifest, specs, mpath, meta=True, into=into)
    state = model.state_dict(keep_vars=True)
    missing, extra = sorted(set(state) - set(specs)), sorted(set(specs) - set(state))
    if missing or extra:
        raise ArtifactError(
            f"{path} does not fit its base model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for key, t in state.items():
        shape = list(specs[key][0])
        if list(t.shape) != shape:
            raise ArtifactError(
                f"{path} does not fit its base model: the manifest's config and structure build "
                f"'{key}' as {list(t.shape)}, the artifact stores {shape}"
            )
    for name, m in model.named_modules():  # attention heads x head size = the projections' width
        heads, size, width = (
            getattr(m, a, None) for a in ("num_attention_heads", "attention_head_size", "all_head_size")
        )
        if (
            isinstance(heads, int)
            and isinstance(size, int)
            and isinstance(width, int)
            and (heads * size != width or heads <= 0 or size <= 0)
        ):
            raise ArtifactError(
                f"{path} does not fit its base model: '{name}' has {heads} heads of {size} "
                f"but {width} attention features (config and structure disagree)"
            )
    stored = sum(f.stat().st_size for f in artifact_files(path) if f.is_file())
    decoded = sum(m.load_nbytes() for m in model.modules() if isinstance(m, CompressedTensor))
    limit = MEMORY_FACTOR * stored + MEMORY_SLACK
    if built + decoded > limit:
        raise ArtifactError(
            f"{path}: loading would allocate about {(built + decoded) / 1e6:,.0f} MB (the base model's "
            f"buffers {built / 1e6:,.0f} MB, decoded formats {decoded / 1e6:,.0f} MB) for "
            f"{stored / 1e6:,.1f} MB of files; refusing more than {MEMORY_FACTOR} x the files + "
            f"{MEMORY_SLACK >> 20} MB (check the config's sizes)"
        )


def _install_formats(
    model: nn.Module, state: dict[str, torch.Tensor], aliases: dict[str, str], path: Path
) -> set[str]:
    """Hand each format the stored tensors of its fields (``from_storage``) and put its
    in-memory tensors into ``state`` for ``load_state_dict``. A format whose every field is
    an alias of one other format's fields (a tied LM head) becomes that very format object,
    as it was in memory before ``save``. Returns the prefixes of such shared formats."""
    formats = {n: m for n, m in model.named_modules() if n and isinstance(m, CompressedTensor)}
    loaded: dict[str, CompressedTensor] = {}
    shared: set[str] = set()
    for prefix, fmt in formats.items():
        keys = [k for k in state if k.rpartition(".")[0] == prefix]
        owners = {aliases[k].rpartition(".")[0] for k in keys if k in aliases}
        if keys and all(k in aliases for k in keys) and len(owners) == 1:
            (owner,) = owners
            same_fields = {k.rpartition(".")[2] for k in keys} == {
                k.rpartition(".")[2] for k in state if k.rpartition(".")[0] == owner
            }
            if owner in loaded and same_fields and type(loaded[owner]) is type(fmt):
                _set_submodule(model, prefix, loaded[owner])
                shared.add(prefix)
                for k in keys:
                    buf = loaded[owner]._buffers[k.rpartition(".")[2]]
                    assert buf is not None
                    state[k] = buf
                continue
        stored = {k.rpartition(".")[2]: state[k] for k in keys}
        try:
            fmt.validate_stored(stored)
            fmt.from_storage(stored)
            fmt.validate_loaded()
        except (ValueError, RuntimeError, TypeError, IndexError, ArithmeticError) as e:
            raise ArtifactError(
                f"{path}: the stored tensors of '{prefix}' do not fit its format: {e}"
            ) from None
        loaded[prefix] = fmt
        for field, t in fmt.named_buffers(recurse=False):
            state[f"{prefix}.{field}"] = t
    return shared


def load(
    path: str | os.PathLike, *, model: nn.Module | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild a model saved by ``save``; fails with one clear ``ArtifactError`` sentence on
    a bad artifact (see docs/artifact-format.md for what is checked, in which order).

    Reads only JSON and safetensors, never reaches the network, verifies every tensor's
    digest while reading it, and checks config dims, format metadata and the memory it will
    need against the stored tensors before allocating anything.

    ``model``: a fresh, uncompressed instance of the saved model's class, built by the
    caller (required for a user's own ``nn.Module``, whose class modelpress never imports;
    optional for the others, instead of building the base from its config). The manifest's
    ``structure`` and compressed modules are applied to it and the stored tensors assigned
    to it, in place, after every check has passed; it is returned."""
    path = Path(path)
    dev = _device(device)
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"load's model= takes a fresh nn.Module instance, got {type(model).__name__}")
    if model is not None and (
        recipe_of(model) or any(isinstance(m, (CompressedModule, CompressedTensor)) for m in model.modules())
    ):
        raise ConfigError(
            "load's model= takes a fresh, uncompressed instance (as its constructor builds it); "
            "this one is already compressed"
        )
    try:
        recover_interrupted_save(path)
    except OSError as e:
        raise ArtifactError(
            f"cannot tidy up after an interrupted save at {path}: {e.strerror or e}"
        ) from None
    manifest = _read_manifest(path)
    mpath = path / MANIFEST_FILE
    base = manifest["base"]
    if model is None and base.get("library") == USER_LIBRARY:
        raise ArtifactError(f"{path}: {user_base_error(str(base.get('class')))}")
    if (
        model is not None
        and base.get("library") == USER_LIBRARY
        and class_path(type(model)) != base.get("class")
    ):
        log.warning(
            "%s was saved from a %s, loading into a %s (the class is recorded as information only; "
            "the stored tensors must fit)",
            path,
            base.get("class"),
            class_path(type(model)),
        )
    specs = _specs(manifest)
    aliases = _aliases(manifest, specs)
    stored_specs = {k: v for k, v in specs.items() if k not in aliases}
    digests = _tensor_digests(manifest, list(stored_specs), mpath)
    wpath = _artifact_file(path, WEIGHTS_FILE)
    with _as_artifact_error(f"{mpath}: 'recipe'"):
        recipe = Recipe.from_list(manifest["recipe"])
    _read_tensors(wpath, stored_specs, header_only=True)  # the file holds what the manifest says
    _precheck(manifest, specs, path, mpath, into=model)
    # Each tensor is hashed as it is read, on this thread: hashing the mmapped bytes pages
    # them in, which the first forward would do anyway, so a loaded-and-used model pays only
    # the hashing itself (XXH3, a few ms per 100 MB). Hashing on other threads while the
    # model is built was measured slower on 2 cores (RESULTS §16). Every tensor is verified
    # before anything decodes or uses one.
    tensors = _read_tensors(wpath, stored_specs, digests, algorithm=_digest_algorithm(manifest))
    model, _ = _assemble(manifest, specs, mpath, meta=False, into=model)
    state = dict(tensors)
    for alias, target in aliases.items():
        state[alias] = tensors[target]
    shared = _install_formats(model, state, aliases, path)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path} does not fit its base model: {str(e).splitlines()[0]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ArtifactError(
            f"{path} does not fit its base model: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    # Tied tensors: make the alias the very same Parameter/buffer object as its target.
    for alias, target in aliases.items():
        if alias.rpartition(".")[0] in shared:
            continue  # a tied module's format: the very same object already
        (m_a, a_name), (m_t, t_name) = _owner(model, alias), _owner(model, target)
        if a_name in m_a._parameters and t_name in m_t._parameters:
            m_a._parameters[a_name] = m_t._parameters[t_name]
        elif a_name in m_a._buffers and t_name in m_t._buffers:
            m_a._buffers[a_name] = m_t._buffers[t_name]
        else:
            raise ArtifactError(f"manifest ties '{alias}' to '{target}', a parameter to a buffer")
    for name, dtype_name in manifest.get("rebuilt_buffers", {}).items():
        dt = _DTYPES.get(dtype_name)
        if dt is None:
            raise ArtifactError(f"manifest gives the rebuilt buffer '{name}' an unknown dtype {dtype_name!r}")
        with contextlib.suppress(ArtifactError):  # a buffer an older version rebuilt
            mod, attr = _owner(model, name)
            buf = mod._buffers.get(attr)
            if buf is not None and buf.dtype != dt:
                if buf.is_floating_point() != dt.is_floating_point:
                    raise ArtifactError(f"manifest gives the rebuilt buffer '{name}' the dtype {dtype_name}")
                mod._buffers[attr] = buf.to(dt)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if leftover:
        raise ArtifactError(f"{path} leaves tensors without data: {leftover[:3]}")
    setattr(model, _RECIPE_ATTR, recipe)
    return model.to(dev).eval()
