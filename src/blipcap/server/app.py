"""The FastAPI app: routes, the request flow, the body-size limit, the API key and metrics.

A caption request: admit (auth, body size, readiness) -> parse -> reserve queue slots (503 when
full) -> decode on the decode threads -> the batcher -> one JSON entry per image. Refusals of the
whole request are `ApiError`s answered as {"error": ...}; a bad image is an entry of its own, and
the request is 422 only when no image in it could be captioned.
"""

from __future__ import annotations

import asyncio
import math
import hmac
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ..captioner import Caption
from ..images import Decoder, ImageError, UrlFetcher
from ..options import CaptionOptions
from .batcher import Batcher, QueueFull
from .config import ServerConfig
from .inputs import ApiError, Upload, from_form, from_json, is_image, parse_options
from .lanes import DecodeLanes
from .metrics import Metrics
from .middleware import HTTP_KINDS, LimitAndCount, error_response
from .ollama import router as ollama_router
from .openai import router as openai_router
from .schemas import CAPTION_REQUEST_BODY, CAPTION_RESPONSES
from .search import SearchService, search_router

STATIC = Path(__file__).parent / "static"
T = TypeVar("T")
log = logging.getLogger("uvicorn.error")  # shown with uvicorn's own startup lines


class Service:
    """What the routes share: the captioner, the batcher, the decode threads, metrics, state."""

    def __init__(self, captioner: Any, config: ServerConfig, fetcher: UrlFetcher | None):
        self.captioner, self.config, self.metrics = captioner, config, Metrics()
        if config.allow_urls and fetcher is None:
            fetcher = UrlFetcher(max_bytes=config.max_url_bytes, timeout_s=config.url_timeout_s)
        self.fetcher = fetcher if config.allow_urls else None
        # no captioner: search only (serve --index without a model)
        # where the model overlaps its input (torch on CUDA) the decode threads normalise too, so
        # the model's thread only copies pixels (2.2 MB per queued image instead of 0.5)
        self.overlaps_input = bool(getattr(captioner, "overlaps_input", False))
        self.images = (Decoder.of(captioner.preprocessor, config.max_pixels, self.fetcher, pixels=self.overlaps_input)
                       if captioner else None)
        self.ready = False
        self.draining = False
        self.batcher: Batcher | None = None
        self.lanes: DecodeLanes | None = None
        self._warmup: asyncio.Task | None = None
        self._requests = 0
        self.started = int(time.time())  # the "created" time the OpenAI and Ollama endpoints report

    async def start(self) -> None:
        cfg = self.config
        if self.captioner is None:  # serve --index alone: nothing to load or warm up
            self.ready = True
            self.metrics.ready.set(1)
            return
        self.lanes = DecodeLanes(self.images, cfg.decode_workers)
        # torch on CUDA: the next full batch's pixels go to the device while the model runs this one
        stage = self.captioner.stage if self.overlaps_input else None
        self.batcher = Batcher(self._run_batch, max_batch_size=cfg.max_batch_size, max_wait_s=cfg.max_wait_ms / 1000,
                               max_queue=cfg.max_queue, metrics=self.metrics, stage=stage)
        await self.batcher.start()
        self._warmup = asyncio.get_running_loop().create_task(self._warm_up())

    async def _warm_up(self) -> None:
        # first-call allocations and kernel selection happen here, not in a client's request
        await self.batcher.run_in_model_thread(self.captioner.caption, [Image.new("RGB", (64, 64), "gray")])
        self.ready = True
        self.metrics.ready.set(1)
        log.info("blipcap: model %s loaded and warmed up", self.captioner.model_id)

    def begin_drain(self) -> None:
        """SIGTERM: refuse new requests, run what is queued without waiting for batches to fill."""
        self.draining = True
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self.batcher.drain()

    async def stop(self) -> None:
        self.begin_drain()
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
        if self.batcher is not None:
            await self.batcher.stop(timeout=self.config.timeout_s)
        if self.lanes is not None:
            self.lanes.shutdown()

    def _run_batch(self, images: Any, prompts: list, options: Any) -> list:
        """On the model thread: one model call for the whole batch (a list, or a Captioner.stage batch)."""
        return self.captioner.caption(images, options, errors="return", batch_size=len(images), prompt=prompts)

    # --- one request, whatever its protocol ----------------------------------------------------------

    async def handle(self, work: Callable[[], Awaitable[T]]) -> T:
        """Admit a request (503 while draining or warming up), run `work` (body read included) within
        --timeout-s (504 beyond), and time it."""
        start = time.monotonic()
        try:
            if self.captioner is None:
                raise ApiError(404, "this server was started without a model (blipcap serve --index): it searches "
                                    "the index but does not caption; start it with --model to caption", "no_model")
            if self.draining:
                raise ApiError(503, "shutting down; retry on another instance", "draining",
                               {"Retry-After": "1", "Connection": "close"})
            if not self.ready:
                raise ApiError(503, "the model is warming up; retry shortly", "not_ready", {"Retry-After": "1"})
            try:
                return await asyncio.wait_for(work(), self.config.timeout_s)
            except asyncio.TimeoutError:
                raise ApiError(504, f"request took longer than {self.config.timeout_s:g} s", "timeout") from None
        finally:
            self.metrics.request_seconds.observe(time.monotonic() - start)

    def check_count(self, uploads: list[Upload]) -> None:
        if len(uploads) > self.config.max_queue:
            raise ApiError(413, f"{len(uploads)} images in one request; the limit is {self.config.max_queue}",
                           "too_many_images")

    async def caption_images(self, uploads: list[Upload], options: CaptionOptions) -> list[Caption | ImageError]:
        """The protocol-free core: reserve queue slots (503 when full), decode on the decode threads,
        caption through the batcher (sharing model calls with every other request), count each image."""
        self.check_count(uploads)
        prompt, options = options.prompt, options.replace(prompt=None)  # prompts ride per image
        self._requests += 1
        # Seeded sampling depends on the whole batch's draws: batch such a request only with itself.
        key = (options, self._requests) if options.do_sample and options.seed is not None else options
        try:
            reservation = self.batcher.reserve(len(uploads))
        except QueueFull as e:
            raise ApiError(503, str(e), "queue_full", {"Retry-After": str(e.retry_after)}) from None
        try:
            decoded = await asyncio.gather(*(self.lanes.decode(u) for u in uploads))
            good = [image for image in decoded if is_image(image)]
            futures = self.batcher.submit(reservation, good, [prompt] * len(good), options, key) if good else []
            captions = iter(await asyncio.gather(*futures))
        finally:
            reservation.release()
        results: list[Caption | ImageError] = []
        for item in decoded:
            if isinstance(item, ImageError):
                self.metrics.images.labels(outcome="error").inc()
                self.metrics.errors.labels(kind=type(item).__name__).inc()
                results.append(item)
            else:
                self.metrics.images.labels(outcome="ok").inc()
                results.append(next(captions))
        return results

    # --- /v1/caption ---------------------------------------------------------------------------------

    async def caption(self, request: Request) -> JSONResponse:
        status, entries = await self.handle(lambda: self._caption(request))
        return JSONResponse(entries, status_code=status)

    async def _caption(self, request: Request) -> tuple[int, list[dict]]:
        uploads, raw_options = await self._parse(request)
        self.check_count(uploads)
        cfg = self.config
        options = parse_options(raw_options, self.captioner, cfg.max_beams, cfg.max_new_tokens)
        results = await self.caption_images(uploads, options)
        entries = [{"error": str(r), "error_type": type(r).__name__} if isinstance(r, ImageError) else _entry(r)
                   for r in results]
        return (200 if any(not isinstance(r, ImageError) for r in results) else 422), entries

    async def _parse(self, request: Request) -> tuple[list[Upload], dict]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.headers.get("content-length") == "0":
            raise ApiError(400, "empty request body: send multipart 'image' files, JSON, or an image", "bad_request")
        if ctype == "multipart/form-data":
            return await from_form(request, max_files=self.config.max_queue)
        if ctype not in ("application/json", "application/octet-stream") and not ctype.startswith("image/"):
            raise ApiError(415, f"unsupported content type {ctype or '(none)'!r}: use multipart/form-data, "
                                "application/json, or image/*", "unsupported_media_type")
        body = await request.body()
        if not body:
            raise ApiError(400, "empty request body: send multipart 'image' files, JSON, or an image", "bad_request")
        if ctype == "application/json":
            return from_json(body)
        return [Upload("body", data=body)], {}  # a raw image, as the Hugging Face Inference API takes


