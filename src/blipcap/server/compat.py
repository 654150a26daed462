"""What the OpenAI- and Ollama-compatible endpoints share: the names they answer to, the one mapping
of their sampling fields onto CaptionOptions, and one captioning answer with honest token counts.

Options go through the server's options parser from `caption_options` alone, so both protocols
refuse exactly what /v1/caption refuses. Token counts: a prompt is the [DEC] id plus the caption
prompt's ids, per image (the 577 image patches are not counted: they are not tokens a client sent);
a completion is the generated ids including the closing [SEP] when the caption reached it, the
same ids `max_new_tokens` limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from ..captioner import Caption
from ..options import CaptionOptions
from ..images import ImageError
from .inputs import ApiError, Upload, parse_options


def model_names(service: Any) -> list[str]:
    """The loaded model's id, then its --served-model-name aliases."""
    names = [service.captioner.model_id, *service.config.served_model_names]
    return list(dict.fromkeys(names))


def find_model(service: Any, name: str) -> str | None:
    """The served name `name` refers to (Ollama clients add a ":latest" tag), or None."""
    names = model_names(service)
    for candidate in (name, name.removesuffix(":latest")):
        if candidate in names:
            return candidate
    return None


@dataclass
class Sampling:
    """A protocol's request fields that map onto CaptionOptions; None: not sent."""

    max_tokens: int | None = None  # -> max_new_tokens
    temperature: float | None = None  # > 0 samples at that temperature; 0 is deterministic
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    n: int = 1  # captions per image: beams=n unless sampling
    prompt: str | None = None  # the caption prompt (a text part, only when asked for)
    caption_options: dict | None = None  # CaptionOptions fields, under the fields above


def caption_options(service: Any, sampling: Sampling) -> CaptionOptions:
    """Protocol fields over the `caption_options` extension over the checkpoint's defaults."""
    s, defaults = sampling, service.captioner.defaults
    raw: dict[str, Any] = dict(s.caption_options or {})
    if s.max_tokens is not None:
        raw["max_new_tokens"] = s.max_tokens
    if s.temperature is not None:
        if s.temperature > 0:
            raw.update(do_sample=True, temperature=s.temperature)
            raw.setdefault("num_beams", 1)  # over a checkpoint's beams; an explicit beams option is refused
        else:
            raw["do_sample"] = False
    for name in ("top_p", "top_k", "seed", "repetition_penalty"):
        if getattr(s, name) is not None:
            raw[name] = getattr(s, name)
    if s.prompt is not None:
        raw["prompt"] = s.prompt
    if s.n > 1:
        raw["num_return_sequences"] = s.n
        beams = raw.get("num_beams", defaults.num_beams)
        if not raw.get("do_sample", defaults.do_sample) and isinstance(beams, int):
            raw["num_beams"] = max(s.n, beams)  # n deterministic captions are the n best beams
    cfg = service.config
    # the one call of the options parser for both protocols
    return parse_options(raw, service.captioner, cfg.max_beams, cfg.max_new_tokens)


@dataclass
class Answer:
    texts: list[str]  # one per choice: that rank's caption of each image, joined by newlines
    truncated: list[bool]  # per choice: some caption in it ran out of max_new_tokens
    prompt_tokens: int
    completion_tokens: int


async def answer(service: Any, uploads: list[Upload], options: CaptionOptions) -> Answer:
    """Caption every image (through the shared batcher); refuse the request (400) naming the first
    image that could not be read, since a chat answer has no place for a per-image error."""
    results = await service.caption_images(uploads, options)
    bad = next((r for r in results if isinstance(r, ImageError)), None)
    if bad is not None:
        raise ApiError(400, str(bad), "invalid_image")
    ranked = [[c, *c.alternatives] for c in results]
    n = min(len(r) for r in ranked)
    per_prompt = len(service.captioner.codec.prompt_ids(options.prompt))
    return Answer(
        texts=["\n".join(r[i].text for r in ranked) for i in range(n)],
        truncated=[any(r[i].truncated for r in ranked) for i in range(n)],
        prompt_tokens=per_prompt * len(results),
        completion_tokens=sum(completion_tokens(c) for r in ranked for c in r[:n]),
    )


def completion_tokens(caption: Caption) -> int:
    return len(caption.token_ids) + (0 if caption.truncated else 1)  # the closing [SEP]


def route_class(error_response: Callable[[ApiError], Response], protocol: str) -> type[APIRoute]:
    """An APIRoute whose refusals (the API key check included) are answered by ``error_response``, in
    the protocol's own error shape, and counted in /metrics like every other refusal."""

    class ProtocolRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def route(request: Request):
                try:
                    return await handler(request)
                except ApiError as e:
                    request.app.state.service.metrics.errors.labels(kind=e.kind).inc()
                    return error_response(e)

            return route

    ProtocolRoute.__name__ = ProtocolRoute.__qualname__ = f"{protocol}Route"
    return ProtocolRoute
