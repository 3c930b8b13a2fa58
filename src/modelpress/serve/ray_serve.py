"""Scale-out on Ray Serve: ``modelpress serve ARTIFACT --ray --replicas N`` (the ``ray`` extra).

The same server as ``modelpress serve`` (``build_app``: runtime + batcher + FastAPI app), run by
Ray Serve as a deployment of N replicas: each replica is a Ray actor that opens the artifact with
``open_runtime`` and builds the app of ``build_app`` (``serve.ingress`` with the app built late,
in the replica, so no model is pickled), and Ray Serve's HTTP proxy forwards each request to one
replica picked by Ray's router (its default, power of two choices: it draws two replicas and
sends the request to the one with fewer requests in flight, so it is queue-aware). Validation,
limits, error messages, endpoints, dynamic batching and the app's lifespan (warm-up before the
replica takes traffic, draining on shutdown) are therefore exactly those of the local server.

What Ray adds and how it is set here (docs/serving.md, "Ray Serve"):

- ``max_ongoing_requests`` per replica: what the router lets a replica hold at once. Ray's
  default (5) would starve the batcher; it is twice the larger of ``max_batch_size`` and
  ``max_running`` (one batch running, one filling), at most the replica's ``max_queue``.
- each replica reserves its threads as Ray CPUs and runs the model on that many threads.
- a local Ray listens on 127.0.0.1 only (``_single_machine``, ``_replica_grpc_on_loopback``).
- ``max_queued_requests``: requests waiting at the proxy for a replica; past it, 503 with
  ``Retry-After`` (``backpressure_config``), like the local server's full queue.
- ``request_timeout_s`` of the proxy: the deadline plus a margin (the app answers 504 first).
- a replica that dies is restarted by Ray's controller; what its requests in flight get is
  Ray's answer (not the ``--replicas`` front's 503 naming the replica; not tested here).

Ray is imported lazily: ``modelpress.serve`` imports without it; without the extra every entry
point here raises one :class:`RayNotInstalled` sentence naming ``pip install 'modelpress[ray]'``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, ConfigError, ModelpressError
from .batcher import BatchPolicy, DecodePolicy

__all__ = [
    "RayConfig",
    "RayNotInstalled",
    "RayServer",
    "import_ray",
    "ray_application",
    "run_until_interrupted",
    "serve_ray",
]

log = logging.getLogger(__name__)

APP_NAME = "modelpress"
INSTALL = "pip install 'modelpress[ray]'"


class RayNotInstalled(ModelpressError, ImportError):
    """Ray Serve is not installed (the ``ray`` extra)."""


def import_ray() -> tuple[Any, Any]:
    """``(ray, ray.serve)``, or one :class:`RayNotInstalled` sentence."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise RayNotInstalled(
            f"serving on Ray needs Ray Serve, which is not installed ({e}): {INSTALL}"
        ) from None
    return ray, serve


@dataclasses.dataclass(frozen=True)
class RayConfig:
    replicas: int = 2
    threads: int | None = None  # CPU threads per replica; None: default_threads(replicas)
    policy: BatchPolicy = dataclasses.field(default_factory=BatchPolicy)
    decode: DecodePolicy = dataclasses.field(default_factory=DecodePolicy)
    deadline_s: float = 10.0
    margin_s: float = 5.0  # the proxy gives up at deadline + margin (the app answers 504 first)
    max_ongoing_requests: int | None = None  # per replica; None: see the module docstring
    max_queued_requests: int | None = None  # at the proxy before 503; None: policy.max_queue
    num_cpus: float | None = None  # Ray CPUs each replica reserves; None: its threads
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.replicas, int) or not 1 <= self.replicas <= 1024:
            raise ConfigError(f"replicas must be an integer in [1, 1024], got {self.replicas!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads per replica must be an integer >= 1, got {self.threads!r}")
        if not 0 < self.deadline_s <= 600:
            raise ConfigError(f"deadline must be in (0, 600] s, got {self.deadline_s!r}")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise ConfigError(f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests!r}")
        if self.max_queued_requests is not None and self.max_queued_requests < 1:
            raise ConfigError(f"max_queued_requests must be >= 1, got {self.max_queued_requests!r}")
        if self.num_cpus is not None and not self.num_cpus >= 0:
            raise ConfigError(f"num_cpus per replica must be >= 0, got {self.num_cpus!r}")

    @property
    def replica_threads(self) -> int:
        from .replicas import default_threads

        return self.threads or default_threads(self.replicas)

    @property
    def ongoing(self) -> int:
        """Requests the router lets one replica hold: two batches' worth, within its queue."""
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        per_batch = max(self.policy.max_batch_size, self.decode.max_running)
        return max(1, min(2 * per_batch, max(self.policy.max_queue, self.decode.max_queue)))

    @property
    def queued(self) -> int:
        return self.max_queued_requests or self.policy.max_queue


