"""`blipcap serve`: an HTTP captioning service (FastAPI + uvicorn, the `serve` extra).

    from blipcap import Captioner
    from blipcap.server import ServerConfig, create_app
    app = create_app(Captioner.load("large"), ServerConfig(max_batch_size=16))

Modules: `config` (the limits), `app` (routes and request handling), `batcher` (the dynamic
micro-batcher and the model thread), `inputs` (request bodies -> images and options; decoding and
SSRF-safe URL fetching are `blipcap.images`'), `metrics` (Prometheus text), `run` (uvicorn with
graceful shutdown), `static/` (the web pages), `search/` (`serve --index`: search, thumbnails,
caption edits); `openai/` and `ollama/` (the compatible endpoints, each protocol.py / serving.py /
router.py) over `compat` (what they share: names, the option mapping, token counts).
"""

from __future__ import annotations

from typing import Any

from .config import ServerConfig

_MISSING = "blipcap serve requires the serve extra: pip install 'blipcap[serve]'"


def require_serve_extra() -> None:
    """Raise ImportError with the install command when FastAPI or uvicorn are missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (form uploads)
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{_MISSING} ({exc})") from exc


def create_app(captioner: Any, config: ServerConfig | None = None, **kwargs: Any):
    require_serve_extra()
    from .app import create_app as _create

    return _create(captioner, config, **kwargs)


__all__ = ["ServerConfig", "create_app", "require_serve_extra"]
