"""The app: HTTP only (FastAPI on uvicorn), in front of one batcher and one runtime.

Endpoints: ``POST /v1/classify`` (``{"text": "..."}`` or ``{"text": ["...", ...]}``; an image
classifier: ``{"image": "<base64>"}``, ``{"image": [...]}`` or one image as the raw body),
``POST /v1/embed`` (same body, encoders), ``POST /v1/generate`` (causal LMs: continuous
batching, one JSON answer or Server-Sent Events), ``GET /health`` (the process answers),
``GET /ready`` (the model is loaded and warmed up),
``GET /metrics`` (Prometheus text: queue depth, batch sizes, padding share, latency,
rejects). Bad input is a 4xx with one message; a full queue is 503 with ``Retry-After``; a
request not answered by its deadline is 504. A client that goes away frees its slot. See
docs/serving.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.requests import (
    Request as HTTPRequest,
)  # at module level: FastAPI resolves endpoint annotations here

from ..errors import ConfigError, DataError
from .batcher import Batcher, BatchPolicy, DecodePolicy, DecodeScheduler, Request

__all__ = ["GenerateRequest", "ServeConfig", "create_app"]

_gen_ids = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    policy: BatchPolicy = dataclasses.field(default_factory=BatchPolicy)
    deadline_s: float = 10.0  # a request not answered by then gets 504
    max_texts: int = 64  # texts per request
    max_chars: int = 20_000  # characters per text
    retry_after_s: int = 1
    decode: DecodePolicy = dataclasses.field(default_factory=DecodePolicy)  # causal LMs
    max_new_tokens: int = 512  # the most a generation request may ask for
    max_stop: int = 4  # stop strings per request
    max_stop_chars: int = 64
    max_images: int = 64  # images per request (image classifiers)
    max_image_bytes: int = 8 << 20  # one encoded image (PNG, JPEG ...)
    max_image_pixels: int = 1 << 24  # width x height of one image (4096 x 4096), read from its header
    max_body_bytes: int = 32 << 20  # one request body with images (JSON with base64)

    def __post_init__(self) -> None:
        if not 0 < self.deadline_s <= 600:
            raise ConfigError(f"deadline must be in (0, 600] s, got {self.deadline_s!r}")


class ClassifyRequest(BaseModel):
    """``{"text": "..."}`` or ``{"text": ["...", ...]}``; nothing else (strict types)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | list[str]


class GenerateRequest(BaseModel):
    """``POST /v1/generate``: strict types, no extra fields."""

    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: list[str] = []
    stream: bool = False
    seed: int | None = None


@dataclasses.dataclass
class _Item:
    text: Any  # a text; for an image classifier, one decoded image (uint8 (c, H, W))
    future: asyncio.Future
    kind: str = "classify"  # classify | embed


