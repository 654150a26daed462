"""The fixed-shape decoder step (backends/static.py, what CUDA graphs replay), run eagerly on the
CPU: the same logits as the dynamic step and the same tokens for greedy, beam and sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blipcap import CaptionOptions, Captioner
from blipcap.backends.static import StaticSession
from blipcap.backends.torch import TorchSession

from .test_captioner import colour_images

CASES = [
    dict(max_new_tokens=12),
    dict(num_beams=3, max_new_tokens=10),
    dict(num_beams=4, num_return_sequences=2, max_new_tokens=9, length_penalty=0.6, early_stopping=True),
    dict(num_beams=3, max_new_tokens=9, early_stopping="never", length_penalty=1.5),
    dict(num_beams=3, max_new_tokens=10, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3),
    dict(do_sample=True, seed=7, max_new_tokens=10),
    dict(do_sample=True, seed=3, num_return_sequences=3, top_k=20, top_p=0.9, temperature=0.8, max_new_tokens=8),
]


def captions(cap: Captioner, static: bool, images, **kw):
    kw = dict(kw)
    prompt = kw.pop("prompt", None)
    cap.backend.static_step = static
    try:
        found = cap.caption(images, CaptionOptions(**kw), batch_size=len(images), prompt=prompt)
    finally:
        cap.backend.static_step = False
    every = [x for c in found for x in (c, *c.alternatives)]
    return [(c.token_ids, c.truncated) for c in every], [c.score for c in every]


def same(static, dynamic):
    """Identical tokens; scores (sums of log-probabilities) equal up to float rounding."""
    return static[0] == dynamic[0] and static[1] == pytest.approx(dynamic[1], abs=1e-4)


@pytest.fixture(scope="module")
def caps(random_ckpt, eos_ckpt, tiny_fixture):
    return {name: Captioner.load(path, device="cpu", dtype="float32")
            for name, path in (("random", random_ckpt), ("eos", eos_ckpt), ("tiny", tiny_fixture))}


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("which", ["random", "eos", "tiny"])
def test_static_step_gives_the_dynamic_tokens(caps, which, kw):
    cap = caps[which]
    images = colour_images(4, seed=3)
    assert same(captions(cap, True, images, **kw), captions(cap, False, images, **kw))


@pytest.mark.parametrize("beams", [1, 3])
def test_static_step_with_mixed_prompts(caps, beams):
    # left-padded prompts of different lengths: positions and masks per row
    cap = caps["eos"]
    images = colour_images(3, seed=7)
    kw = dict(num_beams=beams, max_new_tokens=7, prompt=["a photography of a dog on the", None, "a picture of"])
    assert same(captions(cap, True, images, **kw), captions(cap, False, images, **kw))


def test_static_logits_match_the_dynamic_step(caps):
    backend = caps["random"].backend
    rng = np.random.default_rng(1)
    pixels = rng.random((3, 3, 32, 32), dtype=np.float32)
    seq = np.concatenate([np.full((3, 1), 30522), rng.integers(1000, 30000, (3, 9))], axis=1)
    memory = backend.encode(pixels)
    runs = []
    for kind in (TorchSession, StaticSession):
        session = kind(backend, memory, 1, seq[:, :1], np.ones((3, 1), bool), 12)
        got = [session.first_logits.clone()]
        for t in range(1, seq.shape[1]):
            got.append(session.step(torch.from_numpy(seq[:, t])).clone())
        runs.append(torch.stack(got, 1))
    dynamic, static = runs
    assert (static - dynamic).abs().max() / dynamic.abs().max() < 1e-5


def test_buckets_are_reused_by_batches_of_one_shape(caps):
    cap = caps["random"]
    backend = cap.backend
    images = colour_images(4, seed=3)
    first = captions(cap, True, images, num_beams=3, max_new_tokens=8)
    held = list(backend.buckets)
    again = captions(cap, True, images, num_beams=3, max_new_tokens=8)
    assert same(again, first) and list(backend.buckets) == held
    assert max(bucket.uses for bucket in held) >= 2  # CUDA captures a bucket from its second batch on
    # a bucket held by a live session is not handed to a second one
    ids, valid = np.zeros((6, 1), np.int64), np.ones((6, 1), bool)
    memory = backend.encode(np.zeros((2, 3, 32, 32), np.float32))
    a = StaticSession(backend, memory, 3, ids, valid, 5)
    b = StaticSession(backend, memory, 3, ids, valid, 5)
    assert a.buffers is not b.buffers


def test_cuda_graphs_is_off_on_the_cpu(caps):
    backend = caps["random"].backend
    assert backend.cuda_graphs is False and backend.static_step is False
