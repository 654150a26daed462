"""The service where the model overlaps its input (torch on CUDA; here the CPU with the same feed
forced on): its decode threads make the float32 pixels too, and the captions stay right."""

from __future__ import annotations

import asyncio

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from blipcap import Captioner  # noqa: E402
from blipcap.backends.feed import PinnedFeed  # noqa: E402
from tests.helpers.shapes import caption_for  # noqa: E402

from .test_server_app import BLUE, GREEN, RED, Gated, encode, run, serving  # noqa: E402


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


class Recording(Gated):
    """Gated, also noting whether each model call got a staged batch (Captioner.stage) or a list."""

    def __init__(self, inner):
        super().__init__(inner)
        self.kinds = []

    def caption(self, images, options=None, **kwargs):
        self.kinds.append(type(images).__name__)
        return super().caption(images, options, **kwargs)


def test_the_next_full_batch_is_staged_while_the_model_runs_and_captions_stay_right(tiny_fixture):
    fed = Captioner.load(tiny_fixture, device="cpu", dtype="float32")
    fed.backend.feed = PinnedFeed("cpu", torch.float32)  # as on CUDA: the service stages ahead
    model = Recording(fed)

    async def scenario():
        async with serving(model, max_batch_size=2, max_wait_ms=5000) as c:
            model.kinds = []
            model.gate.clear()
            first = asyncio.ensure_future(c.post("/v1/caption", files=[
                ("image", ("a.png", encode(RED), "image/png")), ("image", ("b.png", encode(BLUE), "image/png"))]))
            while not model.kinds:  # the first batch is in the model, waiting at the gate
                await asyncio.sleep(0.005)
            second = asyncio.ensure_future(c.post("/v1/caption", files=[
                ("image", ("c.png", encode(GREEN), "image/png")), ("image", ("d.png", encode(RED), "image/png"))]))
            while c.service.batcher._ahead is None:  # taken and staged while the first still runs
                await asyncio.sleep(0.005)
            model.gate.set()
            a, b = await first, await second
            assert [e["generated_text"] for e in a.json()] == [caption_for(*RED), caption_for(*BLUE)]
            assert [e["generated_text"] for e in b.json()] == [caption_for(*GREEN), caption_for(*RED)]
            assert model.kinds == ["list", "Staged"]
    run(scenario())
