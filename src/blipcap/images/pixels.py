"""Pixels: any decoded image -> RGB (:func:`to_rgb`, :func:`to_uint8`), and RGB -> the float32
``(3, H, W)`` model input a BLIP checkpoint's ``preprocessor_config.json`` asks for
(:class:`Preprocessor`). A :class:`Decoded` image is already model-ready: upright RGB at the model's
input size, so the preprocessor neither converts nor resizes it again.

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
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .errors import UnreadableImageError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


@dataclass(frozen=True)
class Decoded:
    """A model-ready image: upright RGB, already resized as its :class:`Preprocessor` resizes (see
    ``images.decode.Decoder``). ``Captioner.caption`` takes it as it is, without loading it again."""

    image: Image.Image
    sha256: str | None  # of the bytes it was decoded from
    width: int  # as stored (upright), before draft decoding and resizing
    height: int
    # float32 (3, H, W) model input made from ``image`` by ``made_by`` on the decode thread, so that the
    # model's thread only copies it into the batch (None: the preprocessor makes it there)
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)
    made_by: Preprocessor | None = field(default=None, compare=False, repr=False)


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    mode = image.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grey: Pillow would clip
        gray = to_uint8(np.asarray(image), name, stretch=True, sixteen_bit=mode != "F")
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


def to_uint8(a: np.ndarray, name: str, *, stretch: bool, sixteen_bit: bool) -> np.ndarray:
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
        for name in ("mean", "std"):  # a scalar applies to all three channels
            values = np.broadcast_to(np.asarray(getattr(self, name), np.float64), 3)
            set_(self, name, tuple(float(v) for v in values))
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

    def __call__(self, image: Image.Image | Decoded) -> np.ndarray:
        """One image -> C-contiguous float32 ``(3, H, W)``."""
        return self._fill(image, None)

    def batch(self, images: list[Image.Image | Decoded], out: np.ndarray | None = None) -> np.ndarray:
        """Images -> float32 ``(N, 3, H, W)``, written in place without per-image temporaries: into
        ``out`` when given (a backend's pinned staging buffer), unless ``do_resize`` is off."""
        if not self.do_resize and images:  # sizes may differ: np.stack says so if they do
            return np.stack([self._fill(image, None) for image in images])
        if out is None:
            out = np.empty((len(images), 3, *self.size), np.float32)
        for image, row in zip(images, out, strict=True):
            self._fill(image, row)
        return out

    def _fill(self, image: Image.Image | Decoded, out: np.ndarray | None) -> np.ndarray:
        if isinstance(image, Decoded):
            if image.pixels is not None and image.made_by == self:  # made for this very preprocessing
                if out is None:
                    return image.pixels.copy()
                np.copyto(out, image.pixels)
                return out
            image = image.image  # RGB already, and at self.size unless decoded for another model
        else:
            image = to_rgb(image, f"<PIL image {image.mode} {image.width}x{image.height}>")
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
