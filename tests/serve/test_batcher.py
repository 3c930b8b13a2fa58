"""Batcher policy: closing rules, buckets that follow the traffic, fairness, bounded queue."""

import random

import pytest

from modelpress.errors import ConfigError
from modelpress.serve.batcher import Batcher, BatchPolicy, LengthBuckets, Request, padding_share


def test_a_batch_closes_at_max_size_or_when_its_oldest_waited_max_wait():
    b = Batcher(BatchPolicy(max_batch_size=4, max_wait_s=0.010, bucketing="none"))
    for i in range(3):
        assert b.add(Request(10, arrival=0.0 + i * 0.001))
    assert b.next_batch(0.005) == []  # 3 < 4 and the oldest waited 5 ms
    assert b.wait_time(0.005) == pytest.approx(0.005)
    assert [r.length for r in b.next_batch(0.010)] == [10, 10, 10]  # max_wait reached
    for _ in range(6):
        b.add(Request(10, arrival=1.0))
    assert len(b.next_batch(1.0)) == 4 and b.wait_time(1.0) == pytest.approx(0.010)  # full batch at once
    assert b.next_batch(1.0) == [] and len(b.next_batch(1.011)) == 2
    assert b.size == 0 and b.wait_time(2.0) is None


def test_bounded_queue_rejects_and_deadlines_expire():
    b = Batcher(BatchPolicy(max_batch_size=2, max_queue=3, bucketing="none"))
    assert all(b.add(Request(5, 0.0, deadline=0.5 if i == 0 else None)) for i in range(3))
    assert not b.add(Request(5, 0.0)) and b.rejected == 1
    expired = b.drop_expired(1.0)
    assert len(expired) == 1 and expired[0].deadline == 0.5 and b.size == 2 and b.expired == 1


def test_fixed_buckets_group_by_length_and_pad_less_than_none():
    rng = random.Random(0)
    lengths = [rng.choice([8, 9, 10, 60, 64]) for _ in range(400)]
    shares = {}
    for mode, bounds in (("none", ()), ("fixed", (16,))):
        b = Batcher(
            BatchPolicy(max_batch_size=8, max_wait_s=0.0, bucketing=mode, boundaries=bounds, max_queue=1000)
        )
        for n in lengths:
            b.add(Request(n, 0.0))
        while b.next_batch(1.0):
            pass
        shares[mode] = b.padding_share
    assert shares["fixed"] < 0.5 * shares["none"]


def test_adaptive_boundaries_follow_the_traffic():
    p = BatchPolicy(bucketing="adaptive", n_buckets=4, window=200, refresh_every=20)
    lb = LengthBuckets(p)
    rng = random.Random(1)
    for _ in range(400):
        lb.observe(rng.randint(5, 40))
    short = list(lb.boundaries)
    assert len(short) == 3 and all(5 <= x <= 40 for x in short)
    for _ in range(400):  # the traffic moves to long texts
        lb.observe(rng.randint(100, 200))
    assert len(lb.boundaries) == 3 and min(lb.boundaries) >= 100 and lb.boundaries != short
    assert lb.bucket(1) == 0 and lb.bucket(1000) == 3


def busy_server(policy, lengths, rate, c0=0.002, c1=2e-5, seed=0):
    """Poisson arrivals at ``rate``; one server that takes the next ready batch when free and
    spends c0 + c1 x tokens computed on it. Returns (padding share, p95 latency s)."""
    b, rng = Batcher(policy), random.Random(seed)
    arrivals, t = [], 0.0
    for n in lengths:
        t += rng.expovariate(rate)
        arrivals.append((t, n))
    i, now, lat = 0, 0.0, []
    while len(lat) < len(arrivals):
        while i < len(arrivals) and arrivals[i][0] <= now:
            b.add(Request(arrivals[i][1], arrivals[i][0]))
            i += 1
        batch = b.next_batch(now, flush=i >= len(arrivals))
        if batch:
            now += c0 + c1 * max(r.length for r in batch) * len(batch)
            lat += [now - r.arrival for r in batch]
            continue
        wait = b.wait_time(now)
        nxt = [
            x
            for x in (arrivals[i][0] if i < len(arrivals) else None, None if wait is None else now + wait)
            if x is not None
        ]
        now = max(min(nxt), now + 1e-6)
    lat.sort()
    return b.padding_share, lat[int(0.95 * (len(lat) - 1))]


