"""The SQLite FTS5 index on its own: rows, replacement, change detection, pruning, ranking,
stemming, and query strings that would be FTS syntax errors if passed through."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from blipcap.outputs.index import Index, IndexSink, default_cache_dir, default_db_path, fts_query
from blipcap.outputs.records import Record, SinkError

CAPTIONS = {
    "beach.jpg": "a dog running on the beach",
    "dogs.jpg": "two dogs playing in the snow",
    "cat.jpg": "a cat sitting on a sofa",
    "café.jpg": "people drinking coffee in a café",
    "red.jpg": "a red circle on the left",
}


def rec(path, caption) -> Record:
    return Record(str(path), caption, -0.1, "00" * 32, 10, 10, "tiny", None, "digest")


@pytest.fixture()
def index(tmp_path) -> Index:
    for name in CAPTIONS:
        (tmp_path / name).write_bytes(b"x")
    index = Index(tmp_path / "index.db")
    index.put([rec(tmp_path / name, caption) for name, caption in CAPTIONS.items()])
    yield index
    index.close()


def found(index, query, **kw) -> list[str]:
    return [os.path.basename(hit.path) for hit in index.search(query, **kw)]


def test_words_stems_case_and_accents(index):
    assert found(index, "dog beach") == ["beach.jpg"]
    assert sorted(found(index, "dog")) == ["beach.jpg", "dogs.jpg"]  # porter: dogs -> dog
    assert found(index, "RUNS") == ["beach.jpg"]  # running -> run
    assert found(index, "cafe") == ["café.jpg"]  # unicode61 folds the accent
    assert found(index, "Red Circle") == ["red.jpg"]


def test_every_word_first_then_any_word_best_first(index):
    assert found(index, "dog on a sofa", limit=3)[0] in ("cat.jpg", "beach.jpg")
    assert set(found(index, "snow sofa")) == {"dogs.jpg", "cat.jpg"}  # no caption has both
    assert found(index, "purple elephant") == []
    assert len(found(index, "a", limit=2)) == 2


def test_snippets_highlight_the_matched_words(index):
    (hit,) = index.search("running beach", highlight=("<b>", "</b>"))
    assert hit.snippet == "a dog <b>running</b> on the <b>beach</b>" and hit.caption == CAPTIONS["beach.jpg"]
    assert hit.path.endswith("beach.jpg") and os.path.isabs(hit.path)


@pytest.mark.parametrize("query", [
    'dog"', 'a " b', "dog AND", "OR dog", "NOT", "AND OR NOT", "dog NEAR(cat)", "NEAR(",
    "dog*", "^dog", "caption:dog", "path:x", "-dog", "dog -cat", "(dog", "dog)", "{dog}", "[dog]",
    "dog + cat", "d'og", "😀 dog", "\x00dog", "a" * 5000, "dog\ncat", "dog; DROP TABLE images; --",
])
def test_hostile_query_strings_never_raise(index, query):
    hits = index.search(query)
    assert isinstance(hits, list)
    if "dog" in query.lower():
        assert hits, query  # the word is still searched for
    assert index.db.execute("SELECT count(*) FROM images").fetchone()[0] == len(CAPTIONS)


@pytest.mark.parametrize("query", ["", "   ", "!!!", '"', '""', "'", "*", "%", '"*"', "()", "-- -"])
def test_a_query_without_words_is_a_usage_error(index, query):
    with pytest.raises(ValueError, match="no words to search for"):
        index.search(query)


def test_fts_query_quotes_every_word():
    assert fts_query('dog" OR cat*') == '"dog" "OR" "cat"'
    assert fts_query("a dog on the cat", any_word=True) == '"dog" OR "cat"'
    assert fts_query("on the", any_word=True) == '"on" OR "the"'


def test_the_any_word_fallback_ignores_words_every_caption_has(index):
    assert found(index, "a dog at the beach") == ["beach.jpg", "dogs.jpg"]  # no "at": dog OR beach, best first
    assert sorted(found(index, "a dog in a field")) == ["beach.jpg", "dogs.jpg"]
    assert found(index, "on a hill") == []


def test_reindexing_replaces_the_row_and_its_text(index, tmp_path):
    index.put([rec(tmp_path / "beach.jpg", "a horse in a field")])
    assert found(index, "beach") == [] and found(index, "horse") == ["beach.jpg"]
    assert index.db.execute("SELECT count(*) FROM images").fetchone()[0] == len(CAPTIONS)
    index.put([Record(str(tmp_path / "beach.jpg"), None, None, None, None, None, "tiny", None, "d", "EmptyImageError: x")])
    assert found(index, "horse") == []  # a file that now fails loses its stale row


def test_changed_files_are_captioned_again(tmp_path):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"one")
    sink = IndexSink(tmp_path / "i.db")
    assert sink.wants(str(photo))
    sink.write([rec(photo, "a cat")])
    assert not sink.wants(str(photo))
    photo.write_bytes(b"other bytes")
    assert sink.wants(str(photo))  # new size
    sink.write([rec(photo, "a dog")])
    st = photo.stat()
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert sink.wants(str(photo))  # same size, new mtime
    assert IndexSink(tmp_path / "i.db", "overwrite").wants(str(photo))
    sink.close()


def test_prune_drops_rows_of_files_that_are_gone(index, tmp_path):
    (tmp_path / "cat.jpg").unlink()
    gone = index.prune()
    assert [os.path.basename(p) for p in gone] == ["cat.jpg"]
    assert found(index, "cat") == [] and index.prune() == []


def test_a_file_that_is_not_an_index_is_refused_untouched(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(SinkError, match="is not a blipcap index"):
        Index(junk)
    assert junk.read_bytes() == b"this is not a database at all" * 100
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (x)")
    with pytest.raises(SinkError, match="is not a blipcap index"):
        Index(other)
    with pytest.raises(SinkError, match="no search index at"):
        Index(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_searching_while_a_job_writes(index, tmp_path):
    reader = Index(tmp_path / "index.db", create=False)
    index.db.execute("BEGIN")
    index.db.execute("DELETE FROM images")  # a writer mid-transaction (WAL): readers see the last commit
    assert sorted(found(reader, "dog")) == ["beach.jpg", "dogs.jpg"]
    index.db.rollback()
    reader.close()


def test_default_database_is_in_the_user_data_folder(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_db_path() == tmp_path / "data" / "blipcap" / "index.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / ".local" / "share" / "blipcap" / "index.db"
    monkeypatch.setattr("sys.platform", "darwin")
    assert default_db_path() == tmp_path / "home" / "Library" / "Application Support" / "blipcap" / "index.db"


def test_indexed_at_is_recorded(index):
    (stamp,) = index.db.execute("SELECT max(indexed_at) FROM images").fetchone()
    assert abs(stamp - time.time()) < 60


def test_a_row_keeps_its_id_when_captioned_again(index, tmp_path):
    (before,) = index.db.execute("SELECT id FROM images WHERE path = ?", (str(tmp_path / "cat.jpg"),)).fetchone()
    index.put([rec(tmp_path / "cat.jpg", "a cat asleep on a sofa")])
    (hit,) = index.search("asleep")
    assert hit.id == before and (hit.width, hit.height) == (10, 10)
    assert index.entry(before).caption == "a cat asleep on a sofa" and index.entry(10_000) is None


def test_pages_of_results(index):
    everything = [h.path for h in index.search("a", limit=10)]
    assert [h.path for h in index.search("a", limit=2, offset=1)] == everything[1:3]
    assert index.search("dog", offset=5) == []  # past the end, not the any-word fallback
    with pytest.raises(ValueError, match="offset"):
        index.search("dog", offset=-1)


SCHEMA_1 = """
CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, caption TEXT NOT NULL, score REAL,
    sha256 TEXT, width INTEGER, height INTEGER, size INTEGER, mtime_ns INTEGER, model_id TEXT, revision TEXT,
    options_digest TEXT, indexed_at REAL);
