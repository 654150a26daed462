"""A file, bytes or URL -> a model-ready :class:`Decoded` image, for the folder job, the Ray job and
the service.

The bytes are read once: the sha256 and the decode come from the same bytes, and the stored size
from the header the decode parsed. Large JPEGs are decoded at reduced scale (Pillow draft mode),
then resized exactly as the model's :class:`Preprocessor` resizes, so a queued image costs about
0.5 MB however large it came (2.2 MB with its float32 pixels made too: ``Decoder.of(..., pixels=True)``),
and the preprocessor does not resize it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
from dataclasses import dataclass

from .errors import UnreadableImageError
from .fetch import UrlFetcher
from .load import read_image
from .pixels import Decoded, Preprocessor


def read_file(path: str) -> bytes:
    """A regular file's bytes; anything else (a FIFO, a device, a socket) is refused without
    waiting on it. Raises UnreadableImageError ("cannot open: ..." or "not a regular file")."""
    try:
        # O_NONBLOCK: opening a FIFO no one writes to would otherwise wait forever
        with open(path, "rb", opener=_nonblocking) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UnreadableImageError(path, "not a regular file")
            return f.read()
    except OSError as e:
        raise UnreadableImageError(path, f"cannot open: {e.strerror or e}") from e


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def sha256(data: bytes) -> str:
    """The hex digest that names a file's content in records and finds identical files."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Decoder:
    """How to make model input: built once per model with :meth:`of`, then called on decode threads."""

    size: tuple[int, int]  # (height, width) of the model input; also the JPEG draft target
    resample: int  # the preprocessor's Pillow resize filter
    do_resize: bool
    max_pixels: int | None  # refused above this, judged from the header
    fetcher: UrlFetcher | None = None  # None: URLs are refused
    normalise_with: Preprocessor | None = None  # also make the float32 model input (Decoded.pixels)

    @classmethod
    def of(cls, preprocessor: Preprocessor, max_pixels: int | None, fetcher: UrlFetcher | None = None, *,
           pixels: bool = False) -> Decoder:
        """``pixels``: normalise on the decoding thread too (4x the memory per queued image: the
        folder job, where the model's thread then only copies each image into its batch)."""
        return cls(preprocessor.size, preprocessor.resample, preprocessor.do_resize, max_pixels, fetcher,
                   preprocessor if pixels else None)

    def file(self, path: str) -> Decoded:
        """A regular file, read once (see :func:`read_file`)."""
        return self.bytes(read_file(path), name=path)

    def url(self, url: str) -> Decoded:
        """An http(s) URL, through the SSRF-safe fetcher."""
        if self.fetcher is None:
            raise UnreadableImageError(url, "URLs are fetched only with allow_urls=True")
        return self.bytes(self.fetcher.fetch(url), name=url)

    def bytes(self, data: bytes, *, name: str | None = None, sha256: str | None = None) -> Decoded:
        """Encoded image bytes -> Decoded; ``name`` is how an ImageError names them, ``sha256`` their
        hash if the caller has it already. Raises ImageError."""
        name = name if name is not None else f"<bytes of {len(data)} bytes>"
        digest = sha256 if sha256 is not None else hashlib.sha256(data).hexdigest()
        image, (width, height) = read_image(io.BytesIO(data), name, len(data), self.max_pixels, self.size)
        height_in, width_in = self.size
        if self.do_resize and image.size != (width_in, height_in):
            image = image.resize((width_in, height_in), self.resample)
        # read_image dropped the orientation tag it applied, so nothing turns this image again
        decoded = Decoded(image, digest, width, height)
        if self.normalise_with is None:
            return decoded
        return dataclasses.replace(decoded, pixels=self.normalise_with(decoded), made_by=self.normalise_with)

