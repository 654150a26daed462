"""CUDA checks (skipped without a GPU; benchmarks/gpu.sh runs them on a lent one)."""

from __future__ import annotations

import pytest
import torch

from blipcap import Captioner

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_float32_gives_the_cpu_tokens(random_ckpt):
    from .test_captioner import colour_images

    images = colour_images(4)
    cpu = Captioner.load(random_ckpt, device="cpu", dtype="float32")
    gpu = Captioner.load(random_ckpt, device="cuda", dtype="float32")
    for kw in (dict(max_new_tokens=10), dict(num_beams=3, max_new_tokens=10), dict(prompt="a picture of", max_new_tokens=6)):
        assert [c.token_ids for c in gpu.caption(images, **kw)] == [c.token_ids for c in cpu.caption(images, **kw)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_half_precision_captions_the_fixture_right(tiny_fixture, dtype):
    import numpy as np

    from shapes import caption_for, make_image

    cap = Captioner.load(tiny_fixture, device="cuda", dtype=dtype)
    rng = np.random.default_rng(0)
    combos = [("red", "circle", "left"), ("blue", "square", "top"), ("green", "triangle", "bottom")]
    images = [make_image(*c, rng=rng) for c in combos]
    assert [c.text for c in cap.caption(images, num_beams=3)] == [caption_for(*c) for c in combos]


def test_auto_picks_cuda_and_float16(random_ckpt):
    cap = Captioner.load(random_ckpt)
    assert cap.backend.device.type == "cuda" and cap.backend.dtype == torch.float16
