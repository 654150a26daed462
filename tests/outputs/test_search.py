"""`blipcap index` and `blipcap search` through the real entry point, on a generated folder the
trained fixture captions exactly: colour and shape queries find the right images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers.folders import run_cli, write_shapes
from tests.helpers.shapes import make_image


@pytest.fixture(scope="module")
def library(tiny_fixture, tmp_path_factory):
    """A folder of 48 shape images indexed into the default database of a private data folder."""
    root = tmp_path_factory.mktemp("search")
    expected = write_shapes(root / "photos", 48, seed=21)
    env = {"XDG_DATA_HOME": str(root / "data")}
    r = run_cli("index", str(root / "photos"), "--model", str(tiny_fixture), "--batch-size", "16", env=env)
    assert r.returncode == 0, r.stderr
    assert (root / "data" / "blipcap" / "index.db").is_file()  # the default place
    return root, {str(Path(p).resolve()): t for p, t in expected.items()}, env


def search(library, query) -> tuple[list[dict], str]:
    root, _, env = library
    r = run_cli("search", "--json", "--limit", "100", "--", query, env=env)  # "--": a query may start with -
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()], r.stderr


@pytest.mark.parametrize("query, words", [
    ("red", ["red"]),
    ("blue squares", ["blue", "square"]),  # porter stemming: squares -> square
    ("yellow triangle at the top", ["yellow", "triangle", "top"]),
    ("GREEN circle on the LEFT", ["green", "circle", "left"]),
])
def test_colour_and_shape_queries_find_exactly_the_right_images(library, query, words):
    _, expected, _ = library
    hits, _ = search(library, query)
    want = {p for p, caption in expected.items() if all(w in caption.split() for w in words)}
    assert want, "the generated folder should hold such images"
    assert {h["path"] for h in hits} == want
    for h in hits:
        assert h["caption"] == expected[h["path"]]
        assert "[" in h["snippet"] and h["rank"] <= 0


def test_plain_output_is_path_tab_highlighted_snippet(library):
    root, expected, env = library
    r = run_cli("search", "red circle left", env=env)
    assert r.returncode == 0
    for line in r.stdout.splitlines():
        path, snippet = line.split("\t")
        assert expected[path] == "a red circle on the left" and snippet == "a [red] [circle] on the [left]"


@pytest.mark.parametrize("query", ['"red', "red AND NOT", "NEAR(red circle)", "red*", "caption:red", "-red", "(red"])
def test_hostile_queries_search_their_words(library, query):
    hits, _ = search(library, query)
    assert hits and all("red" in h["caption"] for h in hits[:1])


def test_a_query_with_no_words_is_a_usage_error(library):
    root, _, env = library
    r = run_cli("search", '"*()', env=env)
    assert r.returncode == 2 and "no words" in r.stderr and "Traceback" not in r.stderr


def test_no_match_is_an_empty_result(library):
    hits, err = search(library, "purple hexagon")
    assert hits == [] and "no image matches" in err


def test_a_missing_index_is_a_setup_error(tmp_path):
    r = run_cli("search", "red", "--db", str(tmp_path / "none.db"))
    assert r.returncode == 1 and "no search index at" in r.stderr and "blipcap index" in r.stderr
    assert not (tmp_path / "none.db").exists()


def test_reindex_replaces_changed_files_skips_the_rest_and_prune_drops_the_gone(tiny_fixture, tmp_path):
    photos = tmp_path / "photos"
    expected = write_shapes(photos, 6, seed=22)
    db = str(tmp_path / "i.db")
    assert run_cli("index", str(photos), "--model", str(tiny_fixture), "--db", db).returncode == 0
    changed, gone = sorted(expected)[:2]
    make_image("red", "square", "left").save(changed)  # new content, same name
    os.unlink(gone)
    r = run_cli("index", str(photos), "--model", str(tiny_fixture), "--db", db, "--prune")
    assert r.returncode == 0, r.stderr
    assert "1 captioned, 4 skipped (already done)" in r.stderr and "pruned 1 entry" in r.stderr
    r = run_cli("search", "red square left", "--db", db, "--json")
    assert [json.loads(line)["path"] for line in r.stdout.splitlines()] == [str(Path(changed).resolve())]
    r = run_cli("search", expected[gone], "--db", db, "--json")
    assert str(Path(gone).resolve()) not in r.stdout
    r = run_cli("index", "--prune", "--db", db)
    assert r.returncode == 0 and "pruned 0 entries" in r.stderr
    assert run_cli("index", "--db", db).returncode == 2  # nothing to do
