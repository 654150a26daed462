#!/usr/bin/env python
"""Train the tiny BLIP retrieval (ITM + ITC) checkpoint used as a test fixture (tests/fixtures/tiny-blip-itm).

    .venv/bin/python -m tools.train_retrieval_fixture [--out tests/fixtures/tiny-blip-itm] [--steps N]

Trains a tiny ``transformers.BlipForImageTextRetrieval`` from scratch, on CPU and deterministically,
on the synthetic images of ``tests/helpers/shapes.py`` and their captions ("a red circle on the
left"), with BLIP's two retrieval objectives (salesforce/BLIP ``models/blip_retrieval.py``):

- ITC, image-text contrastive: ``vision_proj`` of the vision model's first token against
  ``text_proj`` of the text encoder's first token, the text encoder run bidirectionally without the
  image ("text" mode) on ``[CLS] caption [SEP]``; a learnt temperature (0.07 at the start, clamped to
  [0.001, 0.5]); images whose captions are equal are all positives (BLIP's ``idx`` targets).
- ITM, image-text matching: the text encoder with cross-attention to the vision tokens on
  ``[ENC] caption [SEP]`` (``[ENC]`` in place of ``[CLS]``, as BLIP does), ``itm_head`` on the first
  token, on the positive pairs and on hard negatives: for each image a text and for each text an image
  drawn by ITC similarity among the batch's non-matches (as BLIP), and for each image a caption that
  differs in exactly one attribute (colour, shape or position).

The tokenizer and the model's shape are tests/fixtures/tiny-blip's (tools/train_fixture.py) plus
``[ENC]``, added right after ``[DEC]`` as in BLIP's tokenizer. It writes the Hugging Face layout
(config.json, model.safetensors, tokenizer.json, vocab.txt, tokenizer_config.json,
preprocessor_config.json), reloads it with transformers and checks it on fresh images (another seed)
through ``BlipForImageTextRetrieval.forward``; it exits non-zero if the ITM probabilities or the ITC
text->image recall are not good enough.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import BlipForImageTextRetrieval

from tests.helpers import shapes
from tools import train_fixture as cap

ROOT = cap.ROOT

ENC = "[ENC]"  # BLIP's encoder (ITM) start token, added right after [DEC]

TRAIN_SEED = 4321
EVAL_SEED = 97531
EVAL_IMAGES = 200
CHECK_SIZES = [(96, 96), (90, 120), (64, 64), (200, 150), (300, 300)]
CHECK_IMAGES_PER_SIZE = 100

# What the check demands (on every image set it draws).
MIN_TRUE_PROB = 0.9  # ITM probability of the true caption ...
MAX_OFF_PROB = 0.1  # ... and of a caption one attribute off
MIN_FRACTION = 0.95  # ... for at least this share of images (pairs)
MIN_RECALL_AT_5 = 0.9  # ITC text->image recall@5


# --- vocabulary and captions ---------------------------------------------------------------------

def build_vocab() -> list[str]:
    return cap.build_vocab() + [ENC]


def build_tokenizer(vocab: list[str]) -> Tokenizer:
    """tiny-blip's tokenizer, then [ENC] as one more special token, right after [DEC]."""
    assert vocab[-1] == ENC
    tok = cap.build_tokenizer(vocab[:-1])
    tok.add_special_tokens([ENC])
    assert tok.token_to_id(ENC) == tok.token_to_id(cap.DEC) + 1 == len(vocab) - 1
    assert tok.get_vocab_size() == len(vocab)
    return tok


def attributes(caption: str) -> tuple[str, str, str]:
    """(color, shape, position) of a caption_for() caption: "a red circle on the left" -> (red, circle, left)."""
    words = caption.split()
    return words[1], words[2], words[-1]


def one_off(caption: str) -> list[tuple[str, str]]:
    """Every caption that differs from ``caption`` in exactly one attribute, as (attribute, caption)."""
    color, shape, position = attributes(caption)
    out = [("color", shapes.caption_for(c, shape, position)) for c in shapes.COLORS if c != color]
    out += [("shape", shapes.caption_for(color, s, position)) for s in shapes.SHAPES if s != shape]
    out += [("position", shapes.caption_for(color, shape, p)) for p in shapes.POSITIONS if p != position]
    return out


ALL_CAPTIONS = [shapes.caption_for(c, s, p) for c in shapes.COLORS for s in shapes.SHAPES for p in shapes.POSITIONS]


