"""Camera RAW fixtures written by hand: a "linear raw" DNG (DNG 1.4, PhotometricInterpretation
LinearRaw: three samples per pixel, already demosaiced, as Adobe's DNG Converter can write) of a
given RGB picture. Every tag is written here with struct, so no RAW encoder is needed; LibRaw
(rawpy) reads it as it reads a camera's DNG."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_SHORT, _LONG, _BYTE, _ASCII, _RATIONAL, _SRATIONAL = 3, 4, 1, 2, 5, 10
_SIZES = {_SHORT: 2, _LONG: 4, _BYTE: 1, _ASCII: 1, _RATIONAL: 8, _SRATIONAL: 8}


def dng_bytes(rgb: np.ndarray, orientation: int = 1, make: str = "blipcap") -> bytes:
    """A little-endian DNG holding ``rgb`` (H x W x 3 uint8) as 16-bit linear raw data."""
    h, w, _ = rgb.shape
    # linear raw holds light, not sRGB-encoded values: undo the sRGB curve (roughly, gamma 2.2)
    pixels = ((rgb.astype(np.float64) / 255.0) ** 2.2 * 65535).round().astype("<u2").tobytes()
    identity = [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]
    entries = [  # (tag, type, values); StripOffsets is filled in below
        (254, _LONG, [0]), (256, _LONG, [w]), (257, _LONG, [h]), (258, _SHORT, [16, 16, 16]),
        (259, _SHORT, [1]), (262, _SHORT, [34892]), (271, _ASCII, make), (272, _ASCII, "test camera"),
        (273, _LONG, [0]), (274, _SHORT, [orientation]), (277, _SHORT, [3]), (278, _LONG, [h]),
        (279, _LONG, [len(pixels)]), (284, _SHORT, [1]), (50706, _BYTE, [1, 4, 0, 0]),
        (50707, _BYTE, [1, 1, 0, 0]), (50708, _ASCII, "blipcap test camera"), (50717, _LONG, [65535]),
        (50721, _SRATIONAL, identity), (50728, _RATIONAL, [(1, 1), (1, 1), (1, 1)]), (50778, _SHORT, [21]),
    ]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(entries) + 4
    extra, values = b"", []
    for tag, kind, vals in entries:
        raw = _pack(kind, vals)
        if len(raw) <= 4:
            values.append(raw.ljust(4, b"\0"))
        else:
            values.append(struct.pack("<I", data_at + len(extra)))
            extra += raw + (b"\0" if len(raw) % 2 else b"")
    strip_at = data_at + len(extra)
    ifd = struct.pack("<H", len(entries))
    for (tag, kind, vals), value in zip(entries, values):
        count = len(vals) + 1 if kind == _ASCII else len(vals)
        if tag == 273:
            value = struct.pack("<I", strip_at)
        ifd += struct.pack("<HHI", tag, kind, count) + value
    ifd += struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", ifd_at) + ifd + extra + pixels


def _pack(kind: int, vals) -> bytes:
    if kind == _ASCII:
        return vals.encode() + b"\0"
    if kind in (_RATIONAL, _SRATIONAL):
        return b"".join(struct.pack("<ii" if kind == _SRATIONAL else "<II", *v) for v in vals)
    return b"".join(struct.pack({_SHORT: "<H", _LONG: "<I", _BYTE: "<B"}[kind], v) for v in vals)


def write_dng(path: Path, rgb: np.ndarray, orientation: int = 1) -> Path:
    path.write_bytes(dng_bytes(rgb, orientation))
    return path
