"""What every request passes through before a route: the body-size cap (413 from Content-Length at
once, else while the body streams), the count of every answer by route and status, and the one
shape of a request-level refusal, {"error", "error_type"}."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from .config import ServerConfig
from .inputs import ApiError
from .metrics import Metrics

ROUTES = ("/", "/v1/caption", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json",
          "/search", "/v1/search", "/v1/thumbnail/{id}", "/v1/captions/{id}",
          "/v1/models", "/v1/chat/completions", "/api/version", "/api/tags", "/api/show", "/api/generate", "/api/chat")


class _BodyTooLarge(ApiError):
    def __init__(self, limit_mb: float):
        super().__init__(413, f"request body exceeds the {limit_mb:g} MB limit", "too_large")


class LimitAndCount:
    """Pure ASGI: refuse bodies over the cap (from Content-Length at once, else while they stream)
    and count every response by route and status."""

    def __init__(self, app: Any, config: ServerConfig, metrics: Metrics):
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, metrics = self.config.max_upload_bytes, self.metrics
        route = route_label(scope["path"])
        status = {"code": 500, "started": False}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        length = dict(scope["headers"]).get(b"content-length", b"")
        try:
            if length.isdigit() and int(length) > limit:
                raise _BodyTooLarge(self.config.max_upload_mb)
            seen = 0

            async def capped_receive():
                nonlocal seen
                message = await receive()
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(self.config.max_upload_mb)
                return message

            await self.app(scope, capped_receive, counting_send)
        except _BodyTooLarge as e:
            if status["started"]:
                raise
            await error_response(e, metrics)(scope, receive, counting_send)
        finally:
            metrics.requests.labels(route=route, status=str(status["code"])).inc()


HTTP_KINDS = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def route_label(path: str) -> str:
    """The metrics label of a request path: a route of ROUTES, /static, or other."""
    if path in ROUTES:
        return path
    if path.startswith("/static/"):
        return "/static"
    templated = path.rsplit("/", 1)[0] + "/{id}"
    return templated if templated in ROUTES else "other"


def error_response(e: ApiError, metrics: Metrics) -> JSONResponse:
    """A request-level refusal as {"error", "error_type"}, counted by kind."""
    metrics.errors.labels(kind=e.kind).inc()
    return JSONResponse({"error": e.message, "error_type": e.kind}, status_code=e.status, headers=e.headers)