def encode(tok: Tokenizer, captions: list[str], first: str = "[CLS]") -> tuple[torch.Tensor, torch.Tensor]:
    """``first`` caption [SEP], right-padded with [PAD]: (input_ids, attention_mask).

    The tokenizer writes [CLS] first; ITC ("text" mode) keeps it, ITM puts [ENC] there, as BLIP does.
    """
    ids, mask = cap.encode_captions(tok, captions)  # [DEC] caption [SEP]
    ids[:, 0] = tok.token_to_id(first)
    return ids, mask


# --- training ------------------------------------------------------------------------------------

def sample_negatives(sim: torch.Tensor, same: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each row, a column drawn with probability softmax(sim) among the non-matches (BLIP's hard negatives)."""
    weights = F.softmax(sim.float(), dim=1).masked_fill(same, 0.0) + (~same).float() * 1e-6
    return torch.multinomial(weights, 1, generator=gen).squeeze(1)


def itm_logits(model, ids, mask, image_embeds) -> torch.Tensor:
    atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
    out = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                             encoder_attention_mask=atts)
    return model.itm_head(out.last_hidden_state[:, 0, :])


def losses(model, tok, temp, images, captions, rng: np.random.Generator, gen: torch.Generator):
    """BLIP's ITC and ITM losses on one batch: (itc, itm, itm accuracy)."""
    pixels = torch.from_numpy(cap.preprocess(images))
    n = len(captions)
    image_embeds = model.vision_model(pixel_values=pixels).last_hidden_state
    image_feat = F.normalize(model.vision_proj(image_embeds[:, 0, :]), dim=-1)

    cls_ids, mask = encode(tok, captions, "[CLS]")
    text_out = model.text_encoder(input_ids=cls_ids, attention_mask=mask)  # bidirectional, no image
    text_feat = F.normalize(model.text_proj(text_out.last_hidden_state[:, 0, :]), dim=-1)

    with torch.no_grad():
        temp.clamp_(0.001, 0.5)
    codes = torch.tensor([ALL_CAPTIONS.index(c) for c in captions])
    same = codes[:, None] == codes[None, :]
    targets = same.float() / same.float().sum(1, keepdim=True)
    sim_i2t = image_feat @ text_feat.t() / temp
    sim_t2i = sim_i2t.t()
    loss_itc = (-(F.log_softmax(sim_i2t, 1) * targets).sum(1).mean()
                - (F.log_softmax(sim_t2i, 1) * targets).sum(1).mean()) / 2

    # ITM: positives, a hard negative text per image, a hard negative image per text (by ITC
    # similarity, among the non-matches), and two captions one attribute off per image (two different
    # attributes, drawn evenly: shape has fewer alternatives than colour or position but is as needed).
    with torch.no_grad():
        neg_text = sample_negatives(sim_i2t, same, gen)
        neg_image = sample_negatives(sim_t2i, same, gen)
    off = [[], []]
    for c in captions:
        choices = one_off(c)
        for slot, attr in zip(off, rng.permutation(["color", "shape", "position"])[:2]):
            values = [o for a, o in choices if a == attr]
            slot.append(values[int(rng.integers(len(values)))])
    pad = tok.token_to_id("[PAD]")
    encoded = [encode(tok, captions, ENC), encode(tok, off[0], ENC), encode(tok, off[1], ENC)]
    width = max(ids.shape[1] for ids, _ in encoded)
    (ids, mask), (off0, mask0), (off1, mask1) = [
        (F.pad(i, (0, width - i.shape[1]), value=pad), F.pad(m, (0, width - m.shape[1]), value=0)) for i, m in encoded]
    all_ids = torch.cat([ids, ids[neg_text], ids, off0, off1])
    all_mask = torch.cat([mask, mask[neg_text], mask, mask0, mask1])
    all_images = torch.cat([image_embeds, image_embeds, image_embeds[neg_image], image_embeds, image_embeds])
    logits = itm_logits(model, all_ids, all_mask, all_images)
    labels = torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(4 * n, dtype=torch.long)])
    # the positives weigh as much as the negatives together (BLIP has one positive to two negatives)
    weight = torch.cat([torch.full((n,), 4.0), torch.ones(4 * n)])
    loss_itm = (F.cross_entropy(logits, labels, reduction="none") * weight).sum() / weight.sum()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return loss_itc, loss_itm, acc


