"""Files beside each image (caption sidecars, XMP sidecars) and standard output. The Record and the
Sink interface are in ``records.py``; tables (JSONL, CSV, Parquet, Hugging Face ``metadata.jsonl``)
in ``tables.py``, the search index in ``index.py``.

Every sink survives ``kill -9`` at any point: a file beside an image is written to a hidden temp
file and renamed over the target, so a reader (or a re-run) sees the old file or the new one.
A sink knows what it already holds (``has``), so a re-run with ``--existing skip`` skips it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from . import xmp
from .atomic import atomic_write
from .paths import line_path, path_text
from .records import Record, Sink, SinkError, check_mode


class _FileBeside(Sink):
    """A file next to each image (sidecar text, XMP), named from the image's name."""

    what = "sidecar"

    def __init__(self, suffix: str, existing: str = "skip"):
        self.suffix, self.existing = suffix, check_mode(existing)
        self._dir: str | None = None
        self._claimed: dict[Path, str] = {}  # target -> image, within the current folder

    def target(self, path: str) -> Path:
        return Path(path).with_suffix(self.suffix)

    def prepare(self, paths: Sequence[str]) -> None:
        for folder in sorted({os.path.dirname(os.path.abspath(p)) for p in paths if "://" not in p}):
            if not os.path.isdir(folder):
                continue  # the image itself is missing: reported as that image's error
            try:
                tempfile.TemporaryFile(dir=folder).close()
            except OSError as e:
                raise SinkError(f"cannot write {self.what}s in {folder}: {e.strerror or e}") from e

    def clash(self, path: str) -> str | None:
        """Why ``path`` cannot have its own file (another image in its folder has the same stem)."""
        if path[:8].lower().startswith(("http://", "https://")):
            return f"a URL has no folder to hold its {self.what}"
        folder = os.path.dirname(os.path.abspath(path))
        if folder != self._dir:  # images arrive folder by folder: remember one folder's names only
            self._dir, self._claimed = folder, {}
        target = self.target(path)
        other = self._claimed.setdefault(target, path)
        if other != path:
            return f"its {self.what} {target.name} would also be that of {Path(other).name}; rename one"
        return None

    def has(self, path: str) -> bool:
        return os.path.lexists(self.target(path))

    def write(self, records: list[Record]) -> list[tuple[Record, str]]:
        failed = []
        for record in records:
            if not record.ok:
                continue
            target = self.target(record.path)
            try:
                atomic_write(target, self.render(target, record.caption or ""))
            except (OSError, xmp.XmpError) as e:
                reason = e if isinstance(e, xmp.XmpError) else f"cannot write {target}: {e.strerror or e}"
                failed.append((record, str(reason)))
        return failed

    def render(self, target: Path, caption: str) -> bytes:
        raise NotImplementedError


class SidecarSink(_FileBeside):
    """``photo.jpg`` -> ``photo.txt`` holding the caption (EXT as kohya's ``--caption_extension``)."""

    def __init__(self, ext: str = "txt", existing: str = "skip"):
        super().__init__("." + ext.lstrip("."), existing)

    def render(self, target: Path, caption: str) -> bytes:
        if self.existing == "append" and target.is_file():
            old = target.read_text(encoding="utf-8", errors="replace").rstrip("\n")
            if old.strip():
                return f"{old}\n{caption}\n".encode()  # one caption per line
        return f"{caption}\n".encode()


XMP_NAMES = ("ext", "base")


class XmpSink(_FileBeside):
    """``photo.jpg`` -> an XMP sidecar with the caption merged in (see xmp.py); one caption per image.

    Its name (``name``): "ext" ``photo.jpg.xmp``, as darktable, digiKam and Immich write and read
    (Immich looks for it first), so ``photo.jpg`` and ``photo.png`` each have their own; "base"
    ``photo.xmp``, as Adobe names RAW sidecars. None (the default): the sidecar that already exists
    in either form is updated (ext first, as Immich reads it), else the ext form is written; a base
    form that another image of the folder already claimed is not shared: that image gets the ext form.
    """

    what = "XMP sidecar"

    def __init__(self, existing: str = "skip", name: str | None = None):
        if name is not None and name not in XMP_NAMES:
            raise ValueError(f"the XMP sidecar name must be one of {', '.join(XMP_NAMES)}, got {name!r}")
        super().__init__(".xmp", existing)
        self.name = name
        self._ext_form: set[str] = set()  # images that fell back to the ext form (see clash)

    def target(self, path: str) -> Path:
        p = Path(path)
        ext, base = p.with_name(p.name + ".xmp"), p.with_suffix(".xmp")
        if self.name == "ext" or path in self._ext_form:
            return ext
        if self.name == "base":
            return base
        return base if not os.path.lexists(ext) and os.path.lexists(base) else ext

    def clash(self, path: str) -> str | None:
        reason = super().clash(path)
        if reason and self.name is None and not path[:8].lower().startswith(("http://", "https://")):
            self._ext_form.add(path)  # an existing photo.xmp taken by photo.jpg: photo.png gets its own
            reason = super().clash(path)
        return reason

    def has(self, path: str) -> bool:
        return xmp.read_description(self.target(path)) is not None

    def render(self, target: Path, caption: str) -> bytes:
        old = target.read_bytes() if target.is_file() else None
        return xmp.merge_caption(old, caption, str(target))


class PrintSink(Sink):
    """Standard output: ``path<TAB>caption`` lines, or one JSON object per line with ``json=True``
    (paths as paths.py writes them)."""

    passive = True
    wants_errors = True

    def __init__(self, json_lines: bool = False, stream=None):
        self.json_lines, self.stream = json_lines, stream

    def write(self, records: list[Record]) -> list[tuple[Record, str]]:
        out = self.stream or sys.stdout
        for r in records:
            if self.json_lines:
                row = {"path": path_text(r.path), "caption": r.caption, "score": r.score}
                if r.error is not None:
                    row["error"] = r.error
                if r.alternatives:
                    row["alternatives"] = [{"caption": t, "score": s} for t, s in r.alternatives]
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            elif r.ok:
                out.write(f"{line_path(r.path)}\t{r.caption}\n")
        out.flush()
        return []

