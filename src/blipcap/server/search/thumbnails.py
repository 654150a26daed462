"""Thumbnails of indexed images: the file behind an index row, checked, read once, hashed, decoded
small and cached on disk by content.

Which file: only the one an index row names, found by the row's id. A row records the file's
resolved path when it was indexed (``real_path``); if the path now resolves elsewhere (a link, or a
folder on the way, swapped for one to another file) the file is refused: the caption describes the
file that was indexed, and a link is no licence to read whatever it points at now. The resolved path
is then opened without following a link at its last step, so a swap between the check and the open
is refused too. A file edited in place (same resolved path, new bytes) is served: its thumbnail is
made again, since the cache is keyed by the bytes' sha256. Rows of schema-1 indexes carry no
``real_path``: their path must resolve to itself, or the bytes must still hash to the row's sha256.

Hashing: a file whose size and mtime are those recorded at indexing has the recorded sha256; one
whose (device, inode, size, mtime) are those seen last time has the sha256 hashed then; any other
is read and hashed (the same bytes are then decoded). Thumbnails are JPEGs in
``<user cache>/blipcap/thumbnails/ab/<sha256>-<size>.jpg``, written atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ...images import ImageError, load_image
from ...outputs.atomic import atomic_write
from ...outputs.index import Entry

SIZES = {"small": 320, "large": 1280}  # longest side, pixels: the grid's and the viewer's
QUALITY = 82
VERSION = "1"  # part of the ETag and the file name: bump when the rendering changes
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # Windows has none; the realpath check still stands


class Refused(Exception):
    """The file of an index row cannot be served: ``status`` and ``kind`` say why."""

    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass(frozen=True)
class Thumbnail:
    data: bytes | None  # None: the client's copy (If-None-Match) is current
    etag: str  # quoted, as the header carries it


class Thumbnails:
    """Makes and caches thumbnails; safe to call from many threads."""

    def __init__(self, cache_dir: str | os.PathLike, *, max_pixels: int | None, memo_size: int = 100_000):
        self.folder = Path(cache_dir) / "thumbnails"
        self.max_pixels = max_pixels
        self._memo: OrderedDict[int, tuple[tuple, str]] = OrderedDict()  # id -> (file identity, sha256)
        self._memo_size = memo_size
        self._lock = threading.Lock()
        self._writing = [threading.Lock() for _ in range(64)]  # one writer per cache file at a time

    def etag(self, sha256: str, size: str) -> str:
        return f'"{sha256}-{size}-v{VERSION}"'

    def identify(self, entry: Entry) -> tuple[str, int, bytes | None]:
        """(sha256, open descriptor, the bytes if they had to be read) of the row's file, checked."""
        fd, real = _open_checked(entry)
        # a schema-1 row's path that resolves elsewhere proves nothing: only the bytes can
        linked = not entry.real_path and real != entry.path
        try:
            st = os.fstat(fd)
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if entry.sha256 and not linked and (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns):
                return entry.sha256, fd, None
            with self._lock:
                known = self._memo.get(entry.id)
            if known is not None and known[0] == ident:
                return known[1], fd, None
            data = _read_all(fd)
            sha = hashlib.sha256(data).hexdigest()
            if linked and sha != entry.sha256:
                raise Refused(403, f"index entry {entry.id}: the path leads through a link to other bytes than "
                                   "were indexed; index it again to serve it", "file_replaced")
            with self._lock:
                self._memo[entry.id] = (ident, sha)
                self._memo.move_to_end(entry.id)
                while len(self._memo) > self._memo_size:
                    self._memo.popitem(last=False)
            return sha, fd, data
        except BaseException:
            os.close(fd)
            raise

    def get(self, entry: Entry, size: str, if_none_match: str | None = None) -> Thumbnail:
        """The thumbnail of ``size`` for the row's file (no data when ``if_none_match`` names it)."""
        sha, fd, data = self.identify(entry)
        try:
            etag = self.etag(sha, size)
            if if_none_match and etag in (t.strip() for t in if_none_match.split(",")):
                return Thumbnail(None, etag)
            cached = self.folder / sha[:2] / f"{sha}-{size}-v{VERSION}.jpg"
            try:
                return Thumbnail(cached.read_bytes(), etag)
            except FileNotFoundError:
                pass
            if data is None:
                data = _read_all(fd)
        finally:
            os.close(fd)
        with self._writing[int(sha[:8], 16) % len(self._writing)]:
            if cached.is_file():  # another request made it meanwhile
                return Thumbnail(cached.read_bytes(), etag)
            jpeg = render(data, SIZES[size], self.max_pixels, entry.path)
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cached, jpeg)
        return Thumbnail(jpeg, etag)


def render(data: bytes, longest: int, max_pixels: int | None, name: str) -> bytes:
    """A JPEG of the upright image with its longest side at most ``longest`` pixels."""
    try:
        # draft: libjpeg decodes at the smallest of 1/1..1/8 scale that keeps both sides >= the target
        # (load_image keeps them >= 2x draft_size): a 12-MP photo's 320 px thumbnail is made from a
        # 500x375 decode, ~3x faster than from the 1000x750 one the 2x margin would ask for, and a
        # Lanczos resize from at least the target size stays sharp
        half = (longest + 1) // 2
        image = load_image(data, max_pixels=max_pixels, draft_size=(half, half))
    except ImageError as e:
        raise Refused(422, f"{os.path.basename(name)}: {e.reason}", type(e).__name__) from e
    image.thumbnail((longest, longest), Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=QUALITY)
    return buf.getvalue()


def _open_checked(entry: Entry) -> tuple[int, str]:
    gone = Refused(404, f"index entry {entry.id}: the file is no longer there", "file_gone")
    real = os.path.realpath(entry.path)
    if entry.real_path and real != entry.real_path:
        raise Refused(403, f"index entry {entry.id}: the path now leads to another file than was indexed; "
                           "index it again to serve it", "file_replaced")
    try:
        fd = os.open(real, os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise gone from None
    except OSError as e:  # ELOOP: the last step became a link after the check
        raise Refused(403, f"index entry {entry.id}: cannot open the file ({e.strerror})", "file_replaced") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise gone
    return fd, real


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(os.dup(fd), "rb") as f:
        return f.read()
