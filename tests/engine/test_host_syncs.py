"""The search reads its stopping checks back every `sync_every` steps (what saves a host wait per
step on a GPU): the same results as reading them every step, and the reads counted."""

from __future__ import annotations

import math

import pytest

from blipcap import CaptionOptions, Captioner
from blipcap.arrays import TorchOps
from blipcap.decoding import pad_prompt_rows, search

from .test_captioner import colour_images


class CountingOps(TorchOps):
    """TorchOps that count the calls which make the host wait for the device."""

    def __init__(self, device, sync_every: int):
        super().__init__(device, sync_every=sync_every)
        self.reads = 0

    def any(self, x) -> bool:
        self.reads += 1
        return super().any(x)

    def all(self, x) -> bool:
        self.reads += 1
        return super().all(x)

    def to_numpy(self, x):
        self.reads += 1
        return super().to_numpy(x)


class CountingSession:
    def __init__(self, session, ops):
        self.inner, self.ops, self.steps = session, ops, 0

    def step(self, tokens):
        self.steps += 1
        return self.inner.step(tokens)

    def reorder(self, rows):
        self.inner.reorder(rows)


@pytest.fixture(scope="module")
def cap(tmp_path_factory):
    # [SEP] boosted more than conftest's eos_ckpt, so that beam searches stop early here too
    from tests.helpers.checkpoints import build_random_checkpoint

    path = build_random_checkpoint(tmp_path_factory.mktemp("early") / "ckpt", seed=1, eos_boost=22.0)
    return Captioner.load(path, device="cpu", dtype="float32")


def run(cap: Captioner, opts: CaptionOptions, every: int, images, static: bool = False):
    group = opts.num_beams if opts.num_beams > 1 else opts.num_return_sequences
    ids, valid = pad_prompt_rows([cap.codec.prompt_ids(None)] * len(images), group, cap.codec.pad_id)
    cap.backend.static_step = static
    try:
        session, logits = cap.backend.start(cap.backend.encode(cap.preprocessor.batch(images)), group, ids, valid,
                                            opts.max_new_tokens)
        ops = CountingOps("cpu", every)
        counted = CountingSession(session, ops)
        found = search(counted, logits, ops.asarray(ids), ops.asarray(valid, "bool"), opts, cap._rules(opts))
    finally:
        cap.backend.static_step = False
    results = [[(r.tokens, r.finished) for r in f] for f in found]
    scores = [r.score for f in found for r in f]
    return results, scores, ops.reads, counted.steps


CASES = [
    dict(),
    dict(min_new_tokens=3),
    dict(do_sample=True, seed=5),
    dict(num_beams=3),
    dict(num_beams=4, num_return_sequences=3, length_penalty=0.6, early_stopping=True),
    dict(num_beams=3, early_stopping="never", length_penalty=1.5),
    dict(num_beams=2, length_penalty=-0.5, repetition_penalty=1.3),
]


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("every", [3, 16])
def test_reading_back_every_k_steps_gives_the_same_results(cap, kw, every):
    images = colour_images(4, seed=3)
    opts = CaptionOptions(max_new_tokens=14, **kw)
    base, base_scores, _, base_steps = run(cap, opts, 1, images)
    got, scores, reads, steps = run(cap, opts, every, images)
    assert got == base and scores == pytest.approx(base_scores, abs=1e-5)
    # the rules read back once per k steps, then the results twice (tokens and scores)
    assert reads <= math.ceil((steps + 1) / every) + 2
    assert base_steps <= steps <= min(base_steps + every - 1, opts.max_new_tokens - 1)


def test_every_step_reads_back_each_step(cap):
    # the CPU's default: today's behaviour, the search stops as soon as the rules say
    images = colour_images(4, seed=3)
    for kw, per_step in ((dict(), 1), (dict(num_beams=3), 2)):
        _, _, reads, steps = run(cap, CaptionOptions(max_new_tokens=14, **kw), 1, images)
        assert reads >= (steps + 1) * per_step


def test_some_searches_here_stop_early(cap):
    # guards the tests above: the deferred stop is exercised, not just max-length runs
    images = colour_images(4, seed=3)
    early = [kw for kw in CASES if run(cap, CaptionOptions(max_new_tokens=14, **kw), 1, images)[3] < 13]
    assert {} in early and sum(kw.get("num_beams", 1) > 1 for kw in early) >= 3, early


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3)])
def test_static_step_with_deferred_reads(cap, kw):
    images = colour_images(4, seed=3)
    opts = CaptionOptions(max_new_tokens=14, **kw)
    assert run(cap, opts, 4, images, static=True)[0] == run(cap, opts, 1, images)[0]


def test_sync_every_defaults():
    assert TorchOps("cpu").sync_every == 1
