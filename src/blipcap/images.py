"""Images in, model pixels out.

Owns every input kind (path, URL, bytes, file object, PIL image, numpy array, torch or TF tensor) ->
a fully loaded, EXIF-upright RGB ``PIL.Image`` (:func:`load_image`), that image -> the float32
``(3, H, W)`` pixels a BLIP checkpoint's ``preprocessor_config.json`` asks for
(:class:`Preprocessor`), and the per-item errors for inputs that are not usable images
(:class:`ImageError` and its subclasses). numpy and Pillow only: a torch-free install works.

Pixel-value rules for data that is not 8-bit (arrays, tensors, 16-bit and float images):
  * 16-bit (uint16 arrays, Pillow ``I;16*``, ``I`` within 0..65535) is divided by 257 with
    rounding, so 65535 -> 255 (not clipped);
  * float in [0, 1] is multiplied by 255; float in [0, 255] is taken as 8-bit values;
  * other integers in 0..255 are 8-bit, in 0..65535 16-bit;
  * a Pillow ``F`` or ``I`` image outside those ranges is min-max stretched to 0..255; an array
    outside them is refused (it is most likely already-normalised model input, not an image).
Transparency is composited onto white, as transformers' BLIP processor does.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000
"""Images with more pixels are refused from their header, before decoding (decompression bombs)."""

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_ORIENTATION = 0x0112  # EXIF tag
_T = Image.Transpose  # EXIF orientation -> the transpose that uprights it, as in exif_transpose
_TRANSPOSE = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE,
              6: _T.ROTATE_270, 7: _T.TRANSVERSE, 8: _T.ROTATE_90}  # fmt: skip


class ImageError(ValueError):
    """An input that cannot be used as an image. ``str(e)`` is ``"<input>: <reason>"``."""

    def __init__(self, source: str, reason: str):
        reason = " ".join(reason.split())  # one line, whatever a decoder put in its message
        super().__init__(f"{source}: {reason}")
        self.source = source  # the input, as named in the message
        self.reason = reason

    def __reduce__(self):  # survive pickling to and from worker processes
        return type(self), (self.source, self.reason)


class UnreadableImageError(ImageError):
    """Missing path, no permission, a directory, I/O error, failed URL fetch, unsupported input."""


class EmptyImageError(ImageError):
    """Zero bytes, a zero-size array, or an image with no pixels."""


class NotAnImageError(ImageError):
    """Bytes that Pillow does not recognise as any image format."""


class TruncatedImageError(ImageError):
    """A recognised format whose data is cut short or corrupt."""


class ImageTooLargeError(ImageError):
    """Over ``max_pixels`` pixels (judged from the header), or a URL body over ``max_url_bytes``."""


def load_image(
    source: Any,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_urls: bool = False,
    url_timeout: float = 10.0,
    max_url_bytes: int = 50_000_000,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Return ``source`` as a new, fully loaded, EXIF-upright RGB image (first frame if animated).

    ``source``: a path (``str``/``os.PathLike``), an ``http(s)://`` URL (only with ``allow_urls``;
    fetched with a ``url_timeout``-second deadline and at most ``max_url_bytes``), bytes, a binary
    file object, a ``PIL.Image``, a numpy array, a torch tensor or a ``tf.Tensor`` (HxW, HxWxC or
    CxHxW with C in 1, 3, 4; where either end could hold the channels, arrays and tf.Tensors are
    read HxWxC, torch tensors CxHxW).
    ``max_pixels=None`` lifts the size guard (Pillow's own ``Image.MAX_IMAGE_PIXELS`` bomb guard
    still applies at twice its value).
    ``draft_size=(h, w)``: let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale, keeping both sides
    at least twice ``(h, w)``; much faster for photos far larger than the model input.
    Raises an :class:`ImageError` subclass naming the input and the reason.
    """
    if isinstance(source, str) and source[:8].lower().startswith(("http://", "https://")):
        if not allow_urls:
            raise UnreadableImageError(source, "URLs are fetched only with allow_urls=True")
        data = _fetch(source, url_timeout, max_url_bytes)
        return _decode(io.BytesIO(data), source, len(data), max_pixels, draft_size)
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(source)
        try:
            f = open(path, "rb")
        except OSError as e:
            raise UnreadableImageError(path, f"cannot open: {e.strerror or e}") from e
        with f:
            return _decode(f, path, os.fstat(f.fileno()).st_size, max_pixels, draft_size)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = source if isinstance(source, bytes) else bytes(source)
        name = f"<bytes of {len(data)} bytes>"
        return _decode(io.BytesIO(data), name, len(data), max_pixels, draft_size)
    if isinstance(source, Image.Image):
        name = f"<PIL image {source.mode} {source.width}x{source.height}>"
        image = _finish(source, name, max_pixels)
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
        return _decode(io.BytesIO(data), name, len(data), max_pixels, draft_size)
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


