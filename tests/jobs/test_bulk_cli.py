"""`blipcap caption` as a folder job, through its real entry point: outputs, error log and exit
codes, resume after SIGKILL, SIGTERM and SIGINT, usage and setup errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers.folders import jpeg_bytes, popen_cli, run_cli, write_broken, write_shapes

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is in the test extra")


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_folder_with_bad_files_captions_the_rest_and_logs_one_line_per_bad_file(tiny_fixture, tmp_path):
    folder = tmp_path / "my photos"
    expected = write_shapes(folder, 5, seed=11) | write_shapes(folder / "ünï cödé", 2, seed=12, fmt="JPEG")
    broken = write_broken(folder / "broken")
    (folder / "notes.txt").write_text("not an image: not picked up from a folder")
    missing = str(tmp_path / "missing.jpg")
    broken[missing] = "UnreadableImageError"
    r = run_cli("caption", str(folder), missing, "--model", str(tiny_fixture), "--sidecar", "--output",
                str(tmp_path / "out.csv"), "--errors", str(tmp_path / "errors.log"), "--batch-size", "3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == ""  # outputs go to files: nothing on stdout
    log = [line.split("\t") for line in (tmp_path / "errors.log").read_text(encoding="utf-8").splitlines()]
    assert sorted(path for path, _ in log) == sorted(broken)
    for path, reason in log:
        assert reason.startswith(broken[path] + ": "), (path, reason)
    assert "Traceback" not in r.stderr
    assert f"5 of {len(expected) + 5} image(s) could not be captioned; see {tmp_path / 'errors.log'}" in r.stderr
    assert f"{len(expected)} captioned" in r.stderr and "5 failed" in r.stderr
    for path, text in expected.items():
        assert Path(path).with_suffix(".txt").read_text(encoding="utf-8") == text + "\n"
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    assert {p: rows[p]["caption"] for p in expected} == expected
    assert {p: rows[p]["error"].split(":")[0] for p in broken} == broken

    again = run_cli("caption", str(folder), "--model", str(tiny_fixture), "--sidecar", "--output",
                    str(tmp_path / "out.csv"), "--errors", str(tmp_path / "errors.log"))
    assert again.returncode == 3 and f"0 captioned, {len(expected)} skipped (already done), 4 failed" in again.stderr


def test_all_good_exits_zero_and_json_goes_to_stdout_beside_outputs(tiny_fixture, tmp_path):
    expected = write_shapes(tmp_path / "p", 3, seed=13)
    r = run_cli("caption", str(tmp_path / "p"), "--model", str(tiny_fixture), "--output", str(tmp_path / "o.jsonl"),
                "--json", "--quiet")
    assert r.returncode == 0 and r.stderr == ""
    assert {row["path"]: row["caption"] for row in map(json.loads, r.stdout.splitlines())} == expected
    assert {row["path"]: row["caption"] for row in jsonl(tmp_path / "o.jsonl")} == expected


def test_inputs_from_globs_and_a_list_on_stdin(tiny_fixture, tmp_path):
    expected = write_shapes(tmp_path / "a", 3, seed=14) | write_shapes(tmp_path / "b", 2, seed=15, fmt="JPEG")
    jpgs = [p for p in expected if p.endswith(".jpg")]
    pngs = sorted(p for p in expected if p.endswith(".png"))
    r = run_cli("caption", str(tmp_path / "**" / "*.jpg"), "--files-from", "-", "--model", str(tiny_fixture),
                input="\n".join(pngs[:2]) + "\n\n")
    assert r.returncode == 0, r.stderr
    got = dict(line.split("\t") for line in r.stdout.splitlines())
    assert got == {p: expected[p] for p in jpgs + pngs[:2]}


def _outputs(tmp_path: Path, folder: Path, table: str) -> list[str]:
    return ["--sidecar", "--xmp", "--output", str(tmp_path / table), "--index", str(tmp_path / "index.db"),
            "--metadata-jsonl", str(folder)]


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist() if path.suffix == ".parquet" else jsonl(path)


def _wait_for_rows(proc, path: Path, rows: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_bytes().count(b"\n") >= rows:
            return
        if proc.poll() is not None:
            pytest.fail(f"the job ended before it was interrupted: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the job did not write rows in time")


def _check_exactly_once(tmp_path: Path, folder: Path, table: str, expected: dict[str, str]) -> None:
    rows = _rows(tmp_path / table)
    assert sorted(r["path"] for r in rows) == sorted(expected)
    assert {r["path"]: r["caption"] for r in rows} == expected
    meta = jsonl(folder / "metadata.jsonl")
    assert sorted(m["file_name"] for m in meta) == sorted(Path(p).relative_to(folder).as_posix() for p in expected)
    with sqlite3.connect(tmp_path / "index.db") as db:
        indexed = dict(db.execute("SELECT path, caption FROM images"))
    assert indexed == {str(Path(p).resolve()): t for p, t in expected.items()}
    for path, text in expected.items():
        assert Path(path).with_suffix(".txt").read_text().strip() == text
        assert text in Path(path + ".xmp").read_text()  # the ext form: photo.png.xmp
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".blipcap-tmp", ".partial.jsonl"))]


def _stalled_job(tmp_path: Path, table: str, first: int = 40, then: int = 56):
    """A job over ``first`` images, then a FIFO nobody writes to (run by ``popen_cli(stall=)``, whose
    read then hangs, like a stalled network mount), then ``then`` more: it stops, deterministically,
    after the first images' batches are written, with the later images decoded and waiting in the queue."""
    folder = tmp_path / "photos"
    expected = write_shapes(folder / "a", first, seed=16, size=(96, 72))
    expected |= write_shapes(folder / "b", then, seed=17, size=(96, 72))
    stall = folder / "stall.jpg"
    os.mkfifo(stall)
    args = ["caption", str(folder / "a"), str(stall), str(folder / "b"), "--model", None, "--batch-size", "8",
            *_outputs(tmp_path, folder, table)]
    return folder, stall, expected, args


