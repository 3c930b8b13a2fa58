"""Replicas on one machine: ``modelpress serve ARTIFACT --replicas N [--routing least-queue]``.

A front (FastAPI on uvicorn, HTTP only, no model) starts N replica processes
(``serve/worker.py``: each the single-process server of ``build_app`` with its own runtime,
batcher and share of the cores), waits until each says ``/ready``, and forwards every
``POST /v1/...`` request to one of them, picked by the routing policy (``serve/routing.py``:
round-robin, least-queue or power-of-two on the requests each has in flight). The body is
forwarded as is and the replica's answer (status, body, ``Retry-After``) comes back as is, so
validation, limits and error messages are the replica's, the same as without replicas; a
Server-Sent Events stream is relayed event by event.

Faults (docs/serving.md, "Replicas"): a supervisor task watches the processes. When a replica
dies (kill -9, out of memory, a crash) every request in flight on it is answered at once with
503 + ``Retry-After`` and a sentence naming the replica (a stream gets an ``event: error`` and
ends): never retried behind the client's back (it may have been half done, a generation half
sent), never answered twice. Routing skips the replica while it is restarted (with backoff
when it keeps dying), until its ``/ready`` says ready again. Every request is bounded by the
deadline plus a margin. Graceful shutdown: no new requests (503), the ones in flight finish,
then the replicas get SIGTERM (SIGKILL after a grace); a replica whose front is gone stops by
itself (``worker.watch_parent``), so none is left orphaned.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

from starlette.requests import Request as HTTPRequest  # module level: FastAPI resolves annotations here

from ..errors import ArtifactError, ConfigError, ModelpressError
from .batcher import BatchPolicy, DecodePolicy
from .routing import ROUTINGS, ReplicaLoad, make_router

__all__ = ["FrontConfig", "ReplicaError", "ReplicaSet", "create_front", "default_threads", "serve_replicas"]

log = logging.getLogger(__name__)

# what passes between the client and the replica, both ways (hop-by-hop headers do not)
_REQUEST_HEADERS = ("content-type", "accept")
_ANSWER_HEADERS = ("content-type", "retry-after", "cache-control")


class ReplicaError(ModelpressError):
    """The replicas could not be started (one exited or never became ready)."""


def default_threads(replicas: int) -> int:
    """Each replica's share of the cores this process may use: ``max(1, cores // replicas)``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // replicas)


@dataclasses.dataclass(frozen=True)
class FrontConfig:
    replicas: int = 2
    routing: str = "least-queue"  # least-queue | round-robin | power-of-two
    threads: int | None = None  # per replica; None: default_threads(replicas)
    policy: BatchPolicy = dataclasses.field(default_factory=BatchPolicy)
    decode: DecodePolicy = dataclasses.field(default_factory=DecodePolicy)
    deadline_s: float = 10.0  # the replicas' deadline; the front gives up at deadline + margin
    margin_s: float = 5.0
    startup_timeout_s: float = 300.0  # a replica not ready by then is killed (and restarted)
    restart_backoff_s: tuple[float, float] = (0.5, 10.0)  # first delay, most; doubles while it keeps dying
    stop_grace_s: float = 10.0  # SIGTERM, then SIGKILL after this
    max_in_flight: int = 4096  # requests the front holds at once before 503
    max_body_bytes: int = 64 << 20
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.replicas, int) or not 1 <= self.replicas <= 64:
            raise ConfigError(f"replicas must be an integer in [1, 64], got {self.replicas!r}")
        if self.routing not in ROUTINGS:
            raise ConfigError(f"routing must be one of {', '.join(ROUTINGS)}, got {self.routing!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads per replica must be an integer >= 1, got {self.threads!r}")
        if not 0 < self.deadline_s <= 600:
            raise ConfigError(f"deadline must be in (0, 600] s, got {self.deadline_s!r}")
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {self.max_in_flight!r}")

    @property
    def replica_threads(self) -> int:
        return self.threads or default_threads(self.replicas)


@dataclasses.dataclass(eq=False)
class _Life:
    """One incarnation of a replica, from its /ready to its death: requests in flight on it wait
    on ``died`` as well as on their answer."""

    proc: subprocess.Popen
    url: str
    client: Any  # httpx.AsyncClient
    died: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    in_flight: int = 0


