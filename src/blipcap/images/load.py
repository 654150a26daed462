"""Every input kind -> a fully loaded, EXIF-upright RGB ``PIL.Image`` (:func:`load_image`).

Inputs: a path, an http(s) URL (fetched by the one SSRF-safe fetcher, ``images.fetch``), bytes, a
file object, a PIL image, a numpy array, a torch tensor or a tf.Tensor. Images are size-checked from their
header before decoding (decompression bombs), JPEGs may be decoded at reduced scale (draft mode),
and a refusal is an :class:`ImageError` naming the input. numpy and Pillow only: a torch-free
install works.
"""

from __future__ import annotations

import functools
import io
import os
import sys
import warnings
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import EmptyImageError, ImageError, ImageTooLargeError, NotAnImageError, TruncatedImageError
from .errors import UnreadableImageError
from .fetch import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_S, UrlFetcher
from .formats import HEAD_BYTES, ensure_plugin, read_raw, sniff
from .pixels import to_rgb, to_uint8

DEFAULT_MAX_PIXELS = 100_000_000
"""Images with more pixels are refused from their header, before decoding (decompression bombs)."""

_ORIENTATION = 0x0112  # EXIF tag
_SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations stored turned by 90 degrees
_T = Image.Transpose  # EXIF orientation -> the transpose that uprights it, as in exif_transpose
_TRANSPOSE = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE,
              6: _T.ROTATE_270, 7: _T.TRANSVERSE, 8: _T.ROTATE_90}  # fmt: skip


def load_image(
    source: Any,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_urls: bool = False,
    url_timeout: float = DEFAULT_TIMEOUT_S,
    max_url_bytes: int = DEFAULT_MAX_BYTES,
    draft_size: tuple[int, int] | None = None,
    fetcher: UrlFetcher | None = None,
) -> Image.Image:
    """Return ``source`` as a new, fully loaded, EXIF-upright RGB image (first frame if animated).

    ``source``: a path (``str``/``os.PathLike``), an ``http(s)://`` URL (only with ``allow_urls``;
    fetched by ``fetcher``, by default a :class:`UrlFetcher` with a ``url_timeout``-second deadline and
    at most ``max_url_bytes``: public addresses only, as the server fetches), bytes, a binary
    file object, a ``PIL.Image``, a numpy array or a torch tensor (HxW, HxWxC or CxHxW with C in
    1, 3, 4; where either end could hold the channels, arrays are read HxWxC, tensors CxHxW).
    ``max_pixels=None`` lifts the size guard (Pillow's own ``Image.MAX_IMAGE_PIXELS`` bomb guard
    still applies at twice its value).
    ``draft_size=(h, w)``: let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale, keeping both sides
    at least twice ``(h, w)``; much faster for photos far larger than the model input.
    Raises an :class:`ImageError` subclass naming the input and the reason.
    """
    if isinstance(source, str) and source[:8].lower().startswith(("http://", "https://")):
        if not allow_urls:
            raise UnreadableImageError(source, "URLs are fetched only with allow_urls=True")
        data = (fetcher or UrlFetcher(max_bytes=max_url_bytes, timeout_s=url_timeout)).fetch(source)
        return read_image(io.BytesIO(data), source, len(data), max_pixels, draft_size)[0]
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(source)
        try:
            f = open(path, "rb")
        except OSError as e:
            raise UnreadableImageError(path, f"cannot open: {e.strerror or e}") from e
        with f:
            return read_image(f, path, os.fstat(f.fileno()).st_size, max_pixels, draft_size)[0]
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = source if isinstance(source, bytes) else bytes(source)
        name = f"<bytes of {len(data)} bytes>"
        return read_image(io.BytesIO(data), name, len(data), max_pixels, draft_size)[0]
    if isinstance(source, Image.Image):
        name = f"<PIL image {source.mode} {source.width}x{source.height}>"
        image = _finish(source, name, max_pixels)[0]
        return image.copy() if image is source else image  # the caller keeps theirs
    if isinstance(source, np.ndarray):
        name = f"<array shape {source.shape} dtype {source.dtype}>"
        return _from_array(source, name, False, max_pixels)
    torch = sys.modules.get("torch")  # never imported here: a tensor means torch is loaded
    if torch is not None and isinstance(source, torch.Tensor):
        name = f"<tensor shape {tuple(source.shape)} dtype {source.dtype}>"
        t = source.detach().cpu()
        array = (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # numpy has no bfloat16
        return _from_array(array, name, True, max_pixels)
    tf = sys.modules.get("tensorflow")  # likewise: a tf.Tensor means TensorFlow is loaded
    if tf is not None and isinstance(source, tf.Tensor):
        name = f"<tf.Tensor shape {tuple(source.shape)} dtype {source.dtype.name}>"
        t = tf.cast(source, tf.float32) if source.dtype == tf.bfloat16 else source  # numpy has no bfloat16
        return _from_array(t.numpy(), name, False, max_pixels)  # TF's images are HWC
    if hasattr(source, "read"):
        # Read it all: only .read() is promised, and Pillow would seek to 0 anyway.
        name = getattr(source, "name", None)
        name = name if isinstance(name, str) else f"<file object {type(source).__name__}>"
        try:
            data = source.read()
        except OSError as e:
            raise UnreadableImageError(name, f"read failed: {e}") from e
        if not isinstance(data, (bytes, bytearray)):
            raise UnreadableImageError(name, "file object must be opened in binary mode")
        return read_image(io.BytesIO(data), name, len(data), max_pixels, draft_size)[0]
    expected = "expected a path, URL, bytes, file object, PIL image, array or tensor"
    raise UnreadableImageError(f"<{type(source).__name__}>", f"unsupported input; {expected}")


def image_list(images: Any) -> list:
    """A caption call's input as a list of images: a list or tuple as it is, a 4-D tf.Tensor (a batch,
    NHWC or NCHW, as TensorFlow pipelines hand them over) as its images, anything else as one image."""
    if isinstance(images, (list, tuple)):
        return list(images)
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(images, tf.Tensor) and images.shape.rank == 4:
        return list(tf.unstack(images))
    return [images]


def read_image(fp: BinaryIO, name: str, nbytes: int, max_pixels: int | None,
               draft_size: tuple[int, int] | None) -> tuple[Image.Image, tuple[int, int]]:
    """Encoded image data -> (upright RGB image, its upright ``(width, height)`` as stored), both
    from the one parse of its header: draft mode may decode a JPEG smaller than it is stored."""
    if nbytes == 0:
        raise EmptyImageError(name, "empty (0 bytes)")
    head = fp.read(HEAD_BYTES)
    fp.seek(0)
    kind = sniff(head, name)
    if kind == "raw":
        image, stored = read_raw(fp.read(), name, max_pixels, draft_size, _check_pixels)
        return to_rgb(image, name), stored
    if kind is not None:
        ensure_plugin(kind, name)  # HEIF/AVIF: the optional plugin, registered on first use
        _formats.cache_clear()
    # Our max_pixels check below replaces Pillow's DecompressionBombWarning. catch_warnings is not
    # thread-safe, but racing threads can at worst leave this one harmless "ignore" filter behind.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp, formats=_formats())
        except UnidentifiedImageError as e:
            if kind is not None:  # its bytes say HEIF/AVIF, and the decoder still gave up: broken
                raise TruncatedImageError(name, f"truncated or corrupt {kind.upper()} data") from e
            raise NotAnImageError(name, "not a recognised image format") from e
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(name, f"refused by Pillow's bomb guard: {e}") from e
        except Exception as e:  # a plugin accepted the magic bytes, then choked on the header
            raise _failure(name, None, e) from e
        return _finish(image, name, max_pixels, draft_size)


def _finish(image: Image.Image, name: str, max_pixels: int | None,
            draft_size=None) -> tuple[Image.Image, tuple[int, int]]:
    """Size-check ``image`` from its header, then decode, upright and convert it to RGB; and its
    upright size as stored."""
    _check_pixels(*image.size, name, max_pixels)
    stored = image.size  # before draft() shrinks it
    if draft_size is not None and image.format == "JPEG":
        h, w = draft_size
        if _orientation(image) in _SIDEWAYS:  # stored sideways: so is the target
            h, w = w, h
        # libjpeg picks the largest 1/1..1/8 scale that keeps both sides >= the size asked for.
        image.draft("RGB", (2 * w, 2 * h))
    try:
        image.load()  # frame 0 if animated; LOAD_TRUNCATED_IMAGES stays off, so short data raises
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(name, f"refused by Pillow's bomb guard: {e}") from e
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, EOFError, zlib.error
        raise _failure(name, image.format, e) from e
    orientation = _orientation(image)  # after load(): a PNG's getexif() would decode it unguarded
    if orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[orientation])
        # upright now: drop the tag (transpose copies info), or loading this image again turns it
        # twice; every key Image.getexif() reads an orientation from, as ImageOps.exif_transpose does
        for key in ("exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp"):
            image.info.pop(key, None)
    if orientation in _SIDEWAYS:
        stored = stored[::-1]
    return to_rgb(image, name), stored


