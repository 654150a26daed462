"""Run the app under uvicorn, with graceful shutdown: on SIGTERM (or Ctrl-C) the listening socket
closes, requests already in flight finish (their queued images run at once rather than waiting for
batches to fill), and requests arriving on open connections get 503."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from .app import create_app
from .config import ServerConfig
from .connections import guarded_protocol


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


def _raise_open_files_limit(want: int) -> None:
    """Let the process hold max_connections sockets (the soft limit is often 1024), up to the hard limit."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def serve(captioner: Any, config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    app = create_app(captioner, config)
    protocol = guarded_protocol(app.state.service.metrics, header_timeout_s=config.header_timeout_s,
                                max_connections=config.max_connections)
    uv = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, http=protocol,
        # in-flight requests are bounded by timeout_s: give them that long to finish
        timeout_graceful_shutdown=int(config.timeout_s) + 5,
        timeout_keep_alive=int(config.keep_alive_s),
        # the connection limit is the protocol's (counted, with Retry-After), not uvicorn's own
        limit_concurrency=None,
        # the server, not uvicorn, is the one to say what it is
        server_header=False,
    )
    _raise_open_files_limit(config.max_connections + 256)
    _Server(uv, app.state.service).run()
