"""The TensorFlow backend against the PyTorch backend, run in the same test: the same tokens on random
checkpoints (peaked distributions, so equal tokens mean something) and on the trained fixture; the
transformers 4.x tf_model.h5 fixture against its PyTorch twin; tf.Tensor inputs; the SavedModel in
a fresh process.

Runs where TensorFlow is installed (scripts/test.sh makes .venv-tf); skipped elsewhere, unless
BLIPCAP_REQUIRE_TF=1, which makes a missing TensorFlow a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blipcap import Captioner
from blipcap.arrays import NumpyOps
from blipcap.checkpoint import CheckpointError
from tests.helpers.shapes import caption_for, make_image

if os.environ.get("BLIPCAP_REQUIRE_TF") == "1":
    import tensorflow as tf  # a failure, not a skip, where TF is required
else:
    try:
        import tensorflow as tf
    except ImportError:
        tf = None
needs_tf = pytest.mark.skipif(tf is None, reason="tensorflow is not installed (pip install 'blipcap[tf]'); "
                                                 "set BLIPCAP_REQUIRE_TF=1 to fail instead")
H5_FIXTURE = Path(__file__).parents[1] / "fixtures" / "tiny-tf-h5"


def colour_fields(n: int, seed: int = 0) -> list[np.ndarray]:
    # low-frequency colour fields: white noise would look alike to a random encoder
    rng = np.random.default_rng(seed)
    return [np.asarray(Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).resize((50 + 3 * i, 40 + 7 * i)))
            for i in range(n)]


def ids_and_scores(cap: Captioner, images, **kw):
    caps = cap.caption(images, **kw)
    return [[c.token_ids] + [a.token_ids for a in c.alternatives] for c in caps], [c.score for c in caps]


def assert_same_tokens(ref: Captioner, ours: Captioner, images, **kw):
    ref_ids, ref_scores = ids_and_scores(ref, images, **kw)
    got_ids, got_scores = ids_and_scores(ours, images, **kw)
    assert got_ids == ref_ids
    np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-5, atol=2e-4)
    return ref_ids


@pytest.fixture(scope="module")
def random_pair(random_ckpt):
    return Captioner.load(random_ckpt, backend="torch", device="cpu", dtype="float32"), Captioner.load(random_ckpt, backend="tf")


@pytest.fixture(scope="module")
def eos_pair(eos_ckpt):
    return Captioner.load(eos_ckpt, backend="torch", device="cpu", dtype="float32"), Captioner.load(eos_ckpt, backend="tf")


@pytest.fixture(scope="module")
def fixture_pair(tiny_fixture):
    return Captioner.load(tiny_fixture, backend="torch", device="cpu", dtype="float32"), Captioner.load(tiny_fixture, backend="tf")


@needs_tf
def test_logits_match_torch_under_teacher_forcing(random_pair):
    ref, ours = random_pair
    pixels = ref.preprocessor.batch([Image.fromarray(a) for a in colour_fields(3)])
    seq = np.concatenate([np.full((3, 1), 30522), np.random.default_rng(1).integers(1000, 30000, (3, 6))], axis=1)
    sessions = [cap.backend.start(cap.backend.encode(pixels), 1, seq[:, :1], np.ones((3, 1), bool), 8)
                for cap in (ref, ours)]
    (ref_s, ref_logits), (our_s, our_logits) = sessions
    for t in range(1, seq.shape[1] + 1):
        np.testing.assert_allclose(our_logits, ref_logits.numpy(), rtol=0, atol=1e-4)  # measured: 1e-5
        if t < seq.shape[1]:
            ref_logits = ref_s.step(ref.backend.ops.asarray(seq[:, t]))
            our_logits = our_s.step(seq[:, t])


SEARCHES = {
    "greedy": dict(),
    "beam": dict(num_beams=3),
    "beam-n-best": dict(num_beams=4, num_return_sequences=3, length_penalty=0.6),
    "beam-early": dict(num_beams=3, early_stopping=True),
    "prompt": dict(prompt="a photography of"),
    "prompts-of-different-lengths": dict(prompt=["a photography of", None, "a painting", "the"], num_beams=2),
    "rules": dict(min_new_tokens=5, repetition_penalty=1.3, no_repeat_ngram_size=2),
}


@needs_tf
@pytest.mark.parametrize("kw", SEARCHES.values(), ids=SEARCHES.keys())
def test_tokens_match_torch_on_random_checkpoints(random_pair, eos_pair, kw):
    for ref, ours in (random_pair, eos_pair):
        ids = assert_same_tokens(ref, ours, colour_fields(4, seed=3), max_new_tokens=12, **kw)
        assert len({tuple(r[0]) for r in ids}) > 1  # the images steer the caption: the check has teeth


class _NumpySession:
    """A torch session seen through numpy: the search then draws from numpy's generator, as it does
    for the TF backend, so sampled tokens can be compared token for token."""

    def __init__(self, session):
        import torch

        self.session, self.torch, self.ops = session, torch, NumpyOps()

    def step(self, tokens):
        return self.session.step(self.torch.from_numpy(np.asarray(tokens))).numpy()

    def reorder(self, rows):
        self.session.reorder(self.torch.from_numpy(np.asarray(rows)))


class _NumpyBoundary:
    def __init__(self, backend):
        self.backend, self.dims, self.ops, self.name = backend, backend.dims, NumpyOps(), "torch"

    def encode(self, pixels):
        return self.backend.encode(pixels)

    def start(self, memory, group, prompts, valid, max_new):
        session, logits = self.backend.start(memory, group, prompts, valid, max_new)
        wrapped = _NumpySession(session)
        wrapped.ops = self.ops
        return wrapped, logits.numpy()


@needs_tf
@pytest.mark.parametrize("kw", [dict(top_k=0), dict(top_k=20, top_p=0.9, temperature=0.7, num_return_sequences=3)])
def test_sampling_with_a_seed_matches_torch_logits_with_the_same_generator(random_ckpt, random_pair, kw):
    _, ours = random_pair
    ref = Captioner.load(random_ckpt, backend="torch", device="cpu", dtype="float32")
    ref.backend = _NumpyBoundary(ref.backend)
    images = colour_fields(3, seed=5)
    ids = assert_same_tokens(ref, ours, images, do_sample=True, seed=7, max_new_tokens=10, **kw)
    other, _ = ids_and_scores(ours, images, do_sample=True, seed=8, max_new_tokens=10, **kw)
    assert other != ids  # the seed matters: equal draws are not an accident of a flat distribution


def fixture_images(seed: int, n: int):
    rng = np.random.default_rng(seed)
    combos = [(c, s, p) for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")
              for p in ("left", "right", "top", "bottom")]
    picked = [combos[i] for i in rng.choice(len(combos), n, replace=False)]
    return [np.asarray(make_image(*c, rng=rng)) for c in picked], [caption_for(*c) for c in picked]


@needs_tf
@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3), dict(num_beams=4, num_return_sequences=2, early_stopping=True),
                                dict(do_sample=True, seed=0, top_k=5), dict(prompt="a red")], ids=str)
def test_trained_fixture_captions_right_and_as_torch(fixture_pair, kw):
    ref, ours = fixture_pair
    images, expected = fixture_images(seed=21, n=8)
    if not kw.get("do_sample"):  # torch samples from torch's generator: there, the captions must be right
        assert_same_tokens(ref, ours, images, **kw)
    got = [c.text for c in ours.caption(images, keep_prompt=True, **kw)]
    if "prompt" in kw:  # the prompt steers: every caption continues it
        assert all(g.startswith("a red ") for g in got) and len(set(got)) > 1
    else:
        assert got == expected


@needs_tf
def test_tf_model_h5_from_transformers_4_captions_as_its_pytorch_twin():
    made = json.loads((H5_FIXTURE / "MADE_WITH.json").read_text())
    assert made["transformers"].startswith("4.") and (H5_FIXTURE / "tf" / "tf_model.h5").is_file()
    assert not list((H5_FIXTURE / "tf").glob("*.safetensors")) and not list((H5_FIXTURE / "tf").glob("*.bin"))
    ours = Captioner.load(H5_FIXTURE / "tf", backend="tf")
    ref = Captioner.load(H5_FIXTURE / "pt", backend="torch", device="cpu", dtype="float32")
    images = colour_fields(6, seed=2)
    for kw in (dict(), dict(num_beams=3, num_return_sequences=2)):
        ids = assert_same_tokens(ref, ours, images, max_new_tokens=10, suppress_artefacts=False, **kw)
        assert len({tuple(r[0]) for r in ids}) > 1


def _names(names) -> np.ndarray:
    return np.array([n.encode() if isinstance(n, str) else bytes(n) for n in names], dtype="S")  # as Keras writes them


@needs_tf
def test_tf_model_h5_loading_is_strict(tmp_path):
    import h5py
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(H5_FIXTURE / "tf", bad)
    with h5py.File(bad / "tf_model.h5", "r+") as f:
        group = f["text_decoder"]
        name = "tf_blip_for_conditional_generation/text_decoder/bert/pooler/dense/kernel:0"
        group.create_dataset(name, data=np.zeros((16, 16), np.float32))
        group.attrs["weight_names"] = _names([*group.attrs["weight_names"], name])
    with pytest.raises(CheckpointError, match="bert/pooler/dense/kernel"):
        Captioner.load(bad, backend="tf")
    with h5py.File(bad / "tf_model.h5", "r+") as f:  # and a weight it needs, missing
        group = f["text_decoder"]
        keep = [n for n in _names(group.attrs["weight_names"]) if b"pooler" not in n and b"0/crossattention/self/key/k" not in n]
        group.attrs["weight_names"] = _names(keep)
    with pytest.raises(CheckpointError, match=r"layer\.0\.crossattention\.self\.key\.weight"):
        Captioner.load(bad, backend="tf")


@needs_tf
def test_tf_tensors_caption_as_the_same_arrays(fixture_pair):
    _, ours = fixture_pair
    images, expected = fixture_images(seed=3, n=4)
    hwc = [tf.constant(a) for a in images]  # uint8 HWC, as tf.io.decode_* gives
    chw_float = [tf.transpose(tf.constant(a, tf.float32) / 255.0, [2, 0, 1]) for a in images]
    same_size = [np.asarray(make_image("red", "circle", "left", size=96)), np.asarray(make_image("blue", "square", "top", size=96))]
    batch = tf.stack([tf.constant(a) for a in same_size])  # (2, 96, 96, 3): a batch is its images
    assert [c.text for c in ours.caption(hwc)] == expected
    assert [c.text for c in ours.caption(chw_float)] == expected
    assert [c.text for c in ours.caption(batch)] == ["a red circle on the left", "a blue square at the top"]
    assert ours(hwc[0]) == expected[0]


@needs_tf
def test_saved_model_reloads_in_a_fresh_process_with_the_same_greedy_ids(tmp_path, fixture_pair):
    _, ours = fixture_pair
    images, expected = fixture_images(seed=9, n=5)
    out = ours.export_saved_model(tmp_path / "saved")
    pixels = ours.preprocessor.batch([Image.fromarray(a) for a in images])
    prompt = np.array([ours.codec.prompt_ids("a blue")] * 5, dtype=np.int64)  # [DEC] a blue
    np.save(tmp_path / "pixels.npy", pixels)
    np.save(tmp_path / "prompt.npy", prompt)
    code = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        m = tf.saved_model.load({str(out)!r})
        pixels = tf.constant(np.load({str(tmp_path / 'pixels.npy')!r}))
        prompt = tf.constant(np.load({str(tmp_path / 'prompt.npy')!r}))
        np.save({str(tmp_path / 'ids.npy')!r}, m.signatures["serving_default"](pixels=pixels)["ids"].numpy())
        np.save({str(tmp_path / 'prompted.npy')!r}, m.signatures["with_prompt"](pixels=pixels, prompt_ids=prompt)["ids"].numpy())
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the SavedModel needs no blipcap
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, timeout=300)
    eos, pad = ours.codec.eos_id, ours.codec.pad_id

    def cut(row):  # generated ids before [SEP], as Caption.token_ids holds them
        row = row.tolist()
        return row[: row.index(eos)] if eos in row else [t for t in row if t != pad]

    ids, prompted = np.load(tmp_path / "ids.npy"), np.load(tmp_path / "prompted.npy")
    assert ids.shape == (5, ours.defaults.max_new_tokens)
    assert [cut(r) for r in ids] == [c.token_ids for c in ours.caption(images)]
    assert [ours.codec.detokenize(cut(r)) for r in ids] == expected
    assert [cut(r) for r in prompted] == [c.token_ids for c in ours.caption(images, prompt="a blue")]


@needs_tf
def test_saved_model_refuses_options_it_cannot_run(tmp_path, fixture_pair):
    _, ours = fixture_pair
    ours_beam = Captioner(ours.backend, ours.codec, ours.preprocessor, ours.defaults.replace(num_beams=3), ours.model_id)
    with pytest.raises(ValueError, match="num_beams"):
        ours_beam.export_saved_model(tmp_path / "beam")


def test_missing_tensorflow_is_a_one_line_error_naming_the_extra(tiny_fixture):
    code = ("import sys; sys.modules['tensorflow'] = None\n"  # as if TF were not installed
            "from blipcap import Captioner\n"
            f"try:\n    Captioner.load({str(tiny_fixture)!r}, backend='tf')\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "the TensorFlow backend requires tensorflow: pip install 'blipcap[tf]'"


@needs_tf
@pytest.mark.parametrize("source", ["tiny-blip", "tiny-tf-h5/tf"])
def test_captions_without_torch(tiny_fixture, source):
    model_dir = tiny_fixture if source == "tiny-blip" else H5_FIXTURE / "tf"
    code = ("import sys; sys.modules['torch'] = None\n"  # as if torch were not installed
            "import numpy as np\nfrom blipcap import Captioner\n"
            f"cap = Captioner.load({str(model_dir)!r}, backend='tf')\n"
            "print(cap(np.full((64, 64, 3), 200, np.uint8), max_new_tokens=5) is not None, 'torch' in sys.modules and sys.modules['torch'] is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]
