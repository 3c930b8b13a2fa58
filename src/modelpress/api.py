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
import json
import logging
import os
import secrets
import shutil
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import methods as _methods  # noqa: F401 - registers the built-in methods
from .errors import ArtifactError, ConfigError, ModelpressError
from .formats.base import CompressedTensor
from .methods.base import HANDLERS, PRESETS, CompressContext, MethodConfig
from .models import lenet as _lenet  # noqa: F401 - registers the built-in architectures
from .models.architectures import apply_structure, build_base, describe_base, describe_structure
from .nn.base import MODULES, CompressedModule
from .recipe import Recipe

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "compress",
    "compression_notes",
    "load",
    "recipe_of",
    "recover_interrupted_save",
    "save",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "modelpress"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
_RECIPE_ATTR = "_modelpress_recipe"
_NOTES_ATTR = "_modelpress_notes"

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
) -> nn.Module:
    """Apply a recipe (or one method config, or a benchmark method name) to ``model``.

    The input model is left untouched unless ``inplace=True``. ``data`` is the calibration /
    training data a method needs (anything with ``batches`` and ``loss``, e.g. a task
    adapter; ``data.calibration.CalibrationData``), ``teacher`` the teacher of distillation
    methods. ``device``: where the methods run (the model and teacher are moved there
    first; the result stays there; default: the CPU). Returns the compressed model;
    ``save`` stores it, ``compression_notes(model)`` gives what the methods noted.
    """
    recipe = _as_recipe(recipe_or_config)
    previous = recipe_of(model)
    notes = compression_notes(model)
    dev = _device(device)
    if not inplace:
        model = copy.deepcopy(model)
    model = model.to(dev)
    if teacher is not None:
        teacher = teacher.to(dev)
    ctx = CompressContext(data=data, teacher=teacher, device=dev, progress=progress)
    applied: list[MethodConfig] = []
    for config in recipe:
        handler = HANDLERS.get(type(config))
        if handler is None:
            raise ConfigError(f"method '{config.name}' has no registered handler")
        log.info("applying %s", config.name)
        ctx.recorded = None
        model = handler(model, config, ctx)
        applied.append(ctx.recorded or config)  # a handler may record its resolved config
    setattr(model, _RECIPE_ATTR, previous + Recipe(applied))
    setattr(model, _NOTES_ATTR, notes + ctx.notes)
    return model.eval()


# -- save ----------------------------------------------------------------------------------


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


# What a directory written by ``save`` (and ``modelpress compress``: tokenizer/) may hold;
# anything else in it is the user's, and ``save`` refuses to replace such a directory.
ARTIFACT_ENTRIES = frozenset({WEIGHTS_FILE, MANIFEST_FILE, "tokenizer"})


def _is_artifact(path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME


def _check_target(path: Path) -> None:
    """``save`` writes into a new or empty directory, or replaces a modelpress artifact
    that holds nothing else; anything else is refused, never deleted."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise ModelpressError(f"refusing to write an artifact at {path}: it exists and is not a directory")
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return
    if not _is_artifact(path):
        raise ModelpressError(
            f"refusing to overwrite {path}: it is not empty and not a modelpress artifact "
            f"(holds {', '.join(entries[:5])}{' ...' if len(entries) > 5 else ''}); choose another directory"
        )
    foreign = [e for e in entries if e not in ARTIFACT_ENTRIES]
    if foreign:
        raise ModelpressError(
            f"refusing to overwrite the artifact at {path}: it also holds files modelpress did not "
            f"write ({', '.join(foreign[:5])}); move them away or choose another directory"
        )


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


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` to the directory ``path`` (``model.safetensors`` + ``manifest.json``).

    ``path`` must be new, empty, or a modelpress artifact holding nothing else (which is
    replaced); anything else is refused and left as it is. The artifact is built in a
    temporary sibling directory, synced, and swapped in by one atomic rename (Linux: an
    exchange of the two directories), so a kill at any instant leaves the old complete
    artifact or the new one at ``path``; leftovers of a killed save are cleaned (or the old
    artifact recovered) by the next ``save`` or ``load``.
    """
    path = Path(path)
    recover_interrupted_save(path)
    _check_target(path)
    tensors, specs, aliases, modules = _collect(model)
    base = describe_base(model)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "base": base,
        # layers and head counts that differ from what the base config builds (structured
        # pruning); empty for every other model
        "structure": describe_structure(model, base),
        "recipe": recipe_of(model).to_list(),
        "modules": modules,
        "tensors": specs,
        "aliases": aliases,
        # dtypes of buffers that are rebuilt by the constructor rather than stored (rotary
        # frequencies, position ids): a cast model gets them back in the same dtype
        "rebuilt_buffers": _rebuilt_buffers(model, specs),
    }
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
        _write_file(tmp / MANIFEST_FILE, lambda p: p.write_text(json.dumps(manifest, indent=1, default=str)))
        _fsync_dir(tmp)
        if path.exists() and any(path.iterdir()):
            if _exchange(tmp, path):  # tmp now holds the old artifact
                _fsync_dir(path.parent)
                shutil.rmtree(tmp, ignore_errors=True)
                return path
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
    return path


