"""Deep Compression (Han, Mao, Dally, arXiv 1510.00149) on LeNet-300-100 and LeNet-5, MNIST-5k.

Each stage's contribution, as the paper's Table 1 shows it, all measured: size = bytes of
the files ``modelpress.save`` wrote; accuracy = test split (1,000 images).

1. fp32: the original;
2. pruned: the ``prune`` step of the ``deep-compression`` preset (per-layer rates, fine-tune
   with masks fixed), stored in the ``sparse`` format (values + bitmask / relative index);
3. clustered: + k-means of the kept weights (conv 8-bit, fc 5-bit, zeros kept by a 1-bit
   mask) + centroid fine-tuning, codes and mask bit-packed;
4. entropy-coded: the same weights with codes and mask zstd-coded (the preset's artifact).

    python benchmarks/deep_compression.py [--models lenet-300-100,lenet-5] [--out DIR]

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

import modelpress as mp
from modelpress.api import _RECIPE_ATTR, artifact_bytes
from modelpress.formats import Codebook, SparseTensor
from modelpress.methods.clustering import KMeansConfig
from modelpress.methods.pruning import PruneConfig, SparseStorageConfig
from modelpress.methods.pruning.presets import deep_compression
from modelpress.models.builtin import resolve_model
from modelpress.recipe import Recipe


def _accuracy(adapter, model) -> float:
    return 100 * adapter.evaluate(model, progress=False).value


def _recode(model: torch.nn.Module, coding: str) -> torch.nn.Module:
    """A copy whose codebooks store codes and masks with ``coding`` (lossless re-coding)."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, Codebook):
            m.coding = m.mask_coding = coding
            for cache in ("_stored", "_stored_mask"):
                m.__dict__.pop(cache, None)
    recipe = [
        dataclasses.replace(c, coding=coding) if isinstance(c, KMeansConfig) else c for c in mp.recipe_of(out)
    ]
    setattr(out, _RECIPE_ATTR, Recipe(recipe))
    return out


def _density(model: torch.nn.Module) -> str:
    parts = []
    for n, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, SparseTensor):
            parts.append(f"{n} {w.n_values / w.shape.numel():.0%}")
        elif isinstance(w, Codebook) and w.mask is not None:
            parts.append(f"{n} {int(w.mask.sum()) / w.shape.numel():.0%}")
        elif isinstance(w, torch.Tensor) and w.dim() > 1:
            parts.append(f"{n} {float((w != 0).float().mean()):.0%}")
    return ", ".join(parts)


def run(model_name: str, out: Path, recipe: list | None = None) -> list[dict]:
    """The stages of ``recipe`` (default: the ``deep-compression`` preset) on one LeNet."""
    adapter = resolve_model(model_name)
    original = adapter.load_original(progress=False)
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in original.modules())
    prune_cfg, *rest = recipe or deep_compression(conv=has_conv)
    assert isinstance(prune_cfg, PruneConfig)
    rows = []

    def row(stage: str, model: torch.nn.Module, seconds: float) -> None:
        path = mp.save(model, out / f"{model_name}-{stage.split()[0]}")
        rows.append(
            {
                "model": adapter.model_name,
                "stage": stage,
                "bytes": artifact_bytes(path),
                "acc": _accuracy(adapter, model),
                "val": 100 * adapter.score(model, "validation"),
                "seconds": seconds,
                "density": _density(model),
            }
        )

    row("fp32", original, 0.0)
    t = time.perf_counter()
    pruned = mp.compress(original, prune_cfg, data=adapter, progress=False)  # exact zeros, dense
    t_prune = time.perf_counter() - t
    row("pruned (sparse format)", mp.compress(pruned, SparseStorageConfig(), progress=False), t_prune)
    t = time.perf_counter()
    final = mp.compress(pruned, rest, data=adapter, progress=False)  # the preset's remaining steps
    t_cluster = time.perf_counter() - t
    row("clustered (bit-packed)", _recode(final, "packed"), t_cluster)
    row("entropy-coded (zstd)", final, 0.0)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet-300-100,lenet-5")
    ap.add_argument("--out", default=None, help="keep the artifacts here (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        rows = [r for m in args.models.split(",") for r in run(m.strip(), out)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, conv in (("deep-compression", True), ("deep-compression-fc", False)):
        print(f"recipe `{name}` ({'LeNet-5' if conv else 'LeNet-300-100: no conv layer'}):")
        for c in deep_compression(conv=conv):
            print(f"- {c.to_dict()}")
    print()
    print("| model | stage | artifact bytes | vs fp32 | test acc | Δ acc (pt) | val acc | stage time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    base: dict[str, dict] = {}
    for r in rows:
        b = base.setdefault(r["model"], r)
        print(
            f"| {r['model']} | {r['stage']} | {r['bytes']:,} | {b['bytes'] / r['bytes']:.1f}× | "
            f"{r['acc']:.2f}% | {r['acc'] - b['acc']:+.2f} | {r['val']:.2f}% | {r['seconds']:.0f} |"
        )
    print()
    for r in rows:
        if r["stage"].startswith("pruned"):
            print(f"- {r['model']} kept weights per layer: {r['density']}")


if __name__ == "__main__":
    main()