def _unstall(stall: Path, expected: dict[str, str]) -> None:
    stall.unlink()
    stall.write_bytes(jpeg_bytes("blue", "triangle", "bottom"))  # the file is back, and readable
    expected[str(stall)] = "a blue triangle at the bottom"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_resume_after_sigkill_captions_each_image_exactly_once(tiny_fixture, tmp_path):
    folder, stall, expected, args = _stalled_job(tmp_path, "out.jsonl")
    args[args.index(None)] = str(tiny_fixture)
    proc = popen_cli(*args, stall=stall)
    _wait_for_rows(proc, tmp_path / "out.jsonl", 40)
    time.sleep(0.3)  # let it decode the images after the stall, to be sure nothing more is written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = jsonl(tmp_path / "out.jsonl")  # every output is parseable right after the kill
    assert sorted(r["path"] for r in rows) == sorted(p for p in expected if "/a/" in p)
    with sqlite3.connect(tmp_path / "index.db") as db:
        assert db.execute("SELECT count(*) FROM images").fetchone()[0] == 40
    assert len(jsonl(folder / "metadata.jsonl")) == 40
    assert len(list(folder.rglob("*.txt"))) == len(list(folder.rglob("*.xmp"))) == 40

    _unstall(stall, expected)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"{len(expected) - 40} captioned, 40 skipped (already done)" in r.stderr
    _check_exactly_once(tmp_path, folder, "out.jsonl", expected)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_stop_cleanly_even_on_a_hung_read(tiny_fixture, tmp_path, signum, status):
    folder, stall, expected, args = _stalled_job(tmp_path, "out.parquet")
    args[args.index(None)] = str(tiny_fixture)
    proc = popen_cli(*args, stall=stall)
    _wait_for_rows(proc, tmp_path / ".out.parquet.partial.jsonl", 40)  # the journal Parquet is built from
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "stopped by signal" in err and "run the same command again to continue" in err
    assert "Traceback" not in err
    rows = _rows(tmp_path / "out.parquet")  # finalised on the way out: readable, journal gone
    assert not (tmp_path / ".out.parquet.partial.jsonl").exists()
    assert sorted(r["path"] for r in rows) == sorted(p for p in expected if "/a/" in p)
    assert all(row["caption"] == expected[row["path"]] for row in rows)
    if signum == signal.SIGTERM:
        _unstall(stall, expected)
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        _check_exactly_once(tmp_path, folder, "out.parquet", expected)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_a_fifo_named_explicitly_or_in_files_from_is_an_error_for_that_item_not_a_hang(tiny_fixture, tmp_path):
    expected = write_shapes(tmp_path / "a", 2, seed=18)
    named, listed = tmp_path / "named.jpg", tmp_path / "listed.png"
    os.mkfifo(named)
    os.mkfifo(listed)  # nobody ever writes to either: a blocking open would wait forever
    (tmp_path / "list.txt").write_text(f"{listed}\n", encoding="utf-8")
    r = run_cli("caption", str(tmp_path / "a"), str(named), "--files-from", str(tmp_path / "list.txt"),
                "--model", str(tiny_fixture), "--output", str(tmp_path / "o.jsonl"),
                "--errors", str(tmp_path / "errors.log"), timeout=120)
    assert r.returncode == 3, r.stderr
    log = [line.split("\t") for line in (tmp_path / "errors.log").read_text(encoding="utf-8").splitlines()]
    assert sorted(log) == sorted([[str(named), "UnreadableImageError: not a regular file"],
                                  [str(listed), "UnreadableImageError: not a regular file"]])
    assert {row["path"]: row["caption"] for row in jsonl(tmp_path / "o.jsonl") if row["caption"]} == expected


