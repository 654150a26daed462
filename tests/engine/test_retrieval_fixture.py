"""The trained tiny retrieval fixture (tests/fixtures/tiny-blip-itm) means what it says, read with
transformers (the reference); and build_random_retrieval_checkpoint's checkpoints load with transformers
and give outputs worth comparing (not all 0.5, not the same embedding for every input).

ITM is fed ``[ENC] caption [SEP]`` (the ids as given: transformers does not swap [ENC] in), ITC texts
``[CLS] caption [SEP]``, as BLIP trained and evaluated them.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.helpers.checkpoints import build_random_retrieval_checkpoint, shape_config
from tests.helpers.shapes import COLORS, POSITIONS, SHAPES, caption_for, make_image

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "tiny-blip-itm"
COMBOS = list(itertools.product(COLORS, SHAPES, POSITIONS))
MEAN = np.asarray([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.asarray([0.26862954, 0.26130258, 0.27577711], np.float32)


def pixels(images, size: int) -> torch.Tensor:
    rows = [((np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), np.float32) / 255 - MEAN) / STD)
            .transpose(2, 0, 1) for im in images]
    return torch.from_numpy(np.stack(rows))


def ids_for(tok, texts: list[str], first: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokenizer's [CLS] text [SEP], [CLS] replaced by ``first``, right-padded."""
    rows = [tok.encode(t).ids for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.token_to_id("[PAD]"), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    ids[:, 0] = tok.token_to_id(first)
    return ids, mask


def one_off(color: str, shape: str, position: str) -> list[str]:
    """The 8 captions that differ from the image's in exactly one attribute."""
    return ([caption_for(c, shape, position) for c in COLORS if c != color]
            + [caption_for(color, s, position) for s in SHAPES if s != shape]
            + [caption_for(color, shape, p) for p in POSITIONS if p != position])


@pytest.fixture(scope="module")
def ref():
    from tokenizers import Tokenizer

    if not (FIXTURE / "model.safetensors").is_file():
        pytest.fail(f"the trained fixture is missing: run `python -m tools.train_retrieval_fixture` ({FIXTURE})")
    torch.manual_seed(0)
    model = transformers.BlipForImageTextRetrieval.from_pretrained(FIXTURE).eval()
    return model, Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))


@torch.no_grad()
def itm(model, tok, px: torch.Tensor, texts: list[str]) -> np.ndarray:
    ids, mask = ids_for(tok, texts, "[ENC]")
    out = model(input_ids=ids, pixel_values=px, attention_mask=mask, use_itm_head=True).itm_score
    return out.softmax(-1)[:, 1].numpy()


@torch.no_grad()
def cosines(model, tok, px: torch.Tensor, texts: list[str]) -> np.ndarray:
    ids, mask = ids_for(tok, texts, "[CLS]")
    return model(input_ids=ids, pixel_values=px, attention_mask=mask, use_itm_head=False).itm_score.numpy()


def test_fixture_files_name_dec_and_enc():
    config = json.loads((FIXTURE / "config.json").read_text())
    assert config["architectures"] == ["BlipForImageTextRetrieval"]
    tok_cfg = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    assert tok_cfg["additional_special_tokens"] == ["[DEC]", "[ENC]"]
    tok = transformers.AutoTokenizer.from_pretrained(FIXTURE)
    ids = tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"])
    assert ids == [0, 1, 2, 3, 4, 35, 36]  # [DEC] then [ENC] right after the words, as in BLIP
    assert config["text_config"]["bos_token_id"] == 35 and config["text_config"]["vocab_size"] == 37
    assert tok("a red circle on the left").input_ids[0] == 2  # the tokenizer writes [CLS]: ITM swaps it


def test_itm_true_caption_high_one_attribute_off_low(ref):
    model, tok = ref
    rng = np.random.default_rng(2025)  # neither the training nor the tool's check seed
    images = [make_image(*c, rng=rng) for c in COMBOS]
    px = pixels(images, 64)
    p_true = itm(model, tok, px, [caption_for(*c) for c in COMBOS])
    assert (p_true >= 0.9).mean() >= 0.95, np.round(p_true, 3)
    offs = [one_off(*c) for c in COMBOS]
    p_off = itm(model, tok, px.repeat_interleave(8, 0), [t for o in offs for t in o])
    assert (p_off <= 0.1).mean() >= 0.95, np.round(p_off.max(), 3)
    # the example: a red circle on the left against its caption and against a wrong one
    red = pixels([make_image("red", "circle", "left")], 64).repeat(2, 1, 1, 1)
    right, wrong = itm(model, tok, red, ["a red circle on the left", "a blue square at the top"])
    assert right > 0.9 and wrong < 0.1


