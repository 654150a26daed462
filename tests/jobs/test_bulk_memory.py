"""Memory stays flat however many files a folder job has: 5,000 generated images, RSS sampled
while it runs, compared between the early part of the job and the end."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.folders import COMBOS, popen_cli
from tests.helpers.shapes import make_image

N = 5000


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
def test_peak_memory_does_not_grow_with_the_number_of_images(tiny_fixture, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N):  # 120x90: each decoded image is 32 KB, so keeping them would show at once
        make_image(*COMBOS[i % len(COMBOS)], rng=rng).save(folder / f"{i:05d}.png", compress_level=1)
    out = tmp_path / "out.jsonl"
    proc = popen_cli("caption", str(folder), "--model", str(tiny_fixture), "--output", str(out),
                     "--batch-size", "64", "--quiet")
    samples: list[tuple[int, float]] = []  # (rows written, RSS in MB)
    rows = 0
    while proc.poll() is None:
        if out.is_file():
            rows = out.read_bytes().count(b"\n")
        mb = rss_mb(proc.pid)
        if mb is not None:
            samples.append((rows, mb))
        time.sleep(0.05)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert out.read_bytes().count(b"\n") == N

    early = max(mb for done, mb in samples if N * 0.1 <= done <= N * 0.3)  # warm: model, queue, first batches
    late = max(mb for done, mb in samples if done >= N * 0.8)
    # Holding the decoded images would add 32 KB x 4,000 = 125 MB between the two; bookkeeping (the
    # path and sha256 -> caption of each file) is ~200 bytes x 4,000 = 0.8 MB.
    assert late - early < 25, f"RSS grew from {early:.0f} MB to {late:.0f} MB while captioning {N} images"
