"""Replicas behind one front: the routing policies alone (pure), then the front with 2 replica
processes of a tiny model over loopback: answers as one server's, bad input and overload as
the replica's 4xx / 503, kill -9 of a replica mid-load (its requests in flight get one clear
error, it comes back, nothing hangs), graceful shutdown (drains, no process left)."""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

import httpx
import pytest
import torch
from procs import alive

import modelpress as mp
from modelpress.serve import BatchPolicy, DecodePolicy, ServerThread
from modelpress.serve.replicas import FrontConfig, ReplicaError, ReplicaSet, create_front
from modelpress.serve.routing import LeastQueue, PowerOfTwo, ReplicaLoad, RoundRobin, make_router


def loads(*in_flight: int | None) -> list[ReplicaLoad]:
    """One replica per argument: its requests in flight, None: not ready."""
    return [ReplicaLoad(i, n is not None, n or 0) for i, n in enumerate(in_flight)]


def test_round_robin_takes_turns_and_skips_replicas_not_ready():
    rr = RoundRobin()
    assert [rr.pick(loads(0, 0, 0)) for _ in range(5)] == [0, 1, 2, 0, 1]
    assert [rr.pick(loads(9, None, 0)) for _ in range(4)] == [2, 0, 2, 0]  # blind to load
    assert rr.pick(loads(None, None)) is None


def test_least_queue_picks_the_emptiest_and_takes_turns_among_equals():
    lq = LeastQueue()
    assert [lq.pick(loads(0, 0, 0)) for _ in range(4)] == [0, 1, 2, 0]
    assert lq.pick(loads(3, 1, 2)) == 1
    assert lq.pick(loads(None, 5, 2)) == 2
    assert lq.pick(loads(0, None, 0)) in (0, 2)
    assert lq.pick(loads(None, None)) is None
    lq = LeastQueue()
    assert [lq.pick(loads(1, 1)) for _ in range(4)] == [0, 1, 0, 1]  # ties alternate


def test_power_of_two_picks_the_less_loaded_of_two_it_draws():
    p2 = PowerOfTwo(seed=0)
    assert all(p2.pick(loads(4, 1)) == 1 for _ in range(20))  # two replicas: least-queue
    assert p2.pick(loads(None, 7)) == 1 and p2.pick(loads(None, None)) is None
    picks = [p2.pick(loads(5, 0, 5, 5)) for _ in range(200)]
    assert 80 < picks.count(1) < 120  # replica 1 is drawn in half the pairs, and then always picked
    with pytest.raises(mp.ConfigError, match="routing must be one of"):
        make_router("random")


def test_front_config_is_validated():
    with pytest.raises(mp.ConfigError, match="replicas must be"):
        FrontConfig(replicas=0)
    with pytest.raises(mp.ConfigError, match="routing must be one of"):
        FrontConfig(routing="fastest")
    with pytest.raises(mp.ConfigError, match="threads per replica"):
        FrontConfig(threads=0)


def simulate(router, seed: int = 0, n: int = 4000, load: float = 0.75) -> float:
    """p95 latency of 2 first-come-first-served servers fed Poisson arrivals of skewed jobs
    (90 % take 1, 10 % take 20 time units), routed on the jobs each holds (what the front
    counts as in flight)."""
    rng = random.Random(seed)
    mean = 0.9 * 1 + 0.1 * 20
    t, free_at = 0.0, [0.0, 0.0]
    ends: list[list[float]] = [[], []]  # finish times of the jobs each server holds
    lat = []
    for _ in range(n):
        t += rng.expovariate(2 * load / mean)
        for q in ends:
            q[:] = [e for e in q if e > t]
        i = router.pick([ReplicaLoad(k, True, len(ends[k])) for k in range(2)])
        work = 20.0 if rng.random() < 0.1 else 1.0
        free_at[i] = max(free_at[i], t) + work
        ends[i].append(free_at[i])
        lat.append(free_at[i] - t)
    return sorted(lat)[int(0.95 * len(lat))]


