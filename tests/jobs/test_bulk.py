"""The bulk job in-process (blipcap.jobs.local.BulkJob) with the trained fixture: every output, re-runs,
identical files, failures, draft-mode decoding, alt text. The CLI and signals: test_bulk_cli.py."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blipcap import Captioner
from blipcap.outputs.alttext import alt_text
from blipcap.jobs.common import Reporter, StopRequest, options_digest
from blipcap.jobs.local import BulkJob
from blipcap.jobs.discover import find_images
from blipcap.images import Decoder, load_image
from blipcap.outputs.index import Index, IndexSink
from blipcap.outputs.records import SinkError
from blipcap.outputs.sinks import SidecarSink, XmpSink
from blipcap.outputs.parquet import ParquetSink
from blipcap.outputs.tables import CsvSink, JsonlSink, MetadataSink, open_output
from blipcap.outputs.xmp import NS
from tests.helpers.folders import jpeg_bytes, write_broken, write_shapes
from tests.helpers.shapes import caption_for, make_image

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is in the test extra")


@pytest.fixture(scope="module")
def cap(tiny_fixture) -> Captioner:
    return Captioner.load(tiny_fixture, device="cpu", dtype="float32")


class Counting:
    """A Captioner that counts the images it is asked to caption (or refuses any model work)."""

    def __init__(self, cap, refuse: bool = False):
        self._cap, self.refuse, self.images, self.calls = cap, refuse, 0, 0

    def __getattr__(self, name):
        return getattr(self._cap, name)

    def caption(self, images, *args, **kwargs):
        assert not self.refuse, "the model was called"
        self.images += len(images)
        self.calls += 1
        return self._cap.caption(images, *args, **kwargs)


class Failures(Reporter):
    def __init__(self):
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def failure(self, path, reason):
        self.lines.append((path, reason))


def run(cap, paths, sinks, **kw):
    reporter = kw.pop("reporter", None) or Failures()
    summary = BulkJob(paths, sinks, reporter=reporter, **kw).run(cap)
    return summary, reporter


def all_sinks(tmp: Path, folder: Path, existing="skip"):
    return [SidecarSink("txt", existing), XmpSink(existing), JsonlSink(tmp / "out.jsonl", existing),
            CsvSink(tmp / "out.csv", existing), ParquetSink(tmp / "out.parquet", existing),
            MetadataSink(folder, existing), IndexSink(tmp / "index.db", existing)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def xmp_values(path: Path) -> tuple[str, str]:
    root = ET.parse(path).getroot()
    out = []
    for prop in (f"{{{NS['dc']}}}description", f"{{{NS['Iptc4xmpCore']}}}AltTextAccessibility"):
        li = root.find(f".//{prop}/{{{NS['rdf']}}}Alt/{{{NS['rdf']}}}li")
        assert li.get(f"{{{NS['xml']}}}lang") == "x-default"
        out.append(li.text)
    return tuple(out)


def test_every_output_round_trips(cap, tmp_path):
    folder = tmp_path / "photos"
    expected = write_shapes(folder, 10, seed=1) | write_shapes(folder / "sub dir", 4, seed=2, fmt="JPEG")
    paths = find_images([str(folder)])
    assert sorted(paths) == sorted(expected)
    summary, failures = run(cap, paths, all_sinks(tmp_path, folder), batch_size=4)
    assert (summary.captioned, summary.failed, summary.skipped) == (14, 0, 0) and not failures.lines

    digest = options_digest(cap.merged())
    rows = {"jsonl": read_jsonl(tmp_path / "out.jsonl"), "csv": read_csv(tmp_path / "out.csv"),
            "parquet": pq.read_table(tmp_path / "out.parquet").to_pylist()}
    for fmt, table in rows.items():
        assert sorted(r["path"] for r in table) == sorted(expected), fmt
        for r in table:
            path = r["path"]
            assert r["caption"] == expected[path], fmt
            assert r["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
            assert (int(r["width"]), int(r["height"])) == (120, 90)
            assert float(r["score"]) < 0
            assert r["model_id"] == cap.model_id and r["options_digest"] == digest
            assert r["error"] in (None, "") and r["revision"] in (None, "")
    for path, text in expected.items():
        assert Path(path).with_suffix(".txt").read_text(encoding="utf-8") == text + "\n"
        assert xmp_values(Path(path + ".xmp")) == (text, text)
    meta = read_jsonl(folder / "metadata.jsonl")
    assert {m["file_name"]: m["text"] for m in meta} == {
        Path(p).relative_to(folder).as_posix(): t for p, t in expected.items()}
    index = Index(tmp_path / "index.db")
    assert {r.path: r.caption for r in index.records()} == {str(Path(p).resolve()): t for p, t in expected.items()}
    index.close()


def test_rerun_does_no_model_work_and_changes_nothing(cap, tmp_path):
    folder = tmp_path / "photos"
    expected = write_shapes(folder, 6, seed=3)
    broken = write_broken(folder / "bad")
    paths = find_images([str(folder)])
    first, failures = run(cap, paths, all_sinks(tmp_path, folder))
    assert (first.captioned, first.failed) == (6, 4) and len(failures.lines) == 4
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}

    again, failures = run(Counting(cap, refuse=True), paths, all_sinks(tmp_path, folder))
    assert (again.captioned, again.skipped, again.failed) == (0, 6, 4)  # bad files are retried: still bad
    assert sorted(p for p, _ in failures.lines) == sorted(broken)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
    assert after == snapshot
    assert len(read_jsonl(tmp_path / "out.jsonl")) == len(expected) + len(broken)


def test_identical_files_are_captioned_once(cap, tmp_path):
    folder = tmp_path / "photos"
    expected = write_shapes(folder, 3, seed=4)
    for path in list(expected):
        for k in range(3):
            copy = Path(path).with_name(f"copy{k}-{Path(path).name}")
            shutil.copy(path, copy)
            expected[str(copy)] = expected[path]
    counting = Counting(cap)
    summary, _ = run(counting, find_images([str(folder)]), [JsonlSink(tmp_path / "o.jsonl")], batch_size=4)
    assert counting.images == 3
    assert (summary.captioned, summary.reused) == (3, 9)
    assert {r["path"]: r["caption"] for r in read_jsonl(tmp_path / "o.jsonl")} == expected


def test_a_new_output_reuses_the_captions_of_an_earlier_run(cap, tmp_path):
    folder = tmp_path / "photos"
    expected = write_shapes(folder, 5, seed=5)
    paths = find_images([str(folder)])
    run(cap, paths, [JsonlSink(tmp_path / "o.jsonl")])
    summary, _ = run(Counting(cap, refuse=True), paths, [JsonlSink(tmp_path / "o.jsonl"), SidecarSink()])
    assert (summary.captioned, summary.reused) == (0, 5)
    assert {p: Path(p).with_suffix(".txt").read_text().strip() for p in paths} == expected
    # different options: nothing to reuse, so the model runs
    counting = Counting(cap)
    run(counting, paths, [JsonlSink(tmp_path / "o.jsonl"), SidecarSink("caption")], overrides={"num_beams": 2})
    assert counting.images == 5


def test_overwrite_replaces_and_append_adds(cap, tmp_path):
    folder = tmp_path / "photos"
    expected = write_shapes(folder, 4, seed=6)
    paths = find_images([str(folder)])

    def sinks(mode):
        return [SidecarSink("txt", mode), JsonlSink(tmp_path / "o.jsonl", mode), CsvSink(tmp_path / "o.csv", mode),
                ParquetSink(tmp_path / "o.parquet", mode), MetadataSink(folder, mode)]

    run(cap, paths, sinks("skip"))
    counting = Counting(cap)
    run(counting, paths, sinks("overwrite"))
    assert counting.images == 4  # captioned again
    tables = [read_jsonl(tmp_path / "o.jsonl"), read_csv(tmp_path / "o.csv"),
              pq.read_table(tmp_path / "o.parquet").to_pylist()]
    for table in tables:  # compacted: one row per image
        assert sorted(r["path"] for r in table) == sorted(paths)
    assert len(read_jsonl(folder / "metadata.jsonl")) == 4
    assert not list(tmp_path.glob(".*partial*")) and not list(tmp_path.glob(".*blipcap-tmp"))

    run(cap, paths, sinks("append"))
    for table in [read_jsonl(tmp_path / "o.jsonl"), read_csv(tmp_path / "o.csv"),
                  pq.read_table(tmp_path / "o.parquet").to_pylist()]:
        assert sorted(r["path"] for r in table) == sorted(paths * 2)
        assert {r["path"]: r["caption"] for r in table} == expected
    for path, text in expected.items():
        assert Path(path).with_suffix(".txt").read_text().splitlines() == [text, text]


def test_a_fixed_file_replaces_its_error_row(cap, tmp_path):
    folder = tmp_path / "photos"
    write_shapes(folder, 2, seed=7)
    bad = folder / "later.jpg"
    bad.write_bytes(b"")
    paths = find_images([str(folder)])
    sinks = lambda: [JsonlSink(tmp_path / "o.jsonl"), CsvSink(tmp_path / "o.csv")]  # noqa: E731
    summary, failures = run(cap, paths, sinks())
    assert summary.failed == 1 and failures.lines == [(str(bad), "EmptyImageError: empty (0 bytes)")]
    assert [r["error"] for r in read_jsonl(tmp_path / "o.jsonl") if r["path"] == str(bad)] == [
        "EmptyImageError: empty (0 bytes)"]

    bad.write_bytes(jpeg_bytes("green", "square", "top"))
    summary, failures = run(cap, paths, sinks())
    assert (summary.captioned, summary.skipped, summary.failed) == (1, 2, 0)
    for table in (read_jsonl(tmp_path / "o.jsonl"), read_csv(tmp_path / "o.csv")):
        rows = [r for r in table if r["path"] == str(bad)]
        assert len(rows) == 1 and rows[0]["caption"] == "a green square at the top" and not rows[0]["error"]


def test_two_images_with_one_sidecar_name_are_reported_not_overwritten(cap, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    make_image("red", "circle", "left").save(folder / "photo.jpg")
    make_image("blue", "square", "top").save(folder / "photo.png")
    summary, failures = run(cap, find_images([str(folder)]), [SidecarSink(), JsonlSink(tmp_path / "o.jsonl")])
    assert (folder / "photo.txt").read_text().strip() == "a red circle on the left"
    assert len(failures.lines) == 1 and failures.lines[0][0].endswith("photo.png")
    assert "photo.txt" in failures.lines[0][1] and "photo.jpg" in failures.lines[0][1]
    assert summary.failed == 1 and len(read_jsonl(tmp_path / "o.jsonl")) == 2  # the table still has both


def test_large_jpegs_are_decoded_at_reduced_scale_without_changing_the_model_input(cap, tmp_path):
    big = tmp_path / "big.jpg"
    make_image("yellow", "triangle", "right", size=(2000, 1500)).save(big, quality=95)
    pre = cap.preprocessor
    item = Decoder.of(pre, cap.max_pixels).file(str(big))  # the folder job's decoding
    assert (item.width, item.height) == (2000, 1500)  # as stored, not as drafted
    drafted = load_image(big, draft_size=pre.size)
    assert max(drafted.size) < 2000  # libjpeg did scale down (to 250x188)
    full = pre(load_image(big))  # what caption() would feed the model without draft mode
    assert np.abs(pre(item.image) - full).mean() < 0.02  # normalised units: ~0.5/255 of a pixel value
    assert cap.caption([item])[0].text == cap.caption([big])[0].text == "a yellow triangle on the right"


def test_exif_rotated_jpeg_reports_its_upright_size(cap, tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, displayed rotated 90 degrees
    make_image("red", "square", "top", size=(1200, 900)).save(path, exif=exif)
    summary, _ = run(cap, [str(path)], [JsonlSink(tmp_path / "o.jsonl")])
    (row,) = read_jsonl(tmp_path / "o.jsonl")
    assert (row["width"], row["height"]) == (900, 1200)


def test_exif_rotated_jpeg_is_captioned_upright_once(cap, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    make_image("blue", "triangle", "left").transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    run(cap, [str(path)], [JsonlSink(tmp_path / "o.jsonl")])
    (row,) = read_jsonl(tmp_path / "o.jsonl")
    assert row["caption"] == caption_for("blue", "triangle", "left")  # not rotated a second time


def test_alt_text_rules():
    assert alt_text("a picture of a dog running on the beach") == "A dog running on the beach."
    assert alt_text("there is a picture of a cat") == "A cat."
    assert alt_text("an image of two people") == "Two people."
    assert alt_text("a painting of a ship") == "A painting of a ship."  # the medium is content
    assert alt_text("a red circle on the left.") == "A red circle on the left."
    long = alt_text("a photo of " + "very " * 40 + "long caption", max_chars=40)
    assert len(long) <= 40 and long.endswith(".") and long == "Very very very very very very very very."
    assert len(alt_text("x" * 300, max_chars=50)) == 50
    with pytest.raises(ValueError):
        alt_text("a dog", max_chars=1)


def test_alt_text_mode_writes_alt_text_everywhere(cap, tmp_path):
    folder = tmp_path / "photos"
    expected = write_shapes(folder, 3, seed=8)
    paths = find_images([str(folder)])
    run(cap, paths, [SidecarSink(), XmpSink(), JsonlSink(tmp_path / "o.jsonl")], alt_text_max=20)
    for path, text in expected.items():
        alt = alt_text(text, 20)
        assert len(alt) <= 20 and alt[0].isupper() and alt.endswith(".")
        assert Path(path).with_suffix(".txt").read_text().strip() == alt
        assert xmp_values(Path(path + ".xmp")) == (alt, alt)
    digests = {r["options_digest"] for r in read_jsonl(tmp_path / "o.jsonl")}
    assert digests == {options_digest(cap.merged(), 20)}


def test_destinations_are_checked_before_any_model_work(cap, tmp_path):
    (tmp_path / "a file").write_text("x")
    with pytest.raises(SinkError, match="does not exist"):
        open_output(tmp_path / "missing" / "out.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(SinkError, match="not a regular file"):
        open_output(tmp_path / "dir.jsonl")
    with pytest.raises(SinkError, match="does not exist"):
        open_output(tmp_path / "a file" / "out.csv")
    with pytest.raises(ValueError, match="unknown format"):
        open_output(tmp_path / "out.txt")
    with pytest.raises(SinkError, match="not a folder"):
        MetadataSink(tmp_path / "a file")
    folder = tmp_path / "data"
    write_shapes(folder, 1)
    outside = write_shapes(tmp_path / "elsewhere", 1)
    job = BulkJob(find_images([str(folder), *outside]), [MetadataSink(folder)])
    with pytest.raises(ValueError, match="not inside"):
        job.prepare()


def test_stop_request_first_signal_finishes_the_batch_second_drops_it():
    stop = StopRequest()
    stop._handle(signal.SIGTERM, None)
    assert stop.signum == signal.SIGTERM
    stop._handle(signal.SIGINT, None)  # not in the model: nothing to drop, keep the first signal
    assert stop.signum == signal.SIGTERM
    with stop.model_running(), pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def test_a_stop_request_ends_the_job_early_with_outputs_intact(cap, tmp_path):
    folder = tmp_path / "photos"
    write_shapes(folder, 24, seed=9)
    paths = find_images([str(folder)])
    stop = StopRequest()

    class StopAfterFirstBatch(Counting):
        def caption(self, images, *args, **kwargs):
            stop.signum = signal.SIGTERM  # as if SIGTERM arrived while the model ran
            return super().caption(images, *args, **kwargs)

    counting = StopAfterFirstBatch(cap)
    summary = BulkJob(paths, [JsonlSink(tmp_path / "o.jsonl"), ParquetSink(tmp_path / "o.parquet")],
                      batch_size=4, stop=stop).run(counting)
    assert summary.signal == signal.SIGTERM and counting.calls == 1 and summary.captioned == 4
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 4
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 4  # finalised on the way out
    rest, _ = run(cap, paths, [JsonlSink(tmp_path / "o.jsonl"), ParquetSink(tmp_path / "o.parquet")])
    assert (rest.skipped, rest.captioned) == (4, 20)
    assert sorted(r["path"] for r in read_jsonl(tmp_path / "o.jsonl")) == sorted(paths)
