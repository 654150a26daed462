"""Issue 13 item 10 (server): every refusal of a whole request, ours or Starlette's, answers in the
documented shape {"error", "error_type"}; more multipart images than --max-queue is 413."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from blipcap import Captioner  # noqa: E402
from tests.server.test_server_app import run, serving  # noqa: E402


@pytest.fixture(scope="module")
def cap(tiny_fixture):
    return Captioner.load(tiny_fixture, device="cpu", dtype="float32")


def test_every_request_refusal_has_the_documented_shape(cap):
    async def scenario():
        async with serving(cap, max_queue=4) as c:
            cases = [
                (c.post("/v1/caption", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}), 400),
                (c.post("/v1/caption", content=b"junk", headers={"content-type": "multipart/form-data; boundary=x"}),
                 400),
                (c.get("/no/such/route"), 404),
                (c.put("/v1/caption"), 405),
                (c.post("/v1/caption", content=b"{", headers={"content-type": "application/json"}), 400),
                (c.post("/v1/caption", files=[("image", ("a.png", b"x", "image/png"))] * 5), 413),
            ]
            for request, status in cases:
                r = await request
                assert r.status_code == status, (status, r.text)
                body = r.json()
                assert set(body) == {"error", "error_type"} and body["error"] and body["error_type"], body
    run(scenario())
