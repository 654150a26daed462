"""Issue 15, training sets: --prefix/--suffix around every written caption, and the ``truncated``
column (the caption stopped at max_new_tokens), including tables written before that column."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from blipcap import Captioner
from blipcap.jobs.common import Reporter, final_text, options_digest
from blipcap.jobs.local import BulkJob
from blipcap.options import CaptionOptions
from blipcap.outputs.records import COLUMNS, LEGACY_COLUMNS, Record
from blipcap.outputs.sinks import SidecarSink
from blipcap.outputs.parquet import ParquetSink
from blipcap.outputs.tables import CsvSink, JsonlSink
from tests.helpers.folders import run_cli, write_shapes

pa = pytest.importorskip("pyarrow", reason="pyarrow is in the test extra")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is in the test extra")


@pytest.fixture(scope="module")
def cap(tiny_fixture) -> Captioner:
    return Captioner.load(tiny_fixture, device="cpu", dtype="float32")


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_truncated_is_set_only_when_the_token_limit_stopped_the_caption(cap, tmp_path):
    path = next(iter(write_shapes(tmp_path, 1, seed=3)))
    full = cap.caption(path, max_new_tokens=30)[0]
    cut = cap.caption(path, max_new_tokens=2)[0]
    assert not full.truncated and cut.truncated and len(cut.token_ids) == 2
    beams = cap.caption(path, max_new_tokens=2, num_beams=2, num_return_sequences=2)[0]
    assert beams.truncated and all(a.truncated for a in beams.alternatives)


def test_final_text_and_digest_with_prefix_and_suffix():
    assert final_text("a red circle", None, "ohwx, ", " [x]") == "ohwx, a red circle [x]"
    assert final_text("a red circle", 125, "ohwx, ") == "ohwx, A red circle."
    base = CaptionOptions()
    assert options_digest(base, None) == options_digest(base, None, "", "")  # old digests unchanged
    assert options_digest(base, None, "ohwx, ") != options_digest(base, None)
    assert options_digest(base, None, "", "x") != options_digest(base, None, "x", "")


def test_prefix_suffix_reach_sidecars_and_tables_and_truncated_is_a_column(cap, tmp_path):
    expected = write_shapes(tmp_path / "p", 3, seed=4)
    paths = sorted(expected)
    sinks = [SidecarSink("txt"), JsonlSink(tmp_path / "o.jsonl"), CsvSink(tmp_path / "o.csv"),
             ParquetSink(tmp_path / "o.parquet")]
    summary = BulkJob(paths, sinks, prefix="ohwx, ", suffix=", photo", reporter=Reporter()).run(cap)
    assert summary.captioned == 3
    for p in paths:
        assert Path(p).with_suffix(".txt").read_text() == f"ohwx, {expected[p]}, photo\n"
    rows = jsonl(tmp_path / "o.jsonl")
    assert [r["caption"] for r in rows] == [f"ohwx, {expected[p]}, photo" for p in paths]
    assert [r["truncated"] for r in rows] == [False] * 3 and list(rows[0]) == list(COLUMNS)
    with open(tmp_path / "o.csv", newline="") as f:
        assert [r["truncated"] for r in csv.DictReader(f)] == ["False"] * 3
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.schema.field("truncated").type == pa.bool_() and table.column("truncated").to_pylist() == [False] * 3

    cut = BulkJob(paths, [JsonlSink(tmp_path / "cut.jsonl")], overrides={"max_new_tokens": 2},
                  reporter=Reporter()).run(cap)
    assert cut.captioned == 3 and [r["truncated"] for r in jsonl(tmp_path / "cut.jsonl")] == [True] * 3


def test_a_new_prefix_does_not_reuse_captions_written_with_another(cap, tmp_path):
    paths = sorted(write_shapes(tmp_path / "p", 2, seed=5))
    BulkJob(paths, [JsonlSink(tmp_path / "a.jsonl")], prefix="ohwx, ", reporter=Reporter()).run(cap)
    # a second output in the same run would reuse matching captions (by sha256 + digest) from the first
    sinks = [JsonlSink(tmp_path / "a.jsonl"), JsonlSink(tmp_path / "b.jsonl")]
    BulkJob(paths, sinks, prefix="sks ", reporter=Reporter()).run(cap)
    assert all(r["caption"].startswith("sks ") for r in jsonl(tmp_path / "b.jsonl"))


def _legacy_row(path: str) -> list[str]:
    return [path, "a red circle on the left", "-0.5", "ab" * 32, "120", "90", "m", "", "d" * 16, ""]


def test_a_csv_written_before_the_truncated_column_is_read_and_extended_in_its_own_layout(tmp_path):
    out = tmp_path / "old.csv"
    out.write_text(",".join(LEGACY_COLUMNS) + "\n" + ",".join(_legacy_row("/x/old.jpg")) + "\n")
    sink = CsvSink(out)
    assert sink.has("/x/old.jpg")
    assert [r.truncated for r in sink.known()] == [None]
    new = Record("/x/new.jpg", "a blue square", -0.1, "cd" * 32, 10, 10, "m", None, "d" * 16, truncated=True)
    sink.write([new])
    sink.close()
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(LEGACY_COLUMNS) and len(lines) == 3
    assert all(len(next(csv.reader([line]))) == len(LEGACY_COLUMNS) for line in lines)
    reopened = CsvSink(out)
    assert reopened.has("/x/new.jpg") and reopened.has("/x/old.jpg")
    reopened.close()


def test_a_jsonl_row_without_truncated_reads_as_unknown(tmp_path):
    out = tmp_path / "old.jsonl"
    out.write_text(json.dumps(dict(zip(LEGACY_COLUMNS, _legacy_row("/x/old.jpg")))) + "\n")
    sink = JsonlSink(out)
    assert [r.truncated for r in sink.known()] == [None]
    sink.close()


def test_a_parquet_table_written_before_the_truncated_column_is_read_and_upgraded(tmp_path):
    out = tmp_path / "old.parquet"
    row = dict(zip(LEGACY_COLUMNS, _legacy_row("/x/old.jpg")))
    row.update(score=-0.5, width=120, height=90, revision=None, error=None)
    types = {"score": pa.float64(), "width": pa.int64(), "height": pa.int64()}
    schema = pa.schema([(c, types.get(c, pa.string())) for c in LEGACY_COLUMNS])
    pq.write_table(pa.Table.from_pylist([row], schema=schema), out)
    sink = ParquetSink(out)
    assert sink.has("/x/old.jpg") and [r.truncated for r in sink.known()] == [None]
    sink.write([Record("/x/new.jpg", "x", -0.1, "cd" * 32, 10, 10, "m", None, "d" * 16, truncated=False)])
    sink.close()
    table = pq.read_table(out)
    assert table.schema.names == list(COLUMNS)
    assert dict(zip(table.column("path").to_pylist(), table.column("truncated").to_pylist())) == {
        "/x/old.jpg": None, "/x/new.jpg": False}


def test_cli_prefix_and_suffix(tiny_fixture, tmp_path):
    expected = write_shapes(tmp_path / "p", 2, seed=6)
    r = run_cli("caption", str(tmp_path / "p"), "--model", str(tiny_fixture), "--sidecar", "--prefix", "ohwx, ",
                "--suffix", ".", "--quiet")
    assert r.returncode == 0, r.stderr
    for p, text in expected.items():
        assert Path(p).with_suffix(".txt").read_text() == f"ohwx, {text}.\n"
    ray = run_cli("caption", str(tmp_path / "p"), "--engine", "ray", "--output", str(tmp_path / "o"), "--prefix", "x")
    assert ray.returncode == 2 and "--prefix/--suffix" in ray.stderr
