"""The Python API: Captioner, options, per-item errors, streaming, logit rules, pipeline()."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from blipcap import Caption, CaptionOptions, Captioner, ImageError, pipeline
from blipcap.images import Decoder, NotAnImageError, UnreadableImageError

SEP = 102


def colour_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).resize((37 + i, 29 + 2 * i))
            for i in range(n)]


@pytest.fixture(scope="module")
def cap(random_ckpt) -> Captioner:
    return Captioner.load(random_ckpt, device="cpu", dtype="float32")


def test_call_returns_the_caption_text_of_a_path(cap, tmp_path):
    path = tmp_path / "x.png"
    colour_images(1)[0].save(path)
    text = cap(str(path), max_new_tokens=5)
    assert isinstance(text, str) and text
    assert text == cap.caption([path], max_new_tokens=5)[0].text


def test_a_model_ready_image_is_captioned_as_it_is_without_loading_it_again(cap, tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    colour_images(1)[0].resize((700, 500)).save(path)
    decoded = Decoder.of(cap.preprocessor, cap.max_pixels).file(str(path))
    expected = cap.caption([str(path), decoded], max_new_tokens=5)
    assert expected[0].text == expected[1].text and expected[0].score == expected[1].score

    def refuse(*args, **kwargs):
        raise AssertionError("a model-ready image was loaded again")

    monkeypatch.setattr("blipcap.captioner.load_image", refuse)
    assert [c.text for c in cap.caption([decoded, decoded], max_new_tokens=5)] == [expected[1].text] * 2


def test_caption_results_are_plain_dataclasses(cap):
    (result,) = cap.caption(colour_images(1), max_new_tokens=4)
    assert isinstance(result, Caption) and result.ok and result.error is None
    assert len(result.token_ids) == 4 and SEP not in result.token_ids
    assert result.score < 0
    assert cap.codec.detokenize(result.token_ids) == result.text


def test_bad_item_is_returned_as_its_own_error_and_the_rest_are_unchanged(cap, tmp_path):
    images = colour_images(3)
    (tmp_path / "notes.txt").write_text("not an image")
    alone = cap.caption(images, max_new_tokens=5, batch_size=3)
    mixed = cap.caption([images[0], tmp_path / "notes.txt", images[1], tmp_path / "missing.png", images[2]],
                        errors="return", max_new_tokens=5, batch_size=3)
    assert isinstance(mixed[1].error, NotAnImageError) and mixed[1].text == ""
    assert isinstance(mixed[3].error, UnreadableImageError)
    assert [c.token_ids for c in (mixed[0], mixed[2], mixed[4])] == [c.token_ids for c in alone]


def test_errors_raise_raises_the_items_specific_error(cap, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg"):
        cap.caption([colour_images(1)[0], tmp_path / "empty.jpg"])


def test_a_batch_of_only_bad_items_returns_only_errors(cap):
    out = cap.caption([b"", b"junk"], errors="return")
    assert [type(c.error).__name__ for c in out] == ["EmptyImageError", "NotAnImageError"]


def test_batch_size_does_not_change_captions(cap):
    images = colour_images(5, seed=3)
    a = cap.caption(images, num_beams=2, max_new_tokens=6, batch_size=5)
    b = cap.caption(images, num_beams=2, max_new_tokens=6, batch_size=2)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


def test_caption_stream_is_lazy_ordered_and_equal_to_caption(cap):
    images = colour_images(7, seed=4)
    pulled = []

    def source():
        for i, im in enumerate(images):
            pulled.append(i)
            yield im

    stream = cap.caption_stream(source(), batch_size=3, max_new_tokens=5)
    first = next(stream)
    assert len(pulled) == 3  # holds one batch, not the whole input
    rest = list(stream)
    expected = cap.caption(images, max_new_tokens=5)
    assert [c.token_ids for c in [first, *rest]] == [c.token_ids for c in expected]


def test_caption_stream_reports_bad_items_in_place(cap):
    out = list(cap.caption_stream(itertools.chain(colour_images(2), [b"nope"], colour_images(1)), batch_size=2,
                                  max_new_tokens=3))
    assert [c.ok for c in out] == [True, True, False, True]


def test_per_image_prompts_and_keep_prompt(cap):
    images = colour_images(2)
    out = cap.caption(images, prompt=["a picture of", None], max_new_tokens=4)
    kept = cap.caption(images, prompt=["a picture of", None], keep_prompt=True, max_new_tokens=4)
    assert kept[0].text.startswith("a picture of") and not out[0].text.startswith("a picture of")
    assert kept[0].text.endswith(out[0].text)
    assert kept[1].text == out[1].text
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        cap.caption(colour_images(3), prompt=["a", "b"])


def test_sampling_is_reproducible_with_a_seed(cap):
    images = colour_images(2)
    opts = dict(do_sample=True, top_k=0, temperature=1.5, max_new_tokens=8)
    a = cap.caption(images, seed=7, **opts)
    b = cap.caption(images, seed=7, **opts)
    c = cap.caption(images, seed=8, **opts)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_sampling_num_return_sequences_gives_ranked_alternatives(cap):
    (out,) = cap.caption(colour_images(1), do_sample=True, num_return_sequences=4, seed=1, temperature=2.0,
                         top_k=0, max_new_tokens=6)
    scores = [out.score] + [a.score for a in out.alternatives]
    assert len(out.alternatives) == 3 and scores == sorted(scores, reverse=True)


def test_top_p_and_top_k_restrict_sampling_to_the_best_tokens(cap):
    greedy = cap.caption(colour_images(3), max_new_tokens=5)
    nucleus = cap.caption(colour_images(3), do_sample=True, top_p=1e-6, seed=3, max_new_tokens=5)
    top1 = cap.caption(colour_images(3), do_sample=True, top_k=1, seed=3, max_new_tokens=5)
    assert [c.token_ids for c in nucleus] == [c.token_ids for c in greedy] == [c.token_ids for c in top1]


def test_suppress_tokens_and_bad_words(cap):
    images = colour_images(2)
    base = cap.caption(images, max_new_tokens=6)
    first = base[0].token_ids[0]
    out = cap.caption(images, max_new_tokens=6, suppress_tokens=[first])
    assert all(first not in c.token_ids for c in out)
    # a two-token bad phrase: its second token is banned only right after its first
    seq = tuple(base[0].token_ids[:2])
    phrase = cap.codec.detokenize(seq)
    assert cap.codec.word_sequences([phrase]) == [seq]
    out = cap.caption(images[:1], max_new_tokens=6, bad_words=[phrase])
    assert out[0].token_ids[0] == seq[0] and out[0].token_ids[1] != seq[1]


def test_artefact_pieces_are_suppressed_by_default_and_switchable(tmp_path):
    from tests.helpers.checkpoints import build_random_checkpoint

    path = build_random_checkpoint(tmp_path / "ara", seed=2)
    from blipcap.random_checkpoint import WORDS

    ara = 104 + WORDS.index("ara")
    import safetensors.torch as st

    tensors = st.load_file(str(path / "model.safetensors"))
    tensors["text_decoder.cls.predictions.bias"][ara] += 60.0  # make "ara" the model's favourite piece
    st.save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    c = Captioner.load(path, device="cpu", dtype="float32")
    images = colour_images(2)
    assert all(ara in r.token_ids for r in c.caption(images, max_new_tokens=4, suppress_artefacts=False))
    assert all(ara not in r.token_ids for r in c.caption(images, max_new_tokens=4))


@pytest.mark.parametrize("bad", [
    dict(num_beams=0), dict(num_beams=2, num_return_sequences=3), dict(num_return_sequences=2),
    dict(do_sample=True, num_beams=2), dict(max_new_tokens=0), dict(min_new_tokens=5, max_new_tokens=3),
    dict(temperature=0), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1), dict(repetition_penalty=0),
    dict(early_stopping="sometimes"), dict(no_repeat_ngram_size=-1),
])
def test_impossible_options_are_refused(bad):
    with pytest.raises(ValueError):
        CaptionOptions(**bad)


def test_unknown_override_names_the_option(cap):
    with pytest.raises(TypeError, match="beams"):
        cap.caption(colour_images(1), beams=3)


def test_quality_preset_is_the_blip_paper_setting():
    q = CaptionOptions.preset("quality")
    assert (q.num_beams, q.max_new_tokens, q.min_new_tokens) == (3, 20, 5)
    with pytest.raises(ValueError, match="unknown preset"):
        CaptionOptions.preset("turbo")


def test_min_new_tokens_holds_back_the_end(eos_ckpt):
    c = Captioner.load(eos_ckpt, device="cpu", dtype="float32")
    short = min(len(r.token_ids) for r in c.caption(colour_images(4, seed=3), max_new_tokens=12))
    assert short < 6
    assert min(len(r.token_ids) for r in c.caption(colour_images(4, seed=3), max_new_tokens=12,
                                                   min_new_tokens=6)) >= 6


def test_checkpoint_defaults_are_greedy_with_19_new_tokens(cap):
    d = cap.defaults
    assert (d.num_beams, d.do_sample, d.max_new_tokens, d.min_new_tokens) == (1, False, 19, 0)


def test_generation_config_sets_the_defaults(random_ckpt, tmp_path):
    import json
    import shutil

    path = tmp_path / "ckpt"
    shutil.copytree(random_ckpt, path)
    (path / "generation_config.json").write_text(json.dumps({"num_beams": 3, "max_length": 30, "min_length": 5}))
    d = Captioner.load(path, device="cpu").defaults
    assert (d.num_beams, d.max_new_tokens, d.min_new_tokens) == (3, 29, 4)


def test_pipeline_speaks_the_transformers_shape(random_ckpt):
    pipe = pipeline(str(random_ckpt), device="cpu")
    one = pipe(colour_images(1)[0], max_new_tokens=3)
    many = pipe(colour_images(2), generate_kwargs={"max_new_tokens": 3})
    assert isinstance(one, list) and set(one[0]) == {"generated_text"}
    assert len(many) == 2 and many[0] == one


def test_vocab_txt_tokenizer_gives_the_same_captions(random_ckpt, tmp_path, cap):
    import shutil

    path = tmp_path / "ckpt"
    shutil.copytree(random_ckpt, path)
    (path / "tokenizer.json").unlink()
    other = Captioner.load(path, device="cpu")
    images = colour_images(2)
    opts = dict(prompt="a photography of", max_new_tokens=4)
    assert [c.text for c in other.caption(images, **opts)] == [c.text for c in cap.caption(images, **opts)]


def test_bfloat16_on_cpu_mostly_agrees_with_float32(random_ckpt, cap):
    bf = Captioner.load(random_ckpt, device="cpu", dtype="bfloat16")
    images = colour_images(4)
    a = cap.caption(images, max_new_tokens=3)
    b = bf.caption(images, max_new_tokens=3)
    assert sum(x.token_ids[0] == y.token_ids[0] for x, y in zip(a, b)) >= 3


def test_float16_on_cpu_and_missing_cuda_are_refused(random_ckpt):
    with pytest.raises(ValueError, match="float16"):
        Captioner.load(random_ckpt, device="cpu", dtype="float16")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            Captioner.load(random_ckpt, device="cuda")


def test_prompt_plus_budget_beyond_the_position_table_is_refused(cap):
    with pytest.raises(ValueError, match="positions"):
        cap.caption(colour_images(1), max_new_tokens=200)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "4"])
def test_a_batch_size_below_one_or_not_an_int_is_refused_not_a_silent_drop(cap, batch_size):
    """Issue 13 item 6: caption(images, batch_size=0) returned no captions for three images."""
    images = colour_images(3)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        cap.caption(images, batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        list(cap.caption_stream(images, batch_size=batch_size))
    assert len(cap.caption(images, batch_size=1)) == 3