def test_least_queue_beats_round_robin_on_p95_under_skewed_lengths_in_a_simulation():
    rr, lq = simulate(RoundRobin()), simulate(LeastQueue())
    assert lq < 0.7 * rr, (lq, rr)


@pytest.fixture(scope="module")
def cls_front(cls_artifact):
    cfg = FrontConfig(
        replicas=2,
        threads=1,
        policy=BatchPolicy(max_batch_size=8, max_wait_s=0.005, max_queue=16),
        max_body_bytes=100_000,
    )
    replicas = ReplicaSet(cls_artifact, cfg)
    with ServerThread(create_front(replicas)) as server:
        yield server, replicas
    assert not alive(replicas.pids())


def test_the_front_answers_as_one_server_and_spreads_the_requests(cls_front, cls_artifact):
    from modelpress.serve.runtime import ClassifierRuntime

    server, _ = cls_front
    ready = httpx.get(server.url + "/ready").json()
    assert ready["status"] == "ready" and ready["backend"] == "torch" and ready["routing"] == "least-queue"
    assert [r["state"] for r in ready["replicas"]] == ["ready", "ready"]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    rt = ClassifierRuntime(cls_artifact, threads=1)
    texts = ["a good film", "dull", "a very very long and rather tedious film about nothing at all"]
    for t in texts:  # one at a time: batches of one, as the runtime alone computes them
        got = httpx.post(server.url + "/v1/classify", json={"text": t}).json()
        want = rt.run([t])[0]
        assert got["label"] == want["label"] and abs(got["score"] - want["score"]) < 1e-4
        emb = httpx.post(server.url + "/v1/embed", json={"text": t}).json()
        # each process times and picks its own int8 kernel at first use: equal to ~1e-5
        assert torch.allclose(torch.tensor(emb["embedding"]), torch.tensor(rt.embed([t])[0]), atol=1e-4)
    listed = httpx.post(server.url + "/v1/classify", json={"text": texts}).json()
    assert [r["label"] for r in listed["results"]] == [rt.run([t])[0]["label"] for t in texts]
    metrics = httpx.get(server.url + "/metrics").text
    routed = {
        line.split('"')[1]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("modelpress_replica_routed_total")
    }
    assert routed["0"] >= 3 and routed["1"] >= 3  # idle replicas take turns
    assert 'modelpress_front_requests_total{status="200"}' in metrics
    own = httpx.get(server.url + "/replicas/1/metrics")
    assert own.status_code == 200 and "modelpress_batch_size_count" in own.text
    assert httpx.get(server.url + "/replicas/5/metrics").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"text": ""}, 422, "non-space"),
        ({"text": 5}, 422, "invalid request: text"),
        ({"txt": "x"}, 422, "invalid request"),
        ({"text": ["ok"] * 65}, 413, "at most 64 texts"),
        ({"text": "word " * 400}, 413, "text too long"),
        ({"text": ["ok"] * 17}, 503, "queue full"),  # more texts than the replica's queue holds
        ({"prompt": "hi"}, 404, "not a causal LM"),
    ],
)
def test_bad_input_and_overload_through_the_front_are_the_replicas_answers(cls_front, body, status, message):
    server, _ = cls_front
    path = "/v1/generate" if "prompt" in body else "/v1/classify"
    r = httpx.post(server.url + path, json=body)
    assert r.status_code == status and message in r.json()["error"], r.text
    if status == 503:
        assert r.headers["retry-after"] == "1"


