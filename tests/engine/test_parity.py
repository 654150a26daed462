"""Parity with the reference: transformers' BlipForConditionalGeneration, run in the same test.

Checkpoints are random-initialised with peaked next-token distributions (conftest), so equal
tokens are a meaningful check rather than a coin toss between near-equal logits.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from blipcap import CaptionOptions, Captioner  # noqa: E402
from blipcap.decoding import pad_prompt_rows  # noqa: E402

SEP = 102
# benchmarks/gpu.sh sets cuda: the same checks with blipcap on the GPU (float32, no TF32)
DEVICE = os.environ.get("BLIPCAP_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda"):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def reference(path):
    model = transformers.BlipForConditionalGeneration.from_pretrained(path).eval()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    return model, tok


def pixels_for(cap: Captioner, n: int, seed: int = 0) -> tuple[list[np.ndarray], torch.Tensor]:
    # low-frequency colour fields: white noise would look alike to a random encoder
    rng = np.random.default_rng(seed)
    images = [
        np.asarray(Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).resize((50 + 3 * i, 40 + 7 * i)))
        for i in range(n)
    ]
    pix = torch.from_numpy(cap.preprocessor.batch([Image.fromarray(a) for a in images]))
    return images, pix


def hf_generate(model, pix, prompt_ids=None, **kw) -> list[list[int]]:
    """transformers' generated ids after [DEC] (+ prompt), cut after the first [SEP] (kept)."""
    with torch.no_grad():
        if prompt_ids is None:
            out = model.generate(pixel_values=pix, **kw)
            start = 1
        else:
            ids = torch.tensor([[101, *prompt_ids, SEP]] * pix.shape[0])
            out = model.generate(pixel_values=pix, input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            start = 1 + len(prompt_ids)
    rows = []
    for row in out.tolist():
        gen = row[start:]
        rows.append(gen[: gen.index(SEP) + 1] if SEP in gen else gen)
    return rows


def ids_with_eos(cap: Captioner, caps, max_new: int) -> list[list[int]]:
    # our token_ids exclude [SEP]; a caption shorter than max_new ended with it
    return [c.token_ids + ([SEP] if len(c.token_ids) < max_new else []) for c in caps]


@pytest.fixture(scope="module")
def pair(random_ckpt):
    return Captioner.load(random_ckpt, device=DEVICE, dtype="float32"), *reference(random_ckpt)


@pytest.fixture(scope="module")
def eos_pair(eos_ckpt):
    return Captioner.load(eos_ckpt, device=DEVICE, dtype="float32"), *reference(eos_ckpt)


def test_teacher_forced_logits_match(pair):
    cap, model, _ = pair
    images, pix = pixels_for(cap, 3)
    rng = np.random.default_rng(1)
    seq = np.concatenate([np.full((3, 1), 30522), rng.integers(1000, 30000, (3, 9))], axis=1)
    with torch.no_grad():
        ref = model(pixel_values=pix, input_ids=torch.from_numpy(seq)).logits.numpy()
    backend = cap.backend
    memory = backend.encode(pix.numpy())
    session, logits = backend.start(memory, 1, seq[:, :1], np.ones((3, 1), bool), 12)
    got = [logits.cpu().numpy()]
    for t in range(1, seq.shape[1]):
        got.append(session.step(torch.from_numpy(seq[:, t]).to(backend.device)).cpu().numpy())
    got = np.stack(got, axis=1)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() / scale < 1e-5


def test_prefill_of_a_prompt_matches_stepwise_logits(pair):
    cap, model, _ = pair
    _, pix = pixels_for(cap, 2)
    seq = np.array([[30522, 1104, 1105, 1106, 2000], [30522, 1108, 1109, 3000, 3001]])
    with torch.no_grad():
        ref = model(pixel_values=pix, input_ids=torch.from_numpy(seq)).logits[:, -1].numpy()
    session, logits = cap.backend.start(cap.backend.encode(pix.numpy()), 1, seq, np.ones_like(seq, bool), 4)
    assert np.abs(logits.cpu().numpy() - ref).max() / np.abs(ref).max() < 1e-5


@pytest.mark.parametrize("kw", [
    dict(num_beams=1, max_new_tokens=12),
    dict(num_beams=3, max_new_tokens=10),
    dict(num_beams=1, max_new_tokens=10, min_new_tokens=6),
    dict(num_beams=3, max_new_tokens=10, min_new_tokens=4),
    dict(num_beams=1, max_new_tokens=12, repetition_penalty=1.5),
    dict(num_beams=3, max_new_tokens=10, repetition_penalty=1.3),
    dict(num_beams=1, max_new_tokens=12, no_repeat_ngram_size=2),
    dict(num_beams=4, max_new_tokens=9, length_penalty=0.6, early_stopping=True),
    dict(num_beams=3, max_new_tokens=9, early_stopping="never", length_penalty=1.5),
])
@pytest.mark.parametrize("which", ["pair", "eos_pair"])
def test_generate_matches_transformers(which, kw, request):
    cap, model, _ = request.getfixturevalue(which)
    images, pix = pixels_for(cap, 4, seed=3)
    ref = hf_generate(model, pix, **kw)
    got = cap.caption(images, CaptionOptions(**kw), batch_size=4)
    assert ids_with_eos(cap, got, kw["max_new_tokens"]) == ref


def test_eos_checkpoint_really_ends_some_captions(eos_pair):
    # guards the test above: the early-ending path is exercised, not just max-length stops
    cap, model, _ = eos_pair
    images, pix = pixels_for(cap, 4, seed=3)
    for beams in (1, 3):
        lengths = [len(c.token_ids) for c in cap.caption(images, num_beams=beams, max_new_tokens=12)]
        assert min(lengths) < 11, lengths


@pytest.mark.parametrize("beams", [1, 3])
def test_prompt_matches_transformers(pair, beams):
    cap, model, tok = pair
    images, pix = pixels_for(cap, 2, seed=5)
    prompt = "a picture of"
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    ref = hf_generate(model, pix, prompt_ids, num_beams=beams, max_new_tokens=8)
    got = cap.caption(images, num_beams=beams, max_new_tokens=8, prompt=prompt)
    assert ids_with_eos(cap, got, 8) == ref


@pytest.mark.parametrize("beams", [1, 3])
def test_batch_mixing_prompts_equals_each_image_alone(pair, beams):
    # transformers' batched path mishandles right-padded prompts of different lengths, so the
    # reference is transformers run on each image alone with its own prompt.
    cap, model, tok = pair
    images, pix = pixels_for(cap, 3, seed=7)
    prompts = ["a photography of a dog on the", None, "a picture of"]
    ref = []
    for i, prompt in enumerate(prompts):
        ids = tok.encode(prompt, add_special_tokens=False) if prompt else None
        ref += hf_generate(model, pix[i : i + 1], ids, num_beams=beams, max_new_tokens=7)
    got = cap.caption(images, num_beams=beams, max_new_tokens=7, prompt=prompts, batch_size=3)
    assert ids_with_eos(cap, got, 7) == ref


def test_num_return_sequences_match_transformers_beams(eos_pair):
    cap, model, _ = eos_pair
    images, pix = pixels_for(cap, 2, seed=11)
    ref = hf_generate(model, pix, num_beams=4, num_return_sequences=3, max_new_tokens=8)
    got = cap.caption(images, num_beams=4, num_return_sequences=3, max_new_tokens=8)
    flat = []
    for c in got:
        flat += ids_with_eos(cap, [c, *c.alternatives], 8)
    assert flat == ref
    assert all(len(c.alternatives) == 2 for c in got)


def test_scores_are_sequence_log_probabilities(pair):
    cap, model, _ = pair
    images, pix = pixels_for(cap, 1, seed=2)
    got = cap.caption(images, max_new_tokens=6)[0]
    seq = torch.tensor([[30522, *got.token_ids]])
    with torch.no_grad():
        logp = model(pixel_values=pix, input_ids=seq).logits.log_softmax(-1)[0]
    expected = sum(float(logp[i, t]) for i, t in enumerate(got.token_ids))
    assert got.score == pytest.approx(expected, rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("tie", [True, False])
def test_weight_formats_and_head_tying_match_transformers(tmp_path, tie):
    """model.safetensors as transformers 5 writes it (tied head omitted) and pytorch_model.bin with
    every tensor (as older Hub files have), with a tied or an untied LM head."""
    from tests.helpers.checkpoints import build_random_checkpoint

    for safetensors in (True, False):
        path = build_random_checkpoint(tmp_path / f"{tie}{safetensors}", seed=4, tie=tie, safetensors=safetensors)
        cap = Captioner.load(path, device="cpu", dtype="float32")
        model, _ = reference(path)
        images, pix = pixels_for(cap, 2)
        ref = hf_generate(model, pix, max_new_tokens=6)
        assert ids_with_eos(cap, cap.caption(images, max_new_tokens=6), 6) == ref


def test_left_padding_helper():
    ids, valid = pad_prompt_rows([[5], [5, 6, 7]], 2, 0)
    assert ids.tolist() == [[0, 0, 5], [0, 0, 5], [5, 6, 7], [5, 6, 7]]
    assert valid.sum(1).tolist() == [1, 1, 3, 3]
