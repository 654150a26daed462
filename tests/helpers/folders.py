"""Generated folders for the bulk-job tests: shape images the trained fixture captions exactly
(tests/shapes.py), and one broken file per failure kind."""

from __future__ import annotations

import io
import itertools
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

from tests.helpers.shapes import COLORS, POSITIONS, SHAPES, caption_for, make_image

COMBOS = list(itertools.product(COLORS, SHAPES, POSITIONS))


def write_shapes(folder: Path, n: int, *, seed: int = 0, fmt: str = "PNG", size=(120, 90),
                 name: str = "img{i:03d}") -> dict[str, str]:
    """``n`` jittered shape images in ``folder``; returns {path: the caption the fixture gives}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    expected = {}
    for i in range(n):
        combo = COMBOS[(i * 7 + seed) % len(COMBOS)]
        ext = {"PNG": ".png", "JPEG": ".jpg"}[fmt]
        path = folder / (name.format(i=i) + ext)
        make_image(*combo, size=size, rng=rng).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        expected[str(path)] = caption_for(*combo)
    return expected


def jpeg_bytes(color="red", shape="circle", position="left", size=(120, 90)) -> bytes:
    buf = io.BytesIO()
    make_image(color, shape, position, size=size).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb, as far as anyone reads)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def write_broken(folder: Path) -> dict[str, str]:
    """One file per failure kind inside a folder; returns {path: the ImageError kind expected}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "empty.jpg": (b"", "EmptyImageError"),
        "truncated.jpg": (jpeg_bytes()[:700], "TruncatedImageError"),
        "not an image.png": (b"this is a text file with a .png name\n" * 4, "NotAnImageError"),
        "bomb.png": (png_header_only(20_000, 20_000), "ImageTooLargeError"),
    }
    out = {}
    for name, (data, kind) in files.items():
        (folder / name).write_bytes(data)
        out[str(folder / name)] = kind
    return out


def run_cli(*args: str, env: dict | None = None, cwd=None, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "blipcap", *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, input=input, timeout=timeout)


def popen_cli(*args: str, env: dict | None = None, cwd=None, stall: str | os.PathLike | None = None
              ) -> subprocess.Popen:
    """``blipcap ARGS`` in the background; ``stall``: a FIFO whose open blocks (tests/helpers/stalled_cli.py)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    if stall is not None:  # run from the repository root, where `tests` is importable
        command = ["-m", "tests.helpers.stalled_cli", os.fspath(stall)]
        cwd = cwd or Path(__file__).resolve().parents[2]
    else:
        command = ["-m", "blipcap"]
    return subprocess.Popen([sys.executable, *command, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env, cwd=cwd)
