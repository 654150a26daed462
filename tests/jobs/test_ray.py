"""`blipcap caption --engine ray`: the Ray Data job on a local Ray (2 CPUs, 127.0.0.1 only) with
the trained fixture. Same records as the local job; resume by path and sha256; a worker killed
mid-run costs only its batch; URI and list inputs; usage errors before Ray starts."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

# Ray binds to the host's address unless it believes it runs on a laptop: keep it on 127.0.0.1.
# Read when ray is imported, and inherited by the CLI processes the tests start.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

if os.environ.get("BLIPCAP_REQUIRE_RAY"):
    import ray  # CI: a missing extra fails here instead of skipping
else:
    ray = pytest.importorskip("ray", reason="needs the ray extra (pip install 'blipcap[ray]')")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow comes with ray[data]")

from PIL import Image  # noqa: E402

from blipcap import cli  # noqa: E402
from blipcap.jobs.ray_job import ModelSpec, PoolSpec, RayJob, RayJobError
from blipcap.jobs.ray_worker import CaptionWorker, require_ray  # noqa: E402
from blipcap.outputs.records import COLUMNS  # noqa: E402
from tests.helpers.folders import run_cli, write_broken, write_shapes  # noqa: E402
from tests.helpers.datasets import (CORRUPT, img2dataset_samples, shape_files,  # noqa: E402
                                    write_img2dataset_parquet, write_tar)
from blipcap import Captioner  # noqa: E402
from blipcap.jobs.datasets import Datasets  # noqa: E402
from blipcap.jobs.local import BulkJob  # noqa: E402
from blipcap.outputs.parquet import ParquetSink  # noqa: E402
from tests.helpers.shapes import caption_for, make_image  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """One small local Ray for the module; its address, for the CLI to join."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def job(tiny_fixture, inputs, out, *, workers=2, batch_size=2, **kw) -> RayJob:
    return RayJob([str(i) for i in inputs], str(out), ModelSpec(str(tiny_fixture)),
                  PoolSpec(workers=workers, cpus_per_worker=0.5, batch_size=batch_size), quiet=True, **kw)


def rows(folder: Path) -> list[dict]:
    """Every row of every shard (a path twice would be a duplicate row)."""
    return sorted(pq.read_table(folder).to_pylist(), key=lambda r: r["path"])


def rotated_jpeg(path: Path, color: str, shape: str, position: str) -> str:
    """A JPEG stored sideways with EXIF orientation 6: only an EXIF-aware decoder sees ``position``."""
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    make_image(color, shape, position).transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    return caption_for(color, shape, position)


def test_cli_ray_job_writes_the_records_the_local_job_writes(cluster, tiny_fixture, tmp_path):
    folder = tmp_path / "photos"
    expected = write_shapes(folder, 5, seed=21) | write_shapes(folder / "jpegs", 2, seed=22, fmt="JPEG")
    expected[str(folder / "rotated.jpg")] = rotated_jpeg(folder / "rotated.jpg", "blue", "triangle", "left")
    broken = write_broken(folder / "broken")
    common = [str(folder), "--model", str(tiny_fixture), "--beams", "2", "--batch-size", "3"]

    local = run_cli("caption", *common, "--output", str(tmp_path / "local.parquet"), "--quiet")
    assert local.returncode == 3, local.stderr
    r = run_cli("caption", "--engine", "ray", "--ray-address", cluster, "--workers", "2", "--cpus-per-worker", "0.5",
                *common, "--output", str(tmp_path / "shards"), "--errors", str(tmp_path / "errors.log"))
    assert r.returncode == 3, r.stderr
    assert f"{len(expected)} captioned, 0 skipped (already done), {len(broken)} failed" in r.stderr
    assert "Traceback" not in r.stderr

    got, want = rows(tmp_path / "shards"), rows(tmp_path / "local.parquet")
    assert {row["path"]: row["caption"] for row in got if row["caption"]} == expected
    assert {row["path"]: row["error"].split(":")[0] for row in got if row["error"]} == broken
    assert [row["path"] for row in got] == [row["path"] for row in want]
    for g, w in zip(got, want):  # scores within float noise: batches are made up differently
        assert {k: g[k] for k in COLUMNS if k != "score"} == {k: w[k] for k in COLUMNS if k != "score"}
        assert (g["score"] is None) == (w["score"] is None)
        assert g["score"] is None or g["score"] == pytest.approx(w["score"], abs=1e-4)
    assert {row["path"]: (row["width"], row["height"]) for row in got}[str(folder / "rotated.jpg")] == (120, 90)
    shards = sorted(p.name for p in (tmp_path / "shards").iterdir() if p.name != "_listing.parquet")
    assert shards and all(n.startswith("part-") and n.endswith(".parquet") for n in shards)  # no temp files left
    assert pq.read_schema(tmp_path / "shards" / shards[0]) == pq.read_schema(tmp_path / "local.parquet")
    log = dict(line.split("\t") for line in (tmp_path / "errors.log").read_text().splitlines())
    assert {path: reason.split(":")[0] for path, reason in log.items()} == broken