CREATE VIRTUAL TABLE captions USING fts5(caption, content='images', content_rowid='id', tokenize='porter unicode61');
CREATE TRIGGER images_ai AFTER INSERT ON images BEGIN
    INSERT INTO captions(rowid, caption) VALUES (new.id, new.caption);
END;
CREATE TRIGGER images_au AFTER UPDATE ON images BEGIN
    INSERT INTO captions(captions, rowid, caption) VALUES ('delete', old.id, old.caption);
    INSERT INTO captions(rowid, caption) VALUES (new.id, new.caption);
END;
INSERT INTO images (id, path, caption, size, mtime_ns) VALUES (7, '/photos/a.jpg', 'a dog on a beach', 1, 2);
PRAGMA user_version = 1;
"""


def test_a_schema_1_index_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.executescript(SCHEMA_1)
    index = Index(tmp_path / "old.db", create=False)
    assert index.db.execute("PRAGMA user_version").fetchone()[0] == 2
    (hit,) = index.search("beach")
    assert (hit.id, hit.path) == (7, "/photos/a.jpg")
    entry = index.entry(7)
    assert entry.real_path is None and entry.edited_at is None
    assert index.edit(7, "a dog on the sand") and index.edited("/photos/a.jpg")
    assert [h.id for h in index.search("sand")] == [7]
    index.close()
    assert Index(tmp_path / "old.db", create=False).entry(7).caption == "a dog on the sand"  # opened again: as is


def test_an_edited_caption_outlives_caption_runs(index, tmp_path):
    (row,) = index.db.execute("SELECT id FROM images WHERE path = ?", (str(tmp_path / "cat.jpg"),)).fetchone()
    assert index.edit(row, "a tabby cat") and not index.edit(10_000, "x")
    index.put([rec(tmp_path / "cat.jpg", "a cat sitting on a sofa")])
    index.put([Record(str(tmp_path / "cat.jpg"), None, None, None, None, None, "tiny", None, "d", "Err: x")])
    assert found(index, "tabby") == ["cat.jpg"] and index.entry(row).edited_at is not None
    sink = IndexSink(tmp_path / "index.db", "overwrite")
    assert not sink.wants(str(tmp_path / "cat.jpg")) and sink.wants(str(tmp_path / "dogs.jpg"))
    sink.close()


def test_the_cache_folder_is_the_user_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "blipcap"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "blipcap"
    monkeypatch.setattr("sys.platform", "darwin")
    assert default_cache_dir() == tmp_path / "home" / "Library" / "Caches" / "blipcap"
