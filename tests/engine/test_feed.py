"""backends/feed.py's bookkeeping, run without CUDA: staging slots that grow to the largest batch and
are reused, pixels that come out as the plain copy makes them, in order. (On a GPU, test_cuda.py
checks the pinned memory, the copy stream and the tokens.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blipcap import Captioner
from blipcap.backends.feed import PinnedFeed


def pixels(n: int, seed: int = 0, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


def plain(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to("cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_feed_gives_what_the_plain_copy_gives(dtype):
    feed = PinnedFeed("cpu", dtype)
    for n in (4, 2, 4, 1):
        x = pixels(n, seed=n)
        got = feed(x)
        assert got.dtype == dtype and got.shape == (n, 3, 8, 8)
        assert torch.equal(got, plain(x, dtype))


def test_a_staging_slot_grows_to_the_largest_batch_and_is_reused():
    feed = PinnedFeed("cpu", torch.float32)
    per_image = 3 * 8 * 8
    for n in (2, 2, 2, 2):
        feed(pixels(n))
    assert feed.allocations == 2 and feed.capacity() == [2 * per_image] * 2  # one per slot, then reused
    feed(pixels(5))
    assert feed.allocations == 3 and sorted(feed.capacity()) == [2 * per_image, 5 * per_image]
    for n in (1, 5, 3, 5, 2):  # smaller or equal batches fit the slots there are
        feed(pixels(n))
    assert feed.allocations == 4 and feed.capacity() == [5 * per_image] * 2


def test_batches_staged_ahead_come_out_in_order_and_unchanged_by_later_ones():
    feed = PinnedFeed("cpu", torch.float32)
    xs = [pixels(3, seed=s) for s in range(5)]
    first, second = feed.put(xs[0]), feed.put(xs[1])  # both slots in use before either is taken
    outs = [first.get(), second.get()] + [feed(x) for x in xs[2:]]
    for x, out in zip(xs, outs):
        assert torch.equal(out, plain(x, torch.float32))  # a reused slot never shows through


def test_pixels_written_into_the_host_buffer_are_not_copied_again():
    feed = PinnedFeed("cpu", torch.float32)
    x = pixels(3, seed=7)
    buf = feed.host(x.shape)
    buf[...] = x
    assert feed.allocations == 1
    assert torch.equal(feed(buf), plain(x, torch.float32))
    assert feed.allocations == 1 and feed.capacity()[0] == x.size  # the same slot: filled in place
    assert torch.equal(feed(pixels(3, seed=8)), plain(pixels(3, seed=8), torch.float32))


def test_the_torch_backend_feeds_the_plain_way_on_the_cpu(random_ckpt):
    cap = Captioner.load(random_ckpt, device="cpu", dtype="float32")
    assert cap.backend.feed is None  # no pinning, no streams off CUDA


def test_captions_through_the_feed_equal_the_plain_path_with_errors_per_item(random_ckpt, tmp_path):
    from .test_captioner import colour_images

    (tmp_path / "notes.txt").write_text("not an image")
    images = colour_images(5)
    images.insert(2, tmp_path / "notes.txt")
    cap = Captioner.load(random_ckpt, device="cpu", dtype="float32")
    expected = cap.caption(images, errors="return", batch_size=4, max_new_tokens=6)
    cap.backend.feed = PinnedFeed("cpu", torch.float32)  # what CUDA gets, minus the device
    got = cap.caption(images, errors="return", batch_size=4, max_new_tokens=6)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert [type(c.error) for c in got] == [type(c.error) for c in expected] and not got[2].ok
    assert cap.backend.feed.allocations == 2  # two batches, two slots, each pinned once


def test_pixels_made_on_the_decode_thread_equal_the_preprocessors(random_ckpt):
    from dataclasses import replace

    from blipcap.images import Decoder, Preprocessor
    from tests.helpers.folders import jpeg_bytes

    cap = Captioner.load(random_ckpt, device="cpu", dtype="float32")
    data = [jpeg_bytes(c, s, p, size=(130 + 7 * i, 90)) for i, (c, s, p) in
            enumerate([("red", "circle", "left"), ("blue", "square", "top"), ("green", "triangle", "bottom")])]
    plain_decoder = Decoder.of(cap.preprocessor, cap.max_pixels)
    with_pixels = Decoder.of(cap.preprocessor, cap.max_pixels, pixels=True)
    bare = [plain_decoder.bytes(d) for d in data]
    made = [with_pixels.bytes(d) for d in data]
    assert all(d.pixels is None for d in bare) and all(d.pixels.dtype == np.float32 for d in made)
    assert np.array_equal(cap.preprocessor.batch(made), cap.preprocessor.batch(bare))
    for d, b in zip(made, bare):
        assert np.array_equal(d.pixels, cap.preprocessor(b)) and d == b  # equal images, pixels aside
    kw = dict(max_new_tokens=6, num_beams=2)
    assert [c.token_ids for c in cap.caption(made, **kw)] == [c.token_ids for c in cap.caption(bare, **kw)]
    # pixels another preprocessor made are not taken for this one's
    other = Preprocessor(size=cap.preprocessor.size, mean=0.5, std=0.5)
    foreign = [replace(b, pixels=other(b), made_by=other) for b in bare]
    assert np.array_equal(cap.preprocessor.batch(foreign), cap.preprocessor.batch(bare))


def test_a_batch_is_written_into_the_buffer_it_is_given():
    from PIL import Image

    from blipcap.images import Preprocessor

    pre = Preprocessor(size=(16, 16))
    images = [Image.new("RGB", (20, 10), c) for c in ("red", "blue")]
    buf = np.full((2, 3, 16, 16), np.nan, np.float32)
    out = pre.batch(images, out=buf)
    assert out is buf and np.array_equal(buf, pre.batch(images))


def overlapping(random_ckpt) -> Captioner:
    """A CPU Captioner that stages ahead on a helper thread as torch on CUDA does (the feed, minus the device)."""
    cap = Captioner.load(random_ckpt, device="cpu", dtype="float32")
    cap.backend.feed = PinnedFeed("cpu", torch.float32)
    assert cap.overlaps_input
    return cap


def test_batches_staged_ahead_give_the_plain_tokens_in_order_with_errors_per_item(random_ckpt, tmp_path):
    from blipcap import ImageError

    from .test_captioner import colour_images

    (tmp_path / "notes.txt").write_text("not an image")
    images = colour_images(7, seed=2)
    images.insert(3, tmp_path / "notes.txt")
    plain_cap = Captioner.load(random_ckpt, device="cpu", dtype="float32")
    assert not plain_cap.overlaps_input and plain_cap.backend.feed is None
    kw = dict(max_new_tokens=5, num_beams=2)
    expected = plain_cap.caption(images, errors="return", batch_size=3, **kw)
    cap = overlapping(random_ckpt)
    got = cap.caption(images, errors="return", batch_size=3, **kw)  # batch N+1 staged during N
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert isinstance(got[3].error, ImageError) and [c.ok for c in got] == [c.ok for c in expected]
    assert cap._stager is not None  # the helper thread made them
    # stage() then caption(staged): one batch; a smaller batch_size re-batches the same images
    staged = [cap.stage(images[i : i + 4]) for i in (0, 4)]  # both staged before either is captioned
    assert len(staged[0]) == 4
    got = [c for s in staged for c in cap.caption(s, errors="return", **kw)]
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    again = cap.caption(cap.stage(images[:4]), errors="return", batch_size=2, **kw)
    assert [c.token_ids for c in again] == [c.token_ids for c in expected[:4]]
    with pytest.raises(ImageError):
        cap.caption(cap.stage(images[2:5]), **kw)  # errors="raise" still names the bad image
    (only_bad,) = cap.caption(cap.stage([tmp_path / "notes.txt"]), errors="return")
    assert isinstance(only_bad.error, ImageError)


def test_staging_without_overlap_makes_the_pixels_at_once(random_ckpt):
    from .test_captioner import colour_images

    cap = Captioner.load(random_ckpt, device="cpu", dtype="float32")
    staged = cap.stage(colour_images(2))
    assert staged.pixels.done() and cap._stager is None  # no helper thread where nothing overlaps
    assert [c.token_ids for c in cap.caption(staged, max_new_tokens=4)] == \
        [c.token_ids for c in cap.caption(colour_images(2), max_new_tokens=4)]


def test_the_bench_split_times_a_staged_pass(random_ckpt):
    from blipcap import CaptionOptions
    from blipcap.bench import time_caption_split

    from .test_captioner import colour_images

    images, opts = colour_images(5, seed=4), CaptionOptions(max_new_tokens=4)
    plain_cap = Captioner.load(random_ckpt, device="cpu", dtype="float32")
    _, _, _, expected = time_caption_split(plain_cap, images, opts, 2)
    total, encode, pre, tokens = time_caption_split(overlapping(random_ckpt), images, opts, 2)
    assert tokens == expected and 0 < pre < total and 0 < encode < total


def test_where_memory_cannot_be_pinned_the_slot_is_pageable_and_says_so(monkeypatch):
    feed = PinnedFeed("cpu", torch.float32)
    feed.cuda = True  # ask for pinned slots
    empty = torch.empty

    def no_pinnable_memory(*args, pin_memory=False, **kwargs):  # as where page-locked memory has run out
        if pin_memory:
            raise RuntimeError("CUDA error: out of memory")
        return empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", no_pinnable_memory)
    with pytest.warns(RuntimeWarning, match="cannot pin"):
        buf = feed.host((2, 3, 4, 4))
    assert buf.shape == (2, 3, 4, 4) and feed.allocations == 1 and not feed.pinned_memory


def test_an_empty_staged_batch_captions_to_nothing(random_ckpt):
    # an empty Staged is falsy (it has a length): it must still be taken as a staged batch, not as an image
    cap = Captioner.load(random_ckpt, device="cpu")
    assert cap.caption(cap.stage([])) == [] == cap.caption([])