@pytest.mark.parametrize("args, message", [
    (["--sidecar", "{folder}"], "is not a file extension"),
    (["{folder}", "--sidecar", "jpg"], "belongs to images"),
    (["{folder}", "--sidecar", "xmp"], "use --xmp"),
    (["{folder}", "--output", "{tmp}/out.txt"], "unknown format '.txt'"),
    ([], "nothing to caption"),
    (["{folder}", "--files-from", "{tmp}/no-such-list"], "cannot read --files-from"),
    (["{folder}", "--metadata-jsonl", "{tmp}/elsewhere"], "is not inside it"),
    (["--index", "{folder}"], "is a folder"),
    (["{folder}", "--existing", "sometimes"], "invalid choice"),
])
def test_usage_errors_exit_2_before_loading_the_model(tmp_path, args, message):
    folder = tmp_path / "photos"
    write_shapes(folder, 1)
    (tmp_path / "elsewhere").mkdir()
    args = [a.format(folder=folder, tmp=tmp_path) for a in args]
    r = run_cli("caption", *args, "--model", str(tmp_path / "no-model-here"))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("option", ["--output", "--errors", "--index"])
def test_an_output_that_cannot_be_written_is_a_setup_error_up_front(tmp_path, option):
    folder = tmp_path / "photos"
    write_shapes(folder, 1)
    (tmp_path / "a file").write_text("x")
    name = {"--output": "out.jsonl", "--errors": "errors.log", "--index": "index.db"}[option]
    r = run_cli("caption", str(folder), option, str(tmp_path / "a file" / name), "--model", str(tmp_path / "nope"))
    assert r.returncode == 1, r.stderr
    assert "a file" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_table_that_is_not_ours_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "photos"
    write_shapes(folder, 1)
    theirs = tmp_path / "theirs.csv"
    theirs.write_text("name,size\nfoo,1")  # no trailing newline: must not be "repaired"
    r = run_cli("caption", str(folder), "--output", str(theirs), "--model", str(tmp_path / "nope"))
    assert r.returncode == 1 and "does not look like a blipcap output" in r.stderr
    assert theirs.read_text() == "name,size\nfoo,1"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_a_read_only_folder_for_sidecars_is_a_setup_error_up_front(tmp_path):
    folder = tmp_path / "photos"
    write_shapes(folder, 1)
    folder.chmod(0o555)
    try:
        r = run_cli("caption", str(folder), "--sidecar", "--model", str(tmp_path / "nope"))
    finally:
        folder.chmod(0o755)
    assert r.returncode == 1 and "cannot write sidecars in" in r.stderr
