"""Issue 13 item 8: a full disk while writing --output or --index, a damaged index, an absurd --limit:
one line on stderr and the right exit status, never a traceback; what was written before is kept."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.helpers.folders import run_cli, write_shapes


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: full after a few batches of rows (needs root, as CI has)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder, leave: int) -> None:
    """Fill ``folder``'s filesystem until ``leave`` bytes are free."""
    st = os.statvfs(folder)
    with open(folder / "ballast", "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


@pytest.mark.parametrize("output", ["out.jsonl", "out.csv"])
def test_a_full_disk_under_output_exits_1_with_one_line_and_keeps_the_rows(tiny_fixture, tmp_path, small_disk,
                                                                          output):
    write_shapes(tmp_path / "d", 40)
    out = small_disk / output
    fill(small_disk, 6 * 1024)  # room for a few batches of rows
    done = run_cli("caption", str(tmp_path / "d"), "--model", str(tiny_fixture), "--output", str(out),
                   "--batch-size", "4", "--quiet")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "No space left on device" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    kept = out.read_text().splitlines()
    assert kept  # the batches before the disk filled are in the file
    if output.endswith(".jsonl"):
        whole = [line for line in kept if line.endswith("}")]
        assert all(json.loads(line)["caption"] for line in whole)
    (small_disk / "ballast").unlink()
    again = run_cli("caption", str(tmp_path / "d"), "--model", str(tiny_fixture), "--output", str(out), "--quiet")
    assert again.returncode == 0, again.stderr  # the re-run completes the rest
    rows = out.read_text().splitlines()[1 if output.endswith(".csv") else 0:]
    assert len(rows) == 40


def test_a_full_disk_under_the_index_exits_1_with_one_line(tiny_fixture, tmp_path, small_disk):
    write_shapes(tmp_path / "d", 40)
    db = small_disk / "index.db"
    run_cli("index", str(tmp_path / "d" / "img000.png"), "--model", str(tiny_fixture), "--db", str(db), "--quiet")
    fill(small_disk, 0)
    done = run_cli("index", str(tmp_path / "d"), "--model", str(tiny_fixture), "--db", str(db), "--quiet")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "the index" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_damaged_index_and_an_absurd_limit_are_one_line_errors(tiny_fixture, tmp_path):
    write_shapes(tmp_path / "d", 4)
    db = tmp_path / "index.db"
    assert run_cli("index", str(tmp_path / "d"), "--model", str(tiny_fixture), "--db", str(db)).returncode == 0
    data = bytearray(db.read_bytes())
    data[4096:] = os.urandom(len(data) - 4096)  # the header survives; the pages behind it do not
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(bytes(data))
    (tmp_path / "noise.db").write_bytes(os.urandom(8192))
    for path in (damaged, tmp_path / "noise.db"):
        done = run_cli("search", "red", "--db", str(path))
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    for limit in ("99999999999999999999", "0", "-3", "x"):
        done = run_cli("search", "red", "--db", str(db), "--limit", limit)
        assert done.returncode == 2 and "Traceback" not in done.stderr and "--limit" in done.stderr, done.stderr
