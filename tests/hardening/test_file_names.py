"""Issue 13 item 1: file names that are not valid UTF-8, or hold a tab or a newline, are captioned like any
other and recorded in every output in the documented form (outputs/paths.py) that reads back to the file."""

from __future__ import annotations

import csv
import json
import os
import sqlite3

import pytest

from blipcap.outputs.paths import line_path, path_from_text, path_text
from tests.helpers.folders import jpeg_bytes, run_cli
from tests.helpers.shapes import caption_for

# bytes that are not UTF-8, a tab, a newline
ODD_NAMES = [b"bad\xff.jpg", b"lat\xe9.jpg", b"tab\there.jpg", b"new\nline.jpg"]


def odd_folder(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(jpeg_bytes("red", "circle", "left"))
    for name in ODD_NAMES:
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(jpeg_bytes("blue", "square", "top"))
    return folder


def test_path_text_round_trips_any_bytes():
    for raw in [b"plain.jpg", b"\xff\xfe\x80", b"caf\xc3\xa9 \xe9.png", b"\\x.\xff.jpg"]:
        path = os.fsdecode(raw)
        text = path_text(path)
        text.encode("utf-8")  # every output can hold it
        assert os.fsencode(path_from_text(text)) == raw
    assert path_text("café.jpg") == "café.jpg"  # valid names are written as they are
    assert line_path("a\tb\nc\r.jpg") == "a\\tb\\nc\\r.jpg"


@pytest.mark.parametrize("output", ["o.jsonl", "o.csv", "o.parquet"])
def test_every_table_records_odd_names_and_a_rerun_skips_them(tiny_fixture, tmp_path, output):
    folder = odd_folder(tmp_path)
    out = tmp_path / output
    args = ["caption", str(folder), "--model", str(tiny_fixture), "--output", str(out), "--quiet"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    if output.endswith(".jsonl"):
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    elif output.endswith(".csv"):
        rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    assert len(rows) == 1 + len(ODD_NAMES)
    for row in rows:
        raw = os.fsencode(path_from_text(row["path"]))
        assert os.path.isfile(raw), row["path"]  # the recorded text opens the file
        want = caption_for("red", "circle", "left") if raw.endswith(b"good.jpg") else caption_for("blue", "square", "top")
        assert row["caption"] == want and not row["error"]
    before = out.read_bytes()
    again = run_cli(*args[:-1])  # without --quiet: the summary says what was done
    assert again.returncode == 0 and "0 captioned, 5 skipped" in again.stderr, again.stderr
    assert out.read_bytes() == before


def test_plain_output_index_sidecars_and_error_log_take_odd_names(tiny_fixture, tmp_path):
    folder = odd_folder(tmp_path)
    open(os.path.join(os.fsencode(folder), b"broken\xff.jpg"), "wb").close()  # empty: one failure
    db, log = tmp_path / "i.db", tmp_path / "errors.log"
    done = run_cli("caption", str(folder), "--model", str(tiny_fixture), "--index", str(db), "--sidecar",
                   "--errors", str(log), "--json", "--quiet")
    assert done.returncode == 3, done.stderr  # the empty file
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(os.fsencode(path_from_text(r["path"])) for r in printed) == sorted(
        os.path.join(os.fsencode(folder), n) for n in [b"good.jpg", b"broken\xff.jpg", *ODD_NAMES])
    paths = [path_from_text(p) for (p,) in sqlite3.connect(db).execute("SELECT path FROM images")]
    assert len(paths) == 5 and all(os.path.isfile(p) for p in paths)
    for name in ODD_NAMES:  # a sidecar beside each, under the same odd name
        assert os.path.isfile(os.path.join(os.fsencode(folder), name.rsplit(b".", 1)[0] + b".txt"))
    line, = log.read_text(encoding="utf-8").splitlines()  # one line, whatever the name
    assert os.fsencode(path_from_text(line.split("\t")[0])).endswith(b"broken\xff.jpg")

    plain = run_cli("caption", str(folder), "--model", str(tiny_fixture), "--quiet")
    lines = plain.stdout.splitlines()
    assert len(lines) == 5  # tab and newline in names are escaped: one line per image
    assert {line.rsplit("\t", 1)[0] for line in lines} == {
        line_path(os.path.join(str(folder), os.fsdecode(n))) for n in [b"good.jpg", *ODD_NAMES]}
    found = run_cli("search", "blue", "--db", str(db))
    assert found.returncode == 0 and len(found.stdout.splitlines()) == 4, found.stderr


def test_a_250_byte_name_gets_its_sidecar_and_table_row(tiny_fixture, tmp_path):
    """Issue 13 item 10: the hidden temp name beside a long name must fit too."""
    folder = tmp_path / "d"
    folder.mkdir()
    name = "x" * 246 + ".jpg"  # 250 bytes; its .txt sidecar fits, ".<name>.blipcap-tmp" would not
    (folder / name).write_bytes(jpeg_bytes("red", "circle", "left"))
    done = run_cli("caption", str(folder), "--model", str(tiny_fixture), "--sidecar", "--quiet")
    assert done.returncode == 0, done.stderr
    assert (folder / ("x" * 246 + ".txt")).read_text() == caption_for("red", "circle", "left") + "\n"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp file left
