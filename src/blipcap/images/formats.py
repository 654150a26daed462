"""Formats beyond Pillow's own: HEIC/HEIF (pillow-heif), AVIF (Pillow's own codec, else
pillow-avif-plugin) and camera RAW (rawpy/LibRaw), recognised by their bytes and decoded through
optional extras registered on first use. Without the extra, the image gets a MissingDecoderError
naming it; the rest of a job goes on.

RAW: the embedded preview is captioned when both its sides reach the model input (fast: a JPEG
the camera made), else a half-size demosaic; either way upright as the RAW's orientation says.
"""

from __future__ import annotations

import functools
import io
import os
import struct

from PIL import Image

from .errors import EmptyImageError, ImageError, ImageTooLargeError, NotAnImageError, TruncatedImageError

RAW_SUFFIXES = frozenset({".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".raf", ".orf",
                          ".rw2", ".rwl", ".pef", ".srw", ".3fr", ".erf", ".kdc", ".mrw", ".x3f", ".iiq", ".raw"})
HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif", ".avif"})
HEAD_BYTES = 4096  # enough for an ftyp box and a TIFF's first directory
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_RAW_MAGIC = (b"FUJIFILMCCD-RAW", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00", b"FOVb")  # RAF, ORF, RW2, X3F
_NOT_RAW = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF")
_TIFF = (b"II*\x00", b"MM\x00*")
_LIBRAW_FLIP = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


class MissingDecoderError(ImageError):
    """An image format whose decoder is an optional extra that is not installed."""


def sniff(head: bytes, name: str | None = None) -> str | None:
    """"heif", "avif" or "raw" for the first bytes of such a file (``name``'s extension decides only
    for TIFF-like RAWs without a tell-tale tag), else None: Pillow's own business."""
    if head[4:8] == b"ftyp":
        size = max(16, min(len(head), int.from_bytes(head[:4], "big")))
        brands = {head[8:12]} | {head[i:i + 4] for i in range(16, size - 3, 4)}
        if b"crx " in brands:
            return "raw"  # Canon CR3
        if brands & _AVIF_BRANDS:
            return "avif"
        return "heif" if brands & _HEIF_BRANDS else None
    if head.startswith(_RAW_MAGIC) or (head[:4] in _TIFF and head[8:10] == b"CR") or _tiff_is_raw(head):
        return "raw"
    suffix = os.path.splitext(name or "")[1].lower()
    if suffix in RAW_SUFFIXES and head and not head.startswith(_NOT_RAW):
        return "raw"
    return None


def _tiff_is_raw(head: bytes) -> bool:
    """A TIFF whose first directory has DNGVersion, or a camera Make and SubIFDs (NEF, ARW, PEF ...)."""
    if head[:4] not in _TIFF:
        return False
    order = "<" if head[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack_from(order + "I", head, 4)
        (count,) = struct.unpack_from(order + "H", head, offset)
        tags = {struct.unpack_from(order + "H", head, offset + 2 + 12 * i)[0] for i in range(count)}
    except struct.error:
        return False  # the directory lies past the head: a plain TIFF as far as we can tell
    return 50706 in tags or (271 in tags and 330 in tags)


def ensure_plugin(kind: str, name: str) -> None:
    """Register the Pillow plugin for "heif" or "avif", or raise MissingDecoderError naming the extra."""
    if kind == "heif" and not _heif():
        raise MissingDecoderError(name, "HEIC/HEIF images need pillow-heif: pip install 'blipcap[heif]'")
    if kind == "avif" and not _avif():
        raise MissingDecoderError(name, "AVIF images need a Pillow built with AVIF (Pillow >= 11.3 wheels) "
                                        "or pillow-avif-plugin: pip install -U pillow")


@functools.cache
def _heif() -> bool:
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


@functools.cache
def _avif() -> bool:
    from PIL import features

    if features.check("avif"):
        return True
    try:
        import pillow_avif  # noqa: F401 - registers the AVIF plugin on import
    except ImportError:
        return False
    return True


def read_raw(data: bytes, name: str, max_pixels: int | None, size: tuple[int, int] | None,
             check_pixels) -> tuple[Image.Image, tuple[int, int]]:
    """A camera RAW file's bytes -> (upright image, its upright (width, height)); ``size`` (h, w):
    the model input, which an embedded preview must reach to be used."""
    try:
        import rawpy
    except ImportError:
        raise MissingDecoderError(name, "camera RAW files need rawpy: pip install 'blipcap[raw]'") from None
    if not data:
        raise EmptyImageError(name, "empty (0 bytes)")
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            flip = raw.sizes.flip
            stored = (raw.sizes.height, raw.sizes.width) if flip in (5, 6) else (raw.sizes.width, raw.sizes.height)
            check_pixels(*stored, name, max_pixels)
            image = _preview(raw, rawpy, size or (384, 384))
            if image is None:  # LibRaw turns its own output upright
                image = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
            elif flip in _LIBRAW_FLIP:
                image = image.transpose(_LIBRAW_FLIP[flip])
    except rawpy.LibRawFileUnsupportedError as e:
        raise NotAnImageError(name, f"not a RAW format LibRaw reads ({e})") from e
    except (rawpy.LibRawError, ValueError, OSError) as e:
        raise TruncatedImageError(name, f"truncated or corrupt RAW data ({type(e).__name__}: {e})") from e
    except MemoryError as e:
        raise ImageTooLargeError(name, "out of memory decoding the RAW data") from e
    return image, stored


def _preview(raw, rawpy, size: tuple[int, int]) -> Image.Image | None:
    """The camera's embedded preview when both its sides reach the model input's, else None."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            image = Image.open(io.BytesIO(thumb.data), formats=["JPEG"])
            image.load()
        else:
            image = Image.fromarray(thumb.data)
    except Exception:  # a broken preview: the RAW data itself may still be good
        return None
    return image if min(image.size) >= max(size) else None
