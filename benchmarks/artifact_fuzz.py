"""Fuzzing modelpress artifacts: corrupted bytes and manifests, and ``kill -9`` during save.

Artifacts of every format family are built on tiny models (affine int8 with tied
embeddings and int4, codebook packed / zstd with a mask / int8 codebooks / conv kernels,
product quantization, sparse, fp16, a structurally pruned BERT, binary (grouped scales;
XNOR), ternary (base-3 and 2-bit packing), low-rank factors). Each case mutates one
artifact with a seeded mutator and loads it:

- ``raw`` cases change the files as a disk, a copy or a careless edit would: random bit
  flips (anywhere, in the tensor data, in the manifest), truncations, appended bytes, the
  data offsets of two tensors swapped in the safetensors header, header fields edited, and
  manifest mutations (deleted keys, wrong types, huge / negative / NaN / Inf values, unknown
  names, duplicated keys). Each must load with outputs identical to the original, or raise
  ``ArtifactError`` -- never another exception, a hang or different outputs.
- ``sealed`` cases make the same manifest mutations and record the manifest's digest again
  (a deliberate edit, or a writer with a bug): they reach the checks behind the digest
  (schema, format metadata against the stored bytes, config dims against the tensors, the
  memory estimate, the network-key check). Each must raise ``ArtifactError`` or load a model
  whose forward runs; a loaded model may compute something else (an edited epsilon is a
  different model, not a corrupt one), which is counted, not failed.

Then ``--kills`` trials of ``kill -9`` at a random instant of a save loop: the path must
hold one complete artifact (the old or the new model), and the next save must leave no
leftovers. Prints the counts::

    python benchmarks/artifact_fuzz.py --cases 10000 --kills 60 --seed 0

``tests/test_artifact_fuzz.py`` runs a short version of the same engine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

WEIGHTS, MANIFEST = "model.safetensors", "manifest.json"


# -- the artifacts -------------------------------------------------------------------------


@dataclass
class Family:
    name: str
    path: Path
    inputs: dict[str, torch.Tensor]
    weights: bytes = b""
    manifest: bytes = b""
    reference: torch.Tensor | None = None


def _bert(vocab: int = 120):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(cfg).eval()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def _lenet():
    from modelpress.models.lenet import LeNet300100

    torch.manual_seed(0)
    return LeNet300100(hidden=(32, 16)).eval()


def _lenet5():
    from modelpress.models.lenet import LeNet5

    torch.manual_seed(0)
    return LeNet5().eval()


def _recipes() -> dict[str, tuple[Callable[[], torch.nn.Module], Any, str]]:
    from modelpress.methods.base import CONFIGS

    c = CONFIGS.get
    return {
        "affine-int8-tied": (_llama, "int8-dynamic", "ids"),
        "affine-int8": (_bert, "int8-dynamic", "ids"),
        "affine-int4": (_lenet, [c("weight-only")(bits=4, group_size=16)], "image"),
        "affine-int3": (_lenet, [c("weight-only")(bits=3, group_size=16)], "image"),
        "codebook-packed": (_lenet, [c("kmeans")(bits=4, granularity="channel", max_iter=5)], "image"),
        "codebook-zstd-mask": (
            _lenet,
            [
                c("prune")(sparsity=0.8, storage="dense"),
                c("kmeans")(bits=5, coding="zstd", sparsity="keep", max_iter=5),
            ],
            "image",
        ),
        "codebook-int8cb": (
            _lenet,
            [c("kmeans")(bits=4, granularity="channel", codebook_dtype="int8", max_iter=5)],
            "image",
        ),
        "codebook-conv": (_lenet5, [c("kmeans")(bits=4, granularity="channel", max_iter=3)], "image5"),
        "nf4": (_bert, "nf4", "ids"),
        "pq": (_lenet, [c("pq")(bits=4, dim=4, max_iter=3)], "image"),
        "sparse-bitmask": (_bert, [c("prune")(sparsity=0.5, index="bitmask")], "ids"),
        "sparse-relative": (_lenet, [c("prune")(sparsity=0.95, index="relative4")], "image"),
        "fp16": (_bert, "fp16", "ids"),
        "structured": (_bert, [c("prune-heads")(fraction=0.5), c("prune-ffn")(fraction=0.5)], "ids"),
        "binary-group": (_lenet, [c("binary")(scheme="bwn", group_size=8)], "image"),
        "binary-xnor": (_bert, [c("binary")(scheme="xnor")], "ids"),
        "ternary-base3": (_lenet, [c("ternary")(packing="base3")], "image"),
        "ternary-2bit-tensor": (_bert, [c("ternary")(packing="2bit", granularity="tensor")], "ids"),
        "lowrank": (_bert, [c("lowrank")(reduction=0.5)], "ids"),
    }


def _inputs(kind: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    if kind == "ids":
        return {"input_ids": torch.randint(0, 90, (2, 7), generator=g)}
    if kind == "image5":
        return {"x": torch.randn(2, 1, 28, 28, generator=g)}
    return {"x": torch.randn(2, 1, 28, 28, generator=g)}


def _outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def build_families(work: Path, only: list[str] | None = None) -> list[Family]:
    """Save one artifact per family under ``work`` and record the reference outputs."""
    import modelpress as mp

    out = []
    for name, (make, recipe, kind) in _recipes().items():
        if only and name not in only:
            continue
        model = mp.compress(make(), recipe, progress=False)
        path = mp.save(model, work / "base" / name)
        fam = Family(name, path, _inputs(kind))
        fam.weights = (path / WEIGHTS).read_bytes()
        fam.manifest = (path / MANIFEST).read_bytes()
        fam.reference = _outputs(mp.load(path), fam.inputs)
        out.append(fam)
    return out


# -- the mutator ---------------------------------------------------------------------------


def _flip(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None, n: int | None = None) -> bytes:
    b = bytearray(data)
    hi = len(b) if hi is None else hi
    if hi <= lo:
        return data
    for _ in range(n or rng.choice((1, 1, 1, 2, 3, 8))):
        b[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(b)


def _split_header(weights: bytes) -> tuple[dict[str, Any], int]:
    (n,) = struct.unpack("<Q", weights[:8])
    return json.loads(weights[8 : 8 + n]), n


def _with_header(weights: bytes, header: dict[str, Any], n: int) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) <= n:  # keep the data where it is: pad the header as safetensors does
        text += b" " * (n - len(text))
        return weights[:8] + text + weights[8 + n :]
    return struct.pack("<Q", len(text)) + text + weights[8 + n :]


def _offset_swap(weights: bytes, rng: random.Random) -> tuple[bytes, str]:
    header, n = _split_header(weights)
    keys = [k for k in header if k != "__metadata__"]
    by_size: dict[int, list[str]] = {}
    for k in keys:
        lo, hi = header[k]["data_offsets"]
        by_size.setdefault(hi - lo, []).append(k)
    pairs = [v for v in by_size.values() if len(v) > 1]
    if pairs and rng.random() < 0.8:
        a, b = rng.sample(rng.choice(pairs), 2)
    else:
        a, b = rng.sample(keys, 2)
    header[a]["data_offsets"], header[b]["data_offsets"] = (
        header[b]["data_offsets"],
        header[a]["data_offsets"],
    )
    return _with_header(weights, header, n), f"swap offsets {a} <-> {b}"


def _header_edit(weights: bytes, rng: random.Random) -> tuple[bytes, str]:
    header, n = _split_header(weights)
    key = rng.choice([k for k in header if k != "__metadata__"])
    op = rng.choice(("dtype", "shape", "offset", "drop", "rename", "meta"))
    if op == "dtype":
        header[key]["dtype"] = rng.choice(("F32", "F16", "I8", "U8", "BF16", "I64", "BOOL"))
    elif op == "shape":
        shape = header[key]["shape"]
        if shape:
            i = rng.randrange(len(shape))
            shape[i] = max(0, shape[i] + rng.choice((-1, 1, 2)))
        else:
            header[key]["shape"] = [1]
    elif op == "offset":
        lo, hi = header[key]["data_offsets"]
        header[key]["data_offsets"] = [lo, hi + rng.choice((-1, 1, 4))]
    elif op == "drop":
        del header[key]
    elif op == "rename":
        header[key + "x"] = header.pop(key)
    else:
        header["__metadata__"] = {"format": "pt", "x": "y"}
    return _with_header(weights, header, n), f"header {op} {key}"


def _paths(obj: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


_DUP = "__fuzz_duplicate_key__"

# where manifest mutations land: the format metadata, shapes and config dims are where the
# checks behind the digest matter most
_WEIGHTED_SECTIONS = {"modules": 4, "base": 3, "tensors": 2, "structure": 2, "aliases": 1, "digests": 1}


def _manifest_mutation(manifest: bytes, rng: random.Random) -> tuple[dict | None, str, bool]:
    """A mutated manifest object (or None when the duplicate-key op rewrote the text) and
    a description; the bool says whether the text needs a duplicated key."""
    m = json.loads(manifest)
    paths = [p for p in _paths(m) if p]
    weights = [_WEIGHTED_SECTIONS.get(str(p[0]), 1) for p in paths]
    path = rng.choices(paths, weights)[0]
    parent, key = _get(m, path[:-1]), path[-1]
    old = parent[key]
    op = rng.choice(
        (
            "delete",
            "type-str",
            "type-list",
            "type-dict",
            "type-null",
            "type-bool",
            "huge",
            "huger",
            "negative",
            "nan",
            "inf",
            "float",
            "plus-one",
            "minus-one",
            "zero",
            "unknown-name",
            "rename-key",
            "duplicate-key",
        )
    )
    desc = f"{op} at {'/'.join(map(str, path))}"
    if op == "delete":
        if isinstance(parent, list):
            parent.pop(key)
        else:
            del parent[key]
    elif op == "type-str":
        parent[key] = str(old) if not isinstance(old, str) else 7
    elif op == "type-list":
        parent[key] = [old]
    elif op == "type-dict":
        parent[key] = {"v": old}
    elif op == "type-null":
        parent[key] = None
    elif op == "type-bool":
        parent[key] = True
    elif op == "huge":
        parent[key] = 2**26
    elif op == "huger":
        parent[key] = rng.choice((10**12, 2**62, 2**64 + 1))
    elif op == "negative":
        parent[key] = -old if isinstance(old, (int, float)) and not isinstance(old, bool) and old else -1
    elif op == "nan":
        parent[key] = float("nan")
    elif op == "inf":
        parent[key] = rng.choice((float("inf"), float("-inf")))
    elif op == "float":
        parent[key] = (old + 0.5) if isinstance(old, (int, float)) and not isinstance(old, bool) else 0.5
    elif op in ("plus-one", "minus-one", "zero"):
        delta = {"plus-one": 1, "minus-one": -1, "zero": None}[op]
        if isinstance(old, bool) or not isinstance(old, (int, float)):
            parent[key] = 0 if delta is None else 1
        else:
            parent[key] = 0 if delta is None else old + delta
    elif op == "unknown-name":
        parent[key] = "zzz-unknown" if isinstance(old, str) or not isinstance(old, (dict, list)) else old
        if isinstance(old, dict):
            old["zzz-unknown"] = 1
        if isinstance(old, list):
            old.append("zzz-unknown")
    elif op == "rename-key":
        if isinstance(parent, dict):
            parent[str(key) + "-zzz"] = parent.pop(key)
        else:
            parent[key] = "zzz"
    elif op == "duplicate-key":
        if isinstance(parent, dict):
            parent[_DUP + str(key)] = "zzz" if not isinstance(old, str) else 1
            return m, desc, True
        parent[key] = "zzz"
    return m, desc, False


def _dump_manifest(m: dict, dup: bool) -> bytes:
    text = json.dumps(m, indent=1)
    if dup:
        text = text.replace(f'"{_DUP}', '"')
    return text.encode()


def _reseal(m: dict) -> None:
    from modelpress.api import manifest_digest

    d = m.get("digests")
    if isinstance(d, dict) and "manifest" in d:
        with contextlib.suppress(Exception):
            d["manifest"] = manifest_digest(m)


RAW_KINDS = (
    "flip-any",
    "flip-data",
    "flip-header",
    "flip-manifest",
    "truncate-weights",
    "truncate-manifest",
    "append",
    "offset-swap",
    "header-edit",
    "manifest-mutation",
)


def mutate(fam: Family, rng: random.Random, mode: str) -> tuple[bytes, bytes, str]:
    """(weights, manifest, description) of one case."""
    w, m = fam.weights, fam.manifest
    if mode == "sealed":
        obj, desc, dup = _manifest_mutation(m, rng)
        assert obj is not None
        if dup:
            _reseal(obj)
            return w, _dump_manifest(obj, True), "sealed " + desc
        _reseal(obj)
        try:
            return w, _dump_manifest(obj, False), "sealed " + desc
        except ValueError:  # pragma: no cover - json refuses nothing we build
            return w, m, "sealed noop"
    kind = rng.choice(RAW_KINDS)
    (n,) = struct.unpack("<Q", w[:8])
    if kind == "flip-any":
        return _flip(w, rng), m, kind
    if kind == "flip-data":
        return _flip(w, rng, lo=8 + n), m, kind
    if kind == "flip-header":
        return _flip(w, rng, lo=0, hi=8 + n), m, kind
    if kind == "flip-manifest":
        return w, _flip(m, rng), kind
    if kind == "truncate-weights":
        return w[: rng.randrange(len(w))], m, kind
    if kind == "truncate-manifest":
        return w, m[: rng.randrange(len(m))], kind
    if kind == "append":
        return w + bytes(rng.randrange(256) for _ in range(rng.choice((1, 7, 64)))), m, kind
    if kind == "offset-swap":
        w2, desc = _offset_swap(w, rng)
        return w2, m, desc
    if kind == "header-edit":
        w2, desc = _header_edit(w, rng)
        return w2, m, desc
    obj, desc, dup = _manifest_mutation(m, rng)
    assert obj is not None
    return w, _dump_manifest(obj, dup), "raw " + desc


# -- running cases -------------------------------------------------------------------------


class _Hang(BaseException):
    """Raised by the alarm; a ``BaseException`` so that no handler in the library can turn a
    hang into an ordinary error."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def on_alarm(signum, frame):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # sealed edits that load as another model

    def add(self, key: str) -> None:
        self.counts[key] += 1


