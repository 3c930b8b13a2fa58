"""Overload of a causal-LM server at a multiple of its sustainable rate (issue 17).

    python benchmarks/serve_overload.py LM_ARTIFACT [--factor 3] [--seconds 60] [--new-tokens 16]
        [--deadline 10] [--max-queue 16] [--max-running 8] [--threads 2]

``modelpress serve LM_ARTIFACT`` runs as its own process on 127.0.0.1 (so its memory is its
own: ``VmRSS`` of that process is sampled every 0.25 s from ``/proc``). First the
**sustainable rate**: a closed loop of ``2 x --max-running`` clients, each sending its next
greedy generation (``--new-tokens`` tokens, Rotten Tomatoes prompts) when the last is
answered, for ``--calibrate-s`` seconds; completions per second is the rate the server keeps
up with. Then the **flood**: open-loop Poisson arrivals at ``--factor`` x that rate for
``--seconds`` (every request sent at its time whether or not earlier ones were answered).

Prints and checks what issue 17 asks: every request answered exactly once (200, 503 with
``Retry-After``, or 504; lost = no answer within the client's timeout of 3 x the deadline;
the server's own ``modelpress_requests_total`` by status must equal the client's counts:
nothing answered twice or dropped silently), the p50 / p99 latency of the accepted ones
against 2 x the deadline, and the server's RSS before, at its peak and after the flood.
Bounded: at most ``--max-requests`` requests in the flood, every client call with a timeout;
the server is stopped (SIGTERM, then SIGKILL after 30 s) whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx

from modelpress.bench.env import cpu_flags, cpu_model
from modelpress.data.datasets import rotten_tomatoes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """``VmRSS`` of a process every ``period`` seconds, with the time of each reading."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            v = _rss_mb(self.pid)
            if v is not None:
                self.samples.append((time.monotonic(), v))
            self.done.wait(self.period)

    def between(self, t0: float, t1: float) -> list[float]:
        return [v for t, v in self.samples if t0 <= t <= t1]


def _server_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for m in re.finditer(r'^modelpress_requests_total\{status="(\d+)"\} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _one(
    client: httpx.AsyncClient, url: str, prompt: str, new_tokens: int, timeout: float
) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        r = await client.post(
            f"{url}/v1/generate", json={"prompt": prompt, "max_new_tokens": new_tokens}, timeout=timeout
        )
    except (httpx.TimeoutException, httpx.TransportError) as e:
        return {"status": None, "error": type(e).__name__, "latency": time.monotonic() - t0}
    return {
        "status": r.status_code,
        "retry_after": r.headers.get("retry-after"),
        "latency": time.monotonic() - t0,
    }


async def _closed_loop(url: str, prompts: list[str], args: argparse.Namespace) -> float:
    stop = time.monotonic() + args.calibrate_s
    done: list[float] = []
    rng = random.Random(1)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < stop:
                r = await _one(client, url, rng.choice(prompts), args.new_tokens, 3 * args.deadline)
                if r["status"] == 200:
                    done.append(time.monotonic())

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(2 * args.max_running)))
    # completions per second over the window (the tail after `stop` finishes started work)
    return len(done) / max(1e-9, max(done, default=t0) - t0)