def _entry(caption: Any) -> dict:
    entry = {"generated_text": caption.text, "score": _finite(caption.score)}
    if caption.alternatives:
        entry["alternatives"] = [{"generated_text": a.text, "score": _finite(a.score)} for a in caption.alternatives]
    return entry


def _finite(score: float | None) -> float | None:
    # options that could make a score NaN are refused, but JSON must never carry NaN whatever happens
    return score if score is not None and math.isfinite(score) else None




# --- the app -----------------------------------------------------------------------------------------

def create_app(captioner: Any, config: ServerConfig | None = None, *, fetcher: UrlFetcher | None = None) -> FastAPI:
    """The service for one loaded Captioner (None: search only, with `config.index_db`).
    `fetcher` replaces the URL fetcher (tests)."""
    config = config or ServerConfig()
    if captioner is None and config.index_db is None:
        raise ValueError("a server needs a model to caption with, an index to search, or both")
    service = Service(captioner, config, fetcher)
    search = SearchService(config.index_db, cache_dir=config.thumbnail_cache, max_pixels=config.max_pixels,
                           allow_edits=config.allow_edits) if config.index_db is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="blipcap", version=__version__, lifespan=lifespan,
                  description="Image captioning with BLIP. POST images to /v1/caption.")
    app.state.service = service
    app.add_middleware(LimitAndCount, config=service.config, metrics=service.metrics)
    app.add_exception_handler(ApiError, lambda request, e: error_response(e, service.metrics))
    # Starlette's own refusals (unknown route, wrong method) in the same shape as ours, not {"detail"}
    app.add_exception_handler(StarletteHTTPException, lambda request, e: error_response(
        ApiError(e.status_code, str(e.detail), HTTP_KINDS.get(e.status_code, "http_error"), e.headers), service.metrics))

    bearer = HTTPBearer(auto_error=False, description="the API key, when the server was started with --api-key-env")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key (alternative header)")

    def require_key(token: HTTPAuthorizationCredentials | None = Depends(bearer), key: str | None = Depends(header)):
        expected = service.config.api_key
        if expected is None:
            return
        given = key if key is not None else (token.credentials if token is not None else "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY, or X-API-Key: KEY)",
                           "unauthorized", {"WWW-Authenticate": "Bearer"})

    @app.post("/v1/caption", dependencies=[Depends(require_key)], responses=CAPTION_RESPONSES,
              openapi_extra={"requestBody": CAPTION_REQUEST_BODY}, summary="Caption one or more images")
    async def caption(request: Request):
        """One entry per image, in order: {"generated_text", "score"} or {"error", "error_type"}.
        The status is 200 when at least one image was captioned, 422 when none could be."""
        return await service.caption(request)

    app.include_router(openai_router.build(service, Depends(require_key)))
    app.include_router(ollama_router.build(service, Depends(require_key)))

    @app.get("/healthz", summary="Alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Model loaded and warmed up", responses={503: {"description": "not ready"}})
    async def readyz():
        if service.ready:
            model = service.captioner.model_id if service.captioner is not None else None
            return {"status": "ready", "model": model, **({"index": str(search.db)} if search else {})}
        state = "draining" if service.draining else "warming up"
        return JSONResponse({"status": state}, status_code=503)

    @app.get("/metrics", dependencies=[Depends(require_key)], response_class=PlainTextResponse,
             summary="Prometheus metrics")
    async def metrics():
        if service.batcher is not None:
            service.metrics.queue_depth.set(service.batcher.depth)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page():
        page = "index.html" if captioner is not None else "search.html"  # search only: its page is the front
        return FileResponse(STATIC / page, media_type="text/html")

    if search is not None:
        app.include_router(search_router(search, require_key))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
