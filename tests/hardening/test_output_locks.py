"""Issue 13 item 4: two jobs writing one output file. The second is refused at once with a clear
message (exit 1), and the file never holds a row twice."""

from __future__ import annotations

import json
import time

import pytest

from blipcap.outputs.records import SinkError
from blipcap.outputs.tables import open_output
from tests.helpers.folders import popen_cli, run_cli, write_shapes


@pytest.mark.parametrize("name", ["x.jsonl", "x.csv", "x.parquet"])
def test_a_second_writer_of_the_same_output_is_refused(tmp_path, name):
    first = open_output(tmp_path / name)
    with pytest.raises(SinkError, match="being written by another blipcap job"):
        open_output(tmp_path / name)
    first.close()
    open_output(tmp_path / name).close()  # free again once the first is closed


def test_two_jobs_at_once_never_duplicate_rows(tiny_fixture, tmp_path):
    images = write_shapes(tmp_path / "d", 60)
    out = tmp_path / "x.jsonl"
    args = ["caption", str(tmp_path / "d"), "--model", str(tiny_fixture), "--output", str(out), "--batch-size", "2"]
    first = popen_cli(*args)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)  # the first job holds the file once it writes
    second = run_cli(*args)
    first.communicate(timeout=300)
    assert first.returncode == 0
    if second.returncode == 1:  # it started while the first ran: refused, nothing written
        assert "being written by another blipcap job" in second.stderr
    else:  # the first was already done: a re-run that skips everything
        assert second.returncode == 0 and "0 captioned" in second.stderr, second.stderr
    paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert sorted(paths) == sorted(images) and len(set(paths)) == len(paths)
