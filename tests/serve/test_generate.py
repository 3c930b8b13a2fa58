"""Causal-LM serving: the continuous-batching runtime against transformers' own ``generate``,
then ``POST /v1/generate`` over loopback (JSON and Server-Sent Events), bad input as one 4xx,
a full queue as 503 + Retry-After, deadlines, a client that leaves, and draining at shutdown."""

import asyncio
import json
import threading
import time

import httpx
import pytest
import torch

import modelpress as mp
from modelpress.serve import DecodePolicy, ServerThread, build_app
from modelpress.serve.app import ServeConfig, create_app
from modelpress.serve.runtime import CausalLMRuntime, GenRequest, open_runtime

PROMPTS = ["the cat sat on", "a long time ago in a galaxy far", "hello", "one two three four five six"]


@pytest.fixture
def lm(llama_config):
    """The tiny Llama with its own output head: with tied embeddings a random model repeats
    its last input token ([SEP] = EOS here) and every answer would be empty."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **{**llama_config.to_dict(), "tie_word_embeddings": False, "max_position_embeddings": 128}
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def lm_artifact(tmp_path, lm, minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    return mp.save(lm, tmp_path / "lm", extras={"tokenizer": lambda d: tok.save_pretrained(str(d))})


@pytest.fixture
def lm_q_artifact(tmp_path, lm, minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    return mp.save(
        mp.compress(lm, "int8-dynamic"),
        tmp_path / "lmq",
        extras={"tokenizer": lambda d: tok.save_pretrained(str(d))},
    )


def reference(rt: CausalLMRuntime, prompt_ids: list[int], n: int) -> list[int]:
    """transformers' generate, greedy, one prompt alone (its own KV cache)."""
    out = rt.model.generate(
        torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, pad_token_id=rt.pad_id
    )
    return out[0, len(prompt_ids) :].tolist()


def test_continuous_batching_joins_and_leaves_and_computes_what_generate_does(lm_artifact):
    rt = open_runtime(lm_artifact, threads=1)
    assert isinstance(rt, CausalLMRuntime)
    lengths = [12, 3, 9, 6]
    reqs = [
        GenRequest(i, rt.encode(p), max_new_tokens=n)
        for i, (p, n) in enumerate(zip(PROMPTS, lengths, strict=True))
    ]
    joins = {0: reqs[:2], 2: [reqs[2]], 5: [reqs[3]]}  # step -> requests that arrive then
    sizes = []
    for step in range(40):
        rt.step(joins.get(step, []))
        sizes.append(len(rt.running))
        if all(r.finish for r in reqs):
            break
    assert all(r.finish in ("length", "eos") for r in reqs)
    for r, n in zip(reqs, lengths, strict=True):
        assert r.generated == reference(rt, r.prompt_ids, n)[: len(r.generated)], r.id
    assert max(sizes) == 3  # the late ones joined the running batch
    assert sizes[2] == 2  # request 1 (3 tokens) left at once, in the step it finished (steps 0-2)
    assert rt.running == [] and rt.cache is None  # everything left; nothing held


def test_cancelled_rows_leave_before_the_next_decode(lm_artifact):
    rt = open_runtime(lm_artifact, threads=1)
    a, b = (GenRequest(i, rt.encode(p), max_new_tokens=50) for i, p in enumerate(PROMPTS[:2]))
    rt.step([a, b])
    rt.step([])
    rt.step([], cancel={0})
    assert [r.id for r in rt.running] == [1] and a.finish == "cancelled" and len(a.generated) == 2
    assert rt.mask is not None and rt.mask.shape[1] == len(b.prompt_ids) + len(b.generated) - 1


def test_a_compressed_lm_serves_and_sampling_is_seeded(lm_q_artifact):
    rt = open_runtime(lm_q_artifact, threads=1)
    kw = {"max_new_tokens": 8, "temperature": 0.9, "top_p": 0.9}
    a = rt.generate_one(GenRequest(1, rt.encode("hi there"), seed=7, **kw))
    b = rt.generate_one(GenRequest(2, rt.encode("hi there"), seed=7, **kw))
    c = rt.generate_one(GenRequest(3, rt.encode("hi there"), seed=8, **kw))
    assert a == b and a and a != c


@pytest.fixture
def lm_server(lm_artifact):
    with ServerThread(build_app(lm_artifact, threads=1, decode=DecodePolicy(max_running=4))) as s:
        yield s


