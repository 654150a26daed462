"""The search routes, mounted with one `app.include_router(search_router(...))`: the page at /search,
GET /v1/search, GET /v1/thumbnail/{id}, PUT /v1/captions/{id}. Handlers are plain functions, so
FastAPI runs them on its thread pool: SQLite reads and image decoding never block the event loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Body, Depends, Header, Query
from fastapi.responses import FileResponse, JSONResponse, Response

from .serving import SearchError, SearchService

PAGE = Path(__file__).resolve().parent.parent / "static" / "search.html"
CACHE_CONTROL = "private, max-age=60"  # then revalidated with the ETag: a file edited in place shows soon
_ERRORS = {s: {"description": d, "content": {"application/json": {"example": {"error": "...", "error_type": k}}}}
           for s, d, k in ((403, "the file now leads elsewhere, or edits are off", "file_replaced"),
                           (404, "no such id, or its file is gone", "file_gone"),
                           (422, "a bad parameter, or a file that is no longer an image", "bad_request"))}


def search_router(service: SearchService, auth: Callable[..., Any]) -> APIRouter:
    """The routes over ``service``; ``auth`` is the app's API-key dependency."""
    router = APIRouter()
    key = [Depends(auth)]

    @router.get("/search", include_in_schema=False)
    def page():
        return FileResponse(PAGE, media_type="text/html")

    @router.get("/v1/search", dependencies=key, summary="Search the captions of the index", responses=_ERRORS)
    def search(q: str = Query("", description="any text: its words are searched for, as `blipcap search` does"),
               limit: str | None = Query(None, description="results per page, 1..100 (default 20)"),
               offset: str | None = Query(None, description="results to skip (pages)")):
        """{"query", "offset", "limit", "next_offset" (null on the last page), "editable" (--allow-edits),
        "results": [{"id", "path", "caption", "snippet" (HTML: escaped text, matched words in <mark>),
        "rank" (bm25, lower is better), "width", "height", "thumbnail", "image" (URLs)}]}, best first."""
        return _answer(lambda: service.search(q, limit, offset))

    @router.get("/v1/thumbnail/{id}", dependencies=key, summary="A thumbnail of an indexed image",
                response_class=Response, responses={200: {"content": {"image/jpeg": {}}}, 304: {}, **_ERRORS})
    def thumbnail(id: str, size: str | None = Query(None, description="small (320 px, default) or large (1280 px)"),
                  if_none_match: str | None = Header(None)):
        """A JPEG of the image of index entry ``id``, upright; ETag and Cache-Control for caching."""
        def run():
            thumb = service.thumbnail(id, size, if_none_match)
            if thumb.data is None:
                return Response(status_code=304, headers={"ETag": thumb.etag, "Cache-Control": CACHE_CONTROL})
            return Response(thumb.data, media_type="image/jpeg",
                            headers={"ETag": thumb.etag, "Cache-Control": CACHE_CONTROL})
        return _answer(run)

    @router.put("/v1/captions/{id}", dependencies=key, summary="Correct a caption (--allow-edits)",
                responses=_ERRORS)
    def edit(id: str, body: Any = Body(None, examples=[{"caption": "a red circle on a white wall"}])):
        """Store a person's caption for index entry ``id``; later caption runs keep it."""
        return _answer(lambda: service.edit(id, body))

    return router


def _answer(run: Callable[[], Any]) -> Any:
    try:
        return run()
    except SearchError as e:
        return JSONResponse({"error": e.message, "error_type": e.kind}, status_code=e.status, headers=e.headers)