def run_case(
    fam: Family, case_dir: Path, rng: random.Random, mode: str, report: Report, timeout: float
) -> str:
    """One case; returns its outcome: identical, refused, changed (sealed only), or a failure
    (other-exception, different-outputs, forward-error, hang)."""
    import logging

    import modelpress as mp

    w, m, desc = mutate(fam, rng, mode)
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    (case_dir / WEIGHTS).write_bytes(w)
    (case_dir / MANIFEST).write_bytes(m)
    logging.getLogger("modelpress.api").setLevel(logging.ERROR)  # "no digests" warnings
    outcome = ""
    try:
        with _deadline(timeout):
            try:
                model = mp.load(case_dir)
            except mp.ArtifactError:
                outcome = "refused"
            except _Hang:
                raise
            except Exception as e:
                outcome = "other-exception"
                detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                report.failures.append(f"[{fam.name}] {mode} {desc}: load raised {detail}")
            if not outcome:
                try:
                    out = _outputs(model, fam.inputs)
                except _Hang:
                    raise
                except Exception as e:
                    outcome = "forward-error"
                    detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                    report.failures.append(f"[{fam.name}] {mode} {desc}: loaded, forward raised {detail}")
                else:
                    assert fam.reference is not None
                    same = out.shape == fam.reference.shape and torch.equal(out, fam.reference)
                    if same:
                        outcome = "identical"
                    elif mode == "sealed":
                        outcome = "changed"
                        report.changed.append(f"[{fam.name}] {desc}")
                    else:
                        outcome = "different-outputs"
                        report.failures.append(f"[{fam.name}] {mode} {desc}: loaded with different outputs")
    except _Hang:
        outcome = "hang"
        report.failures.append(f"[{fam.name}] {mode} {desc}: no answer within {timeout} s")
    report.add(f"{mode}/{outcome}")
    return outcome


