"""blipcap.images.decode: a file or bytes read once -> a model-ready Decoded (image, sha256, stored
size); non-regular files refused without blocking; Decoded images pass through the preprocessor."""

from __future__ import annotations

import builtins
import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image

import blipcap.images.pixels as pixels
from blipcap.images import Decoded, Decoder, Preprocessor, UnreadableImageError, load_image, read_file
from tests.helpers.shapes import make_image

PRE = Preprocessor(size=(64, 64))


def jpeg(path, size=(2000, 1500), **kwargs):
    make_image("yellow", "triangle", "right", size=size).save(path, quality=90, **kwargs)
    return path


def test_a_file_is_opened_once_and_hashed_and_decoded_from_the_same_bytes(tmp_path, monkeypatch):
    path = jpeg(tmp_path / "big.jpg")
    opens, parses = [], []
    real_open, real_image_open = builtins.open, Image.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(path):
            opens.append(file)
        return real_open(file, *args, **kwargs)

    def counting_image_open(fp, *args, **kwargs):
        parses.append(fp)
        return real_image_open(fp, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(Image, "open", counting_image_open)
    decoded = Decoder.of(PRE, max_pixels=None).file(str(path))
    assert len(opens) == 1  # before: three opens (hash, decode, stored size)
    assert len(parses) == 1 and isinstance(parses[0], io.BytesIO)  # one parse, of the bytes read
    assert decoded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (decoded.width, decoded.height) == (2000, 1500)  # as stored, though drafted at 1/8
    assert decoded.image.size == (64, 64) and decoded.image.mode == "RGB"


def test_the_decode_is_the_preprocessors_resize_of_the_draft(tmp_path):
    path = jpeg(tmp_path / "big.jpg")
    decoded = Decoder.of(PRE, max_pixels=None).file(str(path))
    drafted = load_image(path, draft_size=PRE.size)
    assert np.array_equal(np.asarray(decoded.image), np.asarray(drafted.resize((64, 64), PRE.resample)))
    assert Decoder.of(PRE, None).bytes(path.read_bytes()) == Decoded(decoded.image, decoded.sha256, 2000, 1500)


def test_stored_size_is_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        make_image("red", "square", "top", size=(120, 90)).save(buf, fmt, exif=exif)
        decoded = Decoder.of(PRE, None).bytes(buf.getvalue())
        assert (decoded.width, decoded.height) == (90, 120), fmt


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_a_fifo_or_device_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # nobody writes to it: a blocking open would wait forever
    for path in (str(fifo), os.devnull):
        with pytest.raises(UnreadableImageError) as info:
            Decoder.of(PRE, None).file(path)
        assert str(info.value) == f"{path}: not a regular file"


def test_unreadable_paths_say_cannot_open(tmp_path):
    with pytest.raises(UnreadableImageError, match=r"missing.jpg: cannot open: No such file or directory"):
        read_file(str(tmp_path / "missing.jpg"))
    with pytest.raises(UnreadableImageError, match=r"cannot open: Is a directory"):
        read_file(str(tmp_path))


def test_urls_need_a_fetcher():
    with pytest.raises(UnreadableImageError, match="allow_urls"):
        Decoder.of(PRE, None).url("https://example.com/a.jpg")


def test_a_decoded_image_passes_through_the_preprocessor(tmp_path, monkeypatch):
    decoded = Decoder.of(PRE, None).file(str(jpeg(tmp_path / "big.jpg")))
    expected = PRE(decoded.image)

    def refuse(*args, **kwargs):
        raise AssertionError("a model-ready image was converted or resized again")

    monkeypatch.setattr(pixels, "to_rgb", refuse)
    monkeypatch.setattr(Image.Image, "resize", refuse)
    assert np.array_equal(PRE(decoded), expected)
    assert np.array_equal(PRE.batch([decoded, decoded]), np.stack([expected, expected]))
