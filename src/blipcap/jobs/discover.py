"""Which files a bulk job captions: command-line paths, folders, glob patterns and path lists.

Owns the rules of "what is an image here": a file named explicitly (on the command line or in a
``--files-from`` list) is always taken, so that a bad one is reported rather than silently
ignored; inside a folder, a file is taken when its extension is an image extension (any case) or
its first bytes are an image signature, so ``IMG_0001`` without an extension is found and
``notes.txt`` is not. Hidden files and folders (a leading dot) and the job's own output files are
skipped; symlinked folders are followed once each, so a symlink loop cannot hang the walk.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

from ..images.formats import HEAD_BYTES, HEIF_SUFFIXES, RAW_SUFFIXES, sniff

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
                           | HEIF_SUFFIXES | RAW_SUFFIXES)

_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a", b"GIF89a",
    b"BM",  # BMP
    b"II*\x00", b"MM\x00*",  # TIFF, little- and big-endian
)  # fmt: skip


class InputError(ValueError):
    """A command-line input that names nothing usable (a missing --files-from list)."""


def looks_like_image(path: str | os.PathLike) -> bool:
    """Whether the file's first bytes are the signature of an image format blipcap reads."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return False
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head.startswith(_SIGNATURES) or sniff(head) is not None  # HEIC, AVIF, camera RAW


def read_path_list(source: str) -> list[str]:
    """The paths in a ``--files-from`` list, one per line (``-``: standard input); blank lines skipped."""
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
    except OSError as e:
        raise InputError(f"cannot read --files-from {source}: {e.strerror or e}") from e
    return [line for line in text.splitlines() if line.strip()]


def find_images(
    inputs: Sequence[str],
    *,
    recursive: bool = True,
    files_from: str | None = None,
    exclude: Iterable[str | os.PathLike] = (),
) -> list[str]:
    """Every image the inputs name, each once, in a stable order (folders sorted by name).

    ``inputs``: files (taken as given, missing ones included so they are reported), folders,
    and glob patterns (``photos/**/*.jpg``; used only when no file has that literal name).
    ``files_from``: a list file of further paths (literal, no globbing), ``-`` for stdin.
    ``exclude``: paths never returned (the job's own outputs).
    """
    walker = _Walker(recursive, {os.path.abspath(p) for p in exclude})
    items = list(inputs)
    for item in items:
        if item[:8].lower().startswith(("http://", "https://")):
            walker.found.append(item)  # fetched (or refused) by the decoder, like any named input
        elif os.path.lexists(item) or not glob.has_magic(item):
            walker.add(item, explicit=True)
        else:
            for match in sorted(glob.glob(item, recursive=True)):
                walker.add(match, explicit=False)
    if files_from is not None:
        for line in read_path_list(files_from):
            walker.add(line, explicit=True)
    return walker.found


class _Walker:
    def __init__(self, recursive: bool, exclude: set[str]):
        self.recursive, self.exclude = recursive, exclude
        self.found: list[str] = []
        self._seen_files: set[str] = set()
        self._seen_dirs: set[tuple[int, int]] = set()  # (st_dev, st_ino): each folder walked once

    def add(self, path: str, explicit: bool) -> None:
        if os.path.isdir(path):
            self._walk(path)
        elif explicit or _is_candidate(path):
            self._take(path)

    def _take(self, path: str) -> None:
        key = os.path.abspath(path)
        if key not in self._seen_files and key not in self.exclude:
            self._seen_files.add(key)
            self.found.append(path)

    def _walk(self, top: str) -> None:
        try:
            st = os.stat(top)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in self._seen_dirs:
            return  # a symlink loop, or the same folder reached twice
        self._seen_dirs.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(top) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return  # an unreadable folder holds nothing we can caption
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = os.path.join(top, entry.name)
            try:
                is_dir = entry.is_dir()  # follows symlinks; a dangling link is neither
            except OSError:
                continue
            if is_dir:
                subdirs.append(path)
            elif entry.is_file() and _is_candidate(path, entry.name):  # no FIFOs or sockets
                self._take(path)
        if self.recursive:  # a folder's own files first, then its subfolders
            for sub in subdirs:
                self._walk(sub)


def _is_candidate(path: str, name: str | None = None) -> bool:
    suffix = Path(name or path).suffix.lower()
    return suffix in IMAGE_SUFFIXES or (os.path.isfile(path) and looks_like_image(path))
