"""Run the app under uvicorn, with graceful shutdown: on SIGTERM (or Ctrl-C) the listening socket
closes, requests already in flight finish (their queued images run at once rather than waiting for
batches to fill), and requests arriving on open connections get 503."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from .app import create_app
from .config import ServerConfig


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Any):
        super().__init__(config)
        self._service = service
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None):
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame):  # the signal handler, in the main thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._service.begin_drain)
        super().handle_exit(sig, frame)


def serve(captioner: Any, config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    app = create_app(captioner, config)
    uv = uvicorn.Config(
        app, host=host, port=port, log_level=log_level,
        # in-flight requests are bounded by timeout_s: give them that long to finish
        timeout_graceful_shutdown=int(config.timeout_s) + 5,
        # a backstop on open connections, beyond the image queue's own bound
        limit_concurrency=config.max_queue + 64,
        # the server, not uvicorn, is the one to say what it is
        server_header=False,
    )
    _Server(uv, app.state.service).run()