class _Hold:
    """A request in flight on one replica's life, counted until released (once)."""

    def __init__(self, life: _Life, state: dict[str, Any]) -> None:
        self.life, self.state, self.done = life, state, False
        life.in_flight += 1
        state["in_flight"] += 1

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.life.in_flight -= 1
            self.state["in_flight"] -= 1


@dataclasses.dataclass(eq=False)
class _Slot:
    index: int
    state: str = "stopped"  # starting | ready | dead | stopped
    proc: subprocess.Popen | None = None
    port: int = 0
    life: _Life | None = None
    started_at: float = 0.0  # time.monotonic() of the last spawn
    ready_at: float = 0.0
    restart_at: float = 0.0
    failures: int = 0  # deaths in a row (reset once it has been ready a while)
    spawns: int = 0
    describe: dict[str, Any] = dataclasses.field(default_factory=dict)  # its /ready answer
    probing: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ReplicaSet:
    """The replica processes (start, restart, stop); the front's supervisor drives restarts."""

    def __init__(self, artifact: str | os.PathLike, config: FrontConfig | None = None) -> None:
        self.artifact = Path(artifact)
        if not self.artifact.exists():
            raise ArtifactError(f"{self.artifact} does not exist: give an artifact or an ONNX export")
        self.config = config or FrontConfig()
        self.slots = [_Slot(i) for i in range(self.config.replicas)]
        self._dir: str | None = None
        self.started = False
        atexit.register(self.kill)  # no replica outlives an interpreter that exits without stop()

    # -- processes -------------------------------------------------------------------------
    def _error_file(self, i: int) -> Path:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="modelpress-replicas-")
        return Path(self._dir) / f"replica-{i}.error"

    def spawn(self, i: int) -> None:
        """Start replica ``i`` (a fresh interpreter) on a socket bound here on an ephemeral
        loopback port and passed to it, so the port is known before it starts."""
        from . import worker

        cfg = self.config
        slot = self.slots[i]
        threads = cfg.replica_threads
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
        root = str(Path(__file__).resolve().parents[2])  # where this modelpress is imported from
        paths = env.get("PYTHONPATH", "").split(os.pathsep) if env.get("PYTHONPATH") else []
        if root not in paths:
            env["PYTHONPATH"] = os.pathsep.join([root, *paths])
        err = self._error_file(i)
        err.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            sock.listen(1024)
            fd = sock.fileno()
            cmd = [
                sys.executable,
                "-m",
                "modelpress.serve.worker",
                str(self.artifact),
                "--fd",
                str(fd),
                "--parent",
                str(os.getpid()),
                "--config",
                worker.worker_config(cfg.policy, cfg.decode, cfg.deadline_s, threads),
                "--error-file",
                str(err),
            ]
            slot.proc = subprocess.Popen(
                cmd, pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL, start_new_session=True
            )
            slot.port = sock.getsockname()[1]
        finally:
            sock.close()  # the replica holds its own copy; when it dies, connecting is refused
        slot.state, slot.life, slot.describe = "starting", None, {}
        slot.started_at = time.monotonic()
        slot.spawns += 1
        log.info("replica %d: pid %d on 127.0.0.1:%d", i, slot.proc.pid, slot.port)

    def exit_reason(self, i: int, when: str = "") -> str:
        """How replica ``i`` ended (``when``: e.g. "while starting"): its exit code or signal, and
        the start-up error it wrote, if any."""
        slot = self.slots[i]
        rc = slot.proc.returncode if slot.proc is not None else None
        if rc is None:
            how = "is still running"
        elif rc < 0:
            try:
                how = f"was killed by {signal.Signals(-rc).name}"
            except ValueError:
                how = f"was killed by signal {-rc}"
        else:
            how = f"exited with code {rc}"
        if when:
            how += " " + when
        err = self._error_file(i)
        if err.is_file():
            how += f": {err.read_text(encoding='utf-8').strip()}"
        return how

    def start(self) -> None:
        """Start every replica and wait until each is ready; a replica that exits or is not
        ready within ``startup_timeout_s`` stops them all with one ``ReplicaError``."""
        import httpx

        for slot in self.slots:
            self.spawn(slot.index)
        self.started = True
        t0 = time.monotonic()
        with httpx.Client(timeout=2.0) as client:
            while any(s.state == "starting" for s in self.slots):
                for s in self.slots:
                    if s.state != "starting":
                        continue
                    assert s.proc is not None
                    if s.proc.poll() is not None:
                        how = self.exit_reason(s.index, "while starting")  # before stop() removes it
                        self.stop()
                        raise ReplicaError(f"replica {s.index} {how}")
                    with contextlib.suppress(httpx.HTTPError):
                        r = client.get(s.url + "/ready")
                        if r.status_code == 200:
                            s.state, s.ready_at, s.describe = "ready", time.monotonic(), r.json()
                if time.monotonic() - t0 > self.config.startup_timeout_s:
                    self.stop()
                    raise ReplicaError(
                        f"the replicas were not ready within {self.config.startup_timeout_s:g} s"
                    )
                time.sleep(0.1)

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None]

    def stop(self) -> None:
        """SIGTERM every replica (each drains what it still holds), SIGKILL after the grace."""
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        end = time.monotonic() + self.config.stop_grace_s
        for p in procs:
            try:
                p.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "replica pid %d did not stop within %g s: killed", p.pid, self.config.stop_grace_s
                )
                p.kill()
                p.wait()
        for s in self.slots:
            s.state = "stopped"
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def kill(self) -> None:
        """SIGKILL whatever still runs (interpreter exit without ``stop``)."""
        for s in self.slots:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()

    def loads(self) -> list[ReplicaLoad]:
        return [
            ReplicaLoad(s.index, s.state == "ready" and s.life is not None, s.life.in_flight if s.life else 0)
            for s in self.slots
        ]


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "modelpress_front_requests", "Requests answered by the front, by status", ["status"], registry=r
        )
        self.latency = Histogram(
            "modelpress_front_request_latency_seconds",
            "Time from arrival at the front to the answer (to the end of a stream)",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.in_flight = Gauge("modelpress_front_in_flight", "Requests the front holds", registry=r)
        self.rejected = Counter(
            "modelpress_front_rejected", "Requests refused by the front", ["reason"], registry=r
        )
        self.replica_in_flight = Gauge(
            "modelpress_replica_in_flight", "Requests in flight per replica", ["replica"], registry=r
        )
        self.ready = Gauge(
            "modelpress_replica_ready", "1 while the replica takes requests", ["replica"], registry=r
        )
        self.routed = Counter(
            "modelpress_replica_routed", "Requests routed to the replica", ["replica"], registry=r
        )
        self.deaths = Counter("modelpress_replica_deaths", "Times the replica died", ["replica"], registry=r)
        self.restarts = Counter(
            "modelpress_replica_restarts", "Times the replica was restarted", ["replica"], registry=r
        )
        self.failed = Counter(
            "modelpress_replica_failed",
            "Requests failed by the replica's death, silence or time-out (refused: its socket was closed"
            " before the request was sent, so another replica took it)",
            ["replica", "reason"],
            registry=r,
        )


def create_front(replicas: ReplicaSet) -> Any:
    """The front's FastAPI app over ``replicas`` (started in its lifespan if not yet started)."""
    import httpx
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from prometheus_client import generate_latest

    cfg = replicas.config
    router = make_router(cfg.routing)
    metrics = _Metrics()
    busy = {"Retry-After": str(cfg.retry_after_s)}
    wait_s = cfg.deadline_s + cfg.margin_s
    state: dict[str, Any] = {"ready": False, "stopping": False, "in_flight": 0}
    background: set[asyncio.Task] = set()
    wake = asyncio.Event()

    def later(aw: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(aw)
        background.add(t)
        t.add_done_callback(background.discard)

    def new_life(slot: _Slot) -> _Life:
        assert slot.proc is not None
        client = httpx.AsyncClient(
            base_url=slot.url,
            timeout=httpx.Timeout(wait_s, connect=5.0),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=128),
        )
        return _Life(slot.proc, slot.url, client)

    async def probe(slot: _Slot) -> None:
        """Is a starting replica ready? Then it takes requests again."""
        try:
            async with httpx.AsyncClient(timeout=2.0) as c:
                r = await c.get(slot.url + "/ready")
            if r.status_code == 200 and slot.state == "starting" and slot.proc and slot.proc.poll() is None:
                slot.describe = r.json()
                slot.life = new_life(slot)
                slot.state, slot.ready_at = "ready", time.monotonic()
                log.warning("replica %d is ready again (pid %d)", slot.index, slot.proc.pid)
        except httpx.HTTPError:
            pass
        finally:
            slot.probing = False

    def on_death(slot: _Slot) -> None:
        how = replicas.exit_reason(slot.index)
        metrics.deaths.labels(str(slot.index)).inc()
        life, slot.life = slot.life, None
        if life is not None:
            life.died.set()  # its requests in flight answer now
            later(_close_soon(life.client))
        now = time.monotonic()
        if slot.state == "ready" and now - slot.ready_at > 30.0:
            slot.failures = 0  # it had been fine for a while: restart at once
        first, most = cfg.restart_backoff_s
        delay = min(most, first * 2**slot.failures)
        slot.failures += 1
        slot.state, slot.restart_at = "dead", now + delay
        log.warning("replica %d %s; restarting it in %.1f s", slot.index, how, delay)

    async def supervise() -> None:
        while True:
            now = time.monotonic()
            for slot in replicas.slots:
                proc = slot.proc
                if slot.state in ("starting", "ready") and proc is not None and proc.poll() is not None:
                    on_death(slot)
                elif slot.state == "dead" and now >= slot.restart_at and not state["stopping"]:
                    try:
                        replicas.spawn(slot.index)
                        metrics.restarts.labels(str(slot.index)).inc()
                    except OSError as e:  # no process could be started (fds, memory): try again later
                        slot.restart_at = now + cfg.restart_backoff_s[1]
                        log.warning("replica %d could not be restarted: %s", slot.index, e)
                elif slot.state == "starting" and proc is not None:
                    if now - slot.started_at > cfg.startup_timeout_s:
                        log.warning(
                            "replica %d not ready after %g s: killed", slot.index, cfg.startup_timeout_s
                        )
                        proc.kill()
                    elif not slot.probing:
                        slot.probing = True
                        later(probe(slot))
            wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=0.1)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if not replicas.started:
            await loop.run_in_executor(None, replicas.start)
        for slot in replicas.slots:
            if slot.state == "ready":
                slot.life = new_life(slot)
        sup = asyncio.create_task(supervise())
        state["ready"] = True
        try:
            yield
        finally:  # graceful: refuse new requests, let those in flight finish, then stop the replicas
            state["ready"], state["stopping"] = False, True
            end = time.monotonic() + wait_s
            while state["in_flight"] and time.monotonic() < end:
                await asyncio.sleep(0.05)
            sup.cancel()
            await asyncio.gather(sup, return_exceptions=True)
            await loop.run_in_executor(None, replicas.stop)
            for slot in replicas.slots:
                if slot.life is not None:
                    await slot.life.client.aclose()
                    slot.life = None
            for t in list(background):
                t.cancel()

    app = FastAPI(title="modelpress serve (replicas)", lifespan=lifespan)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.requests.labels(str(status)).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def replica_info() -> list[dict[str, Any]]:
        return [
            {
                "replica": s.index,
                "state": s.state,
                "pid": s.proc.pid if s.proc is not None else None,
                "in_flight": s.life.in_flight if s.life else 0,
                "restarts": max(0, s.spawns - 1),
            }
            for s in replicas.slots
        ]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        up = [s for s in replicas.slots if s.state == "ready" and s.life is not None]
        body = {"routing": cfg.routing, "replicas": replica_info()}
        if state["ready"] and not state["stopping"] and up:
            return JSONResponse({"status": "ready", **up[0].describe, **body})
        return JSONResponse(
            {"status": "draining" if state["stopping"] else "starting", **body}, status_code=503
        )

    @app.get("/metrics")
    async def prom() -> PlainTextResponse:
        metrics.in_flight.set(state["in_flight"])
        for s in replicas.slots:
            metrics.replica_in_flight.labels(str(s.index)).set(s.life.in_flight if s.life else 0)
            metrics.ready.labels(str(s.index)).set(1 if s.state == "ready" and s.life else 0)
        return PlainTextResponse(
            generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4"
        )

    @app.get("/replicas/{index}/metrics")
    async def replica_metrics(index: int) -> Response:
        """A replica's own /metrics (its batcher: batch sizes, padding, queue)."""
        if not 0 <= index < len(replicas.slots):
            return error(404, f"no replica {index}: there are {len(replicas.slots)}")
        slot = replicas.slots[index]
        if slot.life is None:
            return error(503, f"replica {index} is {slot.state}", busy)
        try:
            r = await slot.life.client.get("/metrics", timeout=5.0)
        except httpx.HTTPError as e:
            return error(502, f"replica {index} did not answer: {type(e).__name__}")
        return PlainTextResponse(r.text, status_code=r.status_code, media_type="text/plain; version=0.0.4")

    async def disconnected(http: HTTPRequest) -> None:
        """Returns once the client has gone (asked every 0.25 s)."""
        while not await http.is_disconnected():
            await asyncio.sleep(0.25)

    async def wait_dead(life: _Life, seconds: float) -> bool:
        """After a broken connection: is the replica dead? (The kernel closes its sockets as it
        dies, a moment before the process can be reaped.)"""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if life.died.is_set() or life.proc.poll() is not None:
                wake.set()
                return True
            await asyncio.sleep(0.02)
        return False

    async def race(aw: Awaitable[Any], life: _Life, http: HTTPRequest | None, end: float) -> tuple[str, Any]:
        """``aw`` against the replica's death, the client leaving and the front's deadline:
        ("ok", result) | ("died", None) | ("gone", None) | ("timeout", None) | ("error", exc)."""
        task = asyncio.ensure_future(aw)
        died = asyncio.ensure_future(life.died.wait())
        gone = asyncio.ensure_future(disconnected(http)) if http is not None else None
        try:
            done, _ = await asyncio.wait(
                {task, died} | ({gone} if gone else set()),
                timeout=max(0.0, end - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:  # we are cancelled (the client left a stream): so is the call
            task.cancel()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise
        finally:
            for f in (died, gone):
                if f is not None:
                    f.cancel()
        if task in done:
            exc = task.exception()
            if exc is None:
                return "ok", task.result()
            if isinstance(exc, httpx.TimeoutException):
                return "timeout", exc
            if isinstance(exc, httpx.TransportError) and await wait_dead(life, 1.0):
                return "died", exc
            return "error", exc
        task.cancel()  # closes the connection to the replica: it sees the client go
        await asyncio.gather(task, return_exceptions=True)
        if died in done:
            return "died", None
        return ("gone", None) if gone is not None and gone in done else ("timeout", None)

    def failure(outcome: str, slot: _Slot, exc: Any) -> tuple[int, str]:
        i = slot.index
        if outcome == "died":
            metrics.failed.labels(str(i), "died").inc()
            return 503, (
                f"replica {i} died while serving this request ({replicas.exit_reason(i)}); it is being "
                "restarted: retry"
            )
        if outcome == "timeout":
            metrics.failed.labels(str(i), "timeout").inc()
            return 504, f"replica {i} did not answer within {wait_s:g} s"
        if outcome == "gone":
            return 499, "the client closed the request"
        metrics.failed.labels(str(i), "unreachable").inc()
        return 502, f"replica {i} did not answer: {type(exc).__name__}: {exc}"

    async def read_body(http: HTTPRequest) -> bytes | None:
        chunks, n = [], 0
        async for chunk in http.stream():
            n += len(chunk)
            if n > cfg.max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/{name}", response_model=None)
    async def forward(name: str, http: HTTPRequest) -> Response:
        t0 = time.monotonic()
        end = t0 + wait_s
        if not state["ready"] or state["stopping"]:
            metrics.rejected.labels("not ready").inc()
            return error(
                503, "the server is not ready" if not state["stopping"] else "the server is stopping", busy
            )
        if state["in_flight"] >= cfg.max_in_flight:
            metrics.rejected.labels("front full").inc()
            return error(503, "the server is busy: too many requests in flight", busy)
        body = await read_body(http)
        if body is None:
            return error(413, f"a request body may hold at most {cfg.max_body_bytes:,} bytes")
        refused: set[int] = set()  # replicas that refused the connection: the request never reached them
        while True:
            loads = [
                dataclasses.replace(x, ready=False) if x.index in refused else x for x in replicas.loads()
            ]
            index = router.pick(loads)
            if index is None:
                metrics.rejected.labels("no replica ready").inc()
                states = ", ".join(f"{s.index}: {s.state}" for s in replicas.slots)
                return error(503, f"no replica is ready ({states}); they are being restarted: retry", busy)
            slot = replicas.slots[index]
            assert slot.life is not None
            hold = _Hold(slot.life, state)
            metrics.routed.labels(str(index)).inc()
            streaming = False
            try:
                life = hold.life
                headers = {k: v for k, v in http.headers.items() if k.lower() in _REQUEST_HEADERS}
                req = life.client.build_request(
                    "POST", "/v1/" + name, content=body, headers=headers, params=http.query_params
                )
                outcome, resp = await race(life.client.send(req, stream=True), life, http, end)
                if outcome == "died" and isinstance(resp, httpx.ConnectError):
                    # it died before this request reached it: nothing was done, so another may take it
                    metrics.failed.labels(str(index), "refused").inc()
                    refused.add(index)
                    continue
                if outcome != "ok":
                    return error(*failure(outcome, slot, resp), busy if outcome == "died" else None)
                out_headers = {k: v for k, v in resp.headers.items() if k.lower() in _ANSWER_HEADERS}
                if resp.status_code == 200 and resp.headers.get("content-type", "").startswith(
                    "text/event-stream"
                ):
                    streaming = True
                    metrics.requests.labels("200").inc()
                    return StreamingResponse(relay(resp, slot, hold, t0, end), headers=out_headers)
                outcome, content = await race(resp.aread(), life, http, end)
                later(resp.aclose())
                if outcome != "ok":
                    return error(*failure(outcome, slot, content), busy if outcome == "died" else None)
                metrics.requests.labels(str(resp.status_code)).inc()
                metrics.latency.observe(time.monotonic() - t0)
                return Response(content, status_code=resp.status_code, headers=out_headers)
            finally:
                if not streaming:
                    hold.release()

    async def relay(resp: Any, slot: _Slot, hold: _Hold, t0: float, end: float) -> AsyncIterator[bytes]:
        """The replica's events, whole ones only; if it dies (or stalls past the deadline)
        mid-stream: one ``event: error`` naming it, with the tokens sent so far, then the end."""
        stream = resp.aiter_raw()

        async def next_chunk() -> bytes | None:
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return None

        buf, tokens = b"", 0
        try:
            while True:
                outcome, chunk = await race(next_chunk(), hold.life, None, end)
                if outcome != "ok":
                    _, message = failure(outcome, slot, chunk)
                    yield (
                        "event: error\ndata: " + json.dumps({"error": message, "tokens": tokens}) + "\n\n"
                    ).encode()
                    return
                if chunk is None:
                    if buf:
                        yield buf
                    metrics.latency.observe(time.monotonic() - t0)
                    return
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if line.startswith(b"data: "):
                            with contextlib.suppress(ValueError, AttributeError, TypeError):
                                tokens = int(json.loads(line[6:]).get("tokens", tokens))
                    yield event + b"\n\n"
        finally:
            hold.release()
            later(resp.aclose())

    app.state.replicas = replicas
    app.state.metrics = metrics
    return app


async def _close_soon(client: Any) -> None:
    await asyncio.sleep(1.0)  # the requests it served have been answered
    await client.aclose()


def serve_replicas(
    artifact: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: FrontConfig | None = None,
) -> None:
    """Start the replicas (a start-up failure is one ``ReplicaError``), then serve the front
    until interrupted; the replicas are stopped on the way out."""
    import uvicorn

    replicas = ReplicaSet(artifact, config)
    replicas.start()
    try:
        cfg = replicas.config
        uvicorn.run(
            create_front(replicas),
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=int(cfg.deadline_s + cfg.margin_s) + 1,
        )
    finally:
        replicas.stop()