def _failure(name: str, fmt: str | None, e: Exception) -> ImageError:
    if isinstance(e, OSError) and e.errno is not None:  # the OS failed, not the data
        return UnreadableImageError(name, f"I/O error: {e.strerror or e}")
    reason = f"truncated or corrupt {fmt or 'image'} data ({type(e).__name__}: {e})"
    return TruncatedImageError(name, reason)


def _check_pixels(width: int, height: int, name: str, max_pixels: int | None) -> None:
    if width == 0 or height == 0:
        raise EmptyImageError(name, f"image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        reason = f"{width}x{height} = {width * height:,} pixels exceeds max_pixels={max_pixels:,}"
        raise ImageTooLargeError(name, reason)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # a broken EXIF block should not cost an otherwise good photo
        return 1


@functools.cache
def _formats() -> tuple[str, ...]:
    """Every format Pillow reads except EPS, whose loader runs Ghostscript on untrusted input."""
    Image.init()
    return tuple(f for f in Image.ID if f != "EPS")


def _from_array(a: np.ndarray, name: str, prefer_chw: bool, max_pixels: int | None) -> Image.Image:
    if a.size == 0:
        raise EmptyImageError(name, "array has no pixels")
    if a.ndim == 3:
        first, last = a.shape[0] in (1, 3, 4), a.shape[-1] in (1, 3, 4)
        if first and (prefer_chw or not last):  # ambiguous 3x?x3: tensors are CHW, arrays HWC
            a = a.transpose(1, 2, 0)
        elif not last:
            raise UnreadableImageError(name, "expected 1, 3 or 4 channels first or last")
        if a.shape[-1] == 1:
            a = a[..., 0]
    elif a.ndim != 2:
        raise UnreadableImageError(name, "expected HxW, HxWxC or CxHxW (one image, not a batch)")
    _check_pixels(a.shape[1], a.shape[0], name, max_pixels)
    sixteen_bit = a.dtype.kind == "u" and a.dtype.itemsize == 2
    pixels = to_uint8(a, name, stretch=False, sixteen_bit=sixteen_bit)
    return to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), name)  # L, RGB or RGBA