def test_bodies_the_front_refuses_itself(cls_front):
    server, _ = cls_front
    r = httpx.post(
        server.url + "/v1/classify", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "invalid request" in r.json()["error"]
    r = httpx.post(server.url + "/v1/classify", json={"text": "x" * 150_000})
    assert r.status_code == 413 and "at most 100,000 bytes" in r.json()["error"]
    assert httpx.post(server.url + "/v1/nothing", json={"text": "x"}).status_code == 404


@pytest.fixture(scope="module")
def lm_artifact(tmp_path_factory, llama_config, minilm_dir):
    """The tiny Llama (own output head, as in test_generate.py) with room for long generations."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **{**llama_config.to_dict(), "tie_word_embeddings": False, "max_position_embeddings": 1024}
    )
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    return mp.save(
        LlamaForCausalLM(cfg).eval(),
        tmp_path_factory.mktemp("replicas") / "lm",
        extras={"tokenizer": lambda d: tok.save_pretrained(str(d))},
    )


def lm_front(lm_artifact) -> tuple[ServerThread, ReplicaSet]:
    cfg = FrontConfig(
        replicas=2, threads=1, decode=DecodePolicy(max_running=8), deadline_s=30, restart_backoff_s=(0.2, 2.0)
    )
    replicas = ReplicaSet(lm_artifact, cfg)
    return ServerThread(create_front(replicas)), replicas


def events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of a Server-Sent Events body."""
    out = []
    for block in text.strip().split("\n\n"):
        name, data = "message", None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if data is not None:
            out.append((name, data))
    return out


def test_a_replica_killed_mid_load_fails_its_requests_once_and_comes_back(lm_artifact):
    server, replicas = lm_front(lm_artifact)
    with server:
        url = server.url

        async def load() -> tuple[list, list, dict]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                body = {"prompt": "the cat sat on", "max_new_tokens": 500}
                first: list[asyncio.Event] = [asyncio.Event() for _ in range(4)]

                async def stream(k: int) -> tuple[int, list]:
                    async with c.stream("POST", "/v1/generate", json={**body, "stream": True}) as r:
                        text = ""
                        async for chunk in r.aiter_text():
                            text += chunk
                            first[k].set()
                    first[k].set()
                    return r.status_code, events(text)

                streams = [asyncio.create_task(stream(k)) for k in range(4)]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first)), 30)
                plain = [asyncio.create_task(c.post("/v1/generate", json=body)) for _ in range(2)]
                t0 = time.monotonic()
                while sum(r["in_flight"] for r in (await c.get("/ready")).json()["replicas"]) < 6:
                    assert time.monotonic() - t0 < 10
                    await asyncio.sleep(0.01)
                info = (await c.get("/ready")).json()["replicas"]
                os.kill(info[0]["pid"], signal.SIGKILL)
                t0 = time.monotonic()
                s = await asyncio.wait_for(asyncio.gather(*streams), 60)
                p = await asyncio.wait_for(asyncio.gather(*plain), 60)
                assert time.monotonic() - t0 < 30  # nothing hung
                return s, p, info[0]

        streamed, plain, victim = asyncio.run(load())
        on_victim = victim["in_flight"]
        assert on_victim >= 2
        died = 0
        for status, evs in streamed:
            assert status == 200
            ends = [e for e in evs if e[0] == "error" or "finish_reason" in e[1]]
            assert len(ends) == 1 and evs[-1] is ends[-1]  # one end, the last event
            name, data = ends[0]
            if name == "error":
                assert "replica 0 died while serving this request" in data["error"] and data["tokens"] >= 1
                assert data["tokens"] == evs[-2][1]["tokens"]
                died += 1
        for r in plain:
            if r.status_code == 503:
                assert "replica 0 died" in r.json()["error"] and "SIGKILL" in r.json()["error"]
                assert r.headers["retry-after"] == "1"
                died += 1
            else:
                assert r.status_code == 200 and r.json()["tokens"] >= 1
        assert died == on_victim  # every request on the victim, and none other, got the error
        # it comes back and serves again
        t0 = time.monotonic()
        while (info := httpx.get(url + "/ready").json()["replicas"])[0]["state"] != "ready":
            assert time.monotonic() - t0 < 30, info
            time.sleep(0.1)
        assert info[0]["restarts"] == 1 and info[0]["pid"] != victim["pid"]
        for _ in range(4):  # idle replicas take turns: two of these go to the restarted one
            r = httpx.post(url + "/v1/generate", json={"prompt": "hello", "max_new_tokens": 4}, timeout=30)
            assert r.status_code == 200
        metrics = httpx.get(url + "/metrics").text
        assert f'modelpress_replica_failed_total{{reason="died",replica="0"}} {float(on_victim)}' in metrics
        assert 'modelpress_replica_restarts_total{replica="0"} 1.0' in metrics
        # both gone at once: one clear 503 at once, no hang
        for pid in [r["pid"] for r in info]:
            os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        while httpx.get(url + "/ready").status_code == 200:
            assert time.monotonic() - t0 < 5
            time.sleep(0.02)
        r = httpx.post(url + "/v1/generate", json={"prompt": "hello", "max_new_tokens": 4})
        assert r.status_code == 503 and "no replica is ready" in r.json()["error"]
        assert r.headers["retry-after"] == "1"
        seen = replicas.pids()
    assert not alive([*seen, victim["pid"]])