@dataclasses.dataclass
class _Gen:
    """An HTTP generation request: the runtime's state and the queue its outputs arrive on."""

    req: Any  # runtime.GenRequest
    out: asyncio.Queue
    cancelled: bool = False


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
        self.gen_tokens = Counter("modelpress_generated_tokens", "Tokens generated", registry=r)
        self.running = Gauge("modelpress_running", "Generations in the running batch", registry=r)
        self.decode_batch = Histogram(
            "modelpress_decode_batch_size",
            "Sequences per decode step",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.cancelled = Counter(
            "modelpress_cancelled", "Generations stopped: client gone or deadline passed", registry=r
        )


def create_app(runtime: Any, config: ServeConfig | None = None) -> Any:
    """A FastAPI app serving ``runtime``: ``ClassifierRuntime`` (classify / embed, dynamic
    batching) or ``CausalLMRuntime`` (generate, continuous batching)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from prometheus_client import generate_latest

    cfg = config or ServeConfig()
    is_lm = getattr(runtime, "task", "") == "text-generation"
    is_image = getattr(runtime, "task", "") == "image-classification"
    batcher = Batcher(cfg.policy)
    sched = DecodeScheduler(cfg.decode)
    gens: dict[int, _Gen] = {}  # id -> generation request (queued or running)
    metrics = _Metrics()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelpress-runtime")
    state: dict[str, Any] = {"ready": False, "stopping": False, "wake": None, "worker": None}
    busy = {"Retry-After": str(cfg.retry_after_s)}
    # images are decoded off the event loop, two at a time (bounds the memory decodes take)
    decoder = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="modelpress-decode")

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
            metrics.batch.observe(len(items))
            for kind in ("classify", "embed"):
                part = [i for i in items if i.kind == kind]
                if not part:
                    continue
                fn = runtime.run if kind == "classify" else runtime.embed
                try:
                    results = await loop.run_in_executor(executor, fn, [i.text for i in part])
                except Exception as e:  # the model failed: every request of the batch learns it
                    for i in part:
                        if not i.future.done():
                            i.future.set_exception(RuntimeError(f"the model failed on this batch: {e}"))
                    continue
                for i, res in zip(part, results, strict=True):
                    if not i.future.done():
                        i.future.set_result(res)
            metrics.padding.set(batcher.padding_share)

    def _finish(g: _Gen, item: Any) -> None:
        """A generation leaves the scheduler; ``item`` (an exception or None) ends its stream."""
        sched.remove(g.req.id)
        gens.pop(g.req.id, None)
        if item is not None:
            g.out.put_nowait(item)

    async def gen_worker() -> None:
        """The decode loop: one runtime step per iteration; joins and leaves between steps."""
        loop = asyncio.get_running_loop()
        wake: asyncio.Event = state["wake"]
        while True:
            now = time.monotonic()
            for r in sched.drop_expired(now):  # still waiting at the deadline
                metrics.expired.inc()
                _finish(r.payload, TimeoutError())
            cancel: set[int] = set()
            for rid, r in list(sched.running.items()):
                g = r.payload
                if g.cancelled or (r.deadline is not None and r.deadline <= now):
                    cancel.add(rid)
                    metrics.cancelled.inc()
                    _finish(g, None if g.cancelled else TimeoutError())
            for r in list(sched.waiting):
                if r.payload.cancelled:
                    _finish(r.payload, None)
            admit = sched.admit()
            metrics.queue.set(sched.size)
            if not admit and not sched.running and not cancel:
                if state["stopping"] and sched.size == 0:
                    return
                wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=0.5)
                continue
            metrics.decode_batch.observe(len(sched.running))
            metrics.running.set(len(sched.running))
            try:
                outs = await loop.run_in_executor(
                    executor, runtime.step, [r.payload.req for r in admit], cancel
                )
            except Exception as e:  # the model failed: every running request learns it, the batch restarts
                err = RuntimeError(f"the model failed during generation: {e}")
                for r in list(sched.running.values()):
                    _finish(r.payload, err)
                runtime.reset()  # the runtime's rows go too
                continue
            for o in outs:
                g = gens.get(o.id)
                if g is None:
                    continue
                metrics.gen_tokens.inc()
                g.out.put_nowait(o)
                if o.finish is not None:
                    _finish(g, None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state["wake"] = asyncio.Event()
        loop = asyncio.get_running_loop()
        warm = cfg.decode.max_running if is_lm else cfg.policy.max_batch_size
        await loop.run_in_executor(executor, runtime.warm_up, warm)
        state["worker"] = asyncio.create_task(gen_worker() if is_lm else worker())
        state["ready"] = True
        try:
            yield
        finally:  # graceful shutdown: no new requests, the queue is drained
            state["ready"] = False
            state["stopping"] = True
            state["wake"].set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(state["worker"], timeout=cfg.deadline_s + 1.0)
            executor.shutdown(wait=False, cancel_futures=True)
            decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="modelpress serve", lifespan=lifespan)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.requests.labels(str(status)).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(http: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        what = http.url.path.rpartition("/")[2]
        if is_image and what in ("embed", "generate"):  # their bodies are text: the endpoint is not served
            refused = not_served(what)
            if refused is not None:
                return refused
        ctype = http.headers.get("content-type", "").split(";")[0].strip().lower()
        sent_image = ctype.startswith(("image/", "multipart/")) or ctype == "application/octet-stream"
        if (
            not is_lm
            and what in ("classify", "embed")
            and (sent_image or any(tuple(e.get("loc", ()))[:2] == ("body", "image") for e in exc.errors()))
        ):
            return error(
                415 if sent_image else 422,
                'this server classifies text and takes no images: send {"text": "..."} or '
                '{"text": ["...", ...]} as JSON',
            )
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
        metrics.queue.set(sched.size if is_lm else batcher.size)
        metrics.pad_tokens.set(batcher.padded_tokens)
        metrics.real_tokens.set(batcher.real_tokens)
        return PlainTextResponse(
            generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4"
        )

    def not_served(what: str) -> JSONResponse | None:
        if is_image and what != "classify":
            return error(
                404, f"this artifact is an image classifier: POST /v1/{what} is not served, use /v1/classify"
            )
        if what == "generate" and not is_lm:
            return error(404, "this artifact is not a causal LM: POST /v1/generate is not served")
        if what != "generate" and is_lm:
            return error(
                404, f"this artifact is a causal LM: POST /v1/{what} is not served, use /v1/generate"
            )
        if what == "classify" and not getattr(runtime, "can_classify", True):
            return error(404, "this artifact has no classification head: POST /v1/classify is not served")
        if what == "embed" and not getattr(runtime, "can_embed", False):
            return error(
                404, "this runtime gives no hidden states (ONNX export): POST /v1/embed is not served"
            )
        if not state["ready"] or state["stopping"]:
            return error(503, "the server is not ready", busy)
        return None

    async def texts_through_batcher(
        body: ClassifyRequest, kind: str
    ) -> tuple[list[Any] | None, JSONResponse | None]:
        t0 = time.monotonic()
        texts = [body.text] if isinstance(body.text, str) else body.text
        if not texts:
            return None, error(422, "text must be a non-empty string or a non-empty list of strings")
        if len(texts) > cfg.max_texts:
            return None, error(413, f"at most {cfg.max_texts} texts per request, got {len(texts)}")
        for t in texts:
            if not t.strip():
                return None, error(422, "every text must hold at least one non-space character")
            if len(t) > cfg.max_chars:
                return None, error(413, f"a text may hold at most {cfg.max_chars} characters, got {len(t)}")
        lengths = [runtime.length(t) for t in texts]
        longest = max(lengths)
        if longest > runtime.max_length:
            return None, error(
                413, f"text too long: {longest} tokens, the model takes at most {runtime.max_length}"
            )
        if batcher.size + len(texts) > cfg.policy.max_queue:
            batcher.rejected += len(texts)
            metrics.rejected.inc(len(texts))
            return None, error(503, "the server is busy: queue full", busy)
        loop = asyncio.get_running_loop()
        items = [_Item(t, loop.create_future(), kind) for t in texts]
        deadline = t0 + cfg.deadline_s
        for item, n in zip(items, lengths, strict=True):
            batcher.add(Request(n, t0, item, deadline))
        state["wake"].set()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(i.future for i in items)), timeout=cfg.deadline_s + 1.0
            )
        except TimeoutError:
            return None, error(504, f"not answered within the {cfg.deadline_s:g} s deadline")
        except RuntimeError as e:
            return None, error(500, str(e))
        finally:
            for i in items:  # a request that gave up (deadline, client gone) frees its queue slots
                if not i.future.done():
                    i.future.cancel()
        metrics.latency.observe(time.monotonic() - t0)
        metrics.requests.labels("200").inc()
        return list(results), None

    async def classify(body: ClassifyRequest) -> JSONResponse:
        refused = not_served("classify")
        if refused is not None:
            return refused
        results, err = await texts_through_batcher(body, "classify")
        if err is not None or results is None:
            return err  # type: ignore[return-value]
        return JSONResponse({"results": results} if isinstance(body.text, list) else results[0])

    # ---- images (an image classifier's /v1/classify) ----------------------------------
    takes = (
        '{"image": "<base64 PNG/JPEG>"} or {"image": ["...", ...]} as JSON, or one image as the raw body '
        "(content-type image/png, image/jpeg ...)"
    )

    async def read_body(http: HTTPRequest, limit: int) -> bytes | None:
        """The request body, or None when it is over ``limit`` bytes (read no further)."""
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return None
        chunks, n = [], 0
        async for chunk in http.stream():
            n += len(chunk)
            if n > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def from_base64(text: str, where: str) -> bytes | JSONResponse:
        text = text.strip()
        if text.startswith("data:"):  # a data URL: data:image/png;base64,...
            head, comma, text = text.partition(",")
            if not comma or not head.endswith(";base64"):
                return error(422, f"{where}: a data URL must be base64 (data:image/png;base64,...)")
        text = "".join(text.split())  # the line breaks of `base64` without -w0
        if not text:
            return error(422, f"{where} is empty: send the base64 of a PNG / JPEG file")
        if len(text) > 4 * ((cfg.max_image_bytes + 2) // 3):
            return error(413, f"{where} is over {cfg.max_image_bytes:,} bytes; the server takes at most that")
        try:
            blob = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return error(422, f"{where} is not valid base64 (send the file's bytes base64-encoded)")
        if len(blob) > cfg.max_image_bytes:
            return error(413, f"{where} is over {cfg.max_image_bytes:,} bytes; the server takes at most that")
        return blob

    def images_from_json(body: bytes) -> tuple[list[bytes], bool] | JSONResponse:
        """The encoded images of a JSON body and whether they came as a list, or the 4xx."""
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            return error(422, f"invalid request: the body is not JSON ({e}); this server takes {takes}")
        if not isinstance(obj, dict):
            return error(422, f"invalid request: the body must be a JSON object, {takes}")
        if "image" not in obj:
            if "text" in obj:
                return error(422, f"this server classifies images, not text: send {takes}")
            return error(422, f"invalid request: image: Field required; this server takes {takes}")
        extra = sorted(str(k) for k in obj if k != "image")
        if extra:
            return error(422, f"invalid request: {extra[0]}: Extra inputs are not permitted (only image)")
        value = obj["image"]
        listed = isinstance(value, list)
        items = value if listed else [value]
        if not all(isinstance(v, str) for v in items):
            return error(422, "invalid request: image must be a base64 string or a list of base64 strings")
        if not items:
            return error(422, "image must be a non-empty string or a non-empty list of strings")
        if len(items) > cfg.max_images:
            return error(413, f"at most {cfg.max_images} images per request, got {len(items)}")
        blobs = []
        for k, v in enumerate(items):
            blob = from_base64(v, f"image {k + 1} of {len(items)}" if listed else "the image")
            if isinstance(blob, JSONResponse):
                return blob
            blobs.append(blob)
        return blobs, listed

    async def classify_image(http: HTTPRequest) -> JSONResponse:
        from ..data.images import ImageTooLarge

        t0 = time.monotonic()
        refused = not_served("classify")
        if refused is not None:
            return refused
        ctype = http.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            raw = await read_body(http, cfg.max_image_bytes)
            if raw is None:
                return error(413, f"the image is over {cfg.max_image_bytes:,} bytes, the server's limit")
            if not raw:
                return error(422, f"the request body is empty: send {takes}")
            blobs, listed = [raw], False
        elif ctype in ("", "application/json") or ctype.endswith("+json"):
            raw = await read_body(http, cfg.max_body_bytes)
            if raw is None:
                return error(413, f"the request body is over {cfg.max_body_bytes:,} bytes")
            if not raw.strip():
                return error(422, f"the request body is empty: send {takes}")
            parsed = images_from_json(raw)
            if isinstance(parsed, JSONResponse):
                return parsed
            blobs, listed = parsed
        elif ctype.startswith("multipart/"):
            return error(415, f"multipart uploads are not taken: send {takes}")
        else:
            return error(415, f"this server classifies images and takes no {ctype} body: send {takes}")
        loop = asyncio.get_running_loop()
        images = []
        for k, blob in enumerate(blobs):
            where = f"image {k + 1} of {len(blobs)}" if listed else "the image"
            decode = functools.partial(runtime.decode, blob, max_pixels=cfg.max_image_pixels, where=where)
            try:
                images.append(await loop.run_in_executor(decoder, decode))
            except ImageTooLarge as e:
                return error(413, str(e))
            except DataError as e:
                return error(422, str(e))
            except Exception as e:  # a decoder failure is the image's fault: a 4xx, never a 500
                return error(422, f"cannot decode {where}: {type(e).__name__}")
        if batcher.size + len(images) > cfg.policy.max_queue:
            batcher.rejected += len(images)
            metrics.rejected.inc(len(images))
            return error(503, "the server is busy: queue full", busy)
        items = [_Item(im, loop.create_future(), "classify") for im in images]
        deadline = t0 + cfg.deadline_s
        for item in items:  # every image has the model's shape after preprocessing: one length
            batcher.add(Request(1, t0, item, deadline))
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
            for i in items:  # a request that gave up frees its queue slots
                if not i.future.done():
                    i.future.cancel()
        metrics.latency.observe(time.monotonic() - t0)
        metrics.requests.labels("200").inc()
        return JSONResponse({"results": list(results)} if listed else results[0])

    app.post("/v1/classify")(classify_image if is_image else classify)

    @app.post("/v1/embed")
    async def embed(body: ClassifyRequest) -> JSONResponse:
        refused = not_served("embed")
        if refused is not None:
            return refused
        results, err = await texts_through_batcher(body, "embed")
        if err is not None or results is None:
            return err  # type: ignore[return-value]
        dim = len(results[0])
        if isinstance(body.text, list):
            return JSONResponse({"embeddings": results, "dim": dim})
        return JSONResponse({"embedding": results[0], "dim": dim})

    def check_generate(body: GenerateRequest) -> tuple[list[int] | None, JSONResponse | None]:
        if not body.prompt.strip():
            return None, error(422, "prompt must hold at least one non-space character")
        if len(body.prompt) > cfg.max_chars:
            return None, error(
                413, f"a prompt may hold at most {cfg.max_chars} characters, got {len(body.prompt)}"
            )
        if not 1 <= body.max_new_tokens <= cfg.max_new_tokens:
            return None, error(
                422, f"max_new_tokens must be in [1, {cfg.max_new_tokens}], got {body.max_new_tokens}"
            )
        if not (0.0 <= body.temperature <= 5.0) or body.temperature != body.temperature:
            return None, error(422, f"temperature must be in [0, 5] (0: greedy), got {body.temperature}")
        if not 0.0 < body.top_p <= 1.0:
            return None, error(422, f"top_p must be in (0, 1], got {body.top_p}")
        if len(body.stop) > cfg.max_stop or any(not s or len(s) > cfg.max_stop_chars for s in body.stop):
            return None, error(
                422, f"stop: at most {cfg.max_stop} strings of 1 to {cfg.max_stop_chars} characters each"
            )
        ids = runtime.encode(body.prompt)
        limit = runtime.max_positions
        if len(ids) + body.max_new_tokens > limit:
            return None, error(
                413,
                f"prompt too long: {len(ids)} tokens + max_new_tokens {body.max_new_tokens} exceed the "
                f"model's {limit} positions",
            )
        return ids, None

    @app.post("/v1/generate", response_model=None)
    async def generate(body: GenerateRequest, http: HTTPRequest) -> JSONResponse | StreamingResponse:
        from .runtime import GenRequest

        t0 = time.monotonic()
        refused = not_served("generate")
        if refused is not None:
            return refused
        ids, err = check_generate(body)
        if err is not None or ids is None:
            return err  # type: ignore[return-value]
        req = GenRequest(
            id=next(_gen_ids),
            prompt_ids=ids,
            max_new_tokens=body.max_new_tokens,
            temperature=float(body.temperature),
            top_p=float(body.top_p),
            stop=tuple(body.stop),
            seed=body.seed,
        )
        g = _Gen(req, asyncio.Queue())
        if not sched.add(Request(len(ids), t0, g, t0 + cfg.deadline_s, id=req.id)):
            metrics.rejected.inc()
            return error(503, "the server is busy: queue full", busy)
        gens[req.id] = g
        state["wake"].set()

        def leave() -> None:  # the client is gone: the worker stops its generation at the next step
            if req.id in gens:
                g.cancelled = True
                state["wake"].set()

        async def outputs() -> AsyncIterator[Any]:
            """The request's outputs until its end; raises TimeoutError / RuntimeError. Every
            0.25 s it asks whether the client is still there (the tokens may keep coming)."""
            checked = time.monotonic()
            while True:
                try:
                    item = await asyncio.wait_for(g.out.get(), timeout=0.25)
                except TimeoutError:
                    item = None
                now = time.monotonic()
                if now - checked >= 0.25:
                    checked = now
                    if await http.is_disconnected():
                        leave()
                        return
                if item is None:
                    if now > t0 + cfg.deadline_s + 2.0:  # the worker is stuck: give up
                        leave()
                        raise TimeoutError()
                    continue
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finish is not None:
                    return

        if body.stream:

            async def events() -> AsyncIterator[str]:
                n = 0
                try:
                    async for o in outputs():
                        n = o.tokens
                        ev: dict[str, Any] = {"text": o.text, "tokens": o.tokens}
                        if o.finish is not None:
                            ev["finish_reason"] = o.finish
                            metrics.latency.observe(time.monotonic() - t0)
                        yield f"data: {json.dumps(ev)}\n\n"
                except TimeoutError:
                    yield (
                        "event: error\ndata: "
                        + json.dumps(
                            {"error": f"not finished within the {cfg.deadline_s:g} s deadline", "tokens": n}
                        )
                        + "\n\n"
                    )
                except RuntimeError as e:
                    yield "event: error\ndata: " + json.dumps({"error": str(e), "tokens": n}) + "\n\n"
                finally:  # closed early (client gone, server stopping): free the slot
                    leave()

            metrics.requests.labels("200").inc()
            return StreamingResponse(
                events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )

        parts: list[str] = []
        last = None
        try:
            async for o in outputs():
                parts.append(o.text)
                last = o
        except TimeoutError:
            return error(504, f"not finished within the {cfg.deadline_s:g} s deadline")
        except RuntimeError as e:
            return error(500, str(e))
        finally:
            leave()
        if last is None:  # the client left
            return error(499, "the client closed the request")
        metrics.latency.observe(time.monotonic() - t0)
        metrics.requests.labels("200").inc()
        return JSONResponse(
            {
                "text": "".join(parts),
                "tokens": last.tokens,
                "prompt_tokens": len(ids),
                "finish_reason": last.finish,
            }
        )

    app.state.batcher = batcher
    app.state.scheduler = sched
    app.state.generations = gens
    app.state.metrics = metrics
    return app
