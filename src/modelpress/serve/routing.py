"""Routing: which replica a request goes to. Policy only, like the batcher: no I/O, no
clock, no processes; the front (``serve/replicas.py``) passes what it knows of each replica.

- **round-robin**: replicas in turn, skipping those not ready. Blind to load: under skewed
  request lengths a replica that drew a few long requests keeps getting its share, and the
  short requests queued behind them wait.
- **least-queue** (join the shortest queue): the ready replica with the fewest requests in
  flight (routed by the front and not yet answered), ties broken in turn so equal replicas
  share the work. A replica busy on long requests has more in flight and is passed over.
- **power-of-two**: the less loaded of two ready replicas drawn at random (Mitzenmacher, "The
  Power of Two Choices in Randomized Load Balancing", 2001): nearly as good as least-queue
  with many replicas while looking at only two; with two replicas it is least-queue.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Protocol

__all__ = ["ROUTINGS", "LeastQueue", "PowerOfTwo", "ReplicaLoad", "RoundRobin", "Router", "make_router"]

ROUTINGS = ("least-queue", "round-robin", "power-of-two")


@dataclasses.dataclass(frozen=True)
class ReplicaLoad:
    """What the router sees of one replica."""

    index: int
    ready: bool  # started, answered /ready, not dead and not restarting
    in_flight: int = 0  # requests routed to it and not yet answered


class Router(Protocol):
    name: str

    def pick(self, replicas: Sequence[ReplicaLoad]) -> int | None:
        """The index of the replica for the next request; None when no replica is ready."""
        ...


class RoundRobin:
    """Replicas in turn; a replica that is not ready is skipped (its turn passes)."""

    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, replicas: Sequence[ReplicaLoad]) -> int | None:
        n = len(replicas)
        for k in range(n):
            r = replicas[(self._next + k) % n]
            if r.ready:
                self._next = (self._next + k + 1) % n
                return r.index
        return None


class LeastQueue:
    """Join the shortest queue: the ready replica with the fewest requests in flight; among
    equals the one after the last pick (in turn), so idle replicas alternate."""

    name = "least-queue"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, replicas: Sequence[ReplicaLoad]) -> int | None:
        n = len(replicas)
        best: int | None = None
        for k in range(n):
            pos = (self._next + k) % n
            r = replicas[pos]
            if r.ready and (best is None or r.in_flight < replicas[best].in_flight):
                best = pos
        if best is None:
            return None
        self._next = (best + 1) % n
        return replicas[best].index


class PowerOfTwo:
    """The less loaded of two distinct ready replicas drawn at random (ties: the first drawn)."""

    name = "power-of-two"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def pick(self, replicas: Sequence[ReplicaLoad]) -> int | None:
        ready = [r for r in replicas if r.ready]
        if not ready:
            return None
        if len(ready) == 1:
            return ready[0].index
        a, b = self._rng.sample(ready, 2)
        return (b if b.in_flight < a.in_flight else a).index


def make_router(name: str, *, seed: int | None = None) -> Router:
    """The router called ``name`` (one of ``ROUTINGS``)."""
    from ..errors import ConfigError

    if name == "round-robin":
        return RoundRobin()
    if name == "least-queue":
        return LeastQueue()
    if name == "power-of-two":
        return PowerOfTwo(seed)
    raise ConfigError(f"routing must be one of {', '.join(ROUTINGS)}, got {name!r}")