def test_clients_that_leave_free_their_slots_and_shutdown_drains_and_leaves_no_replica_running(lm_artifact):
    server, replicas = lm_front(lm_artifact)
    server.__enter__()
    pids = replicas.pids()
    assert len(alive(pids)) == 2
    long = {"prompt": "hi", "max_new_tokens": 500}
    with httpx.stream("POST", server.url + "/v1/generate", json={**long, "stream": True}) as r:
        assert next(r.iter_lines()).startswith("data: ")  # then the client goes
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/generate", json=long, timeout=0.3)
    t0, cancelled = time.monotonic(), 0.0
    while cancelled < 2 and time.monotonic() - t0 < 10:  # the replicas cut both out of their batches
        time.sleep(0.1)
        pages = [httpx.get(f"{server.url}/replicas/{i}/metrics").text for i in range(2)]
        cancelled = sum(
            float(line.split()[-1])
            for page in pages
            for line in page.splitlines()
            if line.startswith("modelpress_cancelled_total")
        )
    assert cancelled == 2
    assert [r["in_flight"] for r in httpx.get(server.url + "/ready").json()["replicas"]] == [0, 0]

    async def during_shutdown() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            body = {"prompt": "one two three", "max_new_tokens": 300}
            tasks = [asyncio.create_task(c.post("/v1/generate", json=body)) for _ in range(3)]
            while sum(r["in_flight"] for r in (await c.get("/ready")).json()["replicas"]) < 3:
                await asyncio.sleep(0.01)
            loop = asyncio.get_running_loop()
            stop = loop.run_in_executor(None, server.__exit__, None, None, None)  # graceful stop
            rs = await asyncio.gather(*tasks)
            await stop
            return list(rs)

    rs = asyncio.run(during_shutdown())
    assert [r.status_code for r in rs] == [200] * 3 and all(r.json()["tokens"] >= 1 for r in rs)
    assert not alive(pids)


def test_a_replica_that_cannot_start_is_one_clear_error(tmp_path, tiny_bert):
    art = mp.save(tiny_bert, tmp_path / "no-tokenizer")
    replicas = ReplicaSet(art, FrontConfig(replicas=1, threads=1))
    with pytest.raises(ReplicaError, match=r"replica 0 exited with code 2 while starting: .*no tokenizer"):
        replicas.start()
    assert not alive(replicas.pids())
    with pytest.raises(mp.ArtifactError, match="does not exist"):
        ReplicaSet(tmp_path / "nope")


def test_a_replica_stops_by_itself_when_its_front_is_killed():
    """The front dies by kill -9 (no shutdown runs): its replica sees the parent go and exits."""
    child = (
        "import os, sys, time; from modelpress.serve.worker import watch_parent; "
        "watch_parent(int(sys.argv[1]), interval_s=0.05, grace_s=1.0); print('watching', flush=True); "
        "time.sleep(60)"
    )
    front = (
        "import os, subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())]); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", front], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "watching"
        assert alive([grandchild])
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        while alive([grandchild]) and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert not alive([grandchild])
    finally:
        proc.kill()


def test_the_cli_checks_the_replica_options(tmp_path):
    from typer.testing import CliRunner

    from modelpress.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["serve", str(tmp_path), "--replicas", "2", "--routing", "fastest"])
    assert res.exit_code != 0 and "routing must be one of" in res.output
    res = runner.invoke(app, ["serve", str(tmp_path), "--replicas", "0"])
    assert res.exit_code != 0 and "replicas must be" in res.output
