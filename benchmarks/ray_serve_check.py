"""The load test of ``modelpress serve`` against its Ray Serve deployment (issue 17): are the
answers the local server's, request by request, and what do throughput and latency look like?

    python benchmarks/ray_serve_check.py ARTIFACT [--rate 40] [--seconds 5] [--replicas 2] [--threads 2]

In one run, one after the other: the local server (``build_app`` on uvicorn in this process,
``--threads`` threads) and the Ray Serve deployment (``serve/ray_serve.py``: a local Ray on
127.0.0.1, ``--replicas`` replicas of the same app with ``--threads // --replicas`` threads each,
Ray's power-of-two-choices router), both with dynamic batching + adaptive buckets. Each gets:

1. **one at a time**: ``--distinct`` texts of the Rotten Tomatoes test split, sent one after
   the other (each a batch of one in either server): the bodies must be equal byte for byte;
2. **the load**: the open-loop Poisson client of ``serve_load.py`` (same seed: the same texts
   at the same times) at ``--rate`` for ``--seconds``; request by request the labels are
   compared and the largest score difference printed. Under load the batches differ (which
   texts share a batch, how much padding; on a kernel with one activation scale per batch,
   such as fbgemm's dynamic int8 linear, that scale too), so scores may differ; the local
   server run again after the Ray run gives the same kind of spread, printed as a baseline.

Kernel timing is off (``MODELPRESS_AUTOTUNE=0``, the highest-priority kernel of each op) so
that every process runs the same kernels. Bounded: ``--seconds`` x ``--rate`` requests per run
(at most 4,000), a 10 s client timeout. Prints throughput, p50 / p95 / p99 per server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from typing import Any

import httpx
from serve_load import CONFIGS, _open_loop

from modelpress.bench.env import cpu_flags, cpu_model
from modelpress.data.datasets import rotten_tomatoes
from modelpress.serve import ServerThread, build_app
from modelpress.serve.ray_serve import RayConfig, RayServer


def _one_at_a_time(url: str, texts: list[str]) -> list[bytes]:
    with httpx.Client(base_url=url, timeout=30) as c:
        return [c.post("/v1/classify", json={"text": t}).content for t in texts]


def _run(name: str, url: str, texts: list[str], distinct: list[str], args: argparse.Namespace) -> dict:
    asyncio.run(_open_loop(url, texts, args.rate, 2.0, 99))  # warm the connections, batcher, shapes
    alone = _one_at_a_time(url, distinct)
    answers: dict[int, tuple[int, bytes]] = {}
    r = asyncio.run(_open_loop(url, texts, args.rate, args.seconds, 0, answers=answers))
    print(
        f"{name:34s} {r['sent']} requests at {args.rate:g}/s: {r['throughput']:6.1f}/s, "
        f"p50 {r['p50_ms']:7.1f} ms, p95 {r['p95_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms, "
        f"rejected {r['rejected']}, errors {r['errors']}, lost {r['lost']}",
        flush=True,
    )
    return {"stats": r, "alone": alone, "answers": answers}


def _compare(a: dict, b: dict) -> str:
    same = sum(x == y for x, y in zip(a["alone"], b["alone"], strict=True))
    n = len(a["answers"])
    labels, both, worst = 0, 0, 0.0
    for i, (status, body) in a["answers"].items():
        other = b["answers"].get(i)
        if other is None or status != 200 or other[0] != 200:
            continue
        x, y = json.loads(body), json.loads(other[1])
        both += 1
        labels += x["label"] == y["label"]
        worst = max(worst, max(abs(x["scores"][k] - y["scores"][k]) for k in x["scores"]))
    return (
        f"one at a time: {same}/{len(a['alone'])} bodies identical byte for byte; under load: "
        f"{both}/{n} requests answered 200 by both, labels identical {labels}/{both}, "
        f"largest score difference {worst:.2e}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("artifact")
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="the local server's; split among the replicas")
    ap.add_argument("--distinct", type=int, default=50, help="texts sent one at a time")
    args = ap.parse_args()
    os.environ["MODELPRESS_AUTOTUNE"] = "0"  # the same kernels here and in Ray's replicas (inherited)
    texts = list(rotten_tomatoes(seed=0).test.texts)
    distinct = random.Random(1).sample(texts, args.distinct)
    policy = CONFIGS["dynamic + adaptive buckets"]
    runs: dict[str, Any] = {}
    per = max(1, args.threads // args.replicas)
    ray_cfg = RayConfig(replicas=args.replicas, threads=per, policy=policy)
    with ServerThread(build_app(args.artifact, policy=policy, threads=args.threads)) as server:
        runs["local"] = _run(f"local server, {args.threads} threads", server.url, texts, distinct, args)
        t0 = time.perf_counter()
        with RayServer(args.artifact, ray_cfg, port=0) as ray_server:  # the local server idles meanwhile
            print(f"Ray Serve up in {time.perf_counter() - t0:.1f} s", flush=True)
            name = f"Ray Serve, {args.replicas} replicas x {per} thread(s)"
            runs["ray"] = _run(name, ray_server.url, texts, distinct, args)
        runs["local again"] = _run("local server again", server.url, texts, distinct, args)
    print(f"\nRay Serve vs local: {_compare(runs['ray'], runs['local'])}")
    print(f"local vs local again (baseline): {_compare(runs['local again'], runs['local'])}")
    print(f"\nCPU: {cpu_model()} ({', '.join(cpu_flags())}); artifact {args.artifact}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
