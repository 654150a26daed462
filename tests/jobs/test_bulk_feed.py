"""The folder job staging each batch while the model works on the one before it (torch on CUDA;
here on the CPU with the same feed and helper thread): the same batches, rows, duplicates and
failures as without it."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from blipcap import Captioner
from blipcap.backends.feed import PinnedFeed
from blipcap.jobs.common import StopRequest
from blipcap.jobs.discover import find_images
from blipcap.jobs.local import BulkJob
from blipcap.outputs.tables import JsonlSink
from tests.helpers.folders import write_broken, write_shapes


def rows(path: Path) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


class Calls:
    """Forwards to a Captioner and records the size of each caption call's batch."""

    def __init__(self, cap):
        self._cap, self.batches = cap, []

    def __getattr__(self, name):
        return getattr(self._cap, name)

    def caption(self, images, *args, **kwargs):
        self.batches.append(len(images))
        return self._cap.caption(images, *args, **kwargs)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_staging_ahead_writes_what_the_plain_job_writes(tiny_fixture, tmp_path, batch_size):
    folder = tmp_path / "photos"
    expected = write_shapes(folder, 11, seed=4)
    first = sorted(expected)
    for i in (0, 5, 9):  # duplicates: of an image in the same, the staged or an earlier batch
        shutil.copy(first[i], folder / f"twin{i}.png")
    write_broken(folder / "bad")
    paths = find_images([str(folder)])
    plain = Calls(Captioner.load(tiny_fixture, device="cpu", dtype="float32"))
    ahead = Calls(Captioner.load(tiny_fixture, device="cpu", dtype="float32"))
    ahead.backend.feed = PinnedFeed("cpu", torch.float32)
    assert ahead.overlaps_input and not plain.overlaps_input
    summaries = {}
    for name, cap in (("plain", plain), ("ahead", ahead)):
        job = BulkJob(paths, [JsonlSink(tmp_path / f"{name}.jsonl")], batch_size=batch_size, workers=2)
        summaries[name] = job.run(cap)
    a, b = summaries["plain"], summaries["ahead"]
    assert (a.captioned, a.reused, a.failed) == (b.captioned, b.reused, b.failed) == (11, 3, 4)
    assert ahead.batches == plain.batches  # the same batches, one caption call each
    got, want = rows(tmp_path / "ahead.jsonl"), rows(tmp_path / "plain.jsonl")
    # the same rows; a reused or failed image's row may be written a batch earlier, as the batch
    # before it in the input waits to be captioned until the next one is full
    assert got == want
    assert all(got[p]["caption"] == text for p, text in expected.items())


def test_a_stop_request_finishes_the_batch_in_the_model_and_drops_the_staged_one(tiny_fixture, tmp_path):
    folder = tmp_path / "photos"
    write_shapes(folder, 12, seed=6)
    paths = find_images([str(folder)])
    stop = StopRequest()

    class StopInFirstBatch(Calls):
        def caption(self, images, *args, **kwargs):
            stop.signum = signal.SIGTERM  # as if SIGTERM arrived while the model ran
            return super().caption(images, *args, **kwargs)

    cap = StopInFirstBatch(Captioner.load(tiny_fixture, device="cpu", dtype="float32"))
    cap.backend.feed = PinnedFeed("cpu", torch.float32)
    out = tmp_path / "o.jsonl"
    summary = BulkJob(paths, [JsonlSink(out)], batch_size=4, stop=stop).run(cap)
    assert summary.signal == signal.SIGTERM and cap.batches == [4] and summary.captioned == 4
    assert len(rows(out)) == 4
    rest = BulkJob(paths, [JsonlSink(out)], batch_size=4).run(cap._cap)  # a re-run does the rest
    assert (rest.skipped, rest.captioned) == (4, 8) and sorted(rows(out)) == sorted(paths)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_job_writes_the_same_rows_with_the_feed_on_and_off(tiny_fixture, tmp_path):
    folder = tmp_path / "photos"
    expected = write_shapes(folder, 10, seed=8)
    shutil.copy(sorted(expected)[0], folder / "twin.png")
    paths = find_images([str(folder)])
    cap = Captioner.load(tiny_fixture, device="cuda", dtype="float32")
    assert cap.overlaps_input and cap.backend.feed is not None
    on = BulkJob(paths, [JsonlSink(tmp_path / "on.jsonl")], batch_size=3, workers=2).run(cap)
    assert cap.backend.feed.allocations > 0 and cap.backend.feed.pinned_memory and cap._stager is not None
    cap.backend.feed = None  # the plain synchronous copy, nothing staged ahead
    off = BulkJob(paths, [JsonlSink(tmp_path / "off.jsonl")], batch_size=3, workers=2).run(cap)
    assert (on.captioned, on.reused) == (off.captioned, off.reused) == (10, 1)
    assert rows(tmp_path / "on.jsonl") == rows(tmp_path / "off.jsonl")


def test_the_next_batch_is_staged_before_the_model_starts_on_the_one_before_it(tiny_fixture, tmp_path):
    folder = tmp_path / "photos"
    write_shapes(folder, 7, seed=2)
    paths = find_images([str(folder)])
    calls: list[str] = []

    class Recording(Calls):
        def stage(self, images):
            calls.append(f"stage {len(images)}")
            return self._cap.stage(images)

        def caption(self, images, *args, **kwargs):
            calls.append(f"caption {len(images)}")
            return super().caption(images, *args, **kwargs)

    cap = Recording(Captioner.load(tiny_fixture, device="cpu", dtype="float32"))
    cap.backend.feed = PinnedFeed("cpu", torch.float32)
    BulkJob(paths, [JsonlSink(tmp_path / "o.jsonl")], batch_size=3, workers=2).run(cap)
    assert calls == ["stage 3", "stage 3", "caption 3", "stage 1", "caption 3", "caption 1"]
