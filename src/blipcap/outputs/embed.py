"""Captions written into the image files themselves (``--embed``), where photo managers read them.

Each caption goes in XMP ``dc:description`` (``x-default``; other languages kept), with ``--alt-text``
also XMP ``Iptc4xmpCore:AltTextAccessibility``, in EXIF ``ImageDescription``, and in IPTC IIM
``Caption-Abstract`` where the format has IPTC (JPEG, TIFF). JPEG, PNG, WebP and TIFF are written;
camera RAW files never are (they get an XMP sidecar, named as ``XmpSink`` names them); HEIC/AVIF and
anything else are refused with a reason.

Why exiftool (``libimage-exiftool-perl``) rather than pyexiv2: exiftool is the reference reader and
writer that Immich, digiKam and darktable users check metadata with; it rewrites only the metadata
segments and copies the image data as it is (JPEG entropy-coded data byte for byte), keeps every
other tag and language alternative, and it is packaged everywhere. One ``-stay_open`` process serves
the whole job, so a file costs a few milliseconds, not a Perl start-up. pyexiv2 ships a compiled
libexiv2 per Python version and platform, and links exiv2's writer into our process.

Safety: exiftool writes a new file (``-o``) under the hidden temp name of ``atomic.temp_name``
beside the image; it is fsynced, given the image's permissions (and its mtime, unless ``touch``),
and renamed over the image. A ``kill -9`` leaves the image unchanged or fully updated, and a temp
file that the next run removes. ``--existing skip`` skips an image whose XMP already has a
``dc:description``; ``overwrite`` and ``append`` caption again and replace it (one caption per
image, as in XMP sidecars).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from ..images.formats import RAW_SUFFIXES
from .atomic import replacing
from .records import Record, Sink, SinkError, check_mode
from .sinks import XmpSink

# exiftool's FileType -> whether the format has IPTC IIM (PNG and WebP have no standard place for it)
WRITABLE = {"JPEG": True, "TIFF": True, "PNG": False, "WEBP": False, "Extended WEBP": False}
HEIF_TYPES = frozenset({"HEIC", "HEIF", "AVIF"})
INSTALL = ("--embed needs exiftool: apt-get install libimage-exiftool-perl (Debian, Ubuntu), "
           "brew install exiftool (macOS), or https://exiftool.org")


class EmbedError(RuntimeError):
    """One image that could not be written into (it is left as it was)."""


class ExifTool:
    """One ``exiftool -stay_open`` process: ``run(args)`` -> what it printed for that command."""

    def __init__(self, exe: str = "exiftool"):
        self.exe = exe
        self._proc: subprocess.Popen | None = None

    def run(self, args: Sequence[str]) -> str:
        if any("\n" in a or "\r" in a for a in args):
            raise EmbedError("a line break in a file name or caption cannot be passed to exiftool")
        if self._proc is None or self._proc.poll() is not None:
            # stderr joins stdout: every message of a command comes before its {ready}
            self._proc = subprocess.Popen([self.exe, "-stay_open", "True", "-@", "-"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        payload = "\n".join([*args, "-execute"]) + "\n"
        lines = []
        try:
            self._proc.stdin.write(payload.encode("utf-8", "surrogateescape"))
            self._proc.stdin.flush()
            while (line := self._proc.stdout.readline()) and line.rstrip(b"\r\n") != b"{ready}":
                lines.append(line)
        except OSError as e:
            raise EmbedError(f"exiftool stopped: {e}") from e
        if not line:
            raise EmbedError(f"exiftool stopped: {b''.join(lines).decode('utf-8', 'replace').strip()}")
        return b"".join(lines).decode("utf-8", "replace")

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.stdin.write(b"-stay_open\nFalse\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
        self._proc = None


def probe(tool: ExifTool, path: str) -> dict:
    """The tags that decide how ``path`` is written: FileType, dc:description, the IPTC record."""
    # no -q: it would also silence the {ready} that ends each answer
    out = tool.run(["-j", "-G1", "-FileType", "-XMP-dc:Description", "-IPTC:all", os.path.abspath(path)])
    start = out.find("[{")  # warnings (stderr, joined) may come first: "Warning: [minor] ..."
    try:
        return json.loads(out[start:])[0] if start >= 0 else {}
    except (ValueError, IndexError):
        return {}


def is_raw(path: str) -> bool:
    """Camera RAW, by extension: never written into (Adobe, darktable and digiKam keep their edits in
    sidecars too); their captions go to an XMP sidecar."""
    return os.path.splitext(path)[1].lower() in RAW_SUFFIXES


class EmbedSink(Sink):
    """``--embed``: the caption written into each image (see the module docstring)."""

    what = "embedded caption"

    def __init__(self, existing: str = "skip", *, alt_text: bool = False, touch: bool = False,
                 xmp_name: str | None = None, exiftool: str = "exiftool"):
        self.existing = check_mode(existing)
        self.alt_text, self.touch = alt_text, touch
        self.raw_sidecars = XmpSink(existing, xmp_name)
        self.tool = ExifTool(exiftool)

    def prepare(self, paths: Sequence[str]) -> None:
        if shutil.which(self.tool.exe) is None:
            raise SinkError(INSTALL)
        for folder in sorted({os.path.dirname(os.path.abspath(p)) for p in paths if "://" not in p}):
            if os.path.isdir(folder):
                try:
                    tempfile.TemporaryFile(dir=folder).close()
                except OSError as e:
                    raise SinkError(f"cannot write images in {folder}: {e.strerror or e}") from e

    def clash(self, path: str) -> str | None:
        if "://" in path:
            return "a URL has no file to write its caption into"
        return self.raw_sidecars.clash(path) if is_raw(path) else None

    def has(self, path: str) -> bool:
        if is_raw(path):
            return self.raw_sidecars.has(path)
        try:
            return bool(probe(self.tool, path).get("XMP-dc:Description"))
        except EmbedError:
            return False  # written (and reported) later

    def write(self, records: list[Record]) -> list[tuple[Record, str]]:
        failed = []
        raw = [r for r in records if r.ok and is_raw(r.path)]
        if raw:
            failed += self.raw_sidecars.write(raw)
        for record in records:
            if record.ok and not is_raw(record.path):
                try:
                    self.embed(record.path, record.caption or "")
                except EmbedError as e:
                    failed.append((record, str(e)))
                except OSError as e:
                    failed.append((record, f"cannot write {record.path}: {e.strerror or e}"))
        return failed

    def embed(self, path: str, caption: str) -> None:
        """Write ``caption`` into the image at ``path``, atomically (see the module docstring)."""
        tags = probe(self.tool, path)
        kind = tags.get("File:FileType")
        if kind in HEIF_TYPES:
            raise EmbedError(f"captions are not embedded in {kind} files (exiftool's {kind} writer is not "
                             f"proven safe here); use --xmp for a sidecar")
        if kind not in WRITABLE:
            what = f"{kind} files" if kind else "this file (exiftool cannot read it)"
            raise EmbedError(f"cannot embed a caption in {what}; JPEG, PNG, WebP and TIFF are written, "
                             f"use --xmp for a sidecar")
        # "-x-default": a bare "Description=" would drop the other language alternatives
        args = [f"-XMP-dc:Description-x-default={caption}", f"-EXIF:ImageDescription={caption}"]
        if self.alt_text:
            args.append(f"-XMP-iptcCore:AltTextAccessibility-x-default={caption}")
        if WRITABLE[kind]:
            args += self._iptc(tags, caption)
        target = Path(os.path.abspath(path))
        before = os.stat(target)
        with replacing(target) as tmp:
            if os.path.lexists(tmp):
                os.unlink(tmp)  # left by a killed run: exiftool -o will not write over a file
            out = self.tool.run(["-o", str(tmp), *args, str(target)])
            if not tmp.is_file() or any(line.startswith("Error") for line in out.splitlines()):
                raise EmbedError(f"exiftool could not write it: {out.strip() or 'no output'}")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())  # the data reaches the disk before the rename makes it the image
            os.chmod(tmp, stat.S_IMODE(before.st_mode))
            if not self.touch:
                os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))

    @staticmethod
    def _iptc(tags: dict, caption: str) -> list[str]:
        """IPTC IIM in UTF-8 where that re-encodes nothing: an image without IPTC, or one already in
        UTF-8. An older Latin-1 record keeps its character set; a caption it cannot hold is left out
        of IPTC (XMP and EXIF carry it)."""
        has_iptc = any(k.startswith("IPTC:") for k in tags)
        if not has_iptc or str(tags.get("IPTC:CodedCharacterSet", "")).upper().replace("-", "") == "UTF8":
            return ["-charset", "iptc=UTF8", "-IPTC:CodedCharacterSet=UTF8", f"-IPTC:Caption-Abstract={caption}"]
        if caption.isascii():
            return [f"-IPTC:Caption-Abstract={caption}"]
        return []

    def close(self) -> None:
        self.tool.close()
