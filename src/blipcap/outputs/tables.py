"""Tables of captions: JSONL, CSV, Parquet (``--output FILE``) and Hugging Face ImageFolder
``metadata.jsonl`` (``--metadata-jsonl DIR``).

JSONL and CSV are appended and flushed once per batch; a torn last line (the only damage a kill
can do) is cut off when the table is next opened, and a file that is not a blipcap table is
refused rather than touched. Parquet cannot be appended to, so its rows go to a hidden JSONL
journal beside it, and the ``.parquet`` file is rebuilt from the old file plus the journal,
through a temp file and a rename, when the job ends (or, after a kill, when the next run ends).

A row that replaces an earlier row for the same image (``--existing overwrite``, or a failure
since fixed) is appended too, and the table is compacted to the last row per image, atomically,
when the job closes it. ``--existing append`` keeps every row.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .atomic import atomic_write, check_writable, lock_output
from .paths import path_from_text, path_text
from .records import (COLUMNS, LEGACY_COLUMNS, Record, Sink, SinkError, check_mode)


class _Table(Sink):
    """Rows keyed by image, appended and flushed per batch; compacted to one row per key on close."""

    what = "output"
    wants_errors = True

    def __init__(self, path: str | os.PathLike, existing: str = "skip", *, lock: bool = True):
        self.path, self.existing = Path(path), check_mode(existing)
        self._last: dict[str, str | None] = {}  # key -> error of its last row (None: captioned)
        self._stale = False  # some row is superseded by a later one for the same key
        self._file: io.TextIOBase | None = None
        check_writable(self.path, self.what)
        # before reading it: a second job is refused (a Parquet output's journal is covered by its table's lock)
        self._lock = lock_output(self.path, self.what) if lock else None
        if self.path.is_file() and self.path.stat().st_size:
            self._check_ours()  # before any repair: never cut someone else's file
            self._repair_tail()
            for key, error in self._scan():
                self._stale |= key in self._last
                self._last[key] = error
            self._stale &= existing != "append"

    # subclasses: how a row is keyed, read and written
    def key(self, record: Record) -> str:
        return record.path

    def rows(self) -> Iterator[dict]:
        raise NotImplementedError

    def _format(self, records: list[Record]) -> str:
        raise NotImplementedError

    def _header(self) -> str:
        return ""

    def _scan(self) -> Iterator[tuple[str, str | None]]:
        for row in self.rows():
            yield path_from_text(row["path"]), row.get("error") or None

    def has(self, path: str) -> bool:
        return path in self._last and self._last[path] is None

    def known(self) -> Iterator[Record]:
        if not self.path.is_file():
            return
        for row in self.rows():
            if not row.get("error") and row.get("sha256") and row.get("caption") is not None:
                yield record_of(row)

    def write(self, records: list[Record]) -> list[tuple[Record, str]]:
        keep = []
        for record in records:
            key = self.key(record)
            previous = self._last.get(key, ...)
            if not record.ok and (not self.wants_errors or previous == record.error):
                continue  # the same failure is already recorded: a re-run changes nothing
            if previous is not ... and self.existing != "append":
                self._stale = True
            self._last[key] = record.error
            keep.append(record)
        if keep:
            self._append(self._format(keep))
        return []

    def _append(self, text: str) -> None:
        try:
            if self._file is None:
                new = not self.path.is_file() or self.path.stat().st_size == 0
                self._file = open(self.path, "a", encoding="utf-8", newline="")
                if new:
                    text = self._header() + text
            self._file.write(text)
            self._file.flush()  # one batch at a time: a kill loses at most the batch being written
        except OSError as e:  # a full disk, a lost mount: the batches before are in the file
            self._discard()
            raise SinkError(f"cannot write {self.what} {self.path}: {e.strerror or e}; the rows written "
                            f"before are kept, and a re-run continues after them") from e

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._stale:
                self._compact()
                self._stale = False
        except OSError as e:
            self._discard()
            raise SinkError(f"cannot write {self.what} {self.path}: {e.strerror or e}") from e
        finally:
            if self._lock is not None:
                self._lock.release()

    def _discard(self) -> None:
        """Drop the file after a failed write: what is still buffered cannot be written either (a torn
        last line is cut off when the table is next opened)."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the descriptor is closed all the same
            self._file = None
        self._stale = False  # no compaction on a disk that just refused a write

    def _compact(self) -> None:
        """Rewrite the table with the last row for each key, atomically."""
        last: dict[str, int] = {}
        for i, row in enumerate(self.rows()):
            last[self._row_key(row)] = i
        kept = (row for i, row in enumerate(self.rows()) if last[self._row_key(row)] == i)
        atomic_write(self.path, (self._header() + self._format_rows(kept)).encode("utf-8"))

    def _row_key(self, row: dict) -> str:
        return row["path"]

    def _format_rows(self, rows: Iterable[dict]) -> str:
        return self._format([record_of(row) for row in rows])

    def _repair_tail(self) -> None:
        """Cut a torn last line (a kill during a write); refuse a file that is not ours."""
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            cut = data.rfind(b"\n") + 1
            if self._complete_row(data[cut:]):
                f.write(b"\n")  # a whole last row that only lacks its newline
            else:
                f.truncate(cut)

    def _complete_row(self, line: bytes) -> bool:
        return False

    def _signature(self) -> bytes:
        """How every file of ours starts (a kill can tear even that: a prefix of it counts)."""
        raise NotImplementedError

    def _check_ours(self) -> None:
        sig = self._signature()
        with open(self.path, "rb") as f:
            head = f.read(len(sig))
        if not sig.startswith(head):  # head is at most len(sig) bytes: a prefix of it, or all of it
            raise self._bad("", f"starts with {head[:40]!r}")

    def _bad(self, where: str, why: str) -> SinkError:
        return SinkError(f"{self.path}{where} {why}: it does not look like a blipcap {self.what}; "
                         f"use another file name or move it away")