def _replica_grpc_on_loopback() -> None:
    """On a single-machine Ray: the gRPC server a Ray Serve 2.60 replica opens for calls
    between deployments listens on 127.0.0.1 instead of ``[::]`` (all interfaces, hard-coded
    in ``ray/serve/_private/replica.py``; it is started after the replica's constructor, which
    calls this). modelpress runs one deployment; the proxy reaches it on the node's address,
    127.0.0.1. Any other address is left as Ray gives it."""
    try:
        from ray.serve._private import replica
    except ImportError:  # another Ray layout: nothing to do
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "modelpress_loopback", False):
        return

    def add_port(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address[len("[::]:") :]
        return original(server, address)

    add_port.modelpress_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port


class _Replica:
    """One Ray Serve replica: the single-process server of ``build_app`` (same runtime, batcher
    and app). Ray calls ``__serve_build_asgi_app__`` in the replica after ``__init__`` and runs
    the app's lifespan (warm-up) before it routes requests to it."""

    def __init__(self, artifact: str, settings: dict[str, Any], loopback: bool = False) -> None:
        self.artifact = artifact
        self.settings = settings
        if loopback:
            _replica_grpc_on_loopback()

    def __serve_build_asgi_app__(self) -> Any:
        from . import build_app
        from .worker import read_worker_config

        policy, decode, deadline_s, threads = read_worker_config(self.settings)
        return build_app(self.artifact, policy=policy, decode=decode, deadline_s=deadline_s, threads=threads)


def ray_application(
    artifact: str | os.PathLike, config: RayConfig | None = None, *, loopback: bool = False
) -> Any:
    """The Ray Serve application (``serve.run`` it): ``config.replicas`` replicas of the
    artifact's server. The artifact's path must be readable on every node a replica runs on.
    ``loopback``: a single-machine Ray (every replica server on 127.0.0.1)."""
    cfg = config or RayConfig()
    path = Path(artifact).resolve()
    if not path.is_dir():
        raise ArtifactError(f"{artifact}: not an artifact directory (modelpress compress / save / export)")
    _, serve = import_ray()
    from ray.serve.config import BackpressureConfig

    from .worker import worker_config

    threads = cfg.replica_threads
    settings = json.loads(worker_config(cfg.policy, cfg.decode, cfg.deadline_s, threads))
    deployment = serve.deployment(
        serve.ingress()(_Replica),
        name="modelpress",
        num_replicas=cfg.replicas,
        max_ongoing_requests=cfg.ongoing,
        max_queued_requests=cfg.queued,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=cfg.retry_after_s),
        graceful_shutdown_timeout_s=cfg.deadline_s + 1.0,  # the app drains its queue on shutdown
        max_constructor_retry_count=2,  # an artifact that cannot be opened fails fast, not 20 times
        ray_actor_options={
            "num_cpus": threads if cfg.num_cpus is None else cfg.num_cpus,
            # the model's threads: torch.set_num_threads in the runtime, and OpenMP / MKL pools
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}},
        },
    )
    return deployment.bind(str(path), settings, loopback)