def sse(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_generate_over_http_json_and_stream_agree_with_the_runtime(lm_artifact, lm_server):
    rt = open_runtime(lm_artifact, threads=1)
    url = lm_server.url
    ready = httpx.get(url + "/ready").json()
    assert ready["task"] == "text-generation" and ready["max_positions"] == 128
    expected = [
        rt.generate_one(GenRequest(i, rt.encode(p), max_new_tokens=10)) for i, p in enumerate(PROMPTS)
    ]

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            body = [{"prompt": p, "max_new_tokens": 10} for p in PROMPTS]
            return list(await asyncio.gather(*(c.post("/v1/generate", json=b) for b in body)))

    rs = asyncio.run(many())
    assert [r.status_code for r in rs] == [200] * 4
    got = [r.json() for r in rs]
    assert [g["text"] for g in got] == expected
    assert all(g["tokens"] == 10 and g["finish_reason"] == "length" for g in got)
    with httpx.stream(
        "POST", url + "/v1/generate", json={"prompt": PROMPTS[1], "max_new_tokens": 10, "stream": True}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r.read().decode())
    assert "".join(e["text"] for e in events) == expected[1]
    assert [e["tokens"] for e in events] == list(range(1, 11)) and events[-1]["finish_reason"] == "length"
    metrics = httpx.get(url + "/metrics").text
    assert "modelpress_generated_tokens_total 50.0" in metrics
    # the 4 concurrent requests shared decode steps: fewer steps than 4 x 10
    steps = [ln for ln in metrics.splitlines() if ln.startswith("modelpress_decode_batch_size_count")]
    assert float(steps[0].split()[-1]) < 40


def test_a_stop_string_ends_the_answer_before_it(lm_server):
    url = lm_server.url
    full = httpx.post(url + "/v1/generate", json={"prompt": "the cat", "max_new_tokens": 12}).json()["text"]
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    r = httpx.post(
        url + "/v1/generate", json={"prompt": "the cat", "max_new_tokens": 12, "stop": [stop]}
    ).json()
    assert r["finish_reason"] == "stop" and r["text"] == full[: full.find(stop)]
    with httpx.stream(
        "POST",
        url + "/v1/generate",
        json={"prompt": "the cat", "max_new_tokens": 12, "stop": [stop], "stream": True},
    ) as s:
        events = sse(s.read().decode())
    assert "".join(e["text"] for e in events) == r["text"] and events[-1]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"prompt": ""}, 422, "non-space"),
        ({"prompt": "   "}, 422, "non-space"),
        ({"prompt": 5}, 422, "invalid request: prompt"),
        ({"prompt": "hi", "stream": "yes"}, 422, "invalid request: stream"),
        ({"prompt": "hi", "max_new_tokens": 0}, 422, "max_new_tokens must be in [1, 512]"),
        ({"prompt": "hi", "max_new_tokens": 10_000}, 422, "max_new_tokens must be in [1, 512]"),
        ({"prompt": "hi", "max_new_tokens": 2.5}, 422, "invalid request: max_new_tokens"),
        ({"prompt": "hi", "temperature": -1.0}, 422, "temperature must be in [0, 5]"),
        ({"prompt": "hi", "top_p": 0.0}, 422, "top_p must be in (0, 1]"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 422, "stop: at most 4 strings"),
        ({"prompt": "hi", "stop": [""]}, 422, "stop: at most 4 strings"),
        ({"prompt": "hi", "top_k": 3}, 422, "invalid request: top_k"),
        (
            {"prompt": "word " * 100, "max_new_tokens": 64},
            413,
            "prompt too long: 102 tokens + max_new_tokens 64",
        ),
        ({"prompt": "x" * 20_001}, 413, "at most 20000 characters"),
    ],
)
def test_bad_generate_requests_get_one_clear_4xx(lm_server, body, status, message):
    r = httpx.post(lm_server.url + "/v1/generate", json=body)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_the_other_endpoints_say_what_this_artifact_serves(lm_server):
    r = httpx.post(lm_server.url + "/v1/classify", json={"text": "hi"})
    assert r.status_code == 404 and "causal LM" in r.json()["error"]
    r = httpx.post(
        lm_server.url + "/v1/generate", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "invalid request" in r.json()["error"]


def slowed(rt: CausalLMRuntime, seconds: float, gate: threading.Event | None = None) -> CausalLMRuntime:
    step = rt.step

    def slow_step(admit, cancel=None):
        if gate is not None:
            gate.wait(10)
        time.sleep(seconds)
        return step(admit, cancel)

    rt.step = slow_step  # type: ignore[method-assign]
    rt.warm_up = lambda n: None  # type: ignore[method-assign]
    return rt


def test_a_full_queue_is_503_with_retry_after_and_every_request_ends_once(lm_artifact):
    gate = threading.Event()
    rt = slowed(open_runtime(lm_artifact, threads=1), 0.0, gate)
    cfg = ServeConfig(decode=DecodePolicy(max_running=2, max_queue=3), deadline_s=30)
    app = create_app(rt, cfg)
    with ServerThread(app) as server:

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
                tasks = [
                    asyncio.create_task(
                        c.post("/v1/generate", json={"prompt": f"t {i}", "max_new_tokens": 4})
                    )
                    for i in range(12)
                ]
                await asyncio.sleep(0.5)
                gate.set()
                return list(await asyncio.gather(*tasks))

        rs = asyncio.run(flood())
        left = (len(app.state.scheduler.running), len(app.state.generations))
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503} and codes.count(200) >= 3 and codes.count(503) >= 5, codes
    assert all(r.headers.get("retry-after") == "1" for r in rs if r.status_code == 503)
    assert all(r.json()["tokens"] == 4 for r in rs if r.status_code == 200)
    assert left == (0, 0)


