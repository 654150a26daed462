"""Mounts the OpenAI-compatible routes: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from . import serving
from .protocol import ChatCompletion, ErrorResponse, Model, ModelList, OpenAIRoute

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 503, 504)}


def build(service: Any, auth: Any) -> APIRouter:
    router = APIRouter(route_class=OpenAIRoute, dependencies=[auth], tags=["OpenAI-compatible"])

    @router.get("/v1/models", response_model=ModelList, summary="The served model names")
    async def models():
        return serving.list_models(service)

    @router.get("/v1/models/{name:path}", response_model=Model, responses=_ERRORS, summary="One served model")
    async def model(name: str):
        return serving.get_model(service, name)

    @router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS,
                 summary="Caption the images of a chat message (SSE with stream: true)")
    async def chat_completions(request: Request):
        return await serving.chat_completions(service, request)

    return router
