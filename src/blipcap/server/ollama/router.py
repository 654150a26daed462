"""Mounts the Ollama-compatible routes: GET /api/version, GET /api/tags, POST /api/show,
POST /api/generate, POST /api/chat."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from . import serving
from .protocol import (ChatResponse, ErrorResponse, GenerateResponse, OllamaRoute, ShowResponse, TagsResponse,
                       VersionResponse)

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 503, 504)}


def build(service: Any, auth: Any) -> APIRouter:
    router = APIRouter(route_class=OllamaRoute, dependencies=[auth], tags=["Ollama-compatible"])

    @router.get("/api/version", response_model=VersionResponse, summary="The server's version")
    async def version():
        return serving.version()

    @router.get("/api/tags", response_model=TagsResponse, summary="The served model names")
    async def tags():
        return serving.tags(service)

    @router.post("/api/show", response_model=ShowResponse, responses=_ERRORS, summary="One served model")
    async def show(request: Request):
        return await serving.show(service, request)

    @router.post("/api/generate", response_model=GenerateResponse, responses=_ERRORS,
                 summary="Caption `images` (NDJSON unless stream: false)")
    async def generate(request: Request):
        return await serving.generate(service, request)

    @router.post("/api/chat", response_model=ChatResponse, responses=_ERRORS,
                 summary="Caption the images of the last user message (NDJSON unless stream: false)")
    async def chat(request: Request):
        return await serving.chat(service, request)

    return router
