"""Serving: ``modelpress serve ARTIFACT`` — an HTTP server with dynamic batching.

Three parts (docs/serving.md): ``batcher`` (policy only: when a batch closes, which requests
go together, length buckets that follow the traffic; who joins the running batch of a causal
LM at the next decode step), ``runtime`` (runs a loaded artifact or ONNX export on its
kernels: classification and embeddings, or generation with continuous batching) and ``app``
(FastAPI over uvicorn, HTTP only). Needs the
``serve`` extra (installed by the README's set-up). Scale-out: ``replicas`` (N processes behind a
front, one machine) and ``ray_serve`` (the same app as a Ray Serve deployment; the ``ray``
extra, imported only there).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from .batcher import Batcher, BatchPolicy, DecodePolicy, DecodeScheduler, LengthBuckets, Request

__all__ = [
    "BatchPolicy",
    "Batcher",
    "DecodePolicy",
    "DecodeScheduler",
    "LengthBuckets",
    "Request",
    "ServerThread",
    "build_app",
    "serve",
]


def build_app(
    artifact: str | os.PathLike,
    *,
    policy: BatchPolicy | None = None,
    threads: int | None = None,
    deadline_s: float = 10.0,
    decode: DecodePolicy | None = None,
) -> Any:
    """The app for ``artifact``: the runtime is picked from what it holds (a ``*ForCausalLM``:
    generation with continuous batching; an encoder: classify / embed with dynamic batching)."""
    from .app import ServeConfig, create_app
    from .runtime import open_runtime

    runtime = open_runtime(artifact, threads=threads)
    return create_app(
        runtime,
        ServeConfig(policy=policy or BatchPolicy(), deadline_s=deadline_s, decode=decode or DecodePolicy()),
    )


def serve(artifact: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, **kw: Any) -> None:
    """Serve ``artifact`` until interrupted (uvicorn, one process)."""
    import uvicorn

    uvicorn.run(build_app(artifact, **kw), host=host, port=port, log_level="warning")


class ServerThread:
    """A uvicorn server on 127.0.0.1 in a background thread (tests, load tests):
    ``with ServerThread(app) as s: httpx.get(s.url + "/health")``."""

    def __init__(self, app: Any, port: int = 0, timeout: float = 120.0) -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.timeout = timeout
        self.url = ""

    def __enter__(self) -> ServerThread:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > self.timeout:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.timeout)
