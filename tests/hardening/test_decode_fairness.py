"""Issue 13 item 5: one small request of huge images (12 KB PNGs of 9990 x 9990 pixels, under the
100-megapixel limit) must not stall everyone's decoding, and the memory its decodes took is given
back. The normal request sent while the huge ones decode is answered long before them: it takes a
small share of the huge request's own time (the two compared in one run, not against a clock)."""

from __future__ import annotations

import asyncio
import io
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.soak import rss_mb  # noqa: E402
from tests.server.test_server_e2e import launch, png  # noqa: E402


def huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (9990, 9990), 200).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


@pytest.mark.slow
def test_huge_images_do_not_stall_a_normal_request_and_their_memory_is_given_back(tiny_fixture):
    bomb = huge_png()
    assert len(bomb) < 200_000
    with launch(tiny_fixture, "--log-level", "warning", "--timeout-s", "120") as (base, proc):
        before = rss_mb(proc.pid)

        async def scenario():
            took = {}
            async with httpx.AsyncClient(base_url=base, timeout=120) as c:
                async def heavy():
                    t0 = time.perf_counter()
                    r = await c.post("/v1/caption", files=[("image", (f"h{i}.png", bomb, "image/png")) for i in range(10)])
                    took["heavy"] = time.perf_counter() - t0
                    return r

                async def normal():
                    await asyncio.sleep(0.3)  # the huge decodes are under way
                    t0 = time.perf_counter()
                    r = await c.post("/v1/caption", files=[("image", ("r.png", png("red", "circle", "left"), "image/png"))])
                    took["normal"] = time.perf_counter() - t0
                    return r

                rh, rn = await asyncio.gather(heavy(), normal())
            return took, rh, rn

        took, rh, rn = asyncio.run(scenario())
        assert rn.status_code == 200 and rn.json()[0]["generated_text"] == "a red circle on the left"
        assert rh.status_code == 200 and len(rh.json()) == 10 and all("generated_text" in e for e in rh.json())
        # sharing two decode threads with ten huge images, the normal one waited for most of them
        assert took["normal"] < 0.25 * took["heavy"], took
        after = rss_mb(proc.pid)
        assert after < before + 400, (before, after)  # MB: one 100 MP decode at a time, and handed back