def _decode(fp, name: str, nbytes: int, max_pixels: int | None, draft_size) -> Image.Image:
    if nbytes == 0:
        raise EmptyImageError(name, "empty (0 bytes)")
    # Our max_pixels check below replaces Pillow's DecompressionBombWarning. catch_warnings is not
    # thread-safe, but racing threads can at worst leave this one harmless "ignore" filter behind.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp, formats=_formats())
        except UnidentifiedImageError as e:
            raise NotAnImageError(name, "not a recognised image format") from e
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(name, f"refused by Pillow's bomb guard: {e}") from e
        except Exception as e:  # a plugin accepted the magic bytes, then choked on the header
            raise _failure(name, None, e) from e
        return _finish(image, name, max_pixels, draft_size)


def _finish(image: Image.Image, name: str, max_pixels: int | None, draft_size=None) -> Image.Image:
    """Size-check ``image`` from its header, then decode, upright and convert it to RGB."""
    _check_pixels(*image.size, name, max_pixels)
    if draft_size is not None and image.format == "JPEG":
        h, w = draft_size
        if _orientation(image) in (5, 6, 7, 8):  # stored sideways: so is the target
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
    return _to_rgb(image, name)


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


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    mode = image.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grey: Pillow would clip
        gray = _to_uint8(np.asarray(image), name, stretch=True, sixteen_bit=mode != "F")
        return Image.fromarray(gray).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        # Exactly transformers' convert_to_rgb, so captions of transparent images match it.
        rgba = Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image.convert("RGBA"))
        return rgba.convert("RGB")
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise UnreadableImageError(name, f"cannot convert mode {mode} to RGB") from e


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
    pixels = _to_uint8(a, name, stretch=False, sixteen_bit=sixteen_bit)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), name)  # L, RGB or RGBA


