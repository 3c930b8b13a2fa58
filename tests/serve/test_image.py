"""Image classification over HTTP: a tiny LeNet artifact served end to end over loopback.
Answers equal the in-process model on the image preprocessed as the bench reads image files;
bad input is a 4xx with one message; text and image servers say what they take."""

import asyncio
import base64
import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
import torch

import modelpress as mp
from modelpress.data import images as imgs
from modelpress.data.images import PREPROCESSING_FILE, ImageInput, ImagePreprocess, ImageSplits
from modelpress.models.lenet import LeNet5
from modelpress.serve import BatchPolicy, ServerThread, build_app
from modelpress.serve.app import ServeConfig, create_app
from modelpress.serve.image import ImageRuntime
from modelpress.serve.runtime import open_runtime

NAMES = ("cat", "dog", "fox")
INPUT = ImageInput(ImagePreprocess(channels=1, size=(28, 28), mean=(0.5,), std=(0.25,)), NAMES)
INPUT_NO_NAMES = ImageInput(ImagePreprocess(channels=1, size=(28, 28)))


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def digit(i: int, size=(28, 28), rgb: bool = False) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (*size, 3) if rgb else size, dtype=np.uint8)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.fixture(scope="module", autouse=True)
def _reference_kernels():
    """Float math for the compressed layers, in the servers too (one process): the fast
    kernel the autotuner may pick quantizes each batch's activations, so its answers would
    depend on which images share a batch (within its 5 % tolerance)."""
    from modelpress.kernels.dispatch import reference_kernels

    with reference_kernels():
        yield


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A LeNet-5 for 3 classes, weights clustered to 16 centroids (float compute, so a batch
    computes what each image alone does), saved with its preprocessing."""
    torch.manual_seed(0)
    model = LeNet5(num_classes=3, class_names=list(NAMES)).eval()
    clustered = mp.compress(model, [mp.methods.clustering.KMeansConfig(bits=4, layers=("linear", "conv"))])
    path = tmp_path_factory.mktemp("image") / "lenet"
    return mp.save(clustered, path, extras={PREPROCESSING_FILE: INPUT.write})


@pytest.fixture(scope="module")
def server(artifact):
    app = build_app(artifact, policy=BatchPolicy(max_batch_size=8, max_wait_s=0.05), threads=1)
    with ServerThread(app) as s:
        yield s


def as_the_bench_reads(tmp_path, arrays, prep: ImagePreprocess = INPUT.prep) -> torch.Tensor:
    """The images written as files and read as ``read_image_data`` reads an image folder."""
    files = []
    for k, a in enumerate(arrays):
        (tmp_path / f"{k}.png").write_bytes(png(a))
        files.append(imgs._read_image(tmp_path / f"{k}.png"))
    x = imgs._stack(files, prep, "test")  # uint8 (n, c, 28, 28): converted and resized
    return imgs.normalize(x, prep.per_channel(prep.mean), prep.per_channel(prep.std))


def in_process(artifact, x: torch.Tensor) -> torch.Tensor:
    model = mp.load(artifact).eval()
    with torch.inference_mode():
        return model(x).softmax(-1)


def same(answer: dict, probs: torch.Tensor) -> None:
    assert answer["label"] == NAMES[int(probs.argmax())]
    got = torch.tensor([answer["scores"][n] for n in NAMES])
    assert torch.allclose(got, probs, atol=1e-5), (got, probs)


def test_base64_json_and_raw_body_answer_as_the_in_process_model(server, artifact, tmp_path):
    arrays = [digit(i) for i in range(6)]
    probs = in_process(artifact, as_the_bench_reads(tmp_path, arrays))
    ready = httpx.get(server.url + "/ready").json()
    assert ready["task"] == "image-classification" and ready["endpoints"] == ["/v1/classify"]
    assert ready["input"] == {"channels": 1, "size": [28, 28], "mean": [0.5], "std": [0.25]}
    assert ready["classes"] == list(NAMES)
    for a, p in zip(arrays, probs, strict=True):
        one = httpx.post(server.url + "/v1/classify", json={"image": b64(png(a))})
        assert one.status_code == 200, one.text
        same(one.json(), p)
        raw = httpx.post(server.url + "/v1/classify", content=png(a), headers={"content-type": "image/png"})
        assert raw.json() == one.json()
    # a data URL, and base64 wrapped at 76 columns (`base64` without -w0), are the same image
    wrapped = "\n".join(b64(png(arrays[0]))[i : i + 76] for i in range(0, len(b64(png(arrays[0]))), 76))
    for text in ("data:image/png;base64," + b64(png(arrays[0])), wrapped):
        same(httpx.post(server.url + "/v1/classify", json={"image": text}).json(), probs[0])
    listed = httpx.post(server.url + "/v1/classify", json={"image": [b64(png(a)) for a in arrays]}).json()
    assert len(listed["results"]) == 6
    for r, p in zip(listed["results"], probs, strict=True):
        same(r, p)


def test_concurrent_images_share_batches(server, artifact, tmp_path):
    arrays = [digit(100 + i) for i in range(12)]
    probs = in_process(artifact, as_the_bench_reads(tmp_path, arrays))
    before = _batches(server)

    async def many() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            rs = await asyncio.gather(*(c.post("/v1/classify", json={"image": b64(png(a))}) for a in arrays))
        return [r.json() for r in rs]

    for answer, p in zip(asyncio.run(many()), probs, strict=True):
        same(answer, p)
    assert _batches(server) - before < len(arrays)  # concurrent requests went together


def _batches(server) -> float:
    text = httpx.get(server.url + "/metrics").text
    return float(
        next(ln for ln in text.splitlines() if ln.startswith("modelpress_batch_size_count")).split()[-1]
    )


def test_a_colour_image_and_one_of_another_size_are_converted_as_the_bench_does(server, artifact, tmp_path):
    """A grey 28x28 model: RGB is turned grey (PIL's ITU-R 601 luma), RGBA loses its alpha,
    any size is resized to 28x28 (bilinear), JPEG decodes as the folder reader decodes it."""
    arrays = [
        digit(7, (40, 32), rgb=True),
        digit(8, (12, 50)),
        np.dstack([digit(9, (28, 28), rgb=True), digit(3)]),
    ]
    x = as_the_bench_reads(tmp_path, arrays)
    runtime = ImageRuntime(artifact)
    assert torch.equal(runtime.prepare([runtime.decode(png(a)) for a in arrays]), x)  # the same pixels
    probs = in_process(artifact, x)
    for a, p in zip(arrays, probs, strict=True):
        same(httpx.post(server.url + "/v1/classify", json={"image": b64(png(a))}).json(), p)
    jpeg = png(arrays[0], "JPEG")
    (tmp_path / "j.jpg").write_bytes(jpeg)
    x = imgs._stack([imgs._read_image(tmp_path / "j.jpg")], INPUT.prep, "test")
    ref = in_process(artifact, imgs.normalize(x, (0.5,), (0.25,)))[0]
    r = httpx.post(server.url + "/v1/classify", content=jpeg, headers={"content-type": "image/jpeg"})
    same(r.json(), ref)


@pytest.fixture(scope="module")
def small_limits(artifact):
    cfg = ServeConfig(max_images=4, max_image_bytes=4096, max_body_bytes=16384, max_image_pixels=100_000)
    with ServerThread(create_app(ImageRuntime(artifact, threads=1), cfg)) as s:
        yield s


GOOD = b64(png(digit(1)))
TRUNCATED = b64(png(digit(1))[:60])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"image": "this is not base64!"}, 422, "the image is not valid base64"),
        ({"image": b64(b"hello, world")}, 422, "the image is not an image this server reads (PNG, JPEG"),
        ({"image": TRUNCATED}, 422, "cannot decode the image"),
        ({"image": ""}, 422, "the image is empty"),
        ({"image": []}, 422, "non-empty"),
        ({"image": 5}, 422, "image must be a base64 string"),
        ({"image": [GOOD, 5]}, 422, "image must be a base64 string"),
        ({"image": [GOOD, "%%%"]}, 422, "image 2 of 2 is not valid base64"),
        ({"image": [GOOD] * 5}, 413, "at most 4 images per request, got 5"),
        ({"image": b64(bytes(5000))}, 413, "the image is over 4,096 bytes"),
        (
            {"image": b64(png_header(400, 400))},
            413,
            "400x400 = 160,000 pixels; the server takes at most 100,000",
        ),
        ({"image": b64(png_header(30000, 30000))}, 413, "too large"),  # PIL's own bomb check
        ({"text": "a digit"}, 422, "this server classifies images, not text"),
        ({"image": GOOD, "top_k": 3}, 422, "top_k: Extra inputs are not permitted"),
        ({}, 422, "image: Field required"),
        ([GOOD], 422, "the body must be a JSON object"),
    ],
)
def test_bad_json_is_one_clear_4xx(small_limits, body, status, message):
    r = httpx.post(small_limits.url + "/v1/classify", json=body)
    assert r.status_code == status and message in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("content", "ctype", "status", "message"),
    [
        (b"", "image/png", 422, "the request body is empty"),
        (b"", "application/json", 422, "the request body is empty"),
        (b"{not json", "application/json", 422, "the body is not JSON"),
        (b"GIF89a-not-really", "image/gif", 422, "the image is not an image this server reads"),
        (b"\x00" * 5000, "image/png", 413, "the image is over 4,096 bytes"),
        (b" " * 20000, "application/json", 413, "the request body is over 16,384 bytes"),
        (b"a digit", "text/plain", 415, "this server classifies images and takes no text/plain body"),
        (b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x", 415, "multipart uploads are not taken"),
    ],
)
def test_bad_bodies_are_one_clear_4xx(small_limits, content, ctype, status, message):
    r = httpx.post(small_limits.url + "/v1/classify", content=content, headers={"content-type": ctype})
    assert r.status_code == status and message in r.json()["error"], r.text


def test_pixel_limit_by_default_and_the_other_endpoints_and_metrics(server):
    r = httpx.post(
        server.url + "/v1/classify", content=png_header(5000, 5000), headers={"content-type": "image/png"}
    )
    assert r.status_code == 413 and "at most 16,777,216" in r.json()["error"]
    for path, body in (("/v1/embed", {"text": "x"}), ("/v1/embed", {"image": GOOD}), ("/v1/generate", {})):
        r = httpx.post(server.url + path, json=body)
        assert (
            r.status_code == 404
            and "image classifier" in r.json()["error"]
            and "/v1/classify" in r.json()["error"]
        )
    metrics = httpx.get(server.url + "/metrics").text
    counts = {
        ln.split('"')[1]: float(ln.split()[-1])
        for ln in metrics.splitlines()
        if ln.startswith("modelpress_requests_total{")
    }
    assert counts["413"] >= 1 and counts["404"] >= 3 and counts["200"] >= 1


def test_a_text_server_says_it_takes_no_images(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer, BertForSequenceClassification

    base = BertForSequenceClassification.from_pretrained(str(tiny_bert_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    art = mp.save(base, tmp_path / "text", extras={"tokenizer": lambda d: tok.save_pretrained(str(d))})
    with ServerThread(build_app(art, threads=1)) as s:
        for kw in (
            {"json": {"image": GOOD}},
            {"content": base64.b64decode(GOOD), "headers": {"content-type": "image/png"}},
        ):
            r = httpx.post(s.url + "/v1/classify", **kw)
            assert r.status_code in (415, 422) and "classifies text and takes no images" in r.json()["error"]
        assert httpx.post(s.url + "/v1/classify", json={"text": "fine"}).status_code == 200


def test_an_image_artifact_without_its_preprocessing_is_refused(tmp_path):
    path = mp.save(LeNet5(), tmp_path / "bare")
    digits = ImageRuntime(
        mp.save(LeNet5(), tmp_path / "digits", extras={PREPROCESSING_FILE: INPUT_NO_NAMES.write})
    )
    assert digits.describe()["classes"] == [str(i) for i in range(10)]  # no names: the class ids
    with pytest.raises(mp.ArtifactError, match=r"image classifier without preprocessing\.json"):
        open_runtime(path)
    (path / PREPROCESSING_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(mp.ArtifactError, match="not a modelpress image preprocessing"):
        open_runtime(path)


def test_the_image_task_saves_its_preprocessing_with_each_artifact(tmp_path):
    from modelpress.models.vision import ImageClassificationTask

    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(8) % 2
    splits = ImageSplits((x, y), (x, y), (x, y), "t", 0, class_names=("a", "b"), mean=(0.1,), std=(0.3,))
    task = ImageClassificationTask("lenet-5", splits)
    path = mp.save(LeNet5(num_classes=2), tmp_path / "a", extras=task.artifact_extras())
    got = ImageInput.read(path / PREPROCESSING_FILE)
    assert got == ImageInput(ImagePreprocess(1, (28, 28), (0.1,), (0.3,)), ("a", "b"), "x")
    assert mp.artifact_bytes(path) == sum(
        (path / f).stat().st_size for f in ("model.safetensors", "manifest.json")
    )
    mp.save(LeNet5(num_classes=2), path)  # an artifact holding preprocessing.json is ours to replace
    # the runtime preprocesses as the task prepares its batches
    rt = ImageRuntime(mp.save(LeNet5(num_classes=2), tmp_path / "b", extras=task.artifact_extras()))
    batch = next(iter(task.batches("test", 8)))["x"]
    assert torch.equal(rt.prepare(list(x)), batch)


def test_an_onnx_export_of_the_image_model_serves_too(tmp_path, artifact):
    from modelpress.deploy import export

    x = as_the_bench_reads(tmp_path, [digit(5), digit(6)])
    export(artifact, tmp_path / "onnx", inputs={"x": x}, allow_decoded=True)
    runtime = open_runtime(tmp_path / "onnx", threads=1)
    assert isinstance(runtime, ImageRuntime) and runtime.backend == "onnxruntime"
    probs = in_process(artifact, x)
    with ServerThread(create_app(runtime)) as s:
        for a, p in zip((digit(5), digit(6)), probs, strict=True):
            r = httpx.post(s.url + "/v1/classify", content=png(a), headers={"content-type": "image/png"})
            assert (
                r.json()["label"] == NAMES[int(p.argmax())] and abs(r.json()["score"] - float(p.max())) < 1e-5
            )


def test_a_hugging_face_image_classifier_serves_what_the_bench_evaluated(tmp_path):
    """RGB, resized 12x10 -> 16x16, mean / std from preprocessor_config.json, pixel_values: the
    test images the bench evaluated are among the server's preprocessed files, and each answer
    is the in-process model's."""
    from imagefiles import write_hf_image_model, write_image_folder
    from modelpress.models.builtin import resolve_model

    d = write_hf_image_model(tmp_path / "tiny-resnet", "resnet", num_labels=3, size=16)
    root = write_image_folder(tmp_path / "pets", per_class=4)
    task = resolve_model(str(d), data=str(root))
    model = task.load_original(progress=False)
    art = mp.save(model, tmp_path / "art", extras=task.artifact_extras())
    runtime = open_runtime(art, threads=1)
    assert isinstance(runtime, ImageRuntime) and runtime.input.input_name == "pixel_values"
    files = sorted(root.rglob("*.png"))
    decoded = torch.stack([runtime.decode(f.read_bytes()) for f in files])  # uint8 (n, 3, 16, 16)
    for img in task.splits.test[0]:
        assert any(torch.equal(img, row) for row in decoded)
    with torch.inference_mode():
        probs = model(pixel_values=runtime.prepare(list(decoded))).logits.softmax(-1)
    with ServerThread(create_app(runtime)) as s:
        r = httpx.post(s.url + "/v1/classify", json={"image": [b64(f.read_bytes()) for f in files]})
        for answer, p in zip(r.json()["results"], probs, strict=True):
            assert answer["label"] == ("cat", "dog", "fox")[int(p.argmax())]
            assert abs(answer["score"] - float(p.max())) < 1e-5
