"""Issue 15, inputs: HEIC/HEIF (pillow-heif), AVIF (Pillow's own codec) and camera RAW (rawpy), by
content, with the trained fixture's exact captions; broken files and missing extras are per-image
errors.

Fixtures are made by the tests: HEIC with pillow-heif's encoder (``pillow_heif.from_pillow(...).save``),
AVIF with Pillow's (``Image.save(format="AVIF")``), DNG by hand (tests/helpers/raw.py: a linear-raw
DNG written tag by tag with struct)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, features

from blipcap import Captioner
from blipcap.images import Decoder, ImageError, MissingDecoderError, TruncatedImageError, load_image
from blipcap.images.formats import sniff
from blipcap.jobs.discover import find_images
from tests.helpers.raw import dng_bytes
from tests.helpers.shapes import make_image

pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is in the test extra")
rawpy = pytest.importorskip("rawpy", reason="rawpy is in the test extra")
needs_avif = pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")


@pytest.fixture(scope="module")
def cap(tiny_fixture) -> Captioner:
    return Captioner.load(tiny_fixture, device="cpu", dtype="float32")


def heic(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    pillow_heif.from_pillow(image).save(buf, quality=95, format="HEIF")
    return buf.getvalue()


def avif(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="AVIF", quality=95)
    return buf.getvalue()


def dng(image: Image.Image, orientation: int = 1) -> bytes:
    return dng_bytes(np.asarray(image), orientation)


def test_sniffing_by_content():
    shape = make_image("red", "circle", "left", size=(120, 90))
    assert sniff(heic(shape)) == "heif" and sniff(dng(shape)) == "raw"
    assert sniff(b"\xff\xd8\xff\xe0" + b"\0" * 20) is None and sniff(b"II*\0\x08\0\0\0\0\0") is None  # JPEG, TIFF
    assert sniff(b"II*\0\x08\0\0\0\0\0", "IMG_1.NEF") == "raw"  # a TIFF-like RAW without a tell-tale tag
    assert sniff(b"\xff\xd8\xff\xe0", "odd.nef") is None  # a JPEG is a JPEG, whatever its name
    assert sniff(b"FUJIFILMCCD-RAW 0201") == "raw"


@pytest.mark.parametrize("encode", [heic, pytest.param(avif, marks=needs_avif), dng])
def test_each_format_is_captioned_exactly(cap, encode):
    for combo in (("red", "circle", "left"), ("blue", "square", "top")):
        data = encode(make_image(*combo, size=(120, 90)))
        assert cap(data) == f"a {combo[0]} {combo[1]} {'on the' if combo[2] in ('left', 'right') else 'at the'} {combo[2]}"


def test_raw_orientation_is_honoured():
    shape = make_image("red", "circle", "left", size=(120, 90))
    upright = load_image(dng(shape, orientation=6))  # stored landscape, shown turned 90 degrees clockwise
    assert upright.size == (90, 120)
    decoded = Decoder((384, 384), Image.BICUBIC, True, None).bytes(dng(shape, orientation=6))
    assert (decoded.width, decoded.height) == (90, 120)  # the upright size as stored
    red = np.asarray(upright)[..., 0].astype(int) - np.asarray(upright)[..., 2]
    rows = np.nonzero(red.max(axis=1) > 100)[0]
    assert rows.mean() < 60  # the circle on the left is at the top once turned


def test_the_embedded_preview_is_used_only_when_large_enough(monkeypatch):
    from blipcap.images import formats

    calls = []
    real = formats._preview
    monkeypatch.setattr(formats, "_preview", lambda raw, rawpy, size: calls.append(size) or real(raw, rawpy, size))
    load_image(dng(make_image("red", "circle", "left", size=(120, 90))))
    assert calls == [(384, 384)]  # asked; our DNG has no preview, so it was demosaiced


@pytest.mark.parametrize("encode", [heic, pytest.param(avif, marks=needs_avif), dng])
def test_truncated_and_corrupt_files_are_per_image_errors(encode):
    data = encode(make_image("red", "circle", "left", size=(120, 90)))
    with pytest.raises(TruncatedImageError):
        load_image(data[: len(data) // 2])
    with pytest.raises(ImageError):  # 40 bytes may not even say what they are: NotAnImageError then
        load_image(data[:40])


@pytest.mark.parametrize("module, data, extra", [
    ("pillow_heif", "heic", "blipcap[heif]"), ("rawpy", "dng", "blipcap[raw]")])
def test_without_the_extra_the_image_error_names_it(tmp_path, module, data, extra):
    shape = make_image("red", "circle", "left", size=(120, 90))
    path = tmp_path / f"photo.{data}"
    path.write_bytes({"heic": heic, "dng": dng}[data](shape))
    code = (f"import sys; sys.modules[{module!r}] = None\n"  # as if not installed
            "from blipcap.images import load_image, MissingDecoderError\n"
            f"try:\n    load_image({str(path)!r})\nexcept MissingDecoderError as e:\n    print(e.reason)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert extra in out.stdout, out


def test_missing_decoder_error_is_an_image_error():
    assert issubclass(MissingDecoderError, ImageError)


def test_folders_find_these_formats_by_content(tmp_path):
    shape = make_image("red", "circle", "left", size=(120, 90))
    files = {"IMG_0001.HEIC": heic(shape), "IMG_0002": heic(shape), "scan.dng": dng(shape), "DSC_0003": dng(shape)}
    if features.check("avif"):
        files["web.avif"] = avif(shape)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "notes").write_text("not an image")
    assert sorted(find_images([str(tmp_path)])) == sorted(str(tmp_path / n) for n in files)
