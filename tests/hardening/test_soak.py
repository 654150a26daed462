"""A bounded soak (benchmarks/soak.py): good requests alone and among hostile ones (bad bodies and
options, oversized bodies, bombs, idle and slow connections) from concurrent clients. Every good
request gets 200 and its right caption, every hostile one a 4xx or a closed connection (never a
500), /healthz answers, and the server's memory is back near where it started."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from benchmarks.soak import rss_mb, soak  # noqa: E402
from tests.server.test_server_e2e import launch  # noqa: E402


@pytest.mark.slow
def test_soak_of_mixed_traffic(tiny_fixture):
    with launch(tiny_fixture, "--log-level", "warning", "--max-upload-mb", "2", "--header-timeout-s", "2",
                "--timeout-s", "20") as (base, proc):
        before = rss_mb(proc.pid)
        result = asyncio.run(soak(base, good=60, hostile=70, clients=12))
        time.sleep(1)
        after = rss_mb(proc.pid)
    assert result["wrong"] == [] and result["healthz"] == 200, result
    statuses = result["statuses"]
    assert statuses["good 200"] == 120  # 60 alone and 60 under attack
    for key, n in statuses.items():
        kind, status = key.split(" ")
        if kind in ("idle", "slow"):
            assert status in ("408", "closed", "reset"), key
        elif kind != "good":
            assert status.startswith("4"), key
    assert after < before + 150, (before, after)  # MB: no leak of bodies or decodes
