"""The service app in-process (httpx over ASGI, lifespan run): request shapes, the bad-input matrix,
limits, batching, timeouts, metrics. The trained fixture makes the captions checkable."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
import zlib
from contextlib import asynccontextmanager

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")
import httpx  # noqa: E402

from blipcap import Captioner  # noqa: E402
from blipcap.server import ServerConfig, create_app  # noqa: E402
from blipcap.images import UrlFetcher  # noqa: E402
from tests.helpers.shapes import caption_for, make_image  # noqa: E402

RED, BLUE, GREEN = ("red", "circle", "left"), ("blue", "square", "top"), ("green", "triangle", "right")


@pytest.fixture(scope="module")
def cap(tiny_fixture):
    return Captioner.load(tiny_fixture, device="cpu", dtype="float32")


def encode(spec, fmt="PNG", seed=None) -> bytes:
    image = make_image(*spec, rng=None if seed is None else np.random.default_rng(seed))
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_bomb(width: int = 10_000, height: int = 10_001) -> bytes:
    """A valid 1-bit PNG of width x height (> 100 megapixels) that compresses to ~20 kB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class Gated:
    """The real captioner behind a gate the test opens and closes, recording every model call."""

    def __init__(self, inner):
        self.inner, self.gate, self.calls = inner, threading.Event(), []
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def caption(self, images, options=None, **kwargs):
        if not self.gate.wait(20):
            raise RuntimeError("the test never opened the gate")
        prompts = kwargs.get("prompt")
        self.calls.append((len(images), options, prompts))
        if isinstance(prompts, list) and "boom" in prompts:
            raise RuntimeError("boom")
        return self.inner.caption(images, options, **kwargs)


@asynccontextmanager
async def serving(captioner, *, ready=True, fetcher=None, **config):
    app = create_app(captioner, ServerConfig(**config), fetcher=fetcher)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is a response
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=30) as client:
            client.service = app.state.service
            if ready:
                for _ in range(500):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the app never became ready")
            yield client


def run(coro):
    return asyncio.run(coro)


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_start} not in /metrics")


# --- the three request shapes -------------------------------------------------------------------------

def test_multipart_json_hf_and_raw_bodies_caption_each_image(cap):
    async def scenario():
        async with serving(cap) as c:
            files = [("image", ("red.png", encode(RED), "image/png")),
                     ("image", ("blue.jpg", encode(BLUE, "JPEG"), "image/jpeg"))]
            r = await c.post("/v1/caption", files=files)
            assert r.status_code == 200
            assert [e["generated_text"] for e in r.json()] == [caption_for(*RED), caption_for(*BLUE)]
            assert all(isinstance(e["score"], float) and e["score"] <= 0 for e in r.json())

            r = await c.post("/v1/caption", json={"images": [b64(encode(GREEN)), "data:image/png;base64," +
                                                              b64(encode(RED))]})
            assert [e["generated_text"] for e in r.json()] == [caption_for(*GREEN), caption_for(*RED)]

            r = await c.post("/v1/caption", json={"inputs": b64(encode(BLUE)), "parameters": {"max_new_tokens": 3}})
            assert r.status_code == 200
            assert r.json()[0]["generated_text"] == "a blue square"  # 3 new tokens, the [SEP] not reached

            r = await c.post("/v1/caption", content=encode(RED, "JPEG"), headers={"content-type": "image/jpeg"})
            (entry,) = r.json()
            assert set(entry) == {"generated_text", "score"} and isinstance(entry["score"], float)
            assert entry["generated_text"] == caption_for(*RED)
    run(scenario())


