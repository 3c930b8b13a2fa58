"""1-D k-means: modelpress vs scikit-learn ``KMeans`` vs ``flash1dkmeans``, in one run.

Data: the real weights of all-MiniLM-L6-v2 (every float tensor of the packaged
safetensors, concatenated in file order), first 1M and first 8M values; k = 16 and 256.
Each library runs with its defaults for a single k-means (k-means++ init, Lloyd, at most
300 iterations; scikit-learn with ``n_init=1``). Reports wall time (best of ``--repeat``)
and inertia (sum of squared errors, computed the same way for all), and the ratios.
Also: per-channel clustering of a 1536 x 384 MiniLM weight (one k-means per row), where
modelpress runs all rows in one batch and the others loop over rows.

    pip install scikit-learn flash1dkmeans    # (make bench-deps)
    python benchmarks/kmeans_1d.py [--sizes 1000000,8000000] [--ks 16,256] [--sklearn-max 8000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from safetensors.numpy import load_file

from modelpress.bench.env import cpu_model
from modelpress.models.sources import minilm_source
from modelpress.primitives.kmeans import fit_kmeans


def _weights() -> np.ndarray:
    tensors = load_file(minilm_source().path + "/model.safetensors")
    return np.concatenate([v.astype(np.float32).ravel() for v in tensors.values() if v.dtype.kind == "f"])


def _best(fn, repeat: int):
    best_t, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best_t = min(best_t, time.perf_counter() - t0)
    return best_t, out


def _inertia(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    return float(((x.astype(np.float64) - centroids.astype(np.float64)[labels]) ** 2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,8000000")
    ap.add_argument("--ks", default="16,256")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--sklearn-max", type=int, default=8_000_000, help="skip scikit-learn above this many values"
    )
    args = ap.parse_args()
    from flash1dkmeans import kmeans_1d
    from sklearn.cluster import KMeans

    kmeans_1d(np.random.default_rng(0).standard_normal(1000), 4)  # numba JIT compile, not timed
    w = _weights()
    print(f"CPU: {cpu_model()}; {torch.get_num_threads()} threads; MiniLM weights: {w.size} values")
    print(
        "| n | k | modelpress s | flash1dkmeans s | scikit-learn s | inertia modelpress | inertia flash | "
        "inertia sklearn | vs flash (time) | vs sklearn (time) |"
    )
    print("|" + "---|" * 10)
    for n in (int(s) for s in args.sizes.split(",")):
        x = w[:n]
        xt = torch.from_numpy(x)
        for k in (int(s) for s in args.ks.split(",")):
            t_mp, r = _best(lambda: fit_kmeans(xt, k, init="kmeans++"), args.repeat)  # noqa: B023
            i_mp = _inertia(x, r.centroids[0].numpy(), r.codes[0].numpy())
            t_fl, (c, lab) = _best(lambda: kmeans_1d(x.astype(np.float64), k, random_state=0), args.repeat)  # noqa: B023
            i_fl = _inertia(x, c, lab)
            if n <= args.sklearn_max:
                km = KMeans(n_clusters=k, n_init=1, random_state=0)
                t_sk, fitted = _best(lambda: km.fit(x.reshape(-1, 1)), 1)  # noqa: B023
                i_sk = _inertia(x, fitted.cluster_centers_.ravel(), fitted.labels_)
                sk = (f"{t_sk:.2f}", f"{i_sk:.6g}", f"{t_sk / t_mp:.0f}x")
            else:
                sk = ("not run", "-", "-")
            print(
                f"| {n:,} | {k} | {t_mp:.3f} | {t_fl:.3f} | {sk[0]} | {i_mp:.6g} | {i_fl:.6g} | {sk[1]} | "
                f"{t_fl / t_mp:.2f}x | {sk[2]} |",
                flush=True,
            )

    # per-channel: one k-means per row of a 1536 x 384 weight (FFN of layer 0)
    tensors = load_file(minilm_source().path + "/model.safetensors")
    name = next(n for n in tensors if n.endswith("intermediate.dense.weight"))
    rows = tensors[name].astype(np.float32)
    t_mp, r = _best(lambda: fit_kmeans(torch.from_numpy(rows), 16, init="kmeans++"), args.repeat)
    i_mp = float(r.inertia.sum())

    def flash_rows() -> float:
        tot = 0.0
        for row in rows:
            c, lab = kmeans_1d(row.astype(np.float64), 16, random_state=0)
            tot += _inertia(row, c, lab)
        return tot

    t_fl, i_fl = _best(flash_rows, args.repeat)
    print(
        f"\nper-channel k=16 on {name} {rows.shape}: modelpress {t_mp:.3f} s (inertia {i_mp:.6g}), "
        f"flash1dkmeans looping rows {t_fl:.3f} s (inertia {i_fl:.6g}): {t_fl / t_mp:.2f}x"
    )


if __name__ == "__main__":
    main()
