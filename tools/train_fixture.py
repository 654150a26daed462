#!/usr/bin/env python
"""Train the tiny BLIP captioning checkpoint used as a test fixture (tests/fixtures/tiny-blip).

    .venv/bin/python -m tools.train_fixture [--out tests/fixtures/tiny-blip] [--steps N]

Trains a tiny ``transformers.BlipForConditionalGeneration`` from scratch, on CPU and
deterministically, to caption the synthetic images of ``tests/helpers/shapes.py`` ("a red circle on the
left"), writes it in the Hugging Face BLIP format (config.json, model.safetensors, tokenizer.json,
vocab.txt, tokenizer_config.json, preprocessor_config.json), then checks it on fresh images with
transformers' own ``generate`` (greedy and beam) and exits non-zero if it is not accurate enough.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors  # noqa: E402
from tokenizers.models import WordPiece  # noqa: E402
from transformers import BlipConfig, BlipForConditionalGeneration  # noqa: E402

from tests.helpers import shapes  # noqa: E402

# --- the fixed recipe ------------------------------------------------------------------------------

IMAGE_SIZE = 64  # model input (height == width)
PATCH_SIZE = 8
HIDDEN = 64
MAX_POSITIONS = 32
MODEL_MAX_LENGTH = 32

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TRAIN_SEED = 1234
EVAL_SEED = 98765
EVAL_IMAGES = 300
MIN_ACCURACY = 0.99

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The caption words, some only as WordPiece pieces ("yel" "##low", "tri" "##angle"), then a few
# words and pieces the captions never use, so the vocabulary is not just the caption words.
WORDS = [
    "a", "on", "at", "the", "left", "right", "top", "bottom",
    "red", "green", "blue", "yel", "##low",
    "circle", "square", "tri", "##angle",
    "an", "of", "with", "and", "photo", "picture", "small", "big",
    ".", ",", "##s", "##ed", "##ing",
]
DEC = "[DEC]"  # BLIP's decoder start token, added after the word vocabulary as in the real models


def build_vocab() -> list[str]:
    return SPECIALS + WORDS + [DEC]


def build_tokenizer(vocab: list[str]) -> Tokenizer:
    ids = {t: i for i, t in enumerate(vocab[:-1])}  # [DEC] is added below as a special token
    tok = Tokenizer(WordPiece(ids, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(SPECIALS)
    tok.add_special_tokens([DEC])
    cls, sep = ids["[CLS]"], ids["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    assert tok.token_to_id(DEC) == len(vocab) - 1, "[DEC] must follow the word vocabulary"
    assert tok.get_vocab_size() == len(vocab)
    return tok


def preprocess(images: list[Image.Image]) -> np.ndarray:
    """BLIP's image processor: RGB, bicubic resize, /255, CLIP mean/std; -> float32 [N,3,H,W]."""
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    out = np.empty((len(images), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i, im in enumerate(images):
        im = im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.BICUBIC)
        x = np.asarray(im, dtype=np.float32) * np.float32(1 / 255)
        out[i] = ((x - mean) / std).transpose(2, 0, 1)
    return out


def make_config(tok: Tokenizer) -> BlipConfig:
    sep = tok.token_to_id("[SEP]")
    vision = dict(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=HIDDEN,
        initializer_range=0.02,
    )
    text = dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=HIDDEN,
        encoder_hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        projection_dim=HIDDEN,
        bos_token_id=tok.token_to_id(DEC),
        sep_token_id=sep,
        eos_token_id=sep,
        pad_token_id=tok.token_to_id("[PAD]"),
    )
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=HIDDEN)


def encode_captions(tok: Tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """[DEC] caption [SEP], right-padded with [PAD]: (input_ids, attention_mask)."""
    dec, pad = tok.token_to_id(DEC), tok.token_to_id("[PAD]")
    rows = [tok.encode(c).ids for c in captions]
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    ids[:, 0] = dec  # [CLS] -> [DEC], as BlipForConditionalGeneration.generate does
    return ids, mask


# Training images come in several sizes and aspect ratios (half at shapes' default 120x90), so the
# model captions what tests draw at any reasonable size, not only at the default.
TRAIN_SIZES = [shapes.DEFAULT_SIZE] * 4 + [(96, 96), (90, 120), (160, 120), (64, 64)]
CHECK_SIZES = [(120, 90), (96, 96), (90, 120), (64, 64), (200, 150), (300, 300), (150, 200)]


def batch(rng: np.random.Generator, n: int, sizes=None):
    pairs = []
    for _ in range(n):
        size = shapes.DEFAULT_SIZE if sizes is None else sizes[int(rng.integers(len(sizes)))]
        pairs.append(shapes.sample(rng, size=size))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def train(model, tok, steps: int, batch_size: int, lr: float, log_every: int) -> None:
    rng = np.random.default_rng(TRAIN_SEED)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name.lower() or "embedding" in name.lower() else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98), eps=1e-8,
    )
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine decay to 2% of the peak
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        images, captions = batch(rng, batch_size, TRAIN_SIZES)
        pixels = torch.from_numpy(preprocess(images))
        ids, mask = encode_captions(tok, captions)
        labels = ids.masked_fill(mask == 0, -100)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {lr_at(step):.2e}  {time.perf_counter() - t0:6.1f}s",
                  flush=True)
    model.eval()


