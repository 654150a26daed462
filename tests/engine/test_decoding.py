"""The search on its own: numpy and torch array ops give the same results, and each logit rule
matches transformers' logits processor for the same input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blipcap import CaptionOptions, Captioner
from blipcap.arrays import NumpyOps, TorchOps
from blipcap.decoding import LogitRules, _Rules, _warp, pad_prompt_rows, search


class NumpySession:
    """Presents a torch session as a torch-free backend would: numpy in, numpy out."""

    def __init__(self, session):
        self.inner, self.ops = session, NumpyOps()

    def step(self, tokens: np.ndarray) -> np.ndarray:
        return self.inner.step(torch.from_numpy(np.ascontiguousarray(tokens))).numpy()

    def reorder(self, rows: np.ndarray) -> None:
        self.inner.reorder(torch.from_numpy(np.ascontiguousarray(rows)))


@pytest.fixture(scope="module")
def cap(eos_ckpt):
    return Captioner.load(eos_ckpt, device="cpu", dtype="float32")


def run_search(cap: Captioner, images, opts: CaptionOptions, numpy: bool, prompts=None):
    prompts = prompts or [None] * len(images)
    group = opts.num_beams if opts.num_beams > 1 else opts.num_return_sequences
    ids, valid = pad_prompt_rows([cap.codec.prompt_ids(p) for p in prompts], group, cap.codec.pad_id)
    memory = cap.backend.encode(cap.preprocessor.batch(images))
    session, logits = cap.backend.start(memory, group, ids, valid, opts.max_new_tokens)
    if numpy:
        session, logits, ops = NumpySession(session), logits.numpy(), NumpyOps()
    else:
        ops = cap.backend.ops
    results = search(session, logits, ops.asarray(ids), ops.asarray(valid, "bool"), opts, cap._rules(opts))
    return [[(r.tokens, round(r.score, 3), r.finished) for r in found] for found in results]


@pytest.mark.parametrize("kw", [
    dict(),
    dict(num_beams=3),
    dict(num_beams=4, num_return_sequences=2, length_penalty=0.5, early_stopping=True),
    dict(num_beams=3, repetition_penalty=1.4, no_repeat_ngram_size=2, min_new_tokens=3),
    dict(repetition_penalty=1.2, min_new_tokens=5, bad_words=("dog", "a picture")),
])
def test_numpy_ops_search_equals_torch_ops_search(cap, kw):
    from .test_captioner import colour_images

    images = colour_images(4, seed=3)
    opts = CaptionOptions(max_new_tokens=10, **kw)
    prompts = ["a picture of", None, "the", None]
    assert run_search(cap, images, opts, numpy=True, prompts=prompts) == run_search(
        cap, images, opts, numpy=False, prompts=prompts)


def test_numpy_sampling_is_reproducible(cap):
    from .test_captioner import colour_images

    images = colour_images(2)
    opts = CaptionOptions(max_new_tokens=8, do_sample=True, seed=5, top_k=0, temperature=2.0, num_return_sequences=2)
    a, b = (run_search(cap, images, opts, numpy=True) for _ in range(2))
    assert a == b


# --- each rule against transformers' own processor ------------------------------------------------

transformers = pytest.importorskip("transformers")
gen = transformers.generation.logits_process


def random_case(seed=0, rows=4, vocab=50, length=7):
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 3, (rows, vocab)).astype(np.float32)
    hist = rng.integers(1, 12, (rows, length))  # small ids, so repeats and n-grams occur
    return scores, hist


@pytest.mark.parametrize("ops", [NumpyOps(), TorchOps("cpu")], ids=["numpy", "torch"])
def test_repetition_penalty_and_ngrams_match_transformers(ops):
    scores, hist = random_case()
    rules = _Rules(LogitRules(eos_id=3, pad_id=0, vocab_size=50, repetition_penalty=1.7, no_repeat_ngram_size=2),
                   ops, prompt_len=1)
    ours = ops.to_numpy(rules(ops.asarray(scores, "float32"), ops.asarray(hist), ops.asarray(hist > -1, "bool"), 9))
    ref = torch.from_numpy(scores.copy())
    ids = torch.from_numpy(hist)
    ref = gen.RepetitionPenaltyLogitsProcessor(1.7)(ids, ref)
    ref = gen.NoRepeatNGramLogitsProcessor(2)(ids, ref)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
    assert np.isinf(ours).any()  # the n-gram rule really banned something in this case


@pytest.mark.parametrize("ops", [NumpyOps(), TorchOps("cpu")], ids=["numpy", "torch"])
def test_min_new_tokens_and_bad_words_match_transformers(ops):
    scores, hist = random_case(seed=1)
    bad = ((int(hist[0, -1]), 20), (21,))
    rules = _Rules(LogitRules(eos_id=3, pad_id=0, vocab_size=50, min_new_tokens=4, banned_ids=(21,),
                              banned_sequences=(bad[0],)), ops, prompt_len=3)
    ours = ops.to_numpy(rules(ops.asarray(scores, "float32"), ops.asarray(hist), ops.asarray(hist > -1, "bool"), 2))
    ids = torch.from_numpy(hist)
    ref = gen.NoBadWordsLogitsProcessor([list(b) for b in bad], eos_token_id=3)(ids, torch.from_numpy(scores.copy()))
    ref = gen.MinNewTokensLengthLogitsProcessor(3, 6, 3)(ids, ref)  # prompt 3, 4 new so far counted
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref.numpy()))
    assert np.isinf(ours[0, 20]) and np.isinf(ours[:, 3]).all() and np.isinf(ours[:, 21]).all()


@pytest.mark.parametrize("ops", [NumpyOps(), TorchOps("cpu")], ids=["numpy", "torch"])
@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 5, 1.0), (1.0, 0, 0.8), (1.3, 10, 0.5)])
def test_sampling_warpers_match_transformers(ops, temperature, top_k, top_p):
    scores, _ = random_case(seed=2)
    opts = CaptionOptions(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    ours = ops.to_numpy(_warp(ops.asarray(scores, "float32"), opts, ops))
    ref = torch.from_numpy(scores.copy())
    ids = torch.zeros((4, 1), dtype=torch.long)
    ref = gen.TemperatureLogitsWarper(temperature)(ids, ref)
    if top_k:
        ref = gen.TopKLogitsWarper(top_k)(ids, ref)
    if top_p < 1.0:
        ref = gen.TopPLogitsWarper(top_p)(ids, ref)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref.numpy()))
    finite = ~np.isinf(ours)
    np.testing.assert_allclose(ours[finite], ref.numpy()[finite], rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_numpy_topk_selects_as_a_stable_sort_and_as_torch(seed):
    """Beam search's top-k over beams x vocab: the numpy selection (linear, not a full sort) must pick
    and order exactly the first k of a stable descending sort (ties: lower index first; -inf kept),
    and equal torch.topk where there are no ties (torch does not promise an order among ties)."""
    rng = np.random.default_rng(seed)
    numpy_ops, torch_ops = NumpyOps(), TorchOps(torch.device("cpu"))
    for _ in range(40):
        n = int(rng.integers(16, 400))
        k = int(rng.integers(1, n // 4))
        tied = rng.integers(-3, 4, (3, n)).astype(np.float32)  # few distinct values: ties at the k-th
        tied[:, rng.integers(0, n, 5)] = -np.inf
        values, index = numpy_ops.topk(tied, k)
        want = np.argsort(-tied, axis=-1, kind="stable")[..., :k]
        assert np.array_equal(index, want)
        assert np.array_equal(values, np.take_along_axis(tied, want, axis=-1))

        distinct = rng.standard_normal((2, 3, n)).astype(np.float32)
        values, index = numpy_ops.topk(distinct, k)
        want_values, want_index = torch_ops.topk(torch.from_numpy(distinct), k)
        assert np.array_equal(index, want_index.numpy())
        assert np.array_equal(values, want_values.numpy())
