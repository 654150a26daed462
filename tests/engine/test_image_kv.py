"""image_kv_dtype: the torch backend keeps the image keys/values in a narrower type when asked.

The default stays the model's dtype (the parity tests pin token identity with transformers); with
bfloat16 the memory every decoder layer reads is half as large, and the trained fixture still
captions every image right, which an off-by-a-layout or an unscaled product would not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blipcap import Captioner
from blipcap.cli import build_parser
from blipcap.cli.caption import model_spec
from tests.engine.test_fixture_captions import fresh


@pytest.fixture(scope="module")
def caps(tiny_fixture):
    return (Captioner.load(tiny_fixture, device="cpu", dtype="float32"),
            Captioner.load(tiny_fixture, device="cpu", dtype="float32", image_kv_dtype="bfloat16"))


def test_the_image_memory_is_kept_in_bfloat16_at_half_the_bytes(caps):
    full, narrow = caps
    pixels = full.preprocessor.batch(fresh(seed=3, n=2)[0])
    a, b = full.backend.encode(pixels), narrow.backend.encode(pixels)
    assert a.dtype == torch.float32 and b.dtype == torch.bfloat16
    assert b.nbytes * 2 == a.nbytes
    # the same keys/values, rounded: bf16 keeps 8 significant bits
    assert torch.allclose(b.float(), a, rtol=2**-8, atol=1e-6)
    assert narrow.backend.dtype == torch.float32  # only the memory is narrower
    est_full, est_narrow = (c.backend.memory_estimate(group=3, length=30) for c in caps)
    image_kv = full.backend.dims.text.layers * 2 * (full.backend.dims.vision.num_patches + 1) * full.backend.dims.text.hidden
    assert est_full.per_image - est_narrow.per_image == image_kv * 2  # 4 bytes -> 2 per element
    assert narrow.backend.info()["image_kv_dtype"] == "bfloat16" and "image_kv_dtype" not in full.backend.info()


def test_first_step_logits_stay_close_to_float32(caps):
    full, narrow = caps
    pixels = full.preprocessor.batch(fresh(seed=4, n=3)[0])
    prompts = np.array([[full.backend.dims.bos_id]] * 3)
    valid = np.ones_like(prompts, dtype=bool)
    _, a = full.backend.start(full.backend.encode(pixels), 1, prompts, valid, 5)
    _, b = narrow.backend.start(narrow.backend.encode(pixels), 1, prompts, valid, 5)
    assert b.dtype == torch.float32
    assert (a.argmax(-1) == b.argmax(-1)).all()
    assert float((a - b).abs().max()) < 0.05 * float(a.abs().max())
    assert not torch.equal(a, b)  # the narrow path really ran


@pytest.mark.parametrize("beams", [1, 3])
def test_the_trained_fixture_still_captions_every_image_right(caps, beams):
    _, narrow = caps
    images, expected = fresh(seed=2000 + beams)
    assert [c.text for c in narrow.caption(images, num_beams=beams, batch_size=16)] == expected


def test_a_float16_image_memory_on_the_cpu_captions_right_and_saturates_outliers(tiny_fixture):
    cap = Captioner.load(tiny_fixture, device="cpu", dtype="float32", image_kv_dtype="float16")
    images, expected = fresh(seed=2100, n=8)
    assert [c.text for c in cap.caption(images, num_beams=3)] == expected
    # an image memory beyond float16's range saturates at its largest value instead of becoming inf
    model = cap.backend.model
    out = torch.empty((model.dims.text.layers, 2, 1, model.dims.text.heads, model.dims.vision.num_patches + 1,
                       model.dims.text.hidden // model.dims.text.heads), dtype=torch.float16)
    pixels = torch.from_numpy(cap.preprocessor.batch(images[:1]))
    block = model.text.blocks[0]
    original = block.cross_kv_of
    block.cross_kv_of = lambda memory: original(memory) * 1e6
    try:
        model.encode(pixels, out=out)
    finally:
        block.cross_kv_of = original
    assert torch.isfinite(out).all() and float(out[0].abs().max()) == 65504.0


def test_an_unknown_image_kv_dtype_is_refused(tiny_fixture):
    with pytest.raises(ValueError, match="image_kv_dtype must be one of auto"):
        Captioner.load(tiny_fixture, device="cpu", image_kv_dtype="int4")


def test_other_backends_refuse_image_kv_dtype(tiny_fixture):
    with pytest.raises(ValueError, match="is for the torch backend"):
        Captioner.load(tiny_fixture, backend="tf", image_kv_dtype="bfloat16")


def test_the_cli_flag_reaches_the_model_spec():
    args = build_parser().parse_args(["caption", "x.jpg", "--image-kv-dtype", "bfloat16"])
    assert model_spec(args).image_kv_dtype == "bfloat16"
    assert model_spec(build_parser().parse_args(["caption", "x.jpg"])).image_kv_dtype == "auto"