def test_past_the_deadline_is_504_and_its_slot_is_freed(lm_artifact):
    rt = slowed(open_runtime(lm_artifact, threads=1), 0.05)
    app = create_app(rt, ServeConfig(deadline_s=0.5))
    with ServerThread(app) as server:
        t0 = time.monotonic()
        r = httpx.post(server.url + "/v1/generate", json={"prompt": "hi", "max_new_tokens": 100}, timeout=30)
        took = time.monotonic() - t0
        assert r.status_code == 504 and "0.5 s deadline" in r.json()["error"] and took < 2.0
        with httpx.stream(
            "POST", server.url + "/v1/generate", json={"prompt": "hi", "max_new_tokens": 100, "stream": True}
        ) as s:
            body = s.read().decode()
        assert "event: error" in body and "deadline" in body
        time.sleep(0.3)
        assert not app.state.scheduler.running and not app.state.generations


def test_a_client_that_leaves_stops_its_generation(lm_artifact):
    rt = slowed(open_runtime(lm_artifact, threads=1), 0.05)
    app = create_app(rt, ServeConfig(deadline_s=60))
    with ServerThread(app) as server:
        with httpx.stream(
            "POST", server.url + "/v1/generate", json={"prompt": "hi", "max_new_tokens": 120, "stream": True}
        ) as s:
            first = next(s.iter_lines())
            assert first.startswith("data: ")
        # a non-streamed request whose client times out
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/generate", json={"prompt": "yo", "max_new_tokens": 120}, timeout=0.3)
        t0 = time.monotonic()
        while (app.state.scheduler.running or rt.running) and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        assert not app.state.scheduler.running and not rt.running and not app.state.generations
        assert "modelpress_cancelled_total 2.0" in httpx.get(server.url + "/metrics").text


def test_shutdown_drains_running_and_queued_generations(lm_artifact):
    rt = slowed(open_runtime(lm_artifact, threads=1), 0.02)
    app = create_app(rt, ServeConfig(decode=DecodePolicy(max_running=2), deadline_s=30))
    server = ServerThread(app).__enter__()
    results: list[httpx.Response] = []

    def client(i: int) -> None:
        results.append(
            httpx.post(
                server.url + "/v1/generate", json={"prompt": f"p {i}", "max_new_tokens": 40}, timeout=30
            )
        )

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    while len(app.state.generations) < 4 and time.monotonic() - t0 < 10:  # all in: 2 running, 2 queued
        time.sleep(0.01)
    assert len(app.state.generations) == 4 and app.state.scheduler.size >= 2  # none finished, 2+ queued
    server.__exit__(None, None, None)  # graceful stop while they run
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200] * 4
    assert all(r.json()["tokens"] == 40 for r in results)


def test_a_flood_ends_every_request_once_rejects_with_retry_after_and_bounds_latency(lm_artifact):
    """Far more requests than the server can take within the deadline: each gets one answer
    (200, 503 + Retry-After, or 504), nothing hangs, accepted ones finish within 2x the deadline."""
    rt = slowed(open_runtime(lm_artifact, threads=1), 0.01)
    deadline = 1.0
    app = create_app(rt, ServeConfig(decode=DecodePolicy(max_running=4, max_queue=6), deadline_s=deadline))
    with ServerThread(app) as server:

        async def flood() -> list[tuple[int, float, str | None]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:

                async def one(i: int) -> tuple[int, float, str | None]:
                    await asyncio.sleep(0.01 * i)  # 100 requests/s, each wanting 16 steps of 10 ms
                    t0 = time.monotonic()
                    r = await c.post("/v1/generate", json={"prompt": f"req {i}", "max_new_tokens": 16})
                    return r.status_code, time.monotonic() - t0, r.headers.get("retry-after")

                return list(await asyncio.gather(*(one(i) for i in range(60))))

        rs = asyncio.run(flood())
        # a request answered 504 at its deadline leaves the running batch at the next decode
        # step, which may come just after its answer: give the loop a moment (bounded)
        t0 = time.monotonic()
        busy = lambda: app.state.generations or app.state.scheduler.running or rt.running  # noqa: E731
        while busy() and time.monotonic() - t0 < 2:
            time.sleep(0.01)
        assert not app.state.generations and not app.state.scheduler.running and rt.running == []
    codes = [c for c, _, _ in rs]
    assert len(rs) == 60 and set(codes) <= {200, 503, 504}, codes
    assert codes.count(200) >= 8 and codes.count(503) >= 10
    assert all(ra == "1" for c, _, ra in rs if c == 503)
    assert max(t for c, t, _ in rs if c == 200) <= 2 * deadline
