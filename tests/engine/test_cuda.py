"""CUDA checks (skipped without a GPU; benchmarks/gpu.sh runs them on a lent one)."""

from __future__ import annotations

import pytest
import torch

from blipcap import Captioner

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_float32_gives_the_cpu_tokens(random_ckpt, monkeypatch):
    from .test_captioner import colour_images

    # float32 means float32 here: Hopper's TF32 convolutions and matrix products would round differently
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    images = colour_images(4)
    cpu = Captioner.load(random_ckpt, device="cpu", dtype="float32")
    gpu = Captioner.load(random_ckpt, device="cuda", dtype="float32")
    for kw in (dict(max_new_tokens=10), dict(num_beams=3, max_new_tokens=10), dict(prompt="a picture of", max_new_tokens=6)):
        assert [c.token_ids for c in gpu.caption(images, **kw)] == [c.token_ids for c in cpu.caption(images, **kw)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_half_precision_captions_the_fixture_right(tiny_fixture, dtype):
    import numpy as np

    from tests.helpers.shapes import caption_for, make_image

    cap = Captioner.load(tiny_fixture, device="cuda", dtype=dtype)
    rng = np.random.default_rng(0)
    combos = [("red", "circle", "left"), ("blue", "square", "top"), ("green", "triangle", "bottom")]
    images = [make_image(*c, rng=rng) for c in combos]
    assert [c.text for c in cap.caption(images, num_beams=3)] == [caption_for(*c) for c in combos]


def test_auto_picks_cuda_and_float16(random_ckpt):
    cap = Captioner.load(random_ckpt)
    assert cap.backend.device.type == "cuda" and cap.backend.dtype == torch.float16
    assert cap.backend.cuda_graphs and cap.backend.static_step


GRAPH_CASES = [
    dict(max_new_tokens=12),
    dict(num_beams=3, max_new_tokens=10),
    dict(num_beams=4, num_return_sequences=2, max_new_tokens=9, length_penalty=0.6, early_stopping=True),
    dict(num_beams=3, max_new_tokens=10, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3),
    dict(do_sample=True, seed=7, max_new_tokens=10),
    dict(prompt="a picture of", num_beams=3, max_new_tokens=6),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_graphs_give_the_eager_tokens(eos_ckpt, dtype):
    from .test_captioner import colour_images

    images = colour_images(6, seed=3)
    graphs = Captioner.load(eos_ckpt, device="cuda", dtype=dtype)
    eager = Captioner.load(eos_ckpt, device="cuda", dtype=dtype, cuda_graphs=False)
    dynamic = Captioner.load(eos_ckpt, device="cuda", dtype=dtype, cuda_graphs=False)
    dynamic.backend.static_step = False  # the step with per-step shapes, as on the CPU
    eager.backend.static_step = True  # the fixed-shape step, run without capturing it
    assert graphs.backend.cuda_graphs and not eager.backend.cuda_graphs
    for kw in GRAPH_CASES:
        # in batches of 4 then 2, three times: a shape runs eagerly in its first batch, is captured in
        # its second and replayed from then on
        for _ in range(3):
            got = [c.token_ids for c in graphs.caption(images, batch_size=4, **kw)]
            assert got == [c.token_ids for c in eager.caption(images, batch_size=4, **kw)], kw
            if dtype == "float32":
                assert got == [c.token_ids for c in dynamic.caption(images, batch_size=4, **kw)], kw
    assert any(bucket.graphs for bucket in graphs.backend.buckets)
    # one graph per cache buffer (the beam reorder swaps two): captured once, then found and replayed
    assert all(len(bucket.graphs) <= 2 for bucket in graphs.backend.buckets)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pixels_through_pinned_memory_give_the_plain_copy_tokens(random_ckpt, dtype):
    from .test_captioner import colour_images

    images = colour_images(6, seed=5)
    cap = Captioner.load(random_ckpt, device="cuda", dtype=dtype)
    assert cap.backend.feed is not None
    kw = dict(batch_size=4, num_beams=3, max_new_tokens=10)
    fed = [c.token_ids for c in cap.caption(images, **kw)]
    assert cap.backend.feed.allocations and cap.backend.feed.pinned_memory
    cap.backend.feed = None  # the synchronous pageable copy of before
    assert fed == [c.token_ids for c in cap.caption(images, **kw)]


def test_the_feed_copies_on_its_own_stream_while_the_model_stream_is_busy():
    import numpy as np

    from blipcap.backends.feed import PinnedFeed

    feed = PinnedFeed("cuda", torch.float16)
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64), dtype=np.float32)
    model_stream = torch.cuda.current_stream()
    assert feed.stream is not None and feed.stream != model_stream
    for _ in range(2):  # both slots pinned and device memory cached first: allocating may synchronise
        feed(x)
    torch.cuda.synchronize()
    torch.cuda._sleep(int(1e9))  # keeps the model's stream busy for a good fraction of a second
    staged = feed.put(x)
    feed.stream.synchronize()
    # the copy is done while the model's stream still runs: it did not queue behind the model
    assert staged.copied.query() and not model_stream.query()
    out = staged.get()  # ordered after the copy on the model's stream
    torch.cuda.synchronize()
    assert out.dtype == torch.float16 and torch.equal(out.cpu(), torch.from_numpy(x).half())
    assert feed.pinned_memory


@pytest.mark.parametrize("dtype,image_kv", [("float32", "float16"), ("float32", "bfloat16"), ("bfloat16", "float32")])
def test_image_kv_dtype_on_cuda_captions_the_fixture_right_with_and_without_graphs(tiny_fixture, dtype, image_kv):
    import numpy as np

    from tests.helpers.shapes import caption_for, make_image

    rng = np.random.default_rng(1)
    combos = [("red", "circle", "left"), ("blue", "square", "top"), ("green", "triangle", "bottom")]
    images = [make_image(*c, rng=rng) for c in combos]
    graphs = Captioner.load(tiny_fixture, device="cuda", dtype=dtype, image_kv_dtype=image_kv)
    eager = Captioner.load(tiny_fixture, device="cuda", dtype=dtype, image_kv_dtype=image_kv, cuda_graphs=False)
    assert graphs.backend.encode(graphs.preprocessor.batch(images)).dtype == getattr(torch, image_kv)
    for _ in range(3):  # eager first, then captured, then replayed
        got = graphs.caption(images, num_beams=3, batch_size=3)
        assert [c.text for c in got] == [caption_for(*c) for c in combos]
        assert [c.token_ids for c in got] == [c.token_ids for c in eager.caption(images, num_beams=3, batch_size=3)]
