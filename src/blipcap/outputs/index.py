"""The search index: captions in an SQLite file with a full-text (FTS5) table, and the search.

One row per image, keyed by its absolute path, with its caption, sha256, size and mtime (a file
whose size or mtime changed is captioned again and its row replaced), the model and options.
The FTS5 table uses the ``porter unicode61`` tokenizer (case- and accent-insensitive, "dogs" finds
"dog") and is kept in step by triggers. Queries are built from the words of the user's text only,
each quoted, so quotes, operators (AND, NOT, NEAR, ``*``, ``^``, ``:``) and punctuation are plain
text and never an FTS syntax error. Results are ranked by bm25; when no image has every word,
images with any of them are returned, still best first.

SQLite is embedded: no server. The default database is ``index.db`` in blipcap's folder of the
user's data directory (see ``default_db_path``).
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .paths import path_from_text, path_text
from .records import Record, Sink, SinkError, check_mode

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,      -- absolute
    caption TEXT NOT NULL,
    score REAL,
    sha256 TEXT,
    width INTEGER,
    height INTEGER,
    size INTEGER,                   -- bytes, and
    mtime_ns INTEGER,               -- modification time, when captioned: a change re-captions
    model_id TEXT,
    revision TEXT,
    options_digest TEXT,
    indexed_at REAL                 -- unix time
);
CREATE VIRTUAL TABLE captions USING fts5(
    caption, content='images', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER images_ai AFTER INSERT ON images BEGIN
    INSERT INTO captions(rowid, caption) VALUES (new.id, new.caption);
END;
CREATE TRIGGER images_ad AFTER DELETE ON images BEGIN
    INSERT INTO captions(captions, rowid, caption) VALUES ('delete', old.id, old.caption);
END;
CREATE TRIGGER images_au AFTER UPDATE ON images BEGIN
    INSERT INTO captions(captions, rowid, caption) VALUES ('delete', old.id, old.caption);
    INSERT INTO captions(rowid, caption) VALUES (new.id, new.caption);
END;
"""
_WORD = re.compile(r"\w+")
# Left out when falling back to "any word": they are in nearly every caption, so would match all.
_COMMON = frozenset("a an the of on in at to with and or is are there it its this that by for from".split())