def fuzz(
    families: list[Family],
    work: Path,
    cases: int,
    seed: int,
    *,
    sealed_share: float = 0.35,
    timeout: float = 20.0,
    progress: bool = False,
) -> Report:
    report = Report()
    t0 = time.perf_counter()
    for i in range(cases):
        rng = random.Random(seed * 1_000_003 + i)
        fam = families[i % len(families)]
        mode = "sealed" if rng.random() < sealed_share else "raw"
        run_case(fam, work / "case", rng, mode, report, timeout)
        if progress and (i + 1) % 500 == 0:
            print(f"  {i + 1} cases, {time.perf_counter() - t0:.0f} s: {dict(report.counts)}", flush=True)
    return report


# -- kill -9 during save ---------------------------------------------------------------------

_SAVER = textwrap.dedent(
    """
    import sys, torch
    import modelpress as mp
    from modelpress.models.lenet import LeNet300100
    torch.manual_seed(0)
    # a few MB each, so that a good share of the kills land while files are written
    a, b = LeNet300100(hidden=(1024, 512)), mp.compress(LeNet300100(hidden=(768, 384)), "fp16")
    mp.save(b, sys.argv[1])  # the first save imports what saving needs (seconds): not timed
    print("ready", flush=True)
    i = 0
    while True:
        mp.save(a if i % 2 else b, sys.argv[1])
        i += 1
    """
)