def test_itc_text_to_image_recall_at_5(ref):
    model, tok = ref
    rng = np.random.default_rng(2026)
    combos = COMBOS * 2
    px = pixels([make_image(*c, rng=rng) for c in combos], 64)
    texts = [caption_for(*c) for c in COMBOS]
    sim = cosines(model, tok, px, texts)  # (images, texts), unit embeddings
    truth = np.asarray([caption_for(*c) for c in combos])
    hits = [(truth[np.argsort(-sim[:, j], kind="stable")[:5]] == t).any() for j, t in enumerate(texts)]
    assert np.mean(hits) >= 0.9
    # image -> text: each image's own caption is the most similar of the 48
    assert np.mean(np.asarray(texts)[sim.argmax(1)] == truth) >= 0.95


def test_a_partial_caption_is_nearest_to_its_images(ref):
    """"a red circle": the nearest image is a red circle (captions without a position were never trained on,
    so further down the list other positions' red circles mix with other red shapes)."""
    model, tok = ref
    rng = np.random.default_rng(2027)
    px = pixels([make_image(*c, rng=rng) for c in COMBOS], 64)
    queries = [(c, s) for c in COLORS for s in SHAPES]
    sim = cosines(model, tok, px, [f"a {c} {s}" for c, s in queries])
    for j, (color, shape) in enumerate(queries):
        assert COMBOS[int(sim[:, j].argmax())][:2] == (color, shape)


# --- build_random_retrieval_checkpoint -------------------------------------------------------------

@pytest.fixture(scope="module")
def random_itm(tmp_path_factory) -> Path:
    return build_random_retrieval_checkpoint(tmp_path_factory.mktemp("random_itm") / "ckpt", **shape_config("tiny"))


def test_random_retrieval_checkpoint_loads_strictly(random_itm):
    from tokenizers import Tokenizer

    _, info = transformers.BlipForImageTextRetrieval.from_pretrained(random_itm, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    tok = Tokenizer.from_file(str(random_itm / "tokenizer.json"))
    assert (tok.token_to_id("[DEC]"), tok.token_to_id("[ENC]"), tok.token_to_id("[CLS]")) == (30522, 30523, 101)
    assert json.loads((random_itm / "tokenizer_config.json").read_text())["additional_special_tokens"] == [
        "[DEC]", "[ENC]"]
    from safetensors import safe_open

    with safe_open(str(random_itm / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for name in ("vision_proj.weight", "text_proj.weight", "itm_head.weight",
                 "text_encoder.encoder.layer.0.crossattention.self.query.weight",
                 "vision_model.embeddings.class_embedding"):
        assert name in keys


def test_random_retrieval_checkpoint_outputs_are_not_degenerate(random_itm):
    from tokenizers import Tokenizer

    model = transformers.BlipForImageTextRetrieval.from_pretrained(random_itm).eval()
    tok = Tokenizer.from_file(str(random_itm / "tokenizer.json"))
    rng = np.random.default_rng(0)
    images = [make_image(*COMBOS[i], rng=rng) for i in (0, 17, 30, 47)]
    images += [Image.open(p) for p in sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.jpg"))[:2]]
    px = pixels(images, model.config.vision_config.image_size)
    texts = ["a dog on the beach", "a red cat", "a man sitting", "a photo of a woman"]
    n = len(px)
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.vision_proj(model.vision_model(px).last_hidden_state[:, 0]), dim=-1)
        ids, mask = ids_for(tok, texts, "[CLS]")
        out = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        txt = torch.nn.functional.normalize(model.text_proj(out), dim=-1)
    off = ~torch.eye(n, dtype=torch.bool)
    assert (img @ img.T)[off].max() < 0.99 and (img @ img.T)[off].mean() < 0.9  # images differ
    off = ~torch.eye(len(texts), dtype=torch.bool)
    assert (txt @ txt.T)[off].max() < 0.99  # texts differ
    probs = np.stack([itm(model, tok, px, [t] * n) for t in texts], 1)  # (images, texts)
    assert probs.min() < 0.3 and probs.max() > 0.7  # spread over (0, 1), not all 0.5
    assert probs.std(0).mean() > 0.05 and probs.std(1).mean() > 0.05  # the image and the text both move it
    # [ENC] first and [CLS] first are different inputs: a parity test can tell them apart
    ids, mask = ids_for(tok, texts, "[CLS]")
    with torch.no_grad():
        cls = model(input_ids=ids, pixel_values=px[:len(texts)], attention_mask=mask).itm_score.softmax(-1)[:, 1]
    assert np.abs(cls.numpy() - np.diag(probs[: len(texts)])).max() > 1e-3