def _single_machine(ray: Any) -> Any:
    """Make the Ray this process starts a single-machine one: its node address 127.0.0.1, so
    GCS, raylet, agents and workers listen on loopback only. Ray resolves an explicit
    ``_node_ip_address="127.0.0.1"`` to the machine's routable address unless clusters are off
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the switch its macOS / Windows builds use; read
    when ray is imported, so the module constant is set too). Returns what undoes it."""
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    old_env, old_const = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name] = "0"  # Ray's own processes
    ray_constants.ENABLE_RAY_CLUSTER = False  # this one (ray is already imported)

    def restore() -> None:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old_env

    return restore


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RayServer:
    """Ray Serve with the artifact's deployment, on a local Ray started for it (or an existing
    cluster: ``address``), until closed:
    ``with RayServer(artifact, RayConfig(replicas=2)) as s: httpx.get(s.url + "/health")``.

    A local Ray listens on 127.0.0.1 only (``_node_ip_address``), without its dashboard, and is
    stopped by :meth:`close` (Serve first: the replicas drain). ``port=0`` picks a free port.
    ``num_cpus``: the CPUs a local Ray schedules (None: what the replicas reserve)."""

    def __init__(
        self,
        artifact: str | os.PathLike,
        config: RayConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        address: str | None = None,
        num_cpus: int | None = None,
        temp_dir: str | os.PathLike | None = None,
    ) -> None:
        self.artifact, self.config = artifact, config or RayConfig()
        self.host, self.port, self.address = host, port, address
        if num_cpus is None and address is None:  # what the replicas reserve, no idle workers beyond
            per = self.config.replica_threads if self.config.num_cpus is None else self.config.num_cpus
            num_cpus = max(1, math.ceil(self.config.replicas * per))
        self.num_cpus, self.temp_dir = num_cpus, temp_dir
        # checks the extra, the config and the artifact's path before anything starts
        self.app = ray_application(artifact, self.config, loopback=address is None)
        self.url = ""
        self._started_ray = False
        self._own_temp: str | None = None
        self._restore: Any = None

    def start(self) -> RayServer:
        ray, serve = import_ray()
        if ray.is_initialized():
            raise ModelpressError("Ray is already initialized in this process: call ray.shutdown() first")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
        try:
            if self.address is None:
                self._restore = _single_machine(ray)
                temp = self.temp_dir
                if temp is None:  # short: Ray's unix sockets live under it (a limit of ~107 bytes)
                    temp = self._own_temp = tempfile.mkdtemp(prefix="mpray-", dir="/tmp")
                ray.init(
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",  # with _single_machine: kept, not resolved away
                    _temp_dir=str(temp),
                    log_to_driver=False,
                    configure_logging=False,
                )
                self._started_ray = True
            else:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            port = self.port or _free_port(self.host)
            serve.start(
                http_options={
                    "host": self.host,
                    "port": port,
                    "request_timeout_s": self.config.deadline_s + self.config.margin_s,
                },
                proxy_location="HeadOnly",
            )
            try:  # returns once every replica is up: its model loaded and warmed up
                serve.run(self.app, name=APP_NAME, route_prefix="/", blocking=False)
            except RuntimeError as e:  # a replica could not start (Ray's message says why)
                raise ModelpressError(f"the Ray Serve deployment failed: {e}") from None
            self._wait_running(serve)
        except BaseException:
            self.close()
            raise
        self.port, self.url = port, f"http://{self.host}:{port}"
        return self

    def _wait_running(self, serve: Any, timeout_s: float = 600.0) -> None:
        """Until every replica is up (its model loaded and warmed up); a deployment that fails
        (the artifact cannot be opened ...) is one ModelpressError with Ray's message."""
        from ray.serve.schema import ApplicationStatus

        t0 = time.monotonic()
        while True:
            status = serve.status().applications.get(APP_NAME)
            if status is not None and status.status == ApplicationStatus.RUNNING:
                return
            if status is not None and status.status in (
                ApplicationStatus.DEPLOY_FAILED,
                ApplicationStatus.UNHEALTHY,
            ):
                raise ModelpressError(f"the Ray Serve deployment failed: {status.message}")
            if time.monotonic() - t0 > timeout_s:
                raise ModelpressError(f"the Ray Serve deployment was not running after {timeout_s:g} s")
            time.sleep(0.2)

    def close(self) -> None:
        """Serve down (its replicas drain), then the Ray this started (a joined cluster stays,
        without the application)."""
        ray, serve = import_ray()
        if ray.is_initialized():
            try:
                if self._started_ray:
                    serve.shutdown()
                else:
                    serve.delete(APP_NAME)
            except Exception as e:  # still stop Ray
                log.warning("Ray Serve did not shut down cleanly: %s", e)
            ray.shutdown()
        self._started_ray = False
        if self._restore is not None:
            self._restore()
            self._restore = None
        if self._own_temp is not None:
            import shutil

            shutil.rmtree(self._own_temp, ignore_errors=True)
            self._own_temp = None

    def __enter__(self) -> RayServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_until_interrupted(server: RayServer, on_ready: Callable[[str], None] | None = None) -> None:
    """Start ``server``, call ``on_ready(url)`` once every replica is up, serve until Ctrl-C or
    SIGTERM, then shut Serve (the replicas drain) and the local Ray down."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.start()
        if on_ready is not None:
            on_ready(server.url)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()


def serve_ray(
    artifact: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: RayConfig | None = None,
    address: str | None = None,
) -> None:
    """Serve ``artifact`` on Ray Serve (a local Ray, or the cluster at ``address``) until
    interrupted; see :class:`RayServer`."""
    run_until_interrupted(RayServer(artifact, config, host=host, port=port, address=address))