def test_rerun_skips_unchanged_files_and_redoes_changed_new_and_failed_ones(cluster, tiny_fixture, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "out"
    expected = write_shapes(folder, 4, seed=31)
    (folder / "broken.png").write_bytes(b"not an image")
    first = job(tiny_fixture, [folder], out).run()
    assert (first.captioned, first.skipped, first.failed) == (4, 0, 1)
    shards = sorted(out.iterdir())

    again = job(tiny_fixture, [folder], out).run()
    assert (again.captioned, again.skipped, again.failed) == (0, 4, 1)  # the failure is tried, and reported, again
    assert len(rows(out)) == 5  # ... and its row replaced, not repeated

    changed = sorted(expected)[1]
    make_image("yellow", "square", "right").save(changed)  # same path, new bytes
    expected[changed] = caption_for("yellow", "square", "right")
    expected.update(write_shapes(folder / "more", 1, seed=32))
    third = job(tiny_fixture, [folder], out).run()
    assert (third.captioned, third.skipped, third.failed) == (2, 3, 1)
    table = rows(out)
    assert [row["path"] for row in table] == sorted([*expected, str(folder / "broken.png")])  # one row each
    assert {row["path"]: row["caption"] for row in table if row["caption"]} == expected
    assert shards[0].exists()  # the first run's rows that still hold stay where they were


def test_a_rerun_reads_only_the_files_whose_listing_changed(cluster, tiny_fixture, tmp_path, monkeypatch):
    folder, out = tmp_path / "photos", tmp_path / "out"
    expected = write_shapes(folder, 4, seed=33)
    handed = []  # the bytes of the files handed to Ray to read, per run
    real = ray.data.read_binary_files
    monkeypatch.setattr(ray.data, "read_binary_files",
                        lambda paths, **kw: handed.append(sum(os.path.getsize(p) for p in paths)) or real(paths, **kw))
    assert job(tiny_fixture, [folder], out).run().captioned == 4
    assert handed == [sum(os.path.getsize(p) for p in expected)] and (out / "_listing.parquet").is_file()

    handed.clear()
    again = job(tiny_fixture, [folder], out).run()
    assert (again.captioned, again.skipped) == (0, 4) and handed == []  # not one byte read

    touched = sorted(expected)[0]
    os.utime(touched, ns=(1_600_000_000_000_000_000,) * 2)  # a new mtime, the same bytes
    third = job(tiny_fixture, [folder], out).run()
    assert (third.captioned, third.skipped) == (0, 4) and handed == [os.path.getsize(touched)]  # read, hashed: done

    handed.clear()
    (out / "_listing.parquet").unlink()  # no listing (shards of an older blipcap): every file is hashed
    assert job(tiny_fixture, [folder], out).run().skipped == 4 and handed == [sum(os.path.getsize(p) for p in expected)]
    handed.clear()
    assert job(tiny_fixture, [folder], out).run().skipped == 4 and handed == []
    assert {row["path"]: row["caption"] for row in rows(out)} == expected


def test_dataset_inputs_caption_as_on_the_local_engine_and_resume_by_key(cluster, tiny_fixture, tmp_path, monkeypatch):
    files = shape_files(tmp_path / "files", 5, seed=34)
    shard = write_tar(tmp_path / "000000.tar", img2dataset_samples(files[:3]) + [
        ("corrupt", {"jpg": CORRUPT}), ("textonly", {"txt": b"no image"})])
    table = write_img2dataset_parquet(tmp_path / "part.parquet", files[3:], extra=[None], row_group_size=2)
    inputs = [str(shard), str(table)]
    source = Datasets(inputs)
    BulkJob(source.paths, [ParquetSink(tmp_path / "local.parquet")], source=source).run(
        Captioner.load(tiny_fixture, device="cpu", dtype="float32"))
    out = tmp_path / "out"
    summary = job(tiny_fixture, inputs, out).run()
    assert (summary.captioned, summary.failed) == (5, 3)
    got, want = rows(out), rows(tmp_path / "local.parquet")
    assert [r["path"] for r in got] == [r["path"] for r in want] and len(got) == 8  # one row per sample
    for g, w in zip(got, want):
        assert {k: g[k] for k in COLUMNS if k != "score"} == {k: w[k] for k in COLUMNS if k != "score"}

    read = []
    real = ray.data.from_items
    monkeypatch.setattr(ray.data, "from_items", lambda items, **kw: read.extend(items) or real(items, **kw))
    again = job(tiny_fixture, inputs, out).run()
    assert (again.captioned, again.skipped, again.failed) == (0, 5, 3)
    assert sorted(p for item in read for p in item["paths"]) == sorted(r["path"] for r in got if r["error"])
    assert len(rows(out)) == 8

    r = run_cli("caption", "--engine", "ray", "--ray-address", cluster, "--workers", "1", "--cpus-per-worker", "0.5",
                *inputs, "--model", str(tiny_fixture), "--output", str(out), "--write-back", str(tmp_path / "wb"))
    assert r.returncode == 3, r.stderr
    assert pq.read_table(tmp_path / "wb" / "part.parquet").column("caption").to_pylist() == [c for _, c in files[3:]] + [None]
    assert (tmp_path / "wb" / "000000.tar").is_file()


def test_a_worker_killed_mid_run_costs_only_its_batch(cluster, tiny_fixture, tmp_path):
    died = tmp_path / "died"

    class DiesOnSecondBatch(CaptionWorker):  # defined here: Ray ships it to the workers by value
        def __call__(self, batch):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 2 and not died.exists():  # once: the restarted actor lives
                died.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    class Job(RayJob):
        worker = DiesOnSecondBatch

    expected = write_shapes(tmp_path / "photos", 8, seed=41)
    out = tmp_path / "out"
    summary = Job([str(tmp_path / "photos")], str(out), ModelSpec(str(tiny_fixture)),
                  PoolSpec(workers=1, cpus_per_worker=1, batch_size=2), quiet=True).run()
    assert died.exists()  # the kill happened
    assert (summary.captioned, summary.failed) == (8, 0)
    table = rows(out)
    assert [row["path"] for row in table] == sorted(expected)  # each image once: none lost, none twice
    assert {row["path"]: row["caption"] for row in table} == expected


def test_uris_and_lists_of_uris(cluster, tiny_fixture, tmp_path):
    a = write_shapes(tmp_path / "a", 3, seed=51)
    b = write_shapes(tmp_path / "b", 2, seed=52, fmt="JPEG")
    (tmp_path / "a" / ".hidden.png").write_bytes((tmp_path / "a" / "img000.png").read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    listed = sorted(b)[:1]
    missing = "file://" + str(tmp_path / "gone.png")
    (tmp_path / "list.txt").write_text("".join(f"file://{p}\n" for p in listed) + missing + "\n")
    out = tmp_path / "out"
    summary = job(tiny_fixture, [f"file://{tmp_path / 'a'}"], out, files_from=str(tmp_path / "list.txt")).run()
    assert (summary.captioned, summary.failed) == (4, 1)
    want = {f"file://{p}": text for p, text in a.items()} | {f"file://{p}": b[p] for p in listed}
    table = rows(out)
    assert {row["path"]: row["caption"] for row in table if row["caption"]} == want
    (lost,) = [row for row in table if row["error"]]
    assert lost["path"] == missing and lost["error"].startswith("UnreadableImageError: cannot open")
    assert job(tiny_fixture, [f"file://{tmp_path / 'a'}"], out, files_from=str(tmp_path / "list.txt")).run().failed == 1
    assert len(rows(out)) == 5  # the missing file's row is not written twice


def test_a_model_the_workers_cannot_load_stops_the_job_with_its_reason(cluster, tmp_path):
    write_shapes(tmp_path / "p", 1, seed=61)
    with pytest.raises(RayJobError, match="ModelNotAvailableError: '/nowhere/blip' is neither"):
        job("/nowhere/blip", [tmp_path / "p"], tmp_path / "out", workers=1).run()


@pytest.mark.parametrize("inputs, args, message", [
    (["p"], ["--output", "o", "--sidecar"], "--engine ray writes --output DIR only; --sidecar: use the local engine"),
    (["p"], [], "--engine ray needs --output DIR"),
    (["http://example.com/a.jpg"], ["--output", "o"], "not http(s) URLs"),
    (["p", "file:///tmp/x.png"], ["--output", "o"], "give local paths or URIs, not both"),
])
def test_usage_errors_come_before_ray_starts(inputs, args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_shapes(tmp_path / "p", 1, seed=62)
    assert cli.main(["caption", "--engine", "ray", *inputs, *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before the output folder was made


def test_local_engine_refuses_ray_flags_and_ray_engine_refuses_a_file_as_output(tmp_path, capsys):
    assert cli.main(["caption", str(tmp_path), "--gpus-per-worker", "1"]) == 2
    assert "--gpus-per-worker: only with --engine ray" in capsys.readouterr().err
    (tmp_path / "x.parquet").write_bytes(b"")
    assert cli.main(["caption", "--engine", "ray", str(tmp_path), "--output", str(tmp_path / "x.parquet")]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err


def test_without_the_ray_extra_the_message_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when it is not installed
    with pytest.raises(ImportError, match=r"requires the ray extra: pip install 'blipcap\[ray\]'"):
        require_ray()
    assert cli.main(["caption", "--engine", "ray", str(tmp_path), "--output", str(tmp_path / "o")]) == 1
    assert "pip install 'blipcap[ray]'" in capsys.readouterr().err


class _Cluster:
    def __init__(self, cpus, gpus=0.0):
        self.have = {"CPU": cpus, "GPU": gpus}

    def cluster_resources(self):
        return self.have


def test_pool_size_fills_the_cluster_and_refuses_a_pool_that_cannot_fit_a_local_ray(capsys):
    def size(cpus, gpus, local=True, **pool):
        return RayJob([], "o", pool=PoolSpec(**pool))._pool_size(_Cluster(cpus, gpus), local)

    assert size(2, 0) == 1  # a quarter CPU stays free for reading and writing files
    assert size(16, 4, gpus_per_worker=1) == 4
    assert size(16, 4, gpus_per_worker=0.5) == 8
    assert size(2, 0, workers=2, cpus_per_worker=0.5) == 2
    with pytest.raises(ValueError, match="do not fit the cluster's 2 CPUs"):
        size(2, 0, workers=2)
    assert size(2, 0, local=False, workers=2) == 2  # a cluster that may grow: warned, not refused
    assert "the job waits until the cluster grows" in capsys.readouterr().err
