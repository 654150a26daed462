"""Connections that hold nothing: uvicorn's HTTP/1.1 protocol (h11) with a deadline for a request's
headers and a connection limit whose refusals the service counts.

uvicorn times out an idle keep-alive connection (``timeout_keep_alive``), but not a new connection
that sends nothing, or sends its headers a byte at a time; and beyond ``limit_concurrency`` it
answers 503 itself, uncounted and without Retry-After. A few hundred idle sockets then starved
every client, probes included (issue 13). Here a request's line and headers must arrive within
``header_timeout_s`` of the connection opening (or of the previous response), else the connection
gets 408 and is closed; past ``max_connections`` open connections, a new one gets 503 with
Retry-After at once. Both are counted in /metrics (``blipcap_requests_total{route="other"}`` and
``blipcap_errors_total{kind="header_timeout"|"too_many_connections"}``). Bodies are bounded by the
request timeout (``timeout_s``), which covers the body upload.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


def _response(status: str, extra: str = "") -> bytes:
    body = status.split(" ", 1)[1].encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n")
    return head.encode() + body


def guarded_protocol(metrics: Any, *, header_timeout_s: float, max_connections: int) -> type:
    """The protocol class for ``uvicorn.Config(http=...)``, reporting to ``metrics``."""

    class GuardedH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._refuse(_response("503 Service Unavailable", "retry-after: 1\r\n"), "too_many_connections", 503)
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._arm()  # the first bytes of a keep-alive connection's next request
            super().data_received(data)
            if not self._between_requests():
                self._disarm()  # its headers are in: from here the request timeout bounds it

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self._refuse(_response("408 Request Timeout"), "header_timeout", 408)

        def _refuse(self, response: bytes, kind: str, status: int) -> None:
            metrics.errors.labels(kind=kind).inc()
            metrics.requests.labels(route="other", status=str(status)).inc()
            self.transport.write(response)
            self.transport.close()

    return GuardedH11
