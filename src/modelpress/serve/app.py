"""The app: HTTP only (FastAPI on uvicorn), in front of one batcher and one runtime.

Endpoints: ``POST /v1/classify`` (``{"text": "..."}`` or ``{"text": ["...", ...]}``),
``GET /health`` (the process answers), ``GET /ready`` (the model is loaded and warmed up),
``GET /metrics`` (Prometheus text: queue depth, batch sizes, padding share, latency,
rejects). Bad input is a 4xx with one message; a full queue is 503 with ``Retry-After``; a
request still queued at its deadline is 504. See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from .batcher import Batcher, BatchPolicy, Request

__all__ = ["ServeConfig", "create_app"]


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    policy: BatchPolicy = dataclasses.field(default_factory=BatchPolicy)
    deadline_s: float = 10.0  # a request not answered by then gets 504
    max_texts: int = 64  # texts per request
    max_chars: int = 20_000  # characters per text
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.deadline_s <= 600:
            raise ConfigError(f"deadline must be in (0, 600] s, got {self.deadline_s!r}")


class ClassifyRequest(BaseModel):
    """``{"text": "..."}`` or ``{"text": ["...", ...]}``; nothing else (strict types)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | list[str]


@dataclasses.dataclass
class _Item:
    text: str
    future: asyncio.Future


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "modelpress_requests", "HTTP requests answered, by status", ["status"], registry=r
        )
        self.queue = Gauge("modelpress_queue_depth", "Texts waiting in the batcher", registry=r)
        self.batch = Histogram(
            "modelpress_batch_size", "Texts per batch run", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.padding = Gauge("modelpress_padding_share", "Pad tokens / all tokens computed", registry=r)
        self.pad_tokens = Gauge("modelpress_pad_tokens", "Pad tokens computed since the start", registry=r)
        self.real_tokens = Gauge("modelpress_text_tokens", "Text tokens computed since the start", registry=r)
        self.latency = Histogram(
            "modelpress_request_latency_seconds",
            "Time from arrival to answer",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.rejected = Counter("modelpress_rejected", "Texts refused: queue full", registry=r)
        self.expired = Counter("modelpress_expired", "Texts past their deadline while queued", registry=r)


def create_app(runtime: Any, config: ServeConfig | None = None) -> Any:
    """A FastAPI app serving ``runtime`` (e.g. ``ClassifierRuntime``) with dynamic batching."""
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import generate_latest

    cfg = config or ServeConfig()
    batcher = Batcher(cfg.policy)
    metrics = _Metrics()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelpress-runtime")
    state: dict[str, Any] = {"ready": False, "stopping": False, "wake": None, "worker": None}

    async def worker() -> None:
        loop = asyncio.get_running_loop()
        wake: asyncio.Event = state["wake"]
        while True:
            now = time.monotonic()
            for r in batcher.drop_expired(now):
                metrics.expired.inc()
                if not r.payload.future.done():
                    r.payload.future.set_exception(TimeoutError())
            batch = batcher.next_batch(now, flush=state["stopping"])
            metrics.queue.set(batcher.size)
            if not batch:
                if state["stopping"] and batcher.size == 0:
                    return
                wait = batcher.wait_time(now)
                wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=1.0 if wait is None else max(wait, 1e-4))
                continue
            items = [r.payload for r in batch if not r.payload.future.done()]  # skip given-up ones
            if not items:
                continue
            metrics.batch.observe(len(items))
            try:
                results = await loop.run_in_executor(executor, runtime.run, [i.text for i in items])
            except Exception as e:  # the model failed: every request of the batch learns it
                for i in items:
                    if not i.future.done():
                        i.future.set_exception(RuntimeError(f"the model failed on this batch: {e}"))
                continue
            metrics.padding.set(batcher.padding_share)
            for i, res in zip(items, results, strict=True):
                if not i.future.done():
                    i.future.set_result(res)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state["wake"] = asyncio.Event()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, runtime.warm_up, cfg.policy.max_batch_size)
        state["worker"] = asyncio.create_task(worker())
        state["ready"] = True
        try:
            yield
        finally:  # graceful shutdown: no new requests, the queue is drained
            state["ready"] = False
            state["stopping"] = True
            state["wake"].set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(state["worker"], timeout=cfg.deadline_s)
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="modelpress serve", lifespan=lifespan)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.requests.labels(str(status)).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = first.get("msg", "invalid request")
        return error(422, f"invalid request: {where + ': ' if where else ''}{msg}")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if state["ready"]:
            return JSONResponse({"status": "ready", **runtime.describe()})
        return JSONResponse({"status": "starting"}, status_code=503)

    @app.get("/metrics")
    async def prom() -> PlainTextResponse:
        metrics.queue.set(batcher.size)
        metrics.pad_tokens.set(batcher.padded_tokens)
        metrics.real_tokens.set(batcher.real_tokens)
        return PlainTextResponse(
            generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4"
        )

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> JSONResponse:
        t0 = time.monotonic()
        if not state["ready"] or state["stopping"]:
            return error(503, "the server is not ready", {"Retry-After": str(cfg.retry_after_s)})
        texts = [body.text] if isinstance(body.text, str) else body.text
        if not texts:
            return error(422, "text must be a non-empty string or a non-empty list of strings")
        if len(texts) > cfg.max_texts:
            return error(413, f"at most {cfg.max_texts} texts per request, got {len(texts)}")
        for t in texts:
            if not t.strip():
                return error(422, "every text must hold at least one non-space character")
            if len(t) > cfg.max_chars:
                return error(413, f"a text may hold at most {cfg.max_chars} characters, got {len(t)}")
        lengths = [runtime.length(t) for t in texts]
        longest = max(lengths)
        if longest > runtime.max_length:
            return error(
                413, f"text too long: {longest} tokens, the model takes at most {runtime.max_length}"
            )
        if batcher.size + len(texts) > cfg.policy.max_queue:
            batcher.rejected += len(texts)
            metrics.rejected.inc(len(texts))
            return error(503, "the server is busy: queue full", {"Retry-After": str(cfg.retry_after_s)})
        loop = asyncio.get_running_loop()
        items = [_Item(t, loop.create_future()) for t in texts]
        deadline = t0 + cfg.deadline_s
        for item, n in zip(items, lengths, strict=True):
            batcher.add(Request(n, t0, item, deadline))
        state["wake"].set()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(i.future for i in items)), timeout=cfg.deadline_s + 1.0
            )
        except TimeoutError:
            return error(504, f"not answered within the {cfg.deadline_s:g} s deadline")
        except RuntimeError as e:
            return error(500, str(e))
        finally:
            for i in items:  # a request that gave up (deadline, client gone) frees its queue slots
                if not i.future.done():
                    i.future.cancel()
        metrics.latency.observe(time.monotonic() - t0)
        metrics.requests.labels("200").inc()
        return JSONResponse({"results": results} if isinstance(body.text, list) else results[0])

    app.state.batcher = batcher
    app.state.metrics = metrics
    return app
