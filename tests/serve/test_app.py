"""modelpress serve end to end over loopback: a tiny classifier, real HTTP (uvicorn), dynamic
batching, bad input as 4xx with one message, a full queue as 503 with Retry-After."""

import asyncio
import threading

import httpx
import pytest

import modelpress as mp
from modelpress.deploy import export_onnx
from modelpress.serve import BatchPolicy, ServerThread, build_app
from modelpress.serve.app import ServeConfig, create_app
from modelpress.serve.runtime import ClassifierRuntime


@pytest.fixture
def artifact(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer, BertForSequenceClassification

    base = BertForSequenceClassification.from_pretrained(str(tiny_bert_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    return mp.save(
        mp.compress(base, "int8-dynamic"),
        tmp_path / "art",
        extras={"tokenizer": lambda d: tok.save_pretrained(str(d))},
    )


def test_classify_over_http_batches_and_answers_like_the_model(artifact):
    app = build_app(artifact, policy=BatchPolicy(max_batch_size=8, max_wait_s=0.05), threads=1)
    runtime = ClassifierRuntime(artifact, threads=1)
    texts = [f"a {'very ' * i}good film" for i in range(12)]
    with ServerThread(app) as server:
        assert httpx.get(server.url + "/health").json() == {"status": "ok"}
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 200 and ready.json()["backend"] == "torch"
        one = httpx.post(server.url + "/v1/classify", json={"text": texts[0]}).json()
        assert one["label"] in ("rotten", "fresh") and abs(sum(one["scores"].values()) - 1) < 1e-5

        async def many() -> list[dict]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                rs = await asyncio.gather(*(c.post("/v1/classify", json={"text": t}) for t in texts))
            return [r.json() for r in rs]

        got = asyncio.run(many())
        expected = [runtime.run([t])[0] for t in texts]
        for g, e in zip(got, expected, strict=True):
            assert g["label"] == e["label"] and abs(g["score"] - e["score"]) < 2e-2  # batched and padded
        listed = httpx.post(server.url + "/v1/classify", json={"text": texts[:3]}).json()
        assert [r["label"] for r in listed["results"]] == [e["label"] for e in expected[:3]]
        metrics = httpx.get(server.url + "/metrics").text
        assert "modelpress_batch_size_count" in metrics and "modelpress_padding_share" in metrics
        batches = [line for line in metrics.splitlines() if line.startswith("modelpress_batch_size_count")]
        assert float(batches[0].split()[-1]) < len(texts) + 2  # concurrent requests shared batches


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"text": ""}, 422, "non-space"),
        ({"text": []}, 422, "non-empty"),
        ({"text": 5}, 422, "invalid request: text"),
        ({"txt": "x"}, 422, "invalid request"),
        ({"text": ["ok"] * 65}, 413, "at most 64 texts"),
        ({"text": "word " * 400}, 413, "text too long"),
        ({"text": "x" * 20_001}, 413, "at most 20000 characters"),
    ],
)
def test_bad_requests_get_one_clear_4xx(artifact, body, status, message, request):
    server = request.getfixturevalue("_server")
    r = httpx.post(server.url + "/v1/classify", json=body)
    assert r.status_code == status and message in r.json()["error"], r.text


@pytest.fixture
def _server(artifact):
    with ServerThread(build_app(artifact, threads=1)) as s:
        yield s


def test_not_json_is_a_4xx(_server):
    r = httpx.post(
        _server.url + "/v1/classify", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "invalid request" in r.json()["error"]


def test_a_full_queue_is_503_with_retry_after_and_nothing_is_lost(artifact):
    runtime = ClassifierRuntime(artifact, threads=1)
    gate = threading.Event()
    run = runtime.run

    def slow_run(texts):  # hold the first batches until the queue has filled
        gate.wait(10)
        return run(texts)

    runtime.run = slow_run  # type: ignore[method-assign]
    runtime.warm_up = lambda n: None  # type: ignore[method-assign]
    app = create_app(runtime, ServeConfig(policy=BatchPolicy(max_batch_size=2, max_wait_s=0.0, max_queue=4)))
    with ServerThread(app) as server:

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                tasks = [
                    asyncio.create_task(c.post("/v1/classify", json={"text": f"t {i}"})) for i in range(20)
                ]
                await asyncio.sleep(0.5)
                gate.set()
                return list(await asyncio.gather(*tasks))

        rs = asyncio.run(flood())
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503} and codes.count(503) >= 10 and codes.count(200) >= 4
    assert all(r.headers.get("retry-after") == "1" for r in rs if r.status_code == 503)
    assert all("label" in r.json() for r in rs if r.status_code == 200)


def test_an_onnx_export_serves_through_the_same_runtime(tmp_path, artifact):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(artifact / "tokenizer"))
    model = mp.load(artifact)
    ids = tok(["a good film", "bad"], padding=True, return_tensors="pt")
    export_onnx(
        model, tmp_path / "onnx", {k: v for k, v in ids.items() if k != "token_type_ids"}, tokenizer=tok
    )
    runtime = ClassifierRuntime(tmp_path / "onnx", threads=1)
    assert runtime.backend == "onnxruntime"
    torch_rt = ClassifierRuntime(artifact, threads=1)
    got, ref = runtime.run(["a good film"])[0], torch_rt.run(["a good film"])[0]
    assert got["label"] == ref["label"] and abs(got["score"] - ref["score"]) < 0.05
    with ServerThread(create_app(runtime)) as server:
        assert httpx.post(server.url + "/v1/classify", json={"text": "fine"}).status_code == 200
        r = httpx.post(server.url + "/v1/embed", json={"text": "fine"})
        assert r.status_code == 404 and "no hidden states" in r.json()["error"]


def test_serving_needs_a_tokenizer(tmp_path, tiny_bert):
    with pytest.raises(mp.ArtifactError, match="no tokenizer"):
        ClassifierRuntime(mp.save(tiny_bert, tmp_path / "a"))


def test_embed_is_the_normalised_mean_of_the_encoders_last_hidden_state(artifact, _server):
    import torch
    from transformers import AutoTokenizer

    texts = ["a good film", "a much longer and rather dull film about nothing"]
    r = httpx.post(_server.url + "/v1/embed", json={"text": texts})
    assert r.status_code == 200
    got = torch.tensor(r.json()["embeddings"])
    assert r.json()["dim"] == got.shape[1] == 32
    model, tok = mp.load(artifact).eval(), AutoTokenizer.from_pretrained(str(artifact / "tokenizer"))
    for text, vec in zip(texts, got, strict=True):  # each alone: no padding
        enc = tok([text], return_tensors="pt")
        with torch.inference_mode():
            ref = model.bert(**enc).last_hidden_state[0].mean(0)
        assert torch.allclose(vec, ref / ref.norm(), atol=2e-3)  # batched with padding, int8 activations
    assert torch.allclose(got.norm(dim=1), torch.ones(2), atol=1e-5)
    one = httpx.post(_server.url + "/v1/embed", json={"text": texts[0]}).json()
    assert torch.allclose(torch.tensor(one["embedding"]), got[0], atol=2e-3)
    assert httpx.post(_server.url + "/v1/embed", json={"text": [""]}).status_code == 422
    r = httpx.post(_server.url + "/v1/generate", json={"prompt": "hi"})
    assert r.status_code == 404 and "not a causal LM" in r.json()["error"]
    assert httpx.get(_server.url + "/ready").json()["endpoints"] == ["/v1/classify", "/v1/embed"]