def _generate(model, tok, images, captions, **kwargs):
    """transformers' generate on ``images``: (accuracy, texts, sequences, min top-1 prob of caption tokens)."""
    pixels = torch.from_numpy(preprocess(images))
    sep = tok.token_to_id("[SEP]")
    seqs, min_p = [], 1.0
    with torch.no_grad():
        for i in range(0, len(images), 100):
            out = model.generate(pixel_values=pixels[i : i + 100], max_new_tokens=12, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True, **kwargs)
            rows = out.sequences.tolist()
            seqs.extend(rows)
            if kwargs.get("num_beams", 1) == 1:  # greedy: how sure was each pick, up to and including [SEP]
                for step, scores in enumerate(out.scores):
                    top = scores.softmax(-1).max(-1).values
                    for r, row in enumerate(rows):
                        if sep not in row[1 : step + 1]:
                            min_p = min(min_p, top[r].item())
    texts = [tok.decode(s, skip_special_tokens=True) for s in seqs]
    acc = sum(t == c for t, c in zip(texts, captions)) / len(captions)
    return acc, texts, seqs, min_p


def validate(model, tok, n: int) -> bool:
    """Caption fresh images (another seed than training) with transformers' generate."""
    sep = tok.token_to_id("[SEP]")
    ok = True
    rng = np.random.default_rng(EVAL_SEED)
    images, captions = batch(rng, n)  # shapes' default size
    for name, kwargs in (("greedy", dict(num_beams=1)), ("beam3", dict(num_beams=3))):
        t0 = time.perf_counter()
        acc, texts, seqs, min_p = _generate(model, tok, images, captions, **kwargs)
        # Every sequence must end with [SEP] right after its caption, well before max_new_tokens:
        # [DEC] caption [SEP] (then only padding from batching).
        ended = sum(1 for s, c in zip(seqs, captions) if len(s) > (k := len(tok.encode(c).ids) - 1)
                    and s[k] == sep)
        new_tokens = max(s.index(sep) if sep in s else 99 for s in seqs)  # [SEP] included, [DEC] not
        print(f"{name} {shapes.DEFAULT_SIZE[0]}x{shapes.DEFAULT_SIZE[1]}: accuracy {acc:.4f} "
              f"({round(acc * n)}/{n}), [SEP] right after the caption {ended}/{n}, "
              f"most new tokens incl. [SEP] {new_tokens}"
              + (f", least top-1 probability {min_p:.3f}" if name == "greedy" else "")
              + f"  ({time.perf_counter() - t0:.1f}s)")
        for t, c in zip(texts, captions):
            if t != c:
                print(f"   wrong: {t!r} for {c!r}")
        ok &= acc >= MIN_ACCURACY and ended == n and new_tokens <= 9
    # Other image sizes and aspect ratios, greedy.
    for size in CHECK_SIZES:
        images, captions = [], []
        for _ in range(n):
            im, c = shapes.sample(rng, size=size)
            images.append(im)
            captions.append(c)
        acc, texts, _, _ = _generate(model, tok, images, captions)
        print(f"greedy {size[0]}x{size[1]}: accuracy {acc:.4f}")
        for t, c in zip(texts, captions):
            if t != c:
                print(f"   wrong: {t!r} for {c!r}")
        ok &= acc >= MIN_ACCURACY
    return ok


def save(model, tok: Tokenizer, vocab: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    special = SPECIALS + [DEC]
    tok_cfg = {
        "added_tokens_decoder": {
            str(vocab.index(t)): {
                "content": t, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": True,
            }
            for t in special
        },
        "bos_token": DEC,
        "clean_up_tokenization_spaces": True,
        "cls_token": "[CLS]",
        "do_basic_tokenize": True,
        "do_lower_case": True,
        "mask_token": "[MASK]",
        "model_max_length": MODEL_MAX_LENGTH,
        "never_split": None,
        "pad_token": "[PAD]",
        "processor_class": "BlipProcessor",
        "sep_token": "[SEP]",
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "tokenizer_class": "BertTokenizer",
        "unk_token": "[UNK]",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
    pre = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "BlipImageProcessor",
        "image_std": list(CLIP_STD),
        "processor_class": "BlipProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "tiny-blip")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--pos-std", type=float, default=1.0)
    ap.add_argument("--eval-images", type=int, default=EVAL_IMAGES)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--no-validate", action="store_true", help="skip the accuracy check (quick determinism runs)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)

    vocab = build_vocab()
    tok = build_tokenizer(vocab)
    model = BlipForConditionalGeneration(make_config(tok))
    with torch.no_grad():  # larger position embeddings than the default 0.02, so "where" is learnt early
        model.vision_model.embeddings.position_embedding.normal_(0.0, args.pos_std)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}; vocab {len(vocab)}; input {IMAGE_SIZE}x{IMAGE_SIZE}, patch {PATCH_SIZE}")

    t0 = time.perf_counter()
    train(model, tok, args.steps, args.batch_size, args.lr, args.log_every)
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.1f}s")

    save(model, tok, vocab, args.out)
    print(f"saved to {args.out}: " + ", ".join(
        f"{p.name} {p.stat().st_size:,}B" for p in sorted(args.out.iterdir()) if p.is_file()))

    if args.no_validate:
        return 0
    # Validate what was written, loaded back the way users load it.
    reloaded = BlipForConditionalGeneration.from_pretrained(args.out).eval()
    ok = validate(reloaded, Tokenizer.from_file(str(args.out / "tokenizer.json")), args.eval_images)
    print("PASS" if ok else "FAIL: accuracy or [SEP] check below threshold")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
