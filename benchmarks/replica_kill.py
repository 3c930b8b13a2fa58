"""kill -9 of a replica mid-load (issue 17.7): what the clients see, and how soon it is back.

    python benchmarks/replica_kill.py ARTIFACT [--rate 40] [--seconds 12] [--kill-at 3] [--replicas 2]

A front with ``--replicas`` replica processes (``serve/replicas.py``, least-queue) on 127.0.0.1
is fed open-loop Poisson arrivals of Rotten Tomatoes snippets (classifiers) for ``--seconds``;
at ``--kill-at`` seconds replica 0 gets SIGKILL. Prints the answers by kind (200, 503 "died
while serving", 503 "no replica is ready", other), requests with no answer within the client's
timeout (hung: must be 0), the slowest answer, and when replica 0 was ready again and took
requests again. Bounded: at most 4,000 requests, a 30 s client timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import time
from typing import Any

import httpx

from modelpress.bench.env import cpu_flags, cpu_model
from modelpress.data.datasets import rotten_tomatoes
from modelpress.serve import BatchPolicy, ServerThread
from modelpress.serve.replicas import FrontConfig, ReplicaSet, create_front


async def _run(url: str, texts: list[str], args: argparse.Namespace, replicas: ReplicaSet) -> dict[str, Any]:
    rng = random.Random(0)
    times, t = [], 0.0
    while t < args.seconds and len(times) < 4000:
        t += rng.expovariate(args.rate)
        times.append(t)
    kinds: dict[str, int] = {}
    slowest = 0.0
    back: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        start = time.perf_counter()
        victim = replicas.slots[0].proc
        assert victim is not None

        async def kill() -> None:
            await asyncio.sleep(args.kill_at)
            os.kill(victim.pid, signal.SIGKILL)
            back["killed"] = time.perf_counter() - start
            while time.perf_counter() - start < args.seconds + 60:
                info = (await client.get("/ready")).json()["replicas"][0]
                if info["state"] == "ready" and info["pid"] != victim.pid:  # the new one
                    back["ready"] = time.perf_counter() - start
                    return
                await asyncio.sleep(0.05)

        async def one(at: float, text: str) -> None:
            nonlocal slowest
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/classify", json={"text": text})
                if r.status_code == 200:
                    key = "200"
                elif r.status_code == 503 and "died while serving" in r.text:
                    key = "503 replica died"
                elif r.status_code == 503 and "no replica is ready" in r.text:
                    key = "503 no replica ready"
                else:
                    key = f"{r.status_code} other"
            except httpx.TimeoutException:
                key = "hung (no answer in 30 s)"
            except httpx.HTTPError as e:
                key = f"lost ({type(e).__name__})"
            slowest = max(slowest, time.perf_counter() - t0)
            kinds[key] = kinds.get(key, 0) + 1

        await asyncio.gather(kill(), *(one(at, rng.choice(texts)) for at in times))
    return {"sent": len(times), "answers": kinds, "slowest_s": slowest, **back}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("artifact")
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--kill-at", type=float, default=3.0)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="per replica")
    args = ap.parse_args()
    texts = list(rotten_tomatoes(seed=0).test.texts)
    cfg = FrontConfig(
        replicas=args.replicas,
        threads=args.threads,
        policy=BatchPolicy(max_batch_size=16, max_wait_s=0.010, max_queue=4096),
    )
    replicas = ReplicaSet(args.artifact, cfg)
    with ServerThread(create_front(replicas)) as server:
        r = asyncio.run(_run(server.url, texts, args, replicas))
        routed = [
            line
            for line in httpx.get(server.url + "/metrics").text.splitlines()
            if line.startswith(("modelpress_replica_routed_total", "modelpress_replica_failed_total"))
        ]
    print(
        f"{r['sent']} requests at {args.rate:g}/s over {args.seconds:g} s; "
        f"replica 0 killed at {r['killed']:.2f} s"
    )
    for k, v in sorted(r["answers"].items()):
        print(f"  {k:28s} {v}")
    print(f"slowest answer {r['slowest_s']:.2f} s")
    if "ready" in r:
        print(
            f"replica 0 ready again at {r['ready']:.2f} s ({r['ready'] - r['killed']:.2f} s after the kill)"
        )
    else:
        print("replica 0 was not ready again within the run")
    print("\n".join(routed))
    print(f"CPU: {cpu_model()} ({', '.join(cpu_flags())}); {args.replicas} replicas x {args.threads} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
