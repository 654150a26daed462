"""Dataset inputs on the local engine with the trained fixture: WebDataset shards, img2dataset Parquet and
Hugging Face Image datasets caption as the same images do as files, one row per sample, error rows for
bad samples; --write-back copies read back with webdataset/datasets/pyarrow; a re-run reads no image bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from blipcap import Captioner
from blipcap.jobs import datasets as dsmod
from blipcap.jobs import sources
from blipcap.jobs.datasets import Datasets, DatasetError
from blipcap.jobs.local import BulkJob
from blipcap.jobs.writeback import write_back
from blipcap.outputs.tables import JsonlSink
from tests.helpers.datasets import (CORRUPT, CountingOpen, hf_image_dataset, img2dataset_samples, shape_files,
                                    write_img2dataset_parquet, write_tar)
from tests.helpers.folders import run_cli

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is in the test extra")


@pytest.fixture(scope="module")
def cap(tiny_fixture) -> Captioner:
    return Captioner.load(tiny_fixture, device="cpu", dtype="float32")


def caption(cap, inputs, out: Path, **kw):
    """BulkJob over dataset inputs (or files) into a JSONL table; (summary, {path: row})."""
    source = Datasets([str(i) for i in inputs], **kw) if _any_dataset(inputs) else None
    paths = source.paths if source else [str(i) for i in inputs]
    summary = BulkJob(paths, [JsonlSink(out)], batch_size=3, source=source).run(cap)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return summary, {r["path"]: r for r in rows}


def _any_dataset(inputs) -> bool:
    return any(dsmod.is_dataset(str(i)) for i in inputs)


def as_files(cap, files, tmp_path) -> dict[str, dict]:
    """The rows captioning the same images as files gives, by sha256."""
    _, rows = caption(cap, [p for p, _ in files], tmp_path / "files.jsonl")
    return {r["sha256"]: r for r in rows.values()}


def same_as_files(rows: dict[str, dict], by_sha: dict[str, dict], expected: dict[str, str]) -> None:
    for path, caption_ in expected.items():
        row = rows[path]
        twin = by_sha[row["sha256"]]
        assert row["caption"] == twin["caption"] == caption_, path
        assert row["score"] == pytest.approx(twin["score"], abs=1e-5)
        assert (row["width"], row["height"]) == (twin["width"], twin["height"])


def test_webdataset_shards_caption_as_files_do(cap, tmp_path):
    files = shape_files(tmp_path / "files", 7, seed=5)
    a = write_tar(tmp_path / "000000.tar", img2dataset_samples(files[:4]))
    b = write_tar(tmp_path / "000001.tar", img2dataset_samples(files[4:], start=4) + [
        ("corrupt", {"jpg": CORRUPT, "txt": b"x"}), ("textonly", {"txt": b"no image here"}),
        ("sub/dir/000099", {"webp": files[0][0].read_bytes()})])  # a PNG named .webp: signature wins
    summary, rows = caption(cap, [tmp_path / "*.tar"], tmp_path / "out.jsonl")

    expected = {f"{a}#{i:09d}": c for i, (_, c) in enumerate(files[:4])}
    expected |= {f"{b}#{i + 4:09d}": c for i, (_, c) in enumerate(files[4:])}
    expected[f"{b}#sub/dir/000099"] = files[0][1]
    assert len(rows) == len(expected) + 2 and summary.failed == 2
    same_as_files(rows, as_files(cap, files, tmp_path), expected)
    assert rows[f"{b}#corrupt"]["error"].startswith("TruncatedImageError")
    assert rows[f"{b}#textonly"]["error"] == "UnreadableImageError: no image member in the sample (has: txt)"


def test_img2dataset_parquet_and_errors(cap, tmp_path, capfd):
    files = shape_files(tmp_path / "files", 6, seed=6)
    table = write_img2dataset_parquet(tmp_path / "part.parquet", files, extra=[CORRUPT, None])
    summary, rows = caption(cap, [table], tmp_path / "out.jsonl")
    assert "part.parquet: images from column 'jpg' (bytes), keys from column 'key'" in capfd.readouterr().err
    expected = {f"{table}#{i:09d}": c for i, (_, c) in enumerate(files)}
    assert len(rows) == 8 and summary.failed == 2
    same_as_files(rows, as_files(cap, files, tmp_path), expected)
    assert rows[f"{table}#000000006"]["error"].startswith("TruncatedImageError")
    assert rows[f"{table}#000000007"]["error"] == "UnreadableImageError: no image in column 'jpg'"


def test_hugging_face_image_datasets_saved_and_as_parquet(cap, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = shape_files(tmp_path / "files", 5, seed=7)
    ds = hf_image_dataset(files, extra=[CORRUPT])
    datasets.DatasetDict({"train": ds.select(range(3)), "test": ds.select(range(3, 6))}).save_to_disk(
        str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "hf.parquet"))  # the Image struct {bytes, path} in Parquet
    summary, rows = caption(cap, [tmp_path / "saved", tmp_path / "hf.parquet"], tmp_path / "out.jsonl")

    saved, table = tmp_path / "saved", tmp_path / "hf.parquet"
    expected = {f"{saved}#{'train' if i < 3 else 'test'}/{i if i < 3 else i - 3}": c for i, (_, c) in enumerate(files)}
    expected |= {f"{table}#{i}": c for i, (_, c) in enumerate(files)}
    assert len(rows) == 12 and summary.failed == 2
    same_as_files(rows, as_files(cap, files, tmp_path), expected)
    assert rows[f"{saved}#test/2"]["error"].startswith("TruncatedImageError")


def test_image_column_must_be_named_when_ambiguous(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"a": [b"x"], "b": [b"y"]}), tmp_path / "t.parquet")
    with pytest.raises(DatasetError, match="--image-column"):
        Datasets([str(tmp_path / "t.parquet")])
    assert Datasets([str(tmp_path / "t.parquet")], image_column="b").paths == [f"{tmp_path / 't.parquet'}#0"]


def test_write_back_copies_with_captions_and_never_touches_the_inputs(cap, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = shape_files(tmp_path / "files", 4, seed=8)
    (tmp_path / "in").mkdir()
    shard = write_tar(tmp_path / "in" / "000000.tar",
                      img2dataset_samples(files) + [("textonly", {"txt": b"kept"}), ("bad", {"jpg": CORRUPT})])
    table = write_img2dataset_parquet(tmp_path / "in" / "part.parquet", files, extra=[None])
    hf_image_dataset(files).save_to_disk(str(tmp_path / "in" / "hf"))
    before = {p: p.read_bytes() for p in (tmp_path / "in").rglob("*") if p.is_file()}
    inputs = [str(shard), str(table), str(tmp_path / "in" / "hf")]
    source = Datasets(inputs)
    BulkJob(source.paths, [JsonlSink(tmp_path / "out.jsonl")], source=source).run(cap)
    captions = {r.path: r.caption for r in JsonlSink(tmp_path / "out.jsonl").known()}
    write_back(source, captions, str(tmp_path / "wb"))
    assert before == {p: p.read_bytes() for p in (tmp_path / "in").rglob("*") if p.is_file()}

    wds = pytest.importorskip("webdataset")
    samples = {s["__key__"]: s for s in wds.WebDataset(str(tmp_path / "wb" / "000000.tar"), shardshuffle=False)}
    assert {k: s["txt"].decode() for k, s in samples.items() if k[0].isdigit()} == {
        f"{i:09d}": c for i, (_, c) in enumerate(files)}
    assert samples["textonly"]["txt"] == b"kept" and "txt" not in samples["bad"]  # failed: left as it was
    assert samples["000000000"]["png"] == files[0][0].read_bytes() and samples["000000000"]["json"] == b"{}"

    copy = pq.read_table(tmp_path / "wb" / "part.parquet")
    original = pq.read_table(table)
    assert copy.column_names == original.column_names  # its own caption column replaced in place
    assert copy.column("jpg").equals(original.column("jpg")) and copy.column("key").equals(original.column("key"))
    assert copy.column("caption").to_pylist() == [c for _, c in files] + [None]

    hf = datasets.load_from_disk(str(tmp_path / "wb" / "hf"))
    assert hf["caption"] == [c for _, c in files] and hf["label"] == [f"l{i}" for i in range(4)]


def test_write_back_refuses_to_replace_an_input(tmp_path):
    files = shape_files(tmp_path / "files", 1)
    shard = write_tar(tmp_path / "000000.tar", img2dataset_samples(files))
    with pytest.raises(DatasetError, match="never modified"):
        write_back(Datasets([str(shard)]), {}, str(tmp_path))


def test_a_rerun_of_a_finished_5000_sample_job_reads_no_image_bytes(cap, tmp_path, monkeypatch):
    files = shape_files(tmp_path / "files", 12, seed=9)  # 5,000 samples; identical bytes are captioned once
    samples = img2dataset_samples([files[i % 12] for i in range(5000)])
    shards = [write_tar(tmp_path / f"{n:06d}.tar", samples[n * 2500:(n + 1) * 2500]) for n in range(2)]
    table = write_img2dataset_parquet(tmp_path / "part.parquet", [files[i % 12] for i in range(600)],
                                      row_group_size=100)
    inputs = [str(s) for s in shards] + [str(table)]
    counter = CountingOpen(sources.open_input)
    monkeypatch.setattr(sources, "open_input", counter)
    first = Datasets(inputs)
    listing = counter.bytes  # tar headers and the table's footer and key column
    summary = BulkJob(first.paths, [JsonlSink(tmp_path / "out.jsonl")], batch_size=8, source=first).run(cap)
    assert summary.captioned + summary.reused == 5600
    assert counter.bytes - listing >= sum(len(m["png"]) for _, m in samples)  # the first run read every image

    counter.bytes = 0
    again = Datasets(inputs)
    summary = BulkJob(again.paths, [JsonlSink(tmp_path / "out.jsonl")], batch_size=8, source=again).run(cap)
    assert (summary.skipped, summary.captioned, summary.failed) == (5600, 0, 0)
    assert counter.bytes == listing  # the listing again, and not one image byte
    # the listing is a 512-byte header per tar member (and a byte to check it), the table's footer (pyarrow
    # reads up to 64 KiB of the tail) and key column: for photos of ~100 KB about 1.5 % of a first run's
    # reads (here the images are ~0.4 KB)
    assert listing <= 513 * 3 * 5000 + 2 * 10240 + 64 * 1024 + 600 * 16


def test_a_rerun_of_a_folder_job_reads_no_image_bytes(cap, tmp_path, monkeypatch):
    from blipcap.jobs import local

    files = shape_files(tmp_path / "files", 20, seed=10)
    read = []
    monkeypatch.setattr(local, "read_file", lambda p: read.append(p) or Path(p).read_bytes())
    paths = [str(p) for p, _ in files]
    BulkJob(paths, [JsonlSink(tmp_path / "out.jsonl")]).run(cap)
    assert len(read) == 20
    read.clear()
    summary = BulkJob(paths, [JsonlSink(tmp_path / "out.jsonl")]).run(cap)
    assert summary.skipped == 20 and read == []


def test_cli_dataset_inputs_and_write_back(tiny_fixture, tmp_path):
    files = shape_files(tmp_path / "files", 3, seed=11)
    shard = write_tar(tmp_path / "000000.tar", img2dataset_samples(files))
    common = ["caption", str(shard), "--model", str(tiny_fixture), "--output", str(tmp_path / "out.parquet")]
    r = run_cli(*common, "--write-back", str(tmp_path / "wb"))
    assert r.returncode == 0, r.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert {row["path"]: row["caption"] for row in rows} == {f"{shard}#{i:09d}": c for i, (_, c) in enumerate(files)}
    assert (tmp_path / "wb" / "000000.tar").is_file()
    r = run_cli(*common, "--sidecar")
    assert r.returncode == 2 and "need image files" in r.stderr
    r = run_cli("caption", str(shard), str(files[0][0]), *common[2:])
    assert r.returncode == 2 and "not both" in r.stderr
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()
    r = run_cli(*common, "--write-back", str(tmp_path))
    assert r.returncode == 2 and "never modified" in r.stderr
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == digest


def test_shards_named_by_uri_and_uri_glob_read_the_same_bytes(tmp_path):
    files = shape_files(tmp_path / "files", 4, seed=12)
    write_tar(tmp_path / "000000.tar", img2dataset_samples(files[:2]))
    write_tar(tmp_path / "000001.tar", img2dataset_samples(files[2:], start=2))
    source = Datasets([f"file://{tmp_path}/*.tar"])
    assert source.paths == [f"file://{tmp_path}/00000{i // 2}.tar#{i:09d}" for i in range(4)]
    got = list(source.read(source.paths[1:]))  # a subset: only those samples' bytes
    assert [(p, data) for p, data, _ in got] == [(source.paths[i], files[i][0].read_bytes()) for i in (1, 2, 3)]