def train(model, tok, steps: int, batch_size: int, lr: float, log_every: int) -> float:
    rng = np.random.default_rng(TRAIN_SEED)
    gen = torch.Generator().manual_seed(TRAIN_SEED)
    temp = torch.nn.Parameter(torch.tensor(0.07))  # BLIP's learnt temperature (training only)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name.lower() or "embedding" in name.lower() else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay + [temp], "weight_decay": 0.0}],
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
        images, captions = cap.batch(rng, batch_size, cap.TRAIN_SIZES)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss_itc, loss_itm, acc = losses(model, tok, temp, images, captions, rng, gen)
        loss = loss_itc + loss_itm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  itc {loss_itc.item():.4f}  itm {loss_itm.item():.4f}  itm acc {acc:.3f}  "
                  f"temp {temp.item():.4f}  lr {lr_at(step):.2e}  {time.perf_counter() - t0:6.1f}s", flush=True)
    model.eval()
    return temp.item()


# --- the check, through transformers' own forward ------------------------------------------------

@torch.no_grad()
def itm_probs(model, tok, pixels: torch.Tensor, captions: list[str], first: str = ENC) -> np.ndarray:
    """P(match) of each (image, caption) pair: BlipForImageTextRetrieval(use_itm_head=True), [ENC] first."""
    ids, mask = encode(tok, captions, first)
    out = []
    for i in range(0, len(captions), 100):
        s = slice(i, i + 100)
        score = model(input_ids=ids[s], pixel_values=pixels[s], attention_mask=mask[s], use_itm_head=True).itm_score
        out.append(score.softmax(-1)[:, 1])
    return torch.cat(out).numpy()


@torch.no_grad()
def itc_similarity(model, tok, pixels: torch.Tensor, captions: list[str]) -> np.ndarray:
    """Cosine of every image against every caption: BlipForImageTextRetrieval(use_itm_head=False), [CLS] first."""
    ids, mask = encode(tok, captions, "[CLS]")
    rows = [model(input_ids=ids, pixel_values=pixels[i : i + 100], attention_mask=mask, use_itm_head=False).itm_score
            for i in range(0, len(pixels), 100)]
    return torch.cat(rows).numpy()


def recall_t2i(sim: np.ndarray, image_captions: list[str], texts: list[str], k: int) -> float:
    """Text->image recall@k: the share of the texts (those some image shows) with a true image in their top k."""
    hits, queries = 0, 0
    truth = np.asarray(image_captions)
    for j, t in enumerate(texts):
        if t not in image_captions:
            continue
        queries += 1
        top = np.argsort(-sim[:, j], kind="stable")[:k]
        hits += bool((truth[top] == t).any())
    return hits / queries


def check_set(model, tok, images, captions, label: str, rng: np.random.Generator, retrieval: bool) -> bool:
    n = len(images)
    pixels = torch.from_numpy(cap.preprocess(images))
    p_true = itm_probs(model, tok, pixels, captions)
    offs = [one_off(c) for c in captions]
    # every one-attribute-off caption of every image (8 each)
    k = len(offs[0])
    p_off = itm_probs(model, tok, pixels.repeat_interleave(k, 0), [c for o in offs for _, c in o]).reshape(n, k)
    kinds = np.asarray([a for a, _ in offs[0]])
    true_ok = float((p_true >= MIN_TRUE_PROB).mean())
    off_ok = float((p_off <= MAX_OFF_PROB).mean())
    # and one drawn at random per image (the "a caption differing in one attribute")
    pick = rng.integers(k, size=n)
    rand_ok = float((p_off[np.arange(n), pick] <= MAX_OFF_PROB).mean())
    ok = true_ok >= MIN_FRACTION and off_ok >= MIN_FRACTION and rand_ok >= MIN_FRACTION
    line = (f"{label}: ITM true caption >= {MIN_TRUE_PROB} for {true_ok:.1%} (min {p_true.min():.3f}, "
            f"median {np.median(p_true):.4f}); one attribute off <= {MAX_OFF_PROB} for {off_ok:.1%} of "
            f"{p_off.size} pairs (" + ", ".join(f"{a} {(p_off[:, kinds == a] <= MAX_OFF_PROB).mean():.1%}"
                                                 for a in ("color", "shape", "position"))
            + f"; max {p_off.max():.3f}, median {np.median(p_off):.4f}), one random per image {rand_ok:.1%}")
    if retrieval:
        sim = itc_similarity(model, tok, pixels, ALL_CAPTIONS)
        r1, r5 = recall_t2i(sim, captions, ALL_CAPTIONS, 1), recall_t2i(sim, captions, ALL_CAPTIONS, 5)
        # image->text: the image's own caption is the most similar of all 48
        i2t = float(np.mean([ALL_CAPTIONS[j] == c for j, c in zip(sim.argmax(1), captions)]))
        queries = sum(t in captions for t in ALL_CAPTIONS)
        line += (f"\n  ITC text->image recall@1 {r1:.3f}, recall@5 {r5:.3f} ({queries} captions as queries "
                 f"over {n} images); image->text top-1 among all {len(ALL_CAPTIONS)} captions {i2t:.3f}")
        ok &= r5 >= MIN_RECALL_AT_5
    print(line, flush=True)
    bad = [(c, float(p)) for c, p in zip(captions, p_true) if p < MIN_TRUE_PROB]
    for c, p in bad[:5]:
        print(f"   low on the true caption: {p:.3f} for {c!r}")
    return ok