def kill_trials(work: Path, trials: int, seed: int) -> Counter:
    """``kill -9`` a save loop at random instants; count what the path holds afterwards."""
    import modelpress as mp
    from modelpress.models.lenet import LeNet300100

    counts: Counter = Counter()
    path = work / "killed" / "art"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    mp.save(LeNet300100(hidden=(768, 384)), path)
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for _ in range(trials):
        p = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, env=env)
        assert p.stdout is not None
        if p.stdout.readline().strip() != b"ready":
            counts["saver-failed"] += 1
            p.kill()
            p.wait()
            continue
        time.sleep(rng.uniform(0.0, 0.5))  # a save takes ~50 ms here: a kill lands anywhere in one
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        counts["trials"] += 1
        leftovers = [x.name for x in path.parent.iterdir() if x.name != "art"]
        counts["killed-mid-write (leftovers the next load cleans)"] += bool(leftovers)
        try:
            m = mp.load(path)
            hidden = m.fc1.out_features if hasattr(m.fc1, "out_features") else m.fc1.weight.shape[0]
            counts["complete-old-or-new" if hidden in (1024, 768) else "missing-or-mixed"] += 1
        except mp.ArtifactError:
            counts["missing-or-mixed"] += 1
        torch.manual_seed(0)
        mp.save(LeNet300100(hidden=(768, 384)), path)
        counts["leftovers-after-next-save"] += sum(1 for x in path.parent.iterdir() if x.name != "art")
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--kills", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated family names")
    ap.add_argument("--show", type=int, default=20, help="failures / changed cases to print")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        families = build_families(work, [f for f in args.only.split(",") if f] or None)
        print(f"{len(families)} families: {', '.join(f.name for f in families)}", flush=True)
        report = fuzz(families, work, args.cases, args.seed, progress=True)
        t_fuzz = time.perf_counter() - t0
        kills = kill_trials(work, args.kills, args.seed) if args.kills else Counter()
    total = sum(report.counts.values())
    bad = sum(
        v for k, v in report.counts.items() if k.split("/")[1] not in ("identical", "refused", "changed")
    )
    print(f"\n{total} cases in {t_fuzz:.0f} s (seed {args.seed}):")
    for k in sorted(report.counts):
        print(f"  {k:28s} {report.counts[k]}")
    print(f"failures (other exceptions, different outputs, forward errors, hangs): {bad}")
    for line in report.failures[: args.show]:
        print("  FAIL", line)
    print(f"sealed edits that load as another model (allowed): {len(report.changed)}")
    for line in copy.copy(report.changed)[: args.show]:
        print("  changed", line)
    if args.kills:
        print(f"kill -9 during save: {dict(kills)}")
    return 1 if bad or kills.get("missing-or-mixed") or kills.get("leftovers-after-next-save") else 0


if __name__ == "__main__":
    raise SystemExit(main())
