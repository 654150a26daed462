"""Issue 13 item 2: idle or slow connections cannot starve other clients. A connection that sends
no headers in time gets 408 and is closed; past the connection limit, a new one gets 503 with
Retry-After at once; both are counted in /metrics; probes and captions stay answerable."""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
import httpx  # noqa: E402

from tests.server.test_server_app import metric  # noqa: E402
from tests.server.test_server_e2e import launch, png  # noqa: E402


def idle_sockets(base: str, n: int) -> list[socket.socket]:
    port = int(base.rsplit(":", 1)[1])
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    return socks


def test_idle_connections_time_out_and_do_not_starve_probes_or_captions(tiny_fixture):
    with launch(tiny_fixture, "--header-timeout-s", "2", "--log-level", "warning") as (base, _):
        socks = idle_sockets(base, 330)  # more than the old limit of max_queue + 64
        slow = socks[0]
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers that never finish
        try:
            t0 = time.monotonic()
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            r = httpx.post(f"{base}/v1/caption", files=[("image", ("r.png", png("red", "circle", "left"), "image/png"))],
                           timeout=30)
            assert r.status_code == 200 and r.json()[0]["generated_text"] == "a red circle on the left"
            assert time.monotonic() - t0 < 5
            slow.settimeout(10)
            answer = slow.recv(200)  # within the header deadline plus slack: the server ends it
            assert answer.startswith(b"HTTP/1.1 408"), answer
            for s in socks[1:]:
                s.settimeout(10)
                assert s.recv(200).startswith(b"HTTP/1.1 408")
        finally:
            for s in socks:
                s.close()
        text = httpx.get(f"{base}/metrics").text
        assert metric(text, 'blipcap_errors_total{kind="header_timeout"}') == 330


def test_past_the_connection_limit_new_connections_get_503_with_retry_after(tiny_fixture):
    with launch(tiny_fixture, "--max-connections", "20", "--header-timeout-s", "30",
                "--log-level", "warning") as (base, _):
        socks = idle_sockets(base, 20)
        try:
            extra = idle_sockets(base, 1)[0]
            extra.settimeout(10)
            answer = extra.recv(500)
            assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()
            extra.close()
        finally:
            for s in socks:
                s.close()
        deadline = time.monotonic() + 10
        while True:  # the closed sockets are gone once the server has seen them close
            try:
                text = httpx.get(f"{base}/metrics", timeout=5).text
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert metric(text, 'blipcap_errors_total{kind="too_many_connections"}') >= 1
        assert metric(text, 'blipcap_requests_total{route="other",status="503"}') >= 1
