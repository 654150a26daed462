"""The search service: requests of the search routes -> calls on the index and the thumbnailer ->
plain JSON values, or a `SearchError` the router answers as {"error", "error_type"}.

The index is read through one SQLite connection per thread (the routes run on a thread pool, and a
connection belongs to the thread that made it); SQLite's WAL lets them read while a job writes.
"""

from __future__ import annotations

import html
import os
import re
import threading
from pathlib import Path

from ...outputs.index import Index, default_cache_dir
from .thumbnails import SIZES, Refused, Thumbnail, Thumbnails

MAX_LIMIT = 100  # results per page
MAX_OFFSET = 100_000
MAX_CAPTION = 1000  # characters of a person's caption
# Marks FTS5 puts around matched words; private-use characters, so never in a caption, and HTML
# escaping leaves them alone: they become <mark> after the caption text is escaped.
_OPEN, _CLOSE = "\ue000", "\ue001"
_ID = re.compile(r"[0-9]{1,18}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ue000\ue001]")


class SearchError(Exception):
    def __init__(self, status: int, message: str, kind: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


class SearchService:
    """Search, thumbnails and (with ``allow_edits``) caption edits over one index file."""

    def __init__(self, db: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 max_pixels: int | None = None, allow_edits: bool = False):
        self.db = Path(os.path.abspath(db))
        Index(self.db, create=False).close()  # a missing or foreign file fails at startup; schema 1 migrates
        self.thumbnails = Thumbnails(cache_dir or default_cache_dir(), max_pixels=max_pixels)
        self.allow_edits = allow_edits
        self._local = threading.local()

    def _index(self) -> Index:
        index = getattr(self._local, "index", None)
        if index is None:
            index = self._local.index = Index(self.db, create=False)
        return index

    def search(self, q: str, limit: str | None, offset: str | None) -> dict:
        n = _bounded_int("limit", limit, 20, 1, MAX_LIMIT)
        skip = _bounded_int("offset", offset, 0, 0, MAX_OFFSET)
        try:
            # one more than asked for: whether there is a next page
            hits = self._index().search(q, limit=n + 1, offset=skip, highlight=(_OPEN, _CLOSE))
        except ValueError:  # no words in it: any text is a valid query, this one finds nothing
            hits = []
        more, hits = len(hits) > n, hits[:n]
        results = [{"id": h.id, "path": h.path, "caption": h.caption, "snippet": highlighted(h.snippet),
                    "rank": h.rank, "width": h.width, "height": h.height,
                    "thumbnail": f"/v1/thumbnail/{h.id}", "image": f"/v1/thumbnail/{h.id}?size=large"}
                   for h in hits]
        return {"query": q, "offset": skip, "limit": n, "results": results,
                "next_offset": skip + n if more else None, "editable": self.allow_edits}

    def thumbnail(self, id: str, size: str | None, if_none_match: str | None) -> Thumbnail:
        size = size or "small"
        if size not in SIZES:
            raise SearchError(422, f"size must be one of {', '.join(SIZES)}, got {size!r}", "bad_request")
        entry = self._index().entry(_row_id(id))
        if entry is None:
            raise SearchError(404, f"no image {id} in the index", "not_found")
        try:
            return self.thumbnails.get(entry, size, if_none_match)
        except Refused as e:
            raise SearchError(e.status, e.message, e.kind) from None

    def edit(self, id: str, body: object) -> dict:
        if not self.allow_edits:
            raise SearchError(403, "caption edits are off; start the server with --allow-edits", "edits_disabled")
        caption = body.get("caption") if isinstance(body, dict) else None
        if not isinstance(caption, str) or not caption.strip():
            raise SearchError(422, 'send JSON {"caption": "the new caption"}', "bad_request")
        caption = " ".join(caption.split())
        if len(caption) > MAX_CAPTION or _CONTROL.search(caption):
            raise SearchError(422, f"a caption is at most {MAX_CAPTION} characters of text", "bad_request")
        row = _row_id(id)
        if not self._index().edit(row, caption):
            raise SearchError(404, f"no image {id} in the index", "not_found")
        return {"id": row, "caption": caption, "edited": True}


def highlighted(snippet: str) -> str:
    """The snippet as safe HTML: its text escaped, the matched words in <mark>."""
    return html.escape(snippet, quote=True).replace(_OPEN, "<mark>").replace(_CLOSE, "</mark>")


def _row_id(text: str) -> int:
    if not _ID.fullmatch(text):  # an id, never a path: ../x, /etc/passwd and the like are no image
        raise SearchError(404, f"no image {text[:40]!r} in the index: images are named by their index id",
                          "not_found")
    return int(text)


def _bounded_int(name: str, text: str | None, default: int, low: int, high: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise SearchError(422, f"{name} must be an integer, got {text[:40]!r}", "bad_request") from None
    if not low <= value <= high:
        raise SearchError(422, f"{name} must be between {low} and {high}, got {value}", "bad_request")
    return value
