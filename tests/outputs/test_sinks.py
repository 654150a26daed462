"""The writers on their own: tables (torn lines, foreign files, compaction, the Parquet journal),
XMP merging, atomic sidecars, progress output. No model: records are made by hand."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from blipcap.jobs.progress import Progress, Summary
from blipcap.outputs.atomic import atomic_write
from blipcap.outputs.records import Record, SinkError
from blipcap.outputs.sinks import SidecarSink, XmpSink
from blipcap.outputs.parquet import ParquetSink
from blipcap.outputs.tables import CsvSink, JsonlSink, MetadataSink
from blipcap.outputs.xmp import NS, XmpError, merge_caption, read_description

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is in the test extra")


def rec(path, caption="a red circle on the left", error=None, sha="ab" * 32) -> Record:
    return Record(str(path), None if error else caption, None if error else -0.5, sha, 120, 90, "tiny", None,
                  "d1g35t", error)


@pytest.mark.parametrize("kind", [JsonlSink, CsvSink])
def test_a_torn_last_line_is_cut_and_the_rest_kept(tmp_path, kind):
    out = tmp_path / ("t.jsonl" if kind is JsonlSink else "t.csv")
    sink = kind(out)
    sink.write([rec("a.png"), rec("b.png")])
    sink.close()
    whole = out.read_bytes()
    out.write_bytes(whole + whole.splitlines(keepends=True)[-1][:25])  # a kill in the middle of a write
    sink = kind(out)
    assert out.read_bytes() == whole
    assert sink.has("a.png") and sink.has("b.png") and not sink.has("c.png")
    sink.write([rec("c.png")])
    sink.close()
    assert [r.path for r in kind(out).known()] == ["a.png", "b.png", "c.png"]


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    out = tmp_path / "t.jsonl"
    sink = JsonlSink(out)
    sink.write([rec("a.png")])
    sink.close()
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    JsonlSink(out).close()
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == ["a.png"]


@pytest.mark.parametrize("name, content", [
    ("t.jsonl", '{"name": "not ours"}'),  # no final newline: the tail repair must not touch it either
    ("t.jsonl", "plain text\n"),
    ("t.csv", "name,size\nfoo,1\n"),
])
def test_a_file_that_is_not_a_blipcap_table_is_refused_untouched(tmp_path, name, content):
    out = tmp_path / name
    out.write_text(content)
    with pytest.raises(SinkError, match="does not look like a blipcap output"):
        (JsonlSink if name.endswith("jsonl") else CsvSink)(out)
    assert out.read_text() == content


def test_a_corrupt_line_in_the_middle_is_refused(tmp_path):
    out = tmp_path / "t.jsonl"
    out.write_text(json.dumps({"path": "a.png"}) + "\n{oops\n" + json.dumps({"path": "b.png"}) + "\n")
    with pytest.raises(SinkError, match="line 2 is not JSON"):
        JsonlSink(out)


def test_repeated_failures_are_written_once_and_superseded_rows_compacted(tmp_path):
    out = tmp_path / "t.jsonl"
    sink = JsonlSink(out)
    sink.write([rec("a.png", error="TruncatedImageError: cut short"), rec("b.png")])
    sink.write([rec("a.png", error="TruncatedImageError: cut short")])  # same failure: nothing new
    sink.close()
    assert len(out.read_text().splitlines()) == 2
    sink = JsonlSink(out)
    sink.write([rec("a.png", caption="fixed")])
    assert len(out.read_text().splitlines()) == 3  # appended first, flushed: safe against a kill
    sink.close()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["path"], r["caption"]) for r in rows] == [("b.png", "a red circle on the left"), ("a.png", "fixed")]


def test_csv_round_trips_awkward_values(tmp_path):
    out = tmp_path / "t.csv"
    awkward = rec('we"ird, path\nwith newline.png', caption='a "quoted", caption')
    sink = CsvSink(out)
    sink.write([awkward, rec("b.png", error="NotAnImageError: not a recognised image format")])
    sink.close()
    back = list(CsvSink(out).rows())
    assert back[0]["path"] == awkward.path and back[0]["caption"] == awkward.caption
    assert back[1]["error"] == "NotAnImageError: not a recognised image format" and back[1]["caption"] == ""


def test_parquet_rows_survive_a_kill_through_the_journal(tmp_path):
    out = tmp_path / "t.parquet"
    sink = ParquetSink(out)
    sink.write([rec("a.png"), rec("b.png")])
    sink.close()
    assert pq.read_table(out).column("path").to_pylist() == ["a.png", "b.png"]

    sink = ParquetSink(out)
    sink.write([rec("c.png")])  # ... and the process is killed before close():
    journal = tmp_path / ".t.parquet.partial.jsonl"
    assert journal.is_file() and pq.read_table(out).num_rows == 2  # the old file is intact
    del sink

    sink = ParquetSink(out)  # the next run sees the journal's rows as done
    assert sink.has("c.png") and sink.has("a.png") and not sink.has("d.png")
    sink.write([rec("d.png")])
    sink.close()
    assert pq.read_table(out).column("path").to_pylist() == ["a.png", "b.png", "c.png", "d.png"]
    assert not journal.exists()
    assert pq.read_table(out).schema.names == [
        "path", "caption", "score", "sha256", "width", "height", "model_id", "revision", "options_digest", "error",
        "truncated"]  # issue 15: the new column comes last


def test_parquet_needs_pyarrow_and_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    with pytest.raises(SinkError, match=r"pip install 'blipcap\[parquet\]'"):
        ParquetSink(tmp_path / "t.parquet")


def test_a_file_that_is_not_parquet_is_refused_untouched(tmp_path):
    out = tmp_path / "t.parquet"
    out.write_bytes(b"PAR1 but not really")
    with pytest.raises(SinkError, match="cannot be read as Parquet"):
        ParquetSink(out)
    assert out.read_bytes() == b"PAR1 but not really"


def test_metadata_jsonl_has_file_names_relative_to_its_folder(tmp_path):
    (tmp_path / "train" / "cats").mkdir(parents=True)
    sink = MetadataSink(tmp_path / "train")
    sink.write([rec(tmp_path / "train" / "cats" / "1.png", caption="a cat"), rec(tmp_path / "train" / "bad.png", error="x")])
    sink.close()
    assert (tmp_path / "train" / "metadata.jsonl").read_text() == '{"file_name": "cats/1.png", "text": "a cat"}\n'
    assert MetadataSink(tmp_path / "train").has(str(tmp_path / "train" / "cats" / "1.png"))


def test_sidecar_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    image = tmp_path / "photo.jpg"
    SidecarSink("caption").write([rec(image, caption="first")])
    assert (tmp_path / "photo.caption").read_text() == "first\n"
    SidecarSink("caption", "append").write([rec(image, caption="second")])
    assert (tmp_path / "photo.caption").read_text() == "first\nsecond\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.caption"]

    (tmp_path / "blocked.txt").mkdir()  # the sidecar's name is taken by a folder
    failed = SidecarSink().write([rec(tmp_path / "blocked.png")])
    assert len(failed) == 1 and "cannot write" in failed[0][1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked.txt", "photo.caption"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


LIGHTROOM_XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 5.6-c140">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/" xmp:Rating="4" crs:Exposure2012="+0.35">
   <dc:subject><rdf:Bag><rdf:li>holiday</rdf:li><rdf:li>beach</rdf:li></rdf:Bag></dc:subject>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">old words</rdf:li>
     <rdf:li xml:lang="de">Ein roter Kreis</rdf:li></rdf:Alt></dc:description>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>places|beach</rdf:li></rdf:Bag></lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def test_xmp_merge_keeps_every_other_field_and_language():
    merged = merge_caption(LIGHTROOM_XMP.encode(), "a red circle on the left")
    text = merged.decode()
    assert text.startswith('<?xpacket begin="\ufeff"') and text.rstrip().endswith('<?xpacket end="w"?>')
    for prefix in ("xmp:Rating", "crs:Exposure2012", "lr:hierarchicalSubject", "dc:subject"):
        assert prefix in text  # the file's own prefixes, not ns0:
    root = ET.fromstring(merged)
    desc = root.find(f".//{{{NS['rdf']}}}Description")
    assert desc.get("{http://ns.adobe.com/xap/1.0/}Rating") == "4"
    subjects = [li.text for li in desc.iter(f"{{{NS['rdf']}}}li") if li.text in ("holiday", "beach")]
    assert subjects == ["holiday", "beach"]
    langs = {li.get(f"{{{NS['xml']}}}lang"): li.text
             for li in desc.find(f"{{{NS['dc']}}}description").iter(f"{{{NS['rdf']}}}li")}
    assert langs == {"x-default": "a red circle on the left", "de": "Ein roter Kreis"}
    alt = desc.find(f"{{{NS['Iptc4xmpCore']}}}AltTextAccessibility/{{{NS['rdf']}}}Alt/{{{NS['rdf']}}}li")
    assert alt.text == "a red circle on the left"
    assert merge_caption(merged, "a red circle on the left") == merged  # merging again changes nothing


def test_xmp_sink_skips_a_sidecar_that_has_a_description_and_never_touches_the_image(tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"\xff\xd8\xff image bytes")
    (tmp_path / "photo.xmp").write_text(LIGHTROOM_XMP, encoding="utf-8")
    sink = XmpSink()
    assert sink.has(str(image)) and read_description(tmp_path / "photo.xmp") == "old words"
    assert XmpSink("overwrite").wants(str(image)) and not sink.wants(str(image))
    XmpSink("overwrite").write([rec(image, caption="new words")])
    assert read_description(tmp_path / "photo.xmp") == "new words"
    assert image.read_bytes() == b"\xff\xd8\xff image bytes"


def test_a_broken_xmp_sidecar_is_reported_and_left_untouched(tmp_path):
    broken = "<x:xmpmeta><unclosed>"
    (tmp_path / "photo.xmp").write_text(broken)
    with pytest.raises(XmpError, match="not well-formed"):
        merge_caption(broken.encode(), "x")
    failed = XmpSink().write([rec(tmp_path / "photo.jpg")])
    assert len(failed) == 1 and "left untouched" in failed[0][1]
    assert (tmp_path / "photo.xmp").read_text() == broken


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
def test_exiftool_reads_the_caption_and_the_merged_fields(tmp_path):
    (tmp_path / "photo.xmp").write_text(LIGHTROOM_XMP, encoding="utf-8")
    XmpSink("overwrite").write([rec(tmp_path / "photo.jpg", caption="a blue square at the top")])
    XmpSink().write([rec(tmp_path / "fresh.jpg", caption="a green triangle on the right")])
    out = subprocess.run(["exiftool", "-j", "-XMP:all", str(tmp_path / "photo.xmp"), str(tmp_path / "fresh.jpg.xmp")],
                         capture_output=True, text=True, check=True).stdout
    merged, fresh = json.loads(out)
    assert merged["Description"] == merged["AltTextAccessibility"] == "a blue square at the top"
    assert merged["Description-de"] == "Ein roter Kreis" and merged["Rating"] == 4
    assert merged["Subject"] == ["holiday", "beach"] and merged["HierarchicalSubject"] == "places|beach"
    assert fresh["Description"] == fresh["AltTextAccessibility"] == "a green triangle on the right"


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_a_bar_on_a_terminal_and_lines_otherwise():
    s = Summary(total=200, captioned=40, skipped=10, failed=2)
    tty = FakeTTY()
    bar = Progress(200, stream=tty)  # rich's live display: a bar and our text beside it
    bar.update(s, force=True)
    drawn = tty.getvalue()
    assert "━" in drawn and "52/200 (26%)" in drawn and "images/s" in drawn and "ETA" in drawn
    assert "2 failed" in drawn
    bar.note("blipcap: failed x.jpg: EmptyImageError: empty (0 bytes)")
    after_note = tty.getvalue()[len(drawn):]
    # the line is printed whole, above the bar, which is drawn again below it
    assert "blipcap: failed x.jpg: EmptyImageError: empty (0 bytes)\n" in after_note
    assert after_note.rindex("52/200") > after_note.index("blipcap: failed x.jpg")
    bar.close()
    assert tty.getvalue().endswith("\x1b[1A\x1b[2K")  # transient: the bar's line erased at the end

    log = io.StringIO()
    lines = Progress(200, stream=log, interval=0.0)
    lines.update(s)
    assert log.getvalue().startswith("blipcap: 52/200 (26%), ") and log.getvalue().endswith(", 2 failed\n")
    quiet = io.StringIO()
    Progress(200, stream=quiet, mode="off").update(s)
    assert quiet.getvalue() == ""


def test_summary_line_counts_every_outcome():
    s = Summary(total=10, captioned=5, reused=2, skipped=2, failed=1, seconds=2.0)
    assert s.line() == ("10 image(s) in 2.0 s: 5 captioned, 2 reused (identical files), 2 skipped (already done), "
                        "1 failed; 3.5 images/s")
