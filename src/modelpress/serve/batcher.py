"""The batcher: policy only — when a batch closes and which requests go together.

No I/O, no threads, no clock of its own (the caller passes ``now``), so every rule is
unit-tested directly:

- **Dynamic batching.** Requests wait in per-bucket queues. A bucket's batch closes when it
  holds ``max_batch_size`` requests or its oldest request has waited ``max_wait_s``.
  Among ready buckets the one whose oldest request arrived first goes next, so no request
  starves: every request is at most ``max_wait_s`` from being ready, then served in order.
- **Length buckets.** Requests are grouped by token length so a batch pads little (a
  batch short of the maximum is topped up from the nearest buckets, so buckets never
  make batches smaller than the queue allows):
  ``none`` (one bucket), ``fixed`` (given boundaries) or ``adaptive``: boundaries are the
  quantiles of the lengths of the last ``window`` requests, recomputed every
  ``refresh_every`` arrivals, so they follow the traffic.
- **A bounded queue**: ``add`` refuses a request when ``max_queue`` are waiting (the app
  answers 503 with Retry-After); requests past their deadline are dropped from the queue
  and handed back as expired.
- **Iteration-level scheduling** (``DecodeScheduler``, causal-LM generation): the running
  batch is re-formed at every decode step: waiting requests join at the next step while
  fewer than ``max_running`` run (first come, first served) and finished ones leave at once.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

__all__ = ["BatchPolicy", "Batcher", "DecodePolicy", "DecodeScheduler", "LengthBuckets", "Request"]

_ids = itertools.count()


@dataclasses.dataclass
class Request:
    length: int  # tokens (what padding is computed from)
    arrival: float  # the caller's clock (seconds)
    payload: Any = None
    deadline: float | None = None  # same clock; None: none
    id: int = dataclasses.field(default_factory=lambda: next(_ids))


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 16
    max_wait_s: float = 0.010
    max_queue: int = 256
    bucketing: str = "adaptive"  # none | fixed | adaptive
    n_buckets: int = 6
    boundaries: tuple[int, ...] = ()  # for fixed: upper bounds (inclusive) of all but the last bucket
    window: int = 512  # adaptive: lengths of the last this many requests
    refresh_every: int = 32  # adaptive: boundaries recomputed every this many arrivals

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")
        if not isinstance(self.max_wait_s, (int, float)) or not 0 <= self.max_wait_s <= 10:
            raise ConfigError(f"max_wait must be between 0 and 10 s, got {self.max_wait_s!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 1:
            raise ConfigError(f"max_queue must be an integer >= 1, got {self.max_queue!r}")
        if self.bucketing not in ("none", "fixed", "adaptive"):
            raise ConfigError(f"bucketing must be none, fixed or adaptive, got {self.bucketing!r}")
        if self.bucketing == "fixed" and list(self.boundaries) != sorted(set(self.boundaries)):
            raise ConfigError(f"fixed bucket boundaries must increase, got {self.boundaries!r}")
        if self.n_buckets < 1 or self.window < 1 or self.refresh_every < 1:
            raise ConfigError("n_buckets, window and refresh_every must be >= 1")


class LengthBuckets:
    """Bucket boundaries: fixed, or the quantiles of the recent lengths."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self.recent: collections.deque[int] = collections.deque(maxlen=policy.window)
        self.boundaries: list[int] = list(policy.boundaries) if policy.bucketing == "fixed" else []
        self._since_refresh = 0

    def observe(self, length: int) -> None:
        if self.policy.bucketing != "adaptive":
            return
        self.recent.append(length)
        self._since_refresh += 1
        if self._since_refresh >= self.policy.refresh_every or not self.boundaries:
            self.refresh()

    def refresh(self) -> None:
        """Boundaries at the 1/n, 2/n, ... quantiles of the recent lengths (duplicates merged)."""
        self._since_refresh = 0
        xs = sorted(self.recent)
        n = self.policy.n_buckets
        if not xs or n == 1:
            self.boundaries = []
            return
        cuts = {xs[min(len(xs) - 1, (len(xs) * k) // n)] for k in range(1, n)}
        self.boundaries = sorted(c for c in cuts if c < xs[-1])

    def bucket(self, length: int) -> int:
        if self.policy.bucketing == "none":
            return 0
        return bisect.bisect_left(self.boundaries, length)


class Batcher:
    """Queues requests and hands out batches by the policy (single-threaded use)."""

    def __init__(self, policy: BatchPolicy | None = None) -> None:
        self.policy = policy or BatchPolicy()
        self.buckets = LengthBuckets(self.policy)
        self.queues: dict[int, collections.deque[Request]] = collections.defaultdict(collections.deque)
        self.size = 0
        # counters for /metrics
        self.rejected = 0
        self.expired = 0
        self.batches = 0
        self.padded_tokens = 0
        self.real_tokens = 0

    def add(self, req: Request) -> bool:
        """Queue a request; False (rejected) when the queue is full."""
        if self.size >= self.policy.max_queue:
            self.rejected += 1
            return False
        self.buckets.observe(req.length)
        self.queues[self.buckets.bucket(req.length)].append(req)
        self.size += 1
        return True

    def drop_expired(self, now: float) -> list[Request]:
        """Remove and return the queued requests whose deadline has passed."""
        out = []
        for q in self.queues.values():
            keep = [r for r in q if r.deadline is None or r.deadline > now]
            if len(keep) != len(q):
                out += [r for r in q if not (r.deadline is None or r.deadline > now)]
                q.clear()
                q.extend(keep)
        self.size -= len(out)
        self.expired += len(out)
        return out

    def _ready(self, q: collections.deque[Request], now: float) -> bool:
        return len(q) >= self.policy.max_batch_size or now - q[0].arrival >= self.policy.max_wait_s

    def next_batch(self, now: float, *, flush: bool = False) -> list[Request]:
        """The next batch that is ready at ``now`` ([] if none); ``flush``: the oldest
        bucket's requests whether ready or not (draining at shutdown).

        A bucket is ready when it is full or its oldest request waited ``max_wait_s``; and
        when the whole queue could fill a batch, the bucket of the oldest request is. A
        batch short of ``max_batch_size`` is topped up from the nearest buckets (nearest
        lengths first, oldest first): buckets order who goes with whom, they never make a
        batch smaller than the queue allows (measured: splitting the queue into buckets
        without top-up lost half the throughput of plain dynamic batching)."""
        enough = self.size >= self.policy.max_batch_size
        heads = [(q[0].arrival, k) for k, q in self.queues.items() if q]
        live = [(a, k) for a, k in heads if flush or enough or self._ready(self.queues[k], now)]
        if not live:
            return []
        _, key = min(live)
        q = self.queues[key]
        batch = [q.popleft() for _ in range(min(len(q), self.policy.max_batch_size))]
        for other in sorted(
            (k for k, q2 in self.queues.items() if q2 and k != key), key=lambda k: (abs(k - key), k)
        ):
            q2 = self.queues[other]
            while q2 and len(batch) < self.policy.max_batch_size:
                batch.append(q2.popleft())
            if len(batch) >= self.policy.max_batch_size:
                break
        self.size -= len(batch)
        self.batches += 1
        width = max(r.length for r in batch)
        self.real_tokens += sum(r.length for r in batch)
        self.padded_tokens += width * len(batch) - sum(r.length for r in batch)
        return batch

    def wait_time(self, now: float) -> float | None:
        """Seconds until the next batch is ready (0: one is), None with an empty queue."""
        if self.size >= self.policy.max_batch_size:
            return 0.0
        waits = [
            0.0
            if len(q) >= self.policy.max_batch_size
            else max(0.0, q[0].arrival + self.policy.max_wait_s - now)
            for q in self.queues.values()
            if q
        ]
        return min(waits) if waits else None

    @property
    def padding_share(self) -> float:
        """Pad tokens / all tokens computed, over the batches handed out so far."""
        total = self.padded_tokens + self.real_tokens
        return self.padded_tokens / total if total else 0.0


def padding_share(lengths: Sequence[Sequence[int]]) -> float:
    """Pad share of batches given as lists of lengths (for comparisons in tests / benchmarks)."""
    pad = sum(max(b) * len(b) - sum(b) for b in lengths if b)
    real = sum(sum(b) for b in lengths)
    return pad / (pad + real) if pad + real else 0.0


@dataclasses.dataclass(frozen=True)
class DecodePolicy:
    max_running: int = 16  # sequences decoded together in one step
    max_queue: int = 64  # waiting (not yet running) requests before 503
    max_prefill: int = 8  # requests admitted (prefilled together) per step

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        for name in ("max_running", "max_queue", "max_prefill"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")


class DecodeScheduler:
    """Who decodes at the next step (continuous batching), policy only: the caller runs the
    model and says which requests finished. Waiting requests are admitted first come, first
    served whenever a slot is free (at most ``max_prefill`` per step, so one step's prefill
    does not stall the running ones for long); the queue of waiting requests is bounded."""

    def __init__(self, policy: DecodePolicy | None = None) -> None:
        self.policy = policy or DecodePolicy()
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: dict[int, Request] = {}
        self.rejected = 0
        self.expired = 0

    @property
    def size(self) -> int:
        return len(self.waiting)

    def add(self, req: Request) -> bool:
        """Queue a request; False (rejected) when ``max_queue`` are already waiting."""
        if len(self.waiting) >= self.policy.max_queue:
            self.rejected += 1
            return False
        self.waiting.append(req)
        return True

    def drop_expired(self, now: float) -> list[Request]:
        """Remove and return the waiting requests past their deadline (running ones are the
        caller's to stop: it holds their state)."""
        out = [r for r in self.waiting if r.deadline is not None and r.deadline <= now]
        if out:
            gone = {r.id for r in out}
            self.waiting = collections.deque(r for r in self.waiting if r.id not in gone)
            self.expired += len(out)
        return out

    def remove(self, req_id: int) -> Request | None:
        """A request leaves, queued or running (finished, cancelled, client gone)."""
        if req_id in self.running:
            return self.running.pop(req_id)
        for r in self.waiting:
            if r.id == req_id:
                self.waiting.remove(r)
                return r
        return None

    def admit(self) -> list[Request]:
        """The waiting requests that join the running batch at the next step."""
        free = min(self.policy.max_running - len(self.running), self.policy.max_prefill)
        out = [self.waiting.popleft() for _ in range(min(max(free, 0), len(self.waiting)))]
        for r in out:
            self.running[r.id] = r
        return out
