"""`blipcap serve` as a real process on a free 127.0.0.1 port with the trained fixture: requests over
TCP, a bounded load test (batches must form), refusals over the wire, and graceful SIGTERM."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
import httpx  # noqa: E402

from tests.helpers.shapes import COLORS, POSITIONS, SHAPES, caption_for, make_image  # noqa: E402
from .test_server_app import metric  # noqa: E402

BLIPCAP = str(Path(sys.executable).with_name("blipcap"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launch(model: Path, *args: str, env: dict | None = None, ready_timeout: float = 90.0):
    """Start `blipcap serve` on a free loopback port; yield (base_url, process); stop it (SIGTERM)."""
    port = free_port()
    log = (Path(os.environ.get("TMPDIR", "/tmp")) / f"blipcap-serve-{port}.log").open("w+")
    cmd = [BLIPCAP, "serve", "--model", str(model), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
           *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"blipcap serve exited with {proc.returncode}:\n{log.read()}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("blipcap serve did not become ready in time")
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def png(color, shape, position) -> bytes:
    buf = io.BytesIO()
    make_image(color, shape, position).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tiny_fixture):
    with launch(tiny_fixture, "--max-wait-ms", "10", "--max-batch-size", "16", "--log-level", "warning") as (base, _):
        yield base


def test_caption_over_http(server):
    files = [("image", ("red.png", png("red", "circle", "left"), "image/png")),
             ("image", ("blue.png", png("blue", "square", "top"), "image/png"))]
    r = httpx.post(f"{server}/v1/caption", files=files, timeout=30)
    assert r.status_code == 200
    assert [e["generated_text"] for e in r.json()] == ["a red circle on the left", "a blue square at the top"]
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert "/v1/caption" in httpx.get(f"{server}/openapi.json").json()["paths"]


def test_load_32_clients_400_requests_all_succeed_in_batches(server):
    specs = [(c, s, p) for c in COLORS for s in SHAPES for p in POSITIONS][::3]  # 16 distinct images
    bodies = [png(*spec) for spec in specs]
    before = httpx.get(f"{server}/metrics").text
    batches_before = metric(before, "blipcap_batch_size_count")
    singles_before = metric(before, 'blipcap_batch_size_bucket{le="1.0"}')
    total, clients = 400, 32
    outcomes: list = []

    async def client(worker: int, http: httpx.AsyncClient):
        for i in range(worker, total, clients):  # 400 requests in all, spread over 32 clients
            k = i % len(bodies)
            r = await http.post(f"{server}/v1/caption", files={"image": (f"{k}.png", bodies[k], "image/png")})
            outcomes.append((r.status_code, r.json()[0].get("generated_text"), caption_for(*specs[k])))

    async def main():
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            await asyncio.wait_for(asyncio.gather(*(client(w, http) for w in range(clients))), timeout=180)

    start = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - start
    assert len(outcomes) == total
    assert all(status == 200 for status, _, _ in outcomes)
    assert all(got == want for _, got, want in outcomes)
    after = httpx.get(f"{server}/metrics").text
    batches = metric(after, "blipcap_batch_size_count") - batches_before
    singles = metric(after, 'blipcap_batch_size_bucket{le="1.0"}') - singles_before
    images = metric(after, "blipcap_batch_size_sum") - metric(before, "blipcap_batch_size_sum")
    assert images == total
    assert batches < total and singles < batches, (batches, singles)  # batches larger than one formed
    print(f"\n400 requests, 32 clients: {elapsed:.1f} s, {batches:.0f} model calls, "
          f"{images / batches:.1f} images per call on average")


def test_refusals_over_the_wire(server):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:  # headers only: 1 GB announced
        s.sendall(b"POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 1000000000\r\n\r\n")
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413 ")
    r = httpx.post(f"{server}/v1/caption", content=b"", headers={"content-type": "image/png"})
    assert r.status_code == 400
    r = httpx.post(f"{server}/v1/caption", files={"image": ("empty.png", b"")})
    assert r.status_code == 422 and r.json()[0]["error_type"] == "EmptyImageError"


def test_key_urls_and_graceful_sigterm(tiny_fixture):
    env = {"BLIPCAP_TEST_KEY": "k3y"}
    args = ("--api-key-env", "BLIPCAP_TEST_KEY", "--allow-urls", "--max-wait-ms", "10000", "--timeout-s", "30")
    with launch(tiny_fixture, *args, env=env) as (base, proc):
        auth = {"Authorization": "Bearer k3y"}
        assert httpx.post(f"{base}/v1/caption", files={"image": ("a.png", png("red", "circle", "left"))}).status_code == 401
        # URL inputs are on, but never to private, loopback or metadata addresses (checked before connecting)
        urls = ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/cat.jpg", f"{base}/static/app.js"]
        r = httpx.post(f"{base}/v1/caption", json={"images": urls}, headers=auth, timeout=30)
        assert r.status_code == 422
        assert all("refused" in e["error"] and "non-public address" in e["error"] for e in r.json())

        # SIGTERM while a request waits in the batcher (max-wait 10 s): it is answered at once, in full
        result = {}

        def request():
            result["r"] = httpx.post(f"{base}/v1/caption", files={"image": ("a.png", png("green", "circle", "top"))},
                                     headers=auth, timeout=30)
        thread = threading.Thread(target=request)
        thread.start()
        deadline = time.monotonic() + 10
        while metric(httpx.get(f"{base}/metrics", headers=auth).text, "blipcap_queue_depth") < 1:
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.02)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        thread.join(20)
        assert result["r"].status_code == 200
        assert result["r"].json()[0]["generated_text"] == "a green circle at the top"
        assert time.monotonic() - signalled < 5  # drained, not left to wait out its 10 s
        proc.wait(20)
        # uvicorn re-raises the signal once shut down (older versions exit 0)
        assert proc.returncode in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/healthz", timeout=2)


def test_cli_refusals_before_loading(tiny_fixture, monkeypatch, capsys):
    from blipcap.cli import main

    monkeypatch.delenv("BLIPCAP_UNSET_KEY", raising=False)
    assert main(["serve", "--model", str(tiny_fixture), "--api-key-env", "BLIPCAP_UNSET_KEY"]) == 2
    assert "BLIPCAP_UNSET_KEY" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_fixture), "--max-batch-size", "0"]) == 2
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the serve extra were not installed
    assert main(["serve", "--model", str(tiny_fixture)]) == 1
    assert "blipcap serve requires the serve extra: pip install 'blipcap[serve]'" in capsys.readouterr().err
