"""Deterministic synthetic images for the tiny BLIP test fixture.

Each image is one filled shape of one colour in one region of a plain, light background.  The tiny
checkpoint in ``tests/fixtures/tiny-blip`` (made by ``tools/train_fixture.py``) was trained on these
images and captions them as ``caption_for(color, shape, position)``, e.g. "a red circle on the left".

Images are 120x90 (width x height) by default: a size, and an aspect ratio, different from the
model's 64x64 input, so that resizing is exercised.  Without an ``rng`` the image is fully
canonical (no jitter); with a ``numpy.random.Generator`` the shape size, exact position, colour and
background tint vary a little.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["COLORS", "SHAPES", "POSITIONS", "DEFAULT_SIZE", "make_image", "caption_for", "sample"]

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")

DEFAULT_SIZE = (120, 90)  # (width, height)

_RGB = {
    "red": (210, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 210),
    "yellow": (230, 200, 30),
}
# Centre of each region, as fractions of (width, height).
_CENTRES = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
}
_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}


def caption_for(color: str, shape: str, position: str) -> str:
    """The caption of an image of ``color`` ``shape`` at ``position``: "a red circle on the left"."""
    _check(color, shape, position)
    return f"a {color} {shape} {_PHRASES[position]}"


def make_image(
    color: str,
    shape: str,
    position: str,
    *,
    size: int | tuple[int, int] = DEFAULT_SIZE,
    rng: np.random.Generator | None = None,
) -> Image.Image:
    """One filled ``shape`` of ``color`` in the ``position`` region, as an RGB PIL image.

    ``size`` is an int (square) or ``(width, height)``.  With ``rng`` given, the shape's size, exact
    position and colour and the background tint are jittered; without, the image is canonical.
    """
    _check(color, shape, position)
    w, h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if w < 16 or h < 16:
        raise ValueError(f"size too small: {w}x{h}")
    m = min(w, h)

    if rng is None:
        bg = (244, 244, 240)
        rgb = _RGB[color]
        r = 0.19 * m
        fx, fy = _CENTRES[position]
        cx, cy = fx * w, fy * h
    else:
        bg = tuple(int(v) for v in rng.integers(230, 256, size=3))
        rgb = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in _RGB[color])
        r = float(rng.uniform(0.16, 0.22)) * m
        fx, fy = _CENTRES[position]
        cx = fx * w + float(rng.uniform(-0.06, 0.06)) * w
        cy = fy * h + float(rng.uniform(-0.06, 0.06)) * h
    # Keep the whole shape inside the image.
    cx = min(max(cx, r + 1), w - r - 2)
    cy = min(max(cy, r + 1), h - r - 2)

    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        s = r * 0.9  # similar area to the circle
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=rgb)
    else:  # triangle, pointing up
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=rgb)
    return img


def sample(
    rng: np.random.Generator, *, size: int | tuple[int, int] = DEFAULT_SIZE
) -> tuple[Image.Image, str]:
    """A random (jittered image, caption) pair drawn with ``rng``."""
    color = COLORS[int(rng.integers(len(COLORS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    position = POSITIONS[int(rng.integers(len(POSITIONS)))]
    return make_image(color, shape, position, size=size, rng=rng), caption_for(color, shape, position)


def _check(color: str, shape: str, position: str) -> None:
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}; expected one of {COLORS}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if position not in POSITIONS:
        raise ValueError(f"unknown position {position!r}; expected one of {POSITIONS}")