async def _flood(url: str, prompts: list[str], rate: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(0)
    times, t = [], 0.0
    while len(times) < args.max_requests:
        t += rng.expovariate(rate)
        if t > args.seconds:
            break
        times.append(t)
    limits = httpx.Limits(max_connections=2048, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits) as client:
        start = time.monotonic()

        async def at(ts: float, prompt: str) -> dict[str, Any]:
            await asyncio.sleep(max(0.0, start + ts - time.monotonic()))
            return await _one(client, url, prompt, args.new_tokens, 3 * args.deadline)

        return list(await asyncio.gather(*(at(ts, rng.choice(prompts)) for ts in times)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--factor", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--calibrate-s", type=float, default=30.0)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--deadline", type=float, default=10.0)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--max-running", type=int, default=8)
    ap.add_argument("--max-requests", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    prompts = [t for t in rotten_tomatoes(seed=0).test.texts if len(t) < 300][:500]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "modelpress.cli", "serve", args.artifact, "--host", "127.0.0.1",
        "--port", str(port), "--deadline", str(args.deadline), "--max-queue", str(args.max_queue),
        "--max-running", str(args.max_running), "--threads", str(args.threads),
    ]  # fmt: skip
    log = tempfile.TemporaryFile(mode="w+")  # (a pipe could fill up and block the server)
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    sampler = RssSampler(server.pid)
    sampler.start()
    try:
        t_end = time.monotonic() + 300
        while time.monotonic() < t_end:
            if server.poll() is not None:
                log.seek(0)
                raise SystemExit(f"the server exited: {log.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the server was not ready within 300 s")
        print(f"CPU: {cpu_model()}; flags: {', '.join(cpu_flags()) or 'none'}; server pid {server.pid}")
        print(
            f"{args.artifact}: greedy generations of {args.new_tokens} tokens; deadline {args.deadline:g} s, "
            f"max-running {args.max_running}, max-queue {args.max_queue}, {args.threads} threads\n"
        )
        rss_ready = _rss_mb(server.pid) or float("nan")
        rate = asyncio.run(_closed_loop(url, prompts, args))
        print(f"sustainable rate (closed loop, {2 * args.max_running} clients, {args.calibrate_s:g} s): "
              f"{rate:.2f} requests/s")  # fmt: skip
        before = _server_counts(url)
        rss_before = _rss_mb(server.pid) or float("nan")
        t0 = time.monotonic()
        out = asyncio.run(_flood(url, prompts, args.factor * rate, args))
        t1 = time.monotonic()
        time.sleep(1.0)
        after = _server_counts(url)
        rss_after = _rss_mb(server.pid) or float("nan")
    finally:
        sampler.done.set()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()

    by: dict[str, int] = {}
    for r in out:
        k = str(r["status"]) if r["status"] is not None else f"lost ({r['error']})"
        by[k] = by.get(k, 0) + 1
    server_by = {k: int(after.get(k, 0) - before.get(k, 0)) for k in set(after) | set(before)}
    server_by = {k: v for k, v in server_by.items() if v}
    ok = [r["latency"] for r in out if r["status"] == 200]
    no_retry = sum(1 for r in out if r["status"] == 503 and not r.get("retry_after"))
    lost = sum(v for k, v in by.items() if k.startswith("lost"))
    peak = max(sampler.between(t0, t1 + 1.0), default=float("nan"))
    print(f"flood: {len(out)} requests at {args.factor:g} x = {args.factor * rate:.2f} requests/s for "
          f"{args.seconds:g} s ({t1 - t0:.1f} s until the last answer)")  # fmt: skip
    print(f"answers by status (client): {dict(sorted(by.items()))}")
    print(f"answers by status (server's modelpress_requests_total): {dict(sorted(server_by.items()))}")
    client_answered = {k: v for k, v in by.items() if not k.startswith("lost")}
    print(f"  every request answered once: {'yes' if lost == 0 and client_answered == server_by else 'NO'} "
          f"(lost {lost}; counts equal: {client_answered == server_by})")  # fmt: skip
    print(f"  503s without Retry-After: {no_retry}")
    print(f"accepted: {len(ok)}; latency p50 {_pct(ok, 0.5):.2f} s, p99 {_pct(ok, 0.99):.2f} s, max "
          f"{max(ok, default=float('nan')):.2f} s; 2 x deadline = {2 * args.deadline:g} s: "
          f"{'met' if ok and _pct(ok, 0.99) <= 2 * args.deadline else 'MISSED'}")  # fmt: skip
    print(f"server RSS: ready {rss_ready:.0f} MB, before the flood {rss_before:.0f} MB, peak during it "
          f"{peak:.0f} MB, after {rss_after:.0f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