def _to_uint8(a: np.ndarray, name: str, *, stretch: bool, sixteen_bit: bool) -> np.ndarray:
    """Pixel data of any numeric dtype -> uint8, by the rules in the module docstring."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if a.dtype.kind not in "iuf":
        raise UnreadableImageError(name, f"unsupported pixel dtype {a.dtype}")
    a = a.astype(np.float64 if a.dtype.kind == "f" else np.int64, copy=False)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        if not stretch:
            raise UnreadableImageError(name, "array contains NaN or infinity")
        a = np.nan_to_num(a, posinf=0.0, neginf=0.0)
    lo, hi = a.min(), a.max()
    if a.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return np.rint(a * 255).astype(np.uint8)
    if lo >= 0 and hi <= 255 and not sixteen_bit:
        return np.rint(a).astype(np.uint8)
    if a.dtype.kind != "f" and lo >= 0 and hi <= 65535:
        return ((a + 128) // 257).astype(np.uint8)  # 16-bit -> 8-bit, rounded
    if not stretch:
        expected = "[0, 1], 0..255 or 0..65535"
        raise UnreadableImageError(name, f"pixel values span [{lo}, {hi}]; expected {expected}")
    return np.rint((a - lo) * (255.0 / (hi - lo or 1))).astype(np.uint8)


def _fetch(url: str, timeout: float, max_bytes: int) -> bytes:
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "blipcap"})
    deadline = time.monotonic() + timeout  # urlopen's timeout is per socket read, not in total
    chunks, total = [], 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                reason = f"{int(length):,} bytes exceeds max_url_bytes={max_bytes:,}"
                raise ImageTooLargeError(url, reason)
            while chunk := response.read(1 << 16):
                total += len(chunk)
                if total > max_bytes:
                    raise ImageTooLargeError(url, f"download exceeds max_url_bytes={max_bytes:,}")
                if time.monotonic() > deadline:
                    raise UnreadableImageError(url, f"download took longer than {timeout:g} s")
                chunks.append(chunk)
    except ImageError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts
        if isinstance(e, urllib.error.HTTPError):
            e.close()  # it holds the response's socket
        raise UnreadableImageError(url, f"fetch failed: {e}") from e
    return b"".join(chunks)


_CONFIG_FIELDS = {"image_mean": "mean", "image_std": "std", "resample": "resample",
                  "rescale_factor": "rescale_factor", "do_resize": "do_resize",
                  "do_rescale": "do_rescale", "do_normalize": "do_normalize"}  # fmt: skip


def _size_from_config(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            # BLIP's ViT has fixed-size position embeddings, so its input is always square.
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    expected = "{'height', 'width'}, {'shortest_edge'} or an int"
    raise ValueError(f"unsupported preprocessor size {size!r}; expected {expected}")


@dataclass(frozen=True)
class Preprocessor:
    """RGB image -> float32 ``(3, H, W)`` pixels, as transformers' BLIP image processor makes them.

    Resizes with Pillow (no crop), then rescales and normalises in one float32 multiply-add, within
    1e-6 of transformers' separate float64 rescale and float32 normalise. The output is float32
    even with every ``do_*`` off (transformers would then return uint8).
    """

    size: tuple[int, int] = (384, 384)  # (height, width) of the model input
    resample: int = Image.Resampling.BICUBIC  # Pillow filter used by resize
    rescale_factor: float = 1 / 255  # uint8 -> [0, 1]
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN  # per-channel, after rescaling
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise the fields once, here
        set_(self, "size", (int(self.size[0]), int(self.size[1])))
        set_(self, "resample", int(self.resample))
        for field in ("mean", "std"):  # a scalar applies to all three channels
            values = np.broadcast_to(np.asarray(getattr(self, field), np.float64), 3)
            set_(self, field, tuple(float(v) for v in values))
        if min(self.size) <= 0 or 0.0 in self.std:
            raise ValueError(f"invalid preprocessor: size={self.size}, std={self.std}")

    @classmethod
    def from_config(cls, cfg: dict) -> Preprocessor:
        """From a ``preprocessor_config.json`` dict; fields it lacks keep BLIP's defaults."""
        present = [key for key in _CONFIG_FIELDS if cfg.get(key) is not None]
        kwargs = {_CONFIG_FIELDS[key]: cfg[key] for key in present}
        if cfg.get("size") is not None:
            kwargs["size"] = _size_from_config(cfg["size"])
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Preprocessor:
        with open(path, encoding="utf-8") as f:
            return cls.from_config(json.load(f))

    @functools.cached_property
    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        # (x * r - mean) / std == x * (r / std) + (-mean / std): one multiply-add per value.
        r = self.rescale_factor if self.do_rescale else 1.0
        mean, std = np.array(self.mean), np.array(self.std)
        if not self.do_normalize:
            mean, std = np.zeros(3), np.ones(3)
        scale, offset = r / std, -mean / std
        return scale.astype(np.float32).reshape(3, 1, 1), offset.astype(np.float32).reshape(3, 1, 1)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image -> C-contiguous float32 ``(3, H, W)``."""
        return self._fill(image, None)

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        """Images -> float32 ``(N, 3, H, W)``, written in place without per-image temporaries."""
        if not self.do_resize and images:  # sizes may differ: np.stack says so if they do
            return np.stack([self._fill(image, None) for image in images])
        out = np.empty((len(images), 3, *self.size), np.float32)
        for image, row in zip(images, out, strict=True):
            self._fill(image, row)
        return out

    def _fill(self, image: Image.Image, out: np.ndarray | None) -> np.ndarray:
        image = _to_rgb(image, f"<PIL image {image.mode} {image.width}x{image.height}>")
        height, width = self.size
        if self.do_resize and image.size != (width, height):
            image = image.resize((width, height), self.resample)
        pixels = np.asarray(image).transpose(2, 0, 1)  # (3, H, W) view of the uint8 HWC copy
        if out is None:
            out = np.empty(pixels.shape, np.float32)
        scale, offset = self._affine
        np.multiply(pixels, scale, out=out)
        out += offset
        return out
