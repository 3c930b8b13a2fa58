"""modelpress serve --ray: ``modelpress serve ARTIFACT --ray --replicas 2`` as a process (a local
Ray on 127.0.0.1, Ray Serve's proxy and router, 2 replicas of the tiny classifier) against the
local server of ``build_app`` in this process: the same answers, byte for byte, one request at a
time; the same scores (to batching noise) under concurrent load; the same 4xx / 503 for bad
input and overload; and after Ctrl-C no Ray process left and nothing listening beyond
loopback. Needs the ``ray`` extra (installed by the README's set-up); without it the module is
skipped with that reason."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from procs import alive, descendants

pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'modelpress[ray]'")

from modelpress.serve import BatchPolicy, ServerThread, build_app

# the same options as the CLI's below: 8 texts a batch, 5 ms, 16 queued
POLICY = BatchPolicy(max_batch_size=8, max_wait_s=0.005, max_queue=16)
TEXTS = [
    "a good film",
    "dull",
    "a very very long and rather tedious film about nothing at all",
    "gorgeous, witty, seductive",
    "the plot makes no sense and the acting is worse",
]


@pytest.fixture(scope="module")
def pinned_kernels():
    """No kernel timing: every process runs the same (highest-priority) int8 kernels, so the
    answers of the two servers can be compared byte for byte (each process would time and
    pick its own, equal to ~1e-5)."""
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setenv("MODELPRESS_AUTOTUNE", "0")
        yield


@pytest.fixture(scope="module")
def local(cls_artifact, pinned_kernels):
    with ServerThread(build_app(cls_artifact, policy=POLICY, threads=1)) as server:
        yield server


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_beyond_loopback(pids: set[int]) -> list[str]:
    """The TCP sockets these processes listen on at an address other than loopback."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            pass
    out = []
    for table, loopback in (("tcp", "0100007F"), ("tcp6", "0000000000000000FFFF00000100007F")):
        with open(f"/proc/net/{table}") as f:
            for line in f.read().splitlines()[1:]:
                cols = line.split()
                addr, state, inode = cols[1].split(":")[0], cols[3], cols[9]
                loop6 = "00000000000000000000000001000000"  # ::1
                if state == "0A" and inode in inodes and addr not in (loopback, loop6):
                    out.append(f"pid {inodes[inode]} listens on {table} {cols[1]}")
    return out


def _first_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The first line the process prints, or "" when it ends or says nothing in time."""
    import queue
    import threading

    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        return ""


@pytest.fixture(scope="module")
def on_ray(cls_artifact, pinned_kernels, tmp_path_factory):
    """``modelpress serve ARTIFACT --ray --replicas 2`` until its URL line; Ctrl-C at the end."""
    port = _port()
    stderr = tmp_path_factory.mktemp("ray-cli") / "stderr.txt"
    cmd = [
        sys.executable,
        "-c",
        "from modelpress.cli import main; main()",
        *("serve", str(cls_artifact), "--ray", "--replicas", "2", "--threads", "1", "--port", str(port)),
        *("--max-batch-size", "8", "--max-wait-ms", "5", "--max-queue", "16"),
    ]
    with open(stderr, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = _first_line(proc, 300)  # printed once every replica is up
        match = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        assert match, f"no URL line: {line!r}; stderr: {stderr.read_text()}"
        pids = set(descendants(proc.pid))
        yield match.group(1), proc, pids, stderr
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_ray_deployment_answers_as_the_local_server(on_ray, local):
    url, _, pids, _ = on_ray
    assert len(pids) >= 6  # gcs, raylet, agents, Serve controller, proxy, 2 replicas ...
    assert not _listening_beyond_loopback(pids | {on_ray[1].pid})
    ready = httpx.get(url + "/ready").json()
    assert ready == httpx.get(local.url + "/ready").json() and ready["status"] == "ready"
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    for t in TEXTS:  # one at a time: a batch of one in either server, the same computation
        for path in ("/v1/classify", "/v1/embed"):
            got = httpx.post(url + path, json={"text": t})
            want = httpx.post(local.url + path, json={"text": t})
            assert got.status_code == want.status_code == 200
            assert got.content == want.content, (path, t)  # byte for byte

    async def concurrently(base: str) -> list[dict]:  # 15 at once: within a queue of 16
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            rs = await asyncio.gather(*(c.post("/v1/classify", json={"text": t}) for t in TEXTS * 3))
        assert all(r.status_code == 200 for r in rs)
        return [r.json() for r in rs]

    got, want = asyncio.run(concurrently(url)), asyncio.run(concurrently(local.url))
    # batched and padded with other texts, not the same ones in both: with timing off the int8
    # linears run on fbgemm, whose activation scale is the batch's (the random model's scores
    # are near 0.5, so a label may flip: the scores are what is compared)
    for g, w in zip(got, want, strict=True):
        assert g["scores"].keys() == w["scores"].keys()
        assert all(abs(g["scores"][k] - w["scores"][k]) < 2e-2 for k in w["scores"])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/classify", {"text": ""}),
        ("/v1/classify", {"text": 5}),
        ("/v1/classify", {"txt": "x"}),
        ("/v1/classify", {"text": ["ok"] * 65}),
        ("/v1/classify", {"text": "word " * 400}),
        ("/v1/classify", {"text": ["ok"] * 17}),  # more texts than a replica's queue holds: 503
        ("/v1/embed", {"text": [""]}),
        ("/v1/generate", {"prompt": "hi"}),
        ("/v1/classify", b"{not json"),
    ],
)
def test_bad_input_and_overload_get_the_local_servers_answer(on_ray, local, path, body):
    def send(base: str) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.post(base + path, content=body, headers={"content-type": "application/json"})
        return httpx.post(base + path, json=body)

    got, want = send(on_ray[0]), send(local.url)
    assert 400 <= want.status_code < 600 and got.status_code == want.status_code
    assert got.json() == want.json()
    assert got.headers.get("retry-after") == want.headers.get("retry-after")


def test_ctrl_c_stops_serve_and_ray_and_leaves_no_process(on_ray):
    url, proc, pids, _ = on_ray
    assert httpx.get(url + "/health").status_code == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert "stopped: Ray Serve and the local Ray shut down" in on_ray[3].read_text()
    t0 = time.monotonic()
    while alive(sorted(pids)) and time.monotonic() - t0 < 15:
        time.sleep(0.2)
    assert not alive(sorted(pids))
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)
