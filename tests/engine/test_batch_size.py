"""`--batch-size auto`: the memory estimate and the batch it picks, with made-up free memory."""

from __future__ import annotations

import pytest

from blipcap import Captioner
from blipcap.backends.torch import MemoryEstimate, pick_batch_size
from blipcap.cli import build_parser

from .test_captioner import colour_images

GIB = 1 << 30


def test_pick_fits_the_free_memory_with_headroom():
    est = MemoryEstimate(weights=900 << 20, per_image=100 << 20)
    assert pick_batch_size(est, 10 * GIB, 256) == 80  # 0.8 x 10 GiB / 100 MiB = 81.9, down to a multiple of 8
    assert pick_batch_size(est, 60 * GIB, 256) == 256  # the limit
    assert pick_batch_size(est, 500 << 20, 256) == 4  # under 8: as many as fit
    assert pick_batch_size(est, 10 << 20, 256) == 1  # never below one image
    assert pick_batch_size(est, 10 * GIB, 8) == 8


def test_estimate_grows_with_beams_and_length(random_ckpt):
    backend = Captioner.load(random_ckpt, device="cpu", dtype="float32").backend
    one, three, longer = (backend.memory_estimate(g, n) for g, n in ((1, 21), (3, 21), (3, 41)))
    assert one.per_image < three.per_image < longer.per_image
    assert one.weights == sum(p.numel() * 4 for p in backend.model.parameters())
    # on the CPU: at most 8, fewer when the memory is short
    assert backend.auto_batch_size(3, 21, free_bytes=64 * GIB) == 8
    small = backend.auto_batch_size(3, 21, free_bytes=3 * three.per_image)
    assert small == 2


def test_captioner_auto_batch_gives_the_same_captions(random_ckpt):
    cap = Captioner.load(random_ckpt, device="cpu", dtype="float32")
    images = colour_images(5)
    assert cap.auto_batch_size() == 8
    assert cap.auto_batch_size(overrides=dict(num_beams=3)) == 8
    auto = cap.caption(images, batch_size="auto", max_new_tokens=6)
    assert [c.token_ids for c in auto] == [c.token_ids for c in cap.caption(images, batch_size=2, max_new_tokens=6)]
    streamed = list(cap.caption_stream(iter(images), batch_size="auto", max_new_tokens=6))
    assert [c.token_ids for c in streamed] == [c.token_ids for c in auto]


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("16", 16)])
def test_cli_takes_auto(value, expected):
    args = build_parser().parse_args(["caption", "x.jpg", "--batch-size", value])
    assert args.batch_size == expected


def test_cli_caption_with_auto_batch(tmp_path, tiny_fixture):
    from blipcap.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(colour_images(3)):
        image.save(folder / f"{i}.png")
    out = tmp_path / "out.jsonl"
    code = main(["caption", str(folder), "--model", str(tiny_fixture), "--batch-size", "auto", "--output", str(out),
                 "-q"])
    assert code == 0 and len(out.read_text().splitlines()) == 3
