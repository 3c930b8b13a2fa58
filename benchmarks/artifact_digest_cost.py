"""Cost of the load-time integrity checks on the SmolLM2-135M fp32 artifact (random weights
of the real shapes; the checks do not depend on the values).

Times ``modelpress.load`` round-robin in one process, three variants of the same artifact:
``full`` (as saved: per-tensor XXH3-128 verified while reading, meta-device precheck),
``sha256`` (the same digests recorded with sha256, as artifacts of the previous version hold),
``no-digests`` (the manifest without its ``digests``: what an older artifact costs) and
``no-precheck`` (digests verified, the meta-device build and memory estimate skipped), plus
the raw XXH3-128 and sha256 throughput of this machine. Prints medians and the overheads::

    python benchmarks/artifact_digest_cost.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _smollm2_config():
    from transformers import LlamaConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from modelpress.models.sources import smollm2_source

    src = smollm2_source()
    raw = load_gguf_checkpoint(str(Path(src.path) / str(src.gguf_file)), return_tensors=False)["config"]
    return LlamaConfig(**{k: v for k, v in raw.items() if not k.startswith("_")})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlamaForCausalLM

    import modelpress.api as api

    torch.manual_seed(0)
    model = LlamaForCausalLM(_smollm2_config()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        full = api.save(model, Path(tmp) / "full")
        size = api.artifact_bytes(full)
        old = Path(tmp) / "no-digests"
        old.mkdir()
        (old / api.WEIGHTS_FILE).hardlink_to(full / api.WEIGHTS_FILE)  # same bytes, same page cache
        m = json.loads((full / api.MANIFEST_FILE).read_text())
        del m["digests"]
        (old / api.MANIFEST_FILE).write_text(json.dumps(m, indent=1))
        sha = Path(tmp) / "sha256"
        sha.mkdir()
        (sha / api.WEIGHTS_FILE).hardlink_to(full / api.WEIGHTS_FILE)
        from safetensors import safe_open

        with safe_open(str(full / api.WEIGHTS_FILE), "pt") as f:
            sha_digests = {
                "algorithm": "sha256",
                "tensors": {k: api.tensor_digest(f.get_tensor(k), "sha256") for k in f.keys()},
            }
        m["digests"] = sha_digests
        m["digests"]["manifest"] = api.manifest_digest(m)
        (sha / api.MANIFEST_FILE).write_text(json.dumps(m, indent=1))
        del model
        real_precheck = api._precheck

        def skip_precheck(*a, **k):
            return None

        variants = {
            "full": (full, real_precheck),
            "no-digests": (old, real_precheck),
            "sha256": (sha, real_precheck),
            "no-precheck": (full, skip_precheck),
        }
        times: dict[str, list[float]] = {v: [] for v in variants}
        ready: dict[str, list[float]] = {v: [] for v in variants}
        ids = torch.arange(8)[None]
        api.load(full)  # warm the page cache and imports
        import logging

        logging.getLogger("modelpress.api").setLevel(logging.ERROR)
        for _ in range(args.repeats):
            for name, (path, pre) in variants.items():
                api._precheck = pre
                t0 = time.perf_counter()
                m_ = api.load(path)
                times[name].append(time.perf_counter() - t0)
                del m_
                # ready to use: load, then one forward of 8 tokens (which reads every weight;
                # a plain load leaves the mmapped weights unread until then)
                t0 = time.perf_counter()
                m_ = api.load(path)
                with torch.inference_mode():
                    m_(ids)
                ready[name].append(time.perf_counter() - t0)
                del m_
        api._precheck = real_precheck
        manifest = api._read_manifest(full)
        specs = api._specs(manifest)
        t_pre = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            api._precheck(manifest, specs, full, full / api.MANIFEST_FILE)
            t_pre.append(time.perf_counter() - t0)
        buf = torch.randint(0, 255, (100_000_000,), dtype=torch.uint8).numpy()
        import xxhash

        t_hash: dict[str, list[float]] = {"xxh3-128": [], "sha256": []}
        for _ in range(args.repeats):
            for name, fn in (("xxh3-128", xxhash.xxh3_128), ("sha256", hashlib.sha256)):
                t0 = time.perf_counter()
                fn(memoryview(buf)).hexdigest()
                t_hash[name].append(time.perf_counter() - t0)
    mb = size / 1e6
    print(f"artifact: SmolLM2-135M fp32, {mb:.1f} MB; torch threads {args.threads}; {args.repeats} repeats")
    for label, series in (("load", times), ("load + first forward", ready)):
        med = {k: statistics.median(v) for k, v in series.items()}
        print(f" {label}:")
        for k, v in med.items():
            print(f"  {k:12s} {v * 1e3:8.1f} ms  (p-max {max(series[k]) * 1e3:.1f})")
        for variant in ("full", "sha256"):
            digest = med[variant] - med["no-digests"]
            algo = "xxh3-128" if variant == "full" else "sha256"
            print(
                f"  digest verification ({algo}): {digest * 1e3:+.1f} ms = "
                f"{100 * digest / med['no-digests']:+.1f} % of the same without digests, "
                f"{digest * 1e3 / (mb / 100):+.1f} ms per 100 MB"
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    pre = statistics.median(t_pre)
    share = 100 * pre / med["full"]
    print(f"  meta-device precheck (timed alone): {pre * 1e3:.1f} ms = {share:.1f} % of the full load")
    for name, ts in t_hash.items():
        print(f"  raw {name} (one thread): {statistics.median(ts) * 1e3:.1f} ms per 100 MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
