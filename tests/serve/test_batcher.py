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


def _serve_lengths(policy: BatchPolicy, lengths: list[int], rate: float) -> float:
    b = Batcher(policy)
    t = 0.0
    for n in lengths:  # requests arriving one by one at ``rate``, batches taken as they close
        t += 1 / rate
        b.add(Request(n, t))
        while b.next_batch(t):
            pass
    while b.next_batch(t + 1, flush=True):
        pass
    return b.padding_share


def test_adaptive_pads_less_than_fixed_and_none_on_a_real_length_mix():
    from modelpress.data.datasets import rotten_tomatoes

    texts = rotten_tomatoes(seed=0).test.texts[:1200]
    lengths = [len(t.split()) + 2 for t in texts]  # word counts: the length mix of the real data
    kw = {"max_batch_size": 16, "max_wait_s": 0.02, "max_queue": 5000}
    none = _serve_lengths(BatchPolicy(bucketing="none", **kw), lengths, 400)
    fixed = _serve_lengths(BatchPolicy(bucketing="fixed", boundaries=(16, 32, 48), **kw), lengths, 400)
    adaptive4 = _serve_lengths(BatchPolicy(bucketing="adaptive", n_buckets=4, **kw), lengths, 400)
    assert adaptive4 < fixed < none  # the same four buckets, boundaries from the traffic
    assert _serve_lengths(BatchPolicy(**kw), lengths, 400) <= 0.10  # the default (6 buckets)


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
