"""OpenAI requests -> calls on the shared Service -> chat completions, whole or as SSE chunks.

The images are the `image_url` parts of the last user message that has any (earlier turns of a
chat were answered already). With several images, each choice holds one caption per image, in
order, joined by newlines; `n` choices are the n best beams (or n samples with a temperature).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..compat import Answer, Sampling, answer, caption_options, find_model, model_names
from ..inputs import Upload, from_string
from .protocol import (AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
                       ChunkChoice, Delta, Model, ModelList, OpenAIError, Usage, model_not_found, parse_request)


def list_models(service: Any) -> ModelList:
    return ModelList(data=[Model(id=name, created=service.started) for name in model_names(service)])


def get_model(service: Any, name: str) -> Model:
    if find_model(service, name) is None:
        raise model_not_found(name)
    return Model(id=name, created=service.started)


async def chat_completions(service: Any, request: Request) -> Response:
    return await service.handle(lambda: _chat(service, request))


async def _chat(service: Any, request: Request) -> Response:
    req = parse_request(await request.body())
    if find_model(service, req.model) is None:
        raise model_not_found(req.model)
    uploads, text = images_and_text(req)
    service.check_count(uploads)
    sampling = Sampling(max_tokens=req.max_completion_tokens or req.max_tokens, temperature=req.temperature,
                        top_p=req.top_p, seed=req.seed, n=req.n, caption_options=req.caption_options,
                        prompt=(text or None) if req.text_as_prompt else None)
    result = await answer(service, uploads, caption_options(service, sampling))
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    usage = Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                  total_tokens=result.prompt_tokens + result.completion_tokens)
    if req.stream:
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        events = sse(cid, created, req.model, result, usage if include_usage else None)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    choices = [Choice(index=i, message=AssistantMessage(content=text), finish_reason=_finish(result, i))
               for i, text in enumerate(result.texts)]
    completion = ChatCompletion(id=cid, created=created, model=req.model, choices=choices, usage=usage)
    return JSONResponse(completion.model_dump())


def images_and_text(req: ChatCompletionRequest) -> tuple[list[Upload], str]:
    """The images of the last user message that has any, and that message's text parts, joined."""
    for m, message in reversed(list(enumerate(req.messages))):
        if message.role != "user" or not isinstance(message.content, list):
            continue
        uploads, texts = [], []
        for p, part in enumerate(message.content):
            if part.type == "image_url" and part.image_url is not None:
                url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
                uploads.append(from_string(url, f"messages[{m}].content[{p}]"))
            elif part.type == "text" and part.text:
                texts.append(part.text)
        if uploads:
            return uploads, " ".join(texts).strip()
    raise OpenAIError(400, "no image_url part in the user messages: blipcap captions images, it does not chat",
                      "no_image", "messages")


def sse(cid: str, created: int, model: str, result: Answer, usage: Usage | None) -> Iterator[str]:
    """Per choice: the role, the caption in one piece, the finish reason; then usage if asked; [DONE]."""
    def event(choices: list[ChunkChoice], **extra: Any) -> str:
        chunk = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, **extra)
        body = chunk.model_dump(exclude=None if usage is not None else {"usage"})
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    for i, text in enumerate(result.texts):
        yield event([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
        yield event([ChunkChoice(index=i, delta=Delta(content=text))])
        yield event([ChunkChoice(index=i, delta=Delta(), finish_reason=_finish(result, i))])
    if usage is not None:
        yield event([], usage=usage)
    yield "data: [DONE]\n\n"


def _finish(result: Answer, i: int) -> str:
    return "length" if result.truncated[i] else "stop"