def artifact_files(path: str | os.PathLike) -> list[Path]:
    """The files ``save`` wrote for an artifact (what its size on disk counts)."""
    path = Path(path)
    return [path / WEIGHTS_FILE, path / MANIFEST_FILE]


def artifact_bytes(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in artifact_files(path))


# -- load ----------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / MANIFEST_FILE
    if not path.is_dir():
        raise ArtifactError(f"no modelpress artifact at {path} (expected a directory)")
    if not mpath.is_file():
        raise ArtifactError(f"{path} is not a modelpress artifact: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath} is corrupt or truncated: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{mpath} is not a modelpress manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{mpath} has format version {manifest.get('version')}; this modelpress reads {FORMAT_VERSION}"
        )
    for key in ("base", "tensors", "modules", "aliases", "recipe"):
        if key not in manifest:
            raise ArtifactError(f"{mpath} is incomplete: '{key}' is missing")
    return manifest


def _specs(manifest: dict[str, Any]) -> dict[str, tuple[Sequence[int], torch.dtype]]:
    out: dict[str, tuple[Sequence[int], torch.dtype]] = {}
    for key, spec in manifest["tensors"].items():
        dt = _DTYPES.get(str(spec.get("dtype")))
        if dt is None:
            raise ArtifactError(f"manifest gives tensor '{key}' an unknown dtype '{spec.get('dtype')}'")
        out[key] = ([int(s) for s in spec["shape"]], dt)
    return out


def _read_tensors(
    wpath: Path, specs: dict[str, tuple[Sequence[int], torch.dtype]]
) -> dict[str, torch.Tensor]:
    if not wpath.is_file():
        raise ArtifactError(f"{wpath} is missing")
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
                out[key] = f.get_tensor(key)
            return out
    except ArtifactError:
        raise
    except Exception as e:
        raise ArtifactError(f"{wpath} is corrupt or truncated: {e}") from None


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


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        raise ArtifactError(f"manifest names module '{name}', which the base model does not have") from None
    setattr(parent, child, new)


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = key.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


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
        try:
            fmt.from_storage({k.rpartition(".")[2]: state[k] for k in keys})
        except (ValueError, RuntimeError) as e:
            raise ArtifactError(
                f"{path}: the stored tensors of '{prefix}' do not fit its format: {e}"
            ) from None
        loaded[prefix] = fmt
        for field, t in fmt.named_buffers(recurse=False):
            state[f"{prefix}.{field}"] = t
    return shared


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by ``save``; fails with one clear sentence on a bad artifact."""
    path = Path(path)
    recover_interrupted_save(path)
    manifest = _read_manifest(path)
    specs = _specs(manifest)
    aliases: dict[str, str] = dict(manifest["aliases"])
    stored_specs = {k: v for k, v in specs.items() if k not in aliases}
    tensors = _read_tensors(path / WEIGHTS_FILE, stored_specs)
    try:
        recipe = Recipe.from_list(manifest["recipe"])
        model = build_base(manifest["base"])
        apply_structure(model, manifest.get("structure"))  # absent in artifacts of older versions
        for name, entry in manifest["modules"].items():
            cls = MODULES.get(str(entry.get("class")))
            prefix = name + "."
            mspecs = {k[len(prefix) :]: v for k, v in specs.items() if k.startswith(prefix)}
            _set_submodule(model, name, cls.from_manifest(entry, mspecs))
    except ConfigError as e:  # unknown registered name inside the manifest
        raise ArtifactError(f"{path / MANIFEST_FILE}: {e}") from None
    state = dict(tensors)
    for alias, target in aliases.items():
        if target not in tensors:
            raise ArtifactError(f"manifest aliases '{alias}' to '{target}', which is not stored")
        state[alias] = tensors[target]
    shared = _install_formats(model, state, aliases, path)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:
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
        if a_name in m_a._parameters:
            m_a._parameters[a_name] = m_t._parameters.get(t_name)
        else:
            m_a._buffers[a_name] = m_t._buffers.get(t_name)
    for name, dtype_name in manifest.get("rebuilt_buffers", {}).items():
        dt = _DTYPES.get(str(dtype_name))
        with contextlib.suppress(AttributeError):
            mod, attr = _owner(model, name)
            buf = mod._buffers.get(attr)
            if buf is not None and dt is not None and buf.dtype != dt:
                mod._buffers[attr] = buf.to(dt)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if leftover:
        raise ArtifactError(f"{path} leaves tensors without data: {leftover[:3]}")
    setattr(model, _RECIPE_ATTR, recipe)
    return model.to(device).eval()
