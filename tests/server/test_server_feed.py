"""The service where the model overlaps its input (torch on CUDA; here the CPU with the same feed
forced on): its decode threads make the float32 pixels too, and the captions stay right."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from blipcap import Captioner  # noqa: E402
from blipcap.backends.feed import PinnedFeed  # noqa: E402
from tests.helpers.shapes import caption_for  # noqa: E402

from .test_server_app import BLUE, RED, encode, run, serving  # noqa: E402


def test_decode_threads_normalise_where_the_model_overlaps_its_input(tiny_fixture):
    plain = Captioner.load(tiny_fixture, device="cpu", dtype="float32")
    fed = Captioner.load(tiny_fixture, device="cpu", dtype="float32")
    fed.backend.feed = PinnedFeed("cpu", torch.float32)

    async def scenario(cap, normalised):
        async with serving(cap) as c:
            assert (c.service.images.normalise_with is not None) == normalised
            files = [("image", ("red.png", encode(RED), "image/png")),
                     ("image", ("blue.jpg", encode(BLUE, "JPEG"), "image/jpeg"))]
            r = await c.post("/v1/caption", files=files)
            assert r.status_code == 200
            assert [e["generated_text"] for e in r.json()] == [caption_for(*RED), caption_for(*BLUE)]
            return r.json()

    assert run(scenario(fed, True)) == run(scenario(plain, False))