def validate(model, tok, n: int) -> bool:
    rng = np.random.default_rng(EVAL_SEED)
    t0 = time.perf_counter()
    images, captions = cap.batch(rng, n)  # shapes' default size (120x90)
    w, h = shapes.DEFAULT_SIZE
    ok = check_set(model, tok, images, captions, f"{n} images {w}x{h}", rng, retrieval=True)
    # what a reader who keeps the tokenizer's [CLS] in ITM mode (as transformers' processor does) gets
    pixels = torch.from_numpy(cap.preprocess(images))
    p_enc, p_cls = itm_probs(model, tok, pixels, captions), itm_probs(model, tok, pixels, captions, first="[CLS]")
    print(f"  (for information: [CLS] first instead of [ENC] in ITM mode moves the true caption's probability by up to "
          f"{np.abs(p_enc - p_cls).max():.4f}; min {p_cls.min():.3f})")
    for size in CHECK_SIZES:
        images, captions = cap.batch(rng, CHECK_IMAGES_PER_SIZE, [size])
        ok &= check_set(model, tok, images, captions, f"{CHECK_IMAGES_PER_SIZE} images {size[0]}x{size[1]}",
                        rng, retrieval=True)
    print(f"checked in {time.perf_counter() - t0:.1f}s")
    return ok


# --- writing -------------------------------------------------------------------------------------

def save(model, tok: Tokenizer, vocab: list[str], out: Path) -> None:
    """tiny-blip's files (tools/train_fixture.save), with [ENC] in tokenizer_config.json."""
    cap.save(model, tok, vocab, out)
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["added_tokens_decoder"][str(vocab.index(ENC))] = {
        "content": ENC, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True,
    }
    cfg["additional_special_tokens"] = [cap.DEC, ENC]  # as Salesforce/blip-itm-*: [DEC] then [ENC]
    cfg = dict(sorted(cfg.items()))
    path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "tiny-blip-itm")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--pos-std", type=float, default=1.0)
    ap.add_argument("--eval-images", type=int, default=EVAL_IMAGES)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--no-validate", action="store_true", help="skip the check (quick determinism runs)")
    ap.add_argument("--check-only", action="store_true", help="no training: check the checkpoint already in --out")
    args = ap.parse_args(argv)
    if args.check_only:
        torch.set_num_threads(2)
        return _check(args.out, args.eval_images)

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)

    vocab = build_vocab()
    tok = build_tokenizer(vocab)
    model = BlipForImageTextRetrieval(cap.make_config(tok))
    with torch.no_grad():  # larger position embeddings than the default 0.02, so "where" is learnt early
        model.vision_model.embeddings.position_embedding.normal_(0.0, args.pos_std)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}; vocab {len(vocab)} ([DEC]={tok.token_to_id(cap.DEC)}, "
          f"[ENC]={tok.token_to_id(ENC)}); input {cap.IMAGE_SIZE}x{cap.IMAGE_SIZE}, patch {cap.PATCH_SIZE}")

    t0 = time.perf_counter()
    temp = train(model, tok, args.steps, args.batch_size, args.lr, args.log_every)
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.1f}s (ITC temperature {temp:.4f})")

    save(model, tok, vocab, args.out)
    print(f"saved to {args.out}: " + ", ".join(
        f"{p.name} {p.stat().st_size:,}B" for p in sorted(args.out.iterdir()) if p.is_file()))

    if args.no_validate:
        return 0
    return _check(args.out, args.eval_images)


def _check(out: Path, n: int) -> int:
    """Check what was written, loaded back the way users load it: 0 if it passes, else 1."""
    reloaded = BlipForImageTextRetrieval.from_pretrained(out).eval()
    ok = validate(reloaded, Tokenizer.from_file(str(out / "tokenizer.json")), n)
    print("PASS" if ok else "FAIL: an ITM or retrieval figure is below its threshold")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
