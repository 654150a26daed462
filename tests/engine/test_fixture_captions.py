"""The trained tiny fixture (tests/fixtures/tiny-blip) captions fresh synthetic images correctly.

Random weights never emit [SEP]; this model does, so these tests reach EOS, early stopping and the
finished-beam bookkeeping, and check that captions are right, not only equal to the reference.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from blipcap import CaptionOptions, Captioner, pipeline
from tests.helpers.shapes import COLORS, POSITIONS, SHAPES, caption_for, make_image

COMBOS = list(itertools.product(COLORS, SHAPES, POSITIONS))


@pytest.fixture(scope="module")
def cap(tiny_fixture) -> Captioner:
    return Captioner.load(tiny_fixture, device="cpu", dtype="float32")


def fresh(seed: int, n: int | None = None):
    rng = np.random.default_rng(seed)
    combos = COMBOS if n is None else [COMBOS[i] for i in rng.choice(len(COMBOS), n, replace=False)]
    return [make_image(*c, rng=rng) for c in combos], [caption_for(*c) for c in combos]


@pytest.mark.parametrize("beams", [1, 3])
def test_every_combination_is_captioned_right(cap, beams):
    images, expected = fresh(seed=1000 + beams)
    got = cap.caption(images, num_beams=beams, batch_size=16)
    assert [c.text for c in got] == expected


def test_captions_end_with_eos_long_before_the_budget(cap):
    images, expected = fresh(seed=7, n=6)
    for c, text in zip(cap.caption(images, max_new_tokens=19), expected):
        assert len(c.token_ids) == len(cap.codec.tokenizer.encode(text, add_special_tokens=False).ids) < 19


@pytest.mark.parametrize("search", [{"num_beams": 1}, {"num_beams": 3, "num_return_sequences": 2},
                                    {"do_sample": True, "seed": 1, "num_return_sequences": 2}])
def test_truncated_says_whether_max_new_tokens_ran_out(cap, search):
    images, expected = fresh(seed=11, n=3)
    for c, text in zip(cap.caption(images, max_new_tokens=19, **search), expected):
        assert not any(x.truncated for x in [c, *c.alternatives])
        assert c.text == text
    for c in cap.caption(images, max_new_tokens=2, **search):
        assert c.truncated and len(c.token_ids) == 2
        # an alternative may close with [SEP] inside the budget ("a" + [SEP]): that one is not truncated
        assert all(x.truncated == (len(x.token_ids) == 2) for x in c.alternatives)


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_beam_search_variants_agree_on_a_confident_model(cap, early_stopping):
    images, expected = fresh(seed=11, n=8)
    got = cap.caption(images, num_beams=4, num_return_sequences=2, early_stopping=early_stopping)
    assert [c.text for c in got] == expected
    for c in got:  # the runner-up is a different caption, ranked below
        assert len(c.alternatives) == 1 and c.alternatives[0].text != c.text


def test_quality_preset_gives_the_same_right_captions(cap):
    images, expected = fresh(seed=12, n=8)
    assert [c.text for c in cap.caption(images, CaptionOptions.preset("quality"))] == expected


def test_prompt_steers_and_is_stripped(cap):
    rng = np.random.default_rng(5)
    image = make_image("blue", "square", "left", rng=rng)
    assert cap(image) == "a blue square on the left"
    assert cap(image, prompt="a blue square") == "on the left"
    assert cap(image, prompt="a blue square", keep_prompt=True) == "a blue square on the left"


def test_mixed_prompts_in_one_batch_equal_each_alone(cap):
    images, _ = fresh(seed=21, n=5)
    prompts = ["a", None, "a red", "a green triangle on", None]
    together = cap.caption(images, prompt=prompts, num_beams=3, batch_size=5)
    alone = [cap.caption([im], prompt=p, num_beams=3)[0] for im, p in zip(images, prompts)]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]


def test_sampling_at_low_temperature_matches_greedy(cap):
    images, expected = fresh(seed=31, n=6)
    got = cap.caption(images, do_sample=True, temperature=0.05, seed=0)
    assert [c.text for c in got] == expected


def test_greedy_matches_transformers_on_the_trained_model(cap, tiny_fixture):
    transformers = pytest.importorskip("transformers")
    import torch

    model = transformers.BlipForConditionalGeneration.from_pretrained(tiny_fixture).eval()
    images, _ = fresh(seed=41, n=8)
    pix = torch.from_numpy(cap.preprocessor.batch(images))
    for beams in (1, 3):
        with torch.no_grad():
            ref = model.generate(pixel_values=pix, num_beams=beams, max_new_tokens=19)
        ours = cap.caption(images, num_beams=beams, max_new_tokens=19)
        for row, c in zip(ref.tolist(), ours):
            gen = row[1:]
            assert gen[: gen.index(cap.codec.eos_id)] == c.token_ids


def test_pipeline_on_the_fixture(tiny_fixture):
    pipe = pipeline(str(tiny_fixture), device="cpu")
    image = make_image("yellow", "circle", "bottom", rng=np.random.default_rng(3))
    assert pipe(image) == [{"generated_text": "a yellow circle at the bottom"}]