def default_db_path() -> Path:
    """``index.db`` in the user's data directory: $XDG_DATA_HOME/blipcap (~/.local/share/blipcap),
    ~/Library/Application Support/blipcap on macOS, %LOCALAPPDATA%\\blipcap on Windows."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "blipcap" / "index.db"


@dataclass
class Hit:
    path: str
    caption: str
    snippet: str  # the caption with the matched words between the highlight marks
    rank: float  # bm25: lower is better


def fts_query(text: str, any_word: bool = False) -> str:
    """An FTS5 MATCH expression for the words of ``text``: each word a quoted string (so no word is
    an operator), all of them required, or with ``any_word`` any of them except the most common
    ("a", "on", "the", ...) unless there is nothing else."""
    words = _WORD.findall(text)
    if not words:
        raise ValueError(f"the query {text!r} has no words to search for")
    if any_word:
        words = [w for w in words if w.lower() not in _COMMON] or words
    quoted = ['"' + w.replace('"', '""') + '"' for w in words]
    return (" OR " if any_word else " ").join(quoted)


class Index:
    """An open index database."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            if not create:
                raise SinkError(f"no search index at {self.path}; build one with `blipcap index PHOTOS...`")
            if not self.path.parent.is_dir():
                raise SinkError(f"cannot create the index {self.path}: the folder {self.path.parent} does not exist")
        try:
            self.db = sqlite3.connect(self.path)
            self._check_schema()
        except sqlite3.OperationalError as e:  # the file is fine; the disk or the permissions are not
            raise SinkError(f"cannot open the index {self.path}: {e}") from e
        except sqlite3.DatabaseError as e:
            raise SinkError(f"{self.path} is not a blipcap index ({e})") from e

    def _check_schema(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == SCHEMA_VERSION and {"images", "captions"} <= tables:
            return
        if version or tables:
            raise SinkError(f"{self.path} is not a blipcap index (schema {version}, tables {sorted(tables)})")
        try:
            with self.db:
                self.db.executescript(_SCHEMA)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.OperationalError as e:
            if "fts5" in str(e):
                raise SinkError("this Python's SQLite was built without FTS5, which the index needs") from e
            raise
        self.db.execute("PRAGMA journal_mode = WAL")  # searches can read while a job writes

    def stamp(self, path: str) -> tuple[int, int] | None:
        """(size, mtime_ns) recorded for ``path`` (absolute), or None."""
        row = self.db.execute("SELECT size, mtime_ns FROM images WHERE path = ?", (path_text(path),)).fetchone()
        return (row[0], row[1]) if row else None

    def put(self, records: Sequence[Record]) -> None:
        """Insert or replace the rows of captioned records; drop the rows of records that failed."""
        try:
            self._put(records)
        except sqlite3.DatabaseError as e:  # full disk, a file damaged under us: earlier batches are committed
            raise SinkError(f"cannot write the index {self.path}: {e}; the batches before are kept") from e

    def _put(self, records: Sequence[Record]) -> None:
        now = time.time()
        with self.db:
            for r in records:
                path = os.path.abspath(r.path)
                if not r.ok:
                    self.db.execute("DELETE FROM images WHERE path = ?", (path_text(path),))
                    continue
                try:
                    st = os.stat(path)
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:
                    size = mtime = None
                self.db.execute(
                    "INSERT INTO images (path, caption, score, sha256, width, height, size, mtime_ns, model_id,"
                    " revision, options_digest, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(path) DO UPDATE SET caption = excluded.caption, score = excluded.score,"
                    " sha256 = excluded.sha256, width = excluded.width, height = excluded.height,"
                    " size = excluded.size, mtime_ns = excluded.mtime_ns, model_id = excluded.model_id,"
                    " revision = excluded.revision, options_digest = excluded.options_digest,"
                    " indexed_at = excluded.indexed_at",
                    (path_text(path), r.caption or "", r.score, r.sha256, r.width, r.height, size, mtime, r.model_id,
                     r.revision, r.options_digest, now),
                )

    def records(self) -> list[Record]:
        rows = self.db.execute("SELECT path, caption, score, sha256, width, height, model_id, revision,"
                               " options_digest FROM images ORDER BY path")
        return [Record(path_from_text(path), *rest) for path, *rest in rows]

    def prune(self) -> list[str]:
        """Drop the rows of files that no longer exist; return their paths."""
        gone = [p for (p,) in self.db.execute("SELECT path FROM images") if not os.path.exists(path_from_text(p))]
        with self.db:
            self.db.executemany("DELETE FROM images WHERE path = ?", [(p,) for p in gone])
        return gone

    def search(self, query: str, limit: int = 20, highlight: tuple[str, str] = ("[", "]")) -> list[Hit]:
        """Images whose captions match the words of ``query``, best first (see the module docstring)."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        sql = ("SELECT images.path, images.caption, snippet(captions, 0, ?, ?, '…', 16), bm25(captions)"
               " FROM captions JOIN images ON images.id = captions.rowid"
               " WHERE captions MATCH ? ORDER BY bm25(captions), images.path LIMIT ?")
        for any_word in (False, True):
            try:
                rows = self.db.execute(sql, (*highlight, fts_query(query, any_word), limit)).fetchall()
            except sqlite3.DatabaseError as e:  # a damaged file can open and still fail here
                raise SinkError(f"cannot search the index {self.path}: {e}; build it again with "
                                f"`blipcap index PHOTOS...` after moving it away") from e
            if rows:
                return [Hit(*row) for row in rows]
        return []

    def close(self) -> None:
        self.db.close()


class IndexSink(Sink):
    """Adds captions to an Index (``--index DB``, ``blipcap index``)."""

    wants_errors = True  # a file that now fails loses its stale row

    def __init__(self, db: str | os.PathLike, existing: str = "skip"):
        self.existing = check_mode(existing)
        self.index = Index(db)

    def clash(self, path: str) -> str | None:
        if "://" in path:
            return "a URL cannot be indexed: the index holds files, to find them again"
        return None

    def has(self, path: str) -> bool:
        path = os.path.abspath(path)
        stamp = self.index.stamp(path)
        if stamp is None:
            return False
        try:
            st = os.stat(path)
        except OSError:
            return False
        return stamp == (st.st_size, st.st_mtime_ns)

    def known(self):
        return iter(r for r in self.index.records() if r.sha256)

    def write(self, records: list[Record]) -> list[tuple[Record, str]]:
        self.index.put(records)
        return []

    def close(self) -> None:
        self.index.close()