def test_exif_rotated_photos_are_turned_upright_once(cap):
    upright = make_image(*RED)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back (ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    assert cap.caption([buf.getvalue()])[0].text == caption_for(*RED)

    async def scenario():
        async with serving(cap) as c:
            r = await c.post("/v1/caption", files={"image": ("rotated.jpg", buf.getvalue(), "image/jpeg")})
            assert r.json()[0]["generated_text"] == caption_for(*RED)
    run(scenario())


def test_options_reach_the_model_and_match_the_library(cap):
    image = make_image(*RED)
    expected = cap.caption([image], num_beams=3, num_return_sequences=2)[0]
    prompted = cap.caption([image], prompt="a red", keep_prompt=True)[0]

    async def scenario():
        async with serving(cap) as c:
            r = await c.post("/v1/caption", files={"image": ("a.png", encode(RED))},
                             data={"options": json.dumps({"num_beams": 3, "num_return_sequences": 2})})
            entry = r.json()[0]
            assert entry["generated_text"] == expected.text
            assert entry["score"] == pytest.approx(expected.score, abs=1e-4)
            assert [a["generated_text"] for a in entry["alternatives"]] == [a.text for a in expected.alternatives]
            r = await c.post("/v1/caption", json={"images": [b64(encode(RED))],
                                                  "options": {"prompt": "a red", "keep_prompt": True}})
            assert r.json()[0]["generated_text"] == prompted.text == caption_for(*RED)
            r = await c.post("/v1/caption", json={"inputs": b64(encode(RED)),
                                                  "parameters": {"generate_kwargs": {"prompt": "a red"}}})
            assert r.json()[0]["generated_text"] == "circle on the left"  # the prompt is stripped by default
    run(scenario())


# --- the bad-input matrix -----------------------------------------------------------------------------

def test_bad_request_bodies_are_refused_with_a_reason(cap):
    async def scenario():
        async with serving(cap, max_queue=4) as c:
            async def post(expect, **kw):
                r = await c.post("/v1/caption", **kw)
                assert r.status_code == expect, (kw.get("headers"), r.text)
                return r.json()

            assert "empty" in (await post(400, content=b"", headers={"content-type": "image/png"}))["error"]
            assert "empty" in (await post(400, content=b""))["error"]
            err = await post(415, content=b"hello", headers={"content-type": "text/plain"})
            assert "text/plain" in err["error"]
            await post(415, content=encode(RED))  # no content type at all
            assert "not valid JSON" in (await post(400, content=b"{oops", headers={"content-type": "application/json"}))["error"]
            assert "images" in (await post(400, json={"pictures": []}))["error"]
            await post(400, json={"images": "notalist"})
            await post(400, json={"images": []})
            await post(400, json=[1, 2])
            err = await post(400, files={"photo": ("a.png", encode(RED))})  # files under the wrong name
            assert "'image'" in err["error"]
            err = await post(400, content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
            assert "error" in err
            err = await post(413, json={"images": [b64(encode(RED))] * 5})  # more than max_queue
            assert "limit is 4" in err["error"]
    run(scenario())


@pytest.mark.parametrize("body, kind, reason", [
    (b"", "EmptyImageError", "empty (0 bytes)"),
    (b"%PDF-1.4 not an image at all", "NotAnImageError", "not a recognised image format"),
    ("truncated-jpeg", "TruncatedImageError", "truncated or corrupt JPEG"),
    ("bomb", "ImageTooLargeError", "exceeds max_pixels=100,000,000"),
])
def test_bad_images_get_422_with_the_reason(cap, body, kind, reason):
    if body == "truncated-jpeg":
        full = encode(RED, "JPEG", seed=1)
        body = full[: len(full) // 2]
    elif body == "bomb":
        body = png_bomb()
        assert len(body) < 50_000  # cheap to send: the pixels only exist if someone decodes it

    async def scenario():
        async with serving(cap) as c:
            r = await c.post("/v1/caption", files={"image": ("upload.bin", body, "application/octet-stream")})
            assert r.status_code == 422
            (entry,) = r.json()
            assert set(entry) == {"error", "error_type"} and entry["error_type"] == kind
            assert r.json()[0]["error"].startswith("upload.bin: ") and reason in r.json()[0]["error"]
            metrics = (await c.get("/metrics")).text
            assert metric(metrics, f'blipcap_errors_total{{kind="{kind}"}}') == 1
    run(scenario())


def test_pixel_cap_follows_max_pixels_and_a_bad_image_fails_alone(cap):
    async def scenario():
        async with serving(cap, max_pixels=120 * 90) as c:
            small = make_image(*GREEN, size=(100, 90))
            buf = io.BytesIO()
            small.save(buf, "PNG")
            big = make_image(*RED, size=(121, 90))
            buf2 = io.BytesIO()
            big.save(buf2, "PNG")
            r = await c.post("/v1/caption", json={"images": [b64(buf.getvalue()), b64(buf2.getvalue()), "!!"]})
            assert r.status_code == 200  # one image captioned: the others are errors of their own
            good, too_big, garbage = r.json()
            assert good["generated_text"] == caption_for(*GREEN)
            assert too_big["error_type"] == "ImageTooLargeError" and too_big["error"].startswith("images[1]: 121x90")
            assert garbage["error_type"] == "UnreadableImageError" and "base64" in garbage["error"]
    run(scenario())


def test_upload_cap_413_from_content_length_and_while_streaming(cap):
    async def scenario():
        async with serving(cap, max_upload_mb=0.05) as c:  # 52,428 bytes
            noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
            buf = io.BytesIO()
            noise.save(buf, "PNG")
            big = buf.getvalue()
            assert len(big) > 60_000
            r = await c.post("/v1/caption", files={"image": ("big.png", big)})
            assert r.status_code == 413 and "0.05 MB" in r.json()["error"]

            async def chunks():  # no Content-Length: the cap must hold while the body streams
                for i in range(0, len(big), 8192):
                    yield big[i : i + 8192]
            r = await c.post("/v1/caption", content=chunks(), headers={"content-type": "image/png"})
            assert r.status_code == 413

            huge_json = json.dumps({"images": [b64(big)]}).encode()
            r = await c.post("/v1/caption", content=huge_json, headers={"content-type": "application/json"})
            assert r.status_code == 413
            r = await c.post("/v1/caption", files={"image": ("ok.png", encode(RED))})  # still serving
            assert r.status_code == 200
            assert metric((await c.get("/metrics")).text, 'blipcap_errors_total{kind="too_large"}') == 3
    run(scenario())


def test_options_are_validated(cap):
    async def scenario():
        async with serving(cap) as c:
            image = b64(encode(RED))
            for options, words in [
                ({"beams": 3}, "unknown option(s): beams"),
                ({"num_beams": "3"}, "num_beams must be an integer"),
                ({"num_beams": 2.5}, "num_beams must be an integer"),
                ({"num_beams": 0}, "num_beams must be >= 1"),
                ({"num_beams": 99}, "limited to 8"),
                ({"max_new_tokens": 500}, "limited to 64"),
                ({"max_new_tokens": 40}, "the model has 32"),  # the fixture has 32 positions
                ({"do_sample": "yes"}, "true or false"),
                ({"suppress_tokens": [10**6]}, "suppress_tokens must be ids"),
                ({"num_return_sequences": 2}, "greedy search returns one caption"),
            ]:
                r = await c.post("/v1/caption", json={"images": [image], "options": options})
                assert r.status_code == 422 and words in r.json()["error"], (options, r.text)
            r = await c.post("/v1/caption", files={"image": ("a.png", encode(RED))}, data={"options": "{nope"})
            assert r.status_code == 422 and "not valid JSON" in r.json()["error"]
            r = await c.post("/v1/caption", json={"inputs": image, "parameters": {"generate_kwargs": [1]}})
            assert r.status_code == 422
    run(scenario())


def test_non_finite_and_out_of_range_options_are_422_not_500(cap):
    # issue 13, item 3: each of these answered 500
    async def scenario():
        async with serving(cap) as c:
            image = b64(encode(RED))
            for options, words in [
                ({"temperature": float("nan"), "do_sample": True}, "temperature must be a finite number"),
                ({"repetition_penalty": float("inf")}, "repetition_penalty must be a finite number"),
                ({"top_p": 1e-300, "do_sample": True}, "top_p must be at least"),
                ({"temperature": 1e-300, "do_sample": True}, "temperature must be at least"),
                ({"seed": 2**64, "do_sample": True}, "seed must be in"),
            ]:
                body = json.dumps({"images": [image], "options": options}).encode()  # NaN as JSON's NaN token
                r = await c.post("/v1/caption", content=body, headers={"content-type": "application/json"})
                assert r.status_code == 422 and words in r.json()["error"], (options, r.text)
            for parameters in ("ab", 5, [1]):
                r = await c.post("/v1/caption", json={"inputs": image, "parameters": parameters})
                assert r.status_code == 422 and "parameters" in r.json()["error"], (parameters, r.text)
            r = await c.post("/v1/caption", json={"images": [image], "options": {"max_new_tokens": None}})
            assert r.status_code == 200  # null: the checkpoint's budget
    run(scenario())


def test_api_key(cap):
    async def scenario():
        async with serving(cap, api_key="s3cret") as c:
            files = {"image": ("a.png", encode(RED))}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}, {"Authorization": "s3cret"}):
                r = await c.post("/v1/caption", files=files, headers=headers)
                assert r.status_code == 401, headers
                assert r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["error"]
            assert (await c.get("/metrics")).status_code == 401
            for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
                r = await c.post("/v1/caption", files=files, headers=headers)
                assert r.status_code == 200 and r.json()[0]["generated_text"] == caption_for(*RED)
            assert (await c.get("/healthz")).status_code == 200  # probes need no key
            assert (await c.get("/readyz")).status_code == 200
            metrics = await c.get("/metrics", headers={"X-API-Key": "s3cret"})
            assert metric(metrics.text, 'blipcap_errors_total{kind="unauthorized"}') == 5
    run(scenario())


def test_urls_are_off_by_default(cap):
    async def scenario():
        async with serving(cap) as c:
            r = await c.post("/v1/caption", json={"images": ["http://127.0.0.1:9/x.png"]})
            assert r.status_code == 422
            assert r.json()[0]["error"] == ("http://127.0.0.1:9/x.png: URL inputs are off on this server "
                                            "(start it with --allow-urls)")
            r = await c.post("/v1/caption", json={"images": ["file:///etc/passwd", "/etc/passwd"]})
            assert r.status_code == 422  # never read as paths
            assert [e["error"] for e in r.json()] == [
                "images[0]: only http and https URLs are accepted",
                "images[1]: not valid base64 (send base64 image bytes, a data: URL, or an http(s) URL)"]
    run(scenario())


def test_private_address_urls_are_refused_without_connecting(cap):
    attempts = []

    def resolver(host, port):  # numeric addresses only: no DNS query leaves the machine
        import socket
        infos = socket.getaddrinfo(host, port, flags=socket.AI_NUMERICHOST, type=socket.SOCK_STREAM)
        return [i[4][0] for i in infos]

    def connector(ip, port, timeout):
        attempts.append(ip)
        raise AssertionError(f"the fetcher tried to connect to {ip}")

    fetcher = UrlFetcher(max_bytes=10**6, timeout_s=2, resolver=resolver, connector=connector)
    urls = ["http://127.0.0.1/a.png", "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/x.jpg",
            "https://192.168.0.1/", "http://[::1]:8080/", "http://[::ffff:10.0.0.1]/", "http://2130706433/",
            "http://0.0.0.0/", "http://100.64.0.1/", "http://[fd00::1]/"]

    async def scenario():
        async with serving(cap, allow_urls=True, fetcher=fetcher) as c:
            r = await c.post("/v1/caption", json={"images": urls})
            assert r.status_code == 422
            for url, entry in zip(urls, r.json()):
                assert entry["error"].startswith(f"{url}: refused: ") and "non-public address" in entry["error"]
            r = await c.post("/v1/caption", json={"inputs": "ftp://127.0.0.1/a.png"})
            assert r.status_code == 422 and r.json()[0]["error"] == "inputs: only http and https URLs are accepted"
    run(scenario())
    assert attempts == []


# --- batching, the queue, timeouts, readiness -----------------------------------------------------------

def test_concurrent_requests_share_a_batch_grouped_by_options(cap):
    gated = Gated(cap)

    async def scenario():
        async with serving(gated, max_wait_ms=300, max_batch_size=4) as c:
            gated.calls.clear()
            specs = [RED, BLUE, GREEN, RED, BLUE, GREEN]
            beams = [1, 3, 1, 3, 1, 1]
            posts = [c.post("/v1/caption", json={"images": [b64(encode(s))], "options": {"num_beams": b}})
                     for s, b in zip(specs, beams)]
            responses = await asyncio.gather(*posts)
            assert [r.json()[0]["generated_text"] for r in responses] == [caption_for(*s) for s in specs]
            # one call per options group; greedy's four fill a batch of 4, the two beam searches share one
            sizes = sorted((n, opts.num_beams) for n, opts, _ in gated.calls)
            assert sizes == [(2, 3), (4, 1)]
            metrics = (await c.get("/metrics")).text
            assert metric(metrics, "blipcap_batch_size_count") == 2
            assert metric(metrics, 'blipcap_batch_size_bucket{le="1.0"}') == 0
            assert metric(metrics, 'blipcap_images_total{outcome="ok"}') == 6
    run(scenario())


def test_prompts_ride_per_image_and_seeded_sampling_is_batched_alone(cap):
    gated = Gated(cap)
    image = make_image(*RED)
    sampled = cap.caption([image], do_sample=True, seed=7, temperature=1.5)[0].text

    async def scenario():
        async with serving(gated, max_wait_ms=200) as c:
            gated.calls.clear()
            seeded = {"do_sample": True, "seed": 7, "temperature": 1.5}
            responses = await asyncio.gather(
                c.post("/v1/caption", json={"images": [b64(encode(RED))], "options": {"prompt": "a red"}}),
                c.post("/v1/caption", json={"images": [b64(encode(BLUE))]}),
                c.post("/v1/caption", json={"images": [b64(encode(RED))], "options": seeded}),
                c.post("/v1/caption", json={"images": [b64(encode(RED))], "options": seeded}),
            )
            texts = [r.json()[0]["generated_text"] for r in responses]
            assert texts == ["circle on the left", caption_for(*BLUE), sampled, sampled]
            # which request's image is decoded first (so its place in the shared batch) is up to the threads
            calls = sorted((n, str(sorted(p, key=str))) for n, _, p in gated.calls)
            assert calls == [(1, "[None]"), (1, "[None]"), (2, "[None, 'a red']")]
    run(scenario())


def test_a_batch_failure_fails_only_its_culprit(cap):
    gated = Gated(cap)

    async def scenario():
        async with serving(gated, max_wait_ms=200) as c:
            ok, bad = await asyncio.gather(
                c.post("/v1/caption", json={"images": [b64(encode(RED))]}),
                c.post("/v1/caption", json={"images": [b64(encode(BLUE))], "options": {"prompt": "boom"}}),
            )
            assert ok.status_code == 200 and ok.json()[0]["generated_text"] == caption_for(*RED)
            assert bad.status_code == 500
            # the shared batch failed, then each image ran alone
            # (which image comes first in the shared batch is up to the decode threads)
            calls = sorted(str(sorted(p, key=str)) for _, _, p in gated.calls[-3:])
            assert calls == ["['boom']", "[None, 'boom']", "[None]"]
    run(scenario())


def test_queue_full_is_503_with_retry_after_and_bounded(cap):
    gated = Gated(cap)

    async def scenario():
        async with serving(gated, max_queue=2, max_batch_size=1, max_wait_ms=0) as c:
            gated.gate.clear()  # the model is busy from now on
            first = asyncio.create_task(c.post("/v1/caption", json={"images": [b64(encode(RED))]}))
            while not gated.calls and c.service.batcher.depth == 0:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            second = asyncio.create_task(c.post("/v1/caption", json={"images": [b64(encode(BLUE))] * 2}))
            while c.service.batcher.depth < 2:
                await asyncio.sleep(0.005)
            r = await c.post("/v1/caption", json={"images": [b64(encode(GREEN))]})
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert "queue full" in r.json()["error"]
            assert (await c.get("/healthz")).status_code == 200  # the loop is free while the model works
            metrics = (await c.get("/metrics")).text
            assert metric(metrics, "blipcap_queue_depth") == 2
            gated.gate.set()
            a, b = await first, await second
            assert a.status_code == b.status_code == 200
            assert [e["generated_text"] for e in b.json()] == [caption_for(*BLUE)] * 2
            assert c.service.batcher._held == 0
    run(scenario())


def test_request_timeout_is_504_and_frees_the_queue(cap):
    gated = Gated(cap)

    async def scenario():
        async with serving(gated, timeout_s=0.5, max_batch_size=1, max_wait_ms=0) as c:
            gated.gate.clear()
            r1, r2 = await asyncio.gather(c.post("/v1/caption", json={"images": [b64(encode(RED))]}),
                                          c.post("/v1/caption", json={"images": [b64(encode(BLUE))]}))
            assert r1.status_code == r2.status_code == 504
            assert "0.5 s" in r1.json()["error"]
            assert c.service.batcher.depth == 0 and c.service.batcher._held == 0  # the waiting one left
            gated.gate.set()
            r = await c.post("/v1/caption", json={"images": [b64(encode(GREEN))]})
            assert r.status_code == 200 and r.json()[0]["generated_text"] == caption_for(*GREEN)
    run(scenario())


def test_not_ready_until_warmed_up_and_draining_refuses(cap):
    gated = Gated(cap)
    gated.gate.clear()  # the warm-up call waits

    async def scenario():
        async with serving(gated, ready=False) as c:
            assert (await c.get("/healthz")).json() == {"status": "ok"}
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json() == {"status": "warming up"}
            r = await c.post("/v1/caption", json={"images": [b64(encode(RED))]})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            gated.gate.set()
            for _ in range(500):
                if (await c.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert (await c.get("/readyz")).json()["status"] == "ready"
            c.service.begin_drain()
            r = await c.post("/v1/caption", json={"images": [b64(encode(RED))]})
            assert r.status_code == 503 and "shutting down" in r.json()["error"]
            assert (await c.get("/readyz")).json() == {"status": "draining"}
    run(scenario())


# --- pages and documents --------------------------------------------------------------------------------

def test_metrics_docs_and_page(cap):
    async def scenario():
        async with serving(cap) as c:
            await c.post("/v1/caption", files={"image": ("a.png", encode(RED))})
            m = await c.get("/metrics")
            assert m.headers["content-type"].startswith("text/plain")
            for name in ("blipcap_requests_total", "blipcap_images_total", "blipcap_batch_size_bucket",
                         "blipcap_queue_depth", "blipcap_request_duration_seconds_bucket",
                         "blipcap_batch_duration_seconds_bucket", "blipcap_queue_wait_seconds_bucket"):
                assert f"\n{name}" in m.text
            assert metric(m.text, 'blipcap_requests_total{route="/v1/caption",status="200"}') == 1
            assert metric(m.text, "blipcap_ready") == 1
            assert metric(m.text, "blipcap_request_duration_seconds_count") == 1
            spec = (await c.get("/openapi.json")).json()
            body = spec["paths"]["/v1/caption"]["post"]["requestBody"]["content"]
            assert {"multipart/form-data", "application/json", "image/*"} <= set(body)
            assert "Swagger" in (await c.get("/docs")).text
            page = await c.get("/")
            assert page.headers["content-type"].startswith("text/html") and "/static/app.js" in page.text
            assert (await c.get("/static/app.js")).status_code == 200
    run(scenario())