_TRUTH = {"True": True, "False": False, "true": True, "false": False}  # CSV cells; "" -> None


def record_of(row: dict) -> Record:
    values = {name: row.get(name) for name in COLUMNS}
    values["path"] = path_from_text(values["path"])
    for name in ("width", "height"):
        values[name] = int(values[name]) if values[name] not in (None, "") else None
    values["score"] = float(values["score"]) if values["score"] not in (None, "") else None
    values["truncated"] = _TRUTH.get(values["truncated"]) if isinstance(values["truncated"], str) else values["truncated"]
    for name in ("caption", "sha256", "revision", "error"):
        values[name] = values[name] if values[name] != "" else None
    if values["caption"] is None and values["error"] is None:
        values["caption"] = ""  # CSV cannot tell an empty caption from none
    values["model_id"] = values["model_id"] or ""
    values["options_digest"] = values["options_digest"] or ""
    return Record(**values)


class JsonlSink(_Table):
    """One JSON object per line with the COLUMNS fields."""

    def rows(self) -> Iterator[dict]:
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise self._bad(f" line {n}", "is not JSON") from None
                if not isinstance(row, dict) or not isinstance(row.get(self._key_field), str):
                    raise self._bad(f" line {n}", f"has no {self._key_field!r}")
                yield row

    _key_field = "path"

    def _signature(self) -> bytes:
        return b'{"' + self._key_field.encode() + b'": '

    def _complete_row(self, line: bytes) -> bool:
        try:
            return isinstance(json.loads(line), dict)
        except ValueError:
            return False

    def _format(self, records: list[Record]) -> str:
        return "".join(json.dumps({k: path_text(r.path) if k == "path" else getattr(r, k) for k in COLUMNS},
                                  ensure_ascii=False) + "\n" for r in records)


class CsvSink(_Table):
    """A header row, then the COLUMNS fields; empty cells for missing values. A file written before
    the ``truncated`` column keeps its header (LEGACY_COLUMNS): rows added to it leave that cell out."""

    _columns = COLUMNS  # this file's: COLUMNS, or LEGACY_COLUMNS for an older file (see _check_ours)

    def _header(self) -> str:
        return ",".join(self._columns) + "\n"

    def _signature(self) -> bytes:
        return self._header().encode()

    def _check_ours(self) -> None:
        with open(self.path, "rb") as f:
            head = f.read(len(self._signature()))
        if head.startswith((",".join(LEGACY_COLUMNS) + "\n").encode()):
            self._columns = LEGACY_COLUMNS
        else:
            super()._check_ours()

    def rows(self) -> Iterator[dict]:
        with open(self.path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != list(self._columns):
                raise self._bad("", f"has the header {header!r}, not {list(self._columns)!r}")
            for row in reader:
                yield dict(zip(self._columns, row))

    def _format(self, records: list[Record]) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for r in records:
            cells = {**{k: getattr(r, k) for k in self._columns}, "path": path_text(r.path)}
            writer.writerow(["" if cells[k] is None else cells[k] for k in self._columns])
        return out.getvalue()


class MetadataSink(JsonlSink):
    """``DIR/metadata.jsonl`` for a Hugging Face ImageFolder dataset: ``{"file_name", "text"}``."""

    what = "metadata.jsonl"
    wants_errors = False
    _key_field = "file_name"

    def __init__(self, folder: str | os.PathLike, existing: str = "skip"):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SinkError(f"--metadata-jsonl {folder}: not a folder")
        super().__init__(self.folder / "metadata.jsonl", existing)

    def prepare(self, paths: Sequence[str]) -> None:
        for path in paths:
            if "://" in path or self.key_of(path).startswith("../"):
                raise ValueError(f"--metadata-jsonl {self.folder}: {path} is not inside it; an ImageFolder "
                                 f"dataset holds its images under the folder of its metadata.jsonl")

    def key_of(self, path: str) -> str:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.folder))).as_posix()

    def key(self, record: Record) -> str:
        return self.key_of(record.path)

    def has(self, path: str) -> bool:
        return super().has(self.key_of(path))

    def _scan(self) -> Iterator[tuple[str, str | None]]:
        for row in self.rows():
            yield path_from_text(row["file_name"]), None

    def _row_key(self, row: dict) -> str:
        return row["file_name"]

    def known(self) -> Iterator[Record]:
        return iter(())  # no sha256 or options digest here

    def _format(self, records: list[Record]) -> str:
        return "".join(json.dumps({"file_name": path_text(self.key(r)), "text": r.caption}, ensure_ascii=False) + "\n"
                       for r in records)

    def _format_rows(self, rows: Iterable[dict]) -> str:
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


OUTPUT_FORMATS = (".jsonl", ".csv", ".parquet")


def open_output(path: str | os.PathLike, existing: str = "skip") -> Sink:
    """The table writer for ``path``, chosen by its extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"--output {path}: unknown format {suffix or '(no extension)'!r}; "
                         f"use one of {', '.join(OUTPUT_FORMATS)}")
    if suffix == ".parquet":
        from .parquet import ParquetSink  # parquet.py builds on this module's JSONL journal

        return ParquetSink(path, existing)
    return (JsonlSink if suffix == ".jsonl" else CsvSink)(path, existing)
