"""Ollama requests -> calls on the shared Service -> responses, whole or as NDJSON lines.

/api/generate captions its `images`; /api/chat the images of the last user message that has any.
Several images: one caption per image, in order, joined by newlines. A request with neither images
nor a prompt (or no messages) is Ollama's "load the model" call, answered done at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any, Iterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ... import __version__
from ..compat import Answer, Sampling, answer, caption_options, find_model, model_names
from ..inputs import ApiError, Upload, from_string
from .protocol import (AssistantMessage, ChatRequest, ChatResponse, GenerateRequest, GenerateResponse,
                       ModelDetails, ModelEntry, Options, ShowRequest, ShowResponse, TagsResponse, Timings,
                       VersionResponse, model_not_found, parse_request)


def version() -> VersionResponse:
    return VersionResponse(version=__version__)


def tags(service: Any) -> TagsResponse:
    started = _iso(service.started)
    return TagsResponse(models=[
        ModelEntry(name=_tagged(name), model=_tagged(name), modified_at=started, size=0,
                   digest=hashlib.sha256(name.encode()).hexdigest(), details=_details(service))
        for name in model_names(service)])


async def show(service: Any, request: Request) -> ShowResponse:
    req = parse_request(ShowRequest, await request.body())
    name = req.model or req.name or ""
    if find_model(service, name) is None:
        raise model_not_found(name)
    text = service.captioner.backend.dims.text
    info = {"general.architecture": "blip", "blip.vocab_size": text.vocab, "blip.context_length": text.max_positions}
    return ShowResponse(details=_details(service), model_info=info, modified_at=_iso(service.started))


async def generate(service: Any, request: Request) -> Response:
    return await service.handle(lambda: _generate(service, request))


async def chat(service: Any, request: Request) -> Response:
    return await service.handle(lambda: _chat(service, request))


async def _generate(service: Any, request: Request) -> Response:
    start = time.monotonic()
    req = parse_request(GenerateRequest, await request.body())
    if find_model(service, req.model) is None:
        raise model_not_found(req.model)
    if not req.images:
        if not (req.prompt or "").strip():
            return JSONResponse(_dump(GenerateResponse(model=req.model, created_at=_now(), response="", done=True,
                                                       done_reason="load")))
        raise ApiError(400, 'no images: blipcap captions images, send them base64-encoded in "images"', "no_image")
    uploads = [from_string(s, f"images[{i}]") for i, s in enumerate(req.images)]
    result = await _caption(service, uploads, req.options, req.caption_options, req.prompt if req.text_as_prompt else None)

    def line(text: str, done: bool) -> dict:
        reply = GenerateResponse(model=req.model, created_at=_now(), response=text, done=done,
                                 done_reason=_reason(result) if done else None)
        return {**_dump(reply), **(_timings(result, start) if done else {})}

    return _respond(req.stream, [line(result.texts[0], False), line("", True)], line(result.texts[0], True))


async def _chat(service: Any, request: Request) -> Response:
    start = time.monotonic()
    req = parse_request(ChatRequest, await request.body())
    if find_model(service, req.model) is None:
        raise model_not_found(req.model)
    if not req.messages:
        reply = ChatResponse(model=req.model, created_at=_now(), message=AssistantMessage(content=""), done=True,
                             done_reason="load")
        return JSONResponse(_dump(reply))
    uploads, text = _images_and_text(req)
    result = await _caption(service, uploads, req.options, req.caption_options, text if req.text_as_prompt else None)

    def line(text: str, done: bool) -> dict:
        reply = ChatResponse(model=req.model, created_at=_now(), message=AssistantMessage(content=text), done=done,
                             done_reason=_reason(result) if done else None)
        return {**_dump(reply), **(_timings(result, start) if done else {})}

    return _respond(req.stream, [line(result.texts[0], False), line("", True)], line(result.texts[0], True))


def _images_and_text(req: ChatRequest) -> tuple[list[Upload], str]:
    for m, message in reversed(list(enumerate(req.messages))):
        if message.role == "user" and message.images:
            uploads = [from_string(s, f"messages[{m}].images[{i}]") for i, s in enumerate(message.images)]
            return uploads, (message.content or "").strip()
    raise ApiError(400, 'no images in the user messages: blipcap captions images, it does not chat', "no_image")


async def _caption(service: Any, uploads: list[Upload], options: Options | None, extension: dict | None,
                   prompt: str | None) -> Answer:
    service.check_count(uploads)
    o = options or Options()
    sampling = Sampling(max_tokens=o.num_predict if o.num_predict and o.num_predict > 0 else None,
                        temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, seed=o.seed,
                        repetition_penalty=o.repeat_penalty, prompt=prompt or None, caption_options=extension)
    return await answer(service, uploads, caption_options(service, sampling))


def _respond(stream: bool, lines: list[dict], whole: dict) -> Response:
    if not stream:
        return JSONResponse(whole)

    def ndjson() -> Iterator[str]:
        for line in lines:
            yield json.dumps(line, separators=(",", ":")) + "\n"

    return StreamingResponse(ndjson(), media_type="application/x-ndjson")


def _timings(result: Answer, start: float) -> dict:
    ns = int((time.monotonic() - start) * 1e9)
    return _dump(Timings(total_duration=ns, prompt_eval_count=result.prompt_tokens,
                         eval_count=result.completion_tokens, eval_duration=ns))


def _reason(result: Answer) -> str:
    return "length" if result.truncated[0] else "stop"


def _details(service: Any) -> ModelDetails:
    onnx = type(service.captioner.backend).__name__.lower().startswith("onnx")
    return ModelDetails(format="onnx" if onnx else "pytorch")


def _dump(model: Any) -> dict:
    return model.model_dump(exclude_none=True)


def _tagged(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
