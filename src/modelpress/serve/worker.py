"""One replica: the single-process server (``build_app``: runtime + batcher + app) in a child
process of the front (``serve/replicas.py``), on a listening socket the front bound for it.

    python -m modelpress.serve.worker ARTIFACT --fd FD --parent PID --config JSON [--error-file F]

The front starts it in a fresh interpreter (never a fork: no torch state or thread pool is
inherited) with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to its share of the cores, in a
session of its own (a Ctrl-C at the terminal reaches the front only, which drains first and
then stops the replicas). A replica never outlives its front: a watchdog thread sees the
parent go (its parent pid changes) and stops the server, then exits by force after a grace.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "read_worker_config", "watch_parent", "worker_config"]


def worker_config(policy: Any, decode: Any, deadline_s: float, threads: int) -> str:
    """The JSON the front passes to a replica (``BatchPolicy`` / ``DecodePolicy`` fields)."""
    import dataclasses

    return json.dumps(
        {
            "policy": dataclasses.asdict(policy),
            "decode": dataclasses.asdict(decode),
            "deadline_s": deadline_s,
            "threads": threads,
        }
    )


def read_worker_config(cfg: str | dict[str, Any]) -> tuple[Any, Any, float, int]:
    """``(BatchPolicy, DecodePolicy, deadline_s, threads)`` from :func:`worker_config`'s JSON
    (or that JSON parsed): what a replica builds its app with (here and on Ray Serve)."""
    from .batcher import BatchPolicy, DecodePolicy

    d = json.loads(cfg) if isinstance(cfg, str) else cfg
    pol = dict(d["policy"])
    pol["boundaries"] = tuple(pol.get("boundaries", ()))
    return BatchPolicy(**pol), DecodePolicy(**d["decode"]), float(d["deadline_s"]), int(d["threads"])


def watch_parent(parent: int, *, interval_s: float = 0.25, grace_s: float = 10.0) -> threading.Thread:
    """A daemon thread that stops this process when ``parent`` is no longer its parent (the
    front exited, even by kill -9): SIGTERM to itself (uvicorn drains), then ``os._exit``
    after ``grace_s``. Polling the parent pid works on every POSIX system (Linux's
    PR_SET_PDEATHSIG fires when the *thread* that forked exits, not the process)."""

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    t = threading.Thread(target=run, name="modelpress-parent-watch", daemon=True)
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m modelpress.serve.worker")
    ap.add_argument("artifact")
    ap.add_argument("--fd", type=int, required=True, help="a listening TCP socket, bound by the front")
    ap.add_argument("--parent", type=int, required=True, help="the front's pid")
    ap.add_argument("--config", required=True, help="JSON: policy, decode, deadline_s, threads")
    ap.add_argument("--error-file", default=None, help="where a start-up error's sentence is written")
    args = ap.parse_args(argv)
    if os.getppid() != args.parent:  # the front is already gone
        return 1
    watch_parent(args.parent)
    sock = socket.socket(fileno=args.fd)  # family and type read from the descriptor
    from ..errors import ModelpressError

    try:
        import uvicorn

        from . import build_app

        policy, decode, deadline_s, threads = read_worker_config(args.config)
        app = build_app(args.artifact, policy=policy, decode=decode, deadline_s=deadline_s, threads=threads)
    except (ModelpressError, OSError) as e:  # one sentence for the front to report
        if args.error_file:
            Path(args.error_file).write_text(str(e), encoding="utf-8")
        print(f"modelpress replica: {e}", file=sys.stderr)
        return 2
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
