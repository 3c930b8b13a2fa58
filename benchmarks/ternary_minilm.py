"""One ternary (BitNet b1.58) QAT+KD run on MiniLM / Rotten Tomatoes: accuracy delta, artifact size, time.

    python benchmarks/ternary_minilm.py '{"epochs": 3, "max_steps": 300, "distill": true, "lr": 2e-4}' 1

The first argument is a TernaryConfig as JSON; an optional "emb" key holds a KMeansConfig applied after it
(e.g. 4-bit embeddings), or before it with "emb_first": true (the ternary training then sees the
clustered embeddings). The second is the number of torch threads. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from modelpress.api import artifact_bytes, compress, save
from modelpress.methods.binary import TernaryConfig
from modelpress.methods.clustering.kmeans import KMeansConfig
from modelpress.models.builtin import resolve_model
from modelpress.recipe import Recipe


def main() -> None:
    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    emb = cfg.pop("emb", None)
    first = cfg.pop("emb_first", False)
    clustered = [KMeansConfig(**emb)] if emb else []
    steps = [*clustered, TernaryConfig(**cfg)] if first else [TernaryConfig(**cfg), *clustered]
    adapter = resolve_model("minilm")
    original = adapter.load_original(progress=False).eval()
    ref = adapter.evaluate(original, progress=False)
    t0 = time.perf_counter()
    model = compress(original, Recipe(steps), progress=False, **adapter.compress_kwargs())
    took = time.perf_counter() - t0
    ev = adapter.evaluate(model, reference=ref.predictions, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        size = artifact_bytes(save(model, Path(tmp) / "artifact"))
    print(
        json.dumps(
            {
                "cfg": sys.argv[1],
                "ref": ref.value,
                "acc": ev.value,
                "delta_pt": 100 * (ev.value - ref.value),
                "size_MB": size / 1e6,
                "compress_s": round(took),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