def test_buckets_pad_less_under_load_and_cost_nothing_below_it():
    from modelpress.data.datasets import rotten_tomatoes

    lengths = [len(t.split()) + 2 for t in rotten_tomatoes(seed=0).test.texts[:1200]]  # the real length mix
    kw = {"max_batch_size": 16, "max_wait_s": 0.01, "max_queue": 10_000}
    policies = {
        "none": BatchPolicy(bucketing="none", **kw),
        "fixed": BatchPolicy(bucketing="fixed", boundaries=(16, 24, 32, 48), **kw),
        "adaptive": BatchPolicy(bucketing="adaptive", **kw),
    }
    heavy = {k: busy_server(p, lengths, 1500) for k, p in policies.items()}
    assert heavy["adaptive"][0] < heavy["fixed"][0] < heavy["none"][0]  # padding share
    assert heavy["adaptive"][1] < 0.5 * heavy["none"][1]  # p95: less padding, more capacity
    light = {k: busy_server(p, lengths, 200) for k, p in policies.items()}
    assert light["adaptive"] == light["none"]  # batches topped up: no smaller batches, no extra wait


def test_a_short_bucket_is_topped_up_with_the_nearest_lengths():
    b = Batcher(
        BatchPolicy(max_batch_size=4, max_wait_s=0.01, bucketing="fixed", boundaries=(10, 20), max_queue=100)
    )
    for n, t in ((5, 0.0), (15, 0.001), (30, 0.002), (16, 0.003)):
        b.add(Request(n, t))
    batch = b.next_batch(0.0105)
    assert [r.length for r in batch] == [5, 15, 16, 30]  # bucket 0, then bucket 1, then bucket 2


def test_no_request_starves():
    b = Batcher(
        BatchPolicy(max_batch_size=4, max_wait_s=0.01, bucketing="fixed", boundaries=(10,), max_queue=10_000)
    )
    b.add(Request(50, 0.0))  # a lone long request while short ones keep coming
    served_at = None
    t = 0.0
    for _ in range(400):
        t += 0.001
        b.add(Request(5, t))
        for r in b.next_batch(t):
            if r.length == 50:
                served_at = t
        if served_at is not None:
            break
    assert served_at is not None and served_at <= 0.012


@pytest.mark.parametrize(
    "kw",
    [
        {"max_batch_size": 0},
        {"max_wait_s": -1},
        {"bucketing": "zigzag"},
        {"bucketing": "fixed", "boundaries": (9, 3)},
    ],
)
def test_bad_policies(kw):
    with pytest.raises(ConfigError):
        BatchPolicy(**kw)


def test_padding_share_helper():
    assert padding_share([[4, 4], [2, 4]]) == pytest.approx(2 / 16)


def test_decode_scheduler_admits_in_order_into_free_slots_and_bounds_its_queue():
    from modelpress.serve.batcher import DecodePolicy, DecodeScheduler

    s = DecodeScheduler(DecodePolicy(max_running=3, max_queue=4, max_prefill=2))
    reqs = [Request(5, float(i), deadline=10.0 if i != 3 else 0.5) for i in range(5)]
    assert all(s.add(r) for r in reqs[:4]) and not s.add(reqs[4]) and s.rejected == 1
    assert [r.id for r in s.admit()] == [reqs[0].id, reqs[1].id]  # at most max_prefill per step
    assert [r.id for r in s.admit()] == [reqs[2].id]  # one slot left of max_running = 3
    assert s.admit() == [] and s.size == 1
    assert [r.id for r in s.drop_expired(1.0)] == [reqs[3].id] and s.size == 0 and s.expired == 1
    assert s.remove(reqs[1].id) is reqs[1] and len(s.running) == 2  # a finished one leaves ...
    assert s.add(reqs[4]) and [r.id for r in s.admit()] == [reqs[4].id]  # ... and its slot is taken at once
    assert s.remove(12345) is None
    with pytest.raises(ConfigError):
        DecodePolicy(max_running=0)
