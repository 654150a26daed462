"""OpenAPI descriptions of /v1/caption for /docs (the handler parses bodies itself, see inputs.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Alternative(BaseModel):
    generated_text: str
    score: float | None = None


class CaptionEntry(BaseModel):
    generated_text: str = Field(description="the caption")
    score: float | None = Field(None, description="sum of the log-probabilities of its tokens")
    alternatives: list[Alternative] | None = Field(None, description="other captions (num_return_sequences > 1)")


class ImageErrorEntry(BaseModel):
    error: str = Field(description='"<input>: <reason>"')
    error_type: str = Field(description="UnreadableImageError, EmptyImageError, NotAnImageError, "
                                        "TruncatedImageError, ImageTooLargeError or UrlRefused")


class ErrorBody(BaseModel):
    error: str  # what was wrong, for people
    error_type: str  # a stable name for it, for programs: bad_request, too_large, queue_full, ...


_entries = {"description": "one entry per image, in order", "model": list[CaptionEntry | ImageErrorEntry]}
CAPTION_RESPONSES = {
    200: _entries,
    400: {"model": ErrorBody, "description": "empty or malformed body"},
    401: {"model": ErrorBody, "description": "missing or wrong API key"},
    413: {"model": ErrorBody, "description": "body over --max-upload-mb, or more images than --max-queue"},
    415: {"model": ErrorBody, "description": "unsupported content type"},
    422: {"description": "no image could be captioned (the entries say why), or invalid options {error}"},
    503: {"model": ErrorBody, "description": "queue full, warming up or shutting down; see Retry-After"},
    504: {"model": ErrorBody, "description": "the request took longer than --timeout-s"},
}

_OPTIONS = {
    "type": "object",
    "description": "CaptionOptions fields, over the checkpoint's defaults",
    "properties": {
        "num_beams": {"type": "integer", "minimum": 1}, "max_new_tokens": {"type": "integer", "minimum": 1},
        "min_new_tokens": {"type": "integer"}, "prompt": {"type": "string"}, "keep_prompt": {"type": "boolean"},
        "do_sample": {"type": "boolean"}, "temperature": {"type": "number"}, "top_p": {"type": "number"},
        "top_k": {"type": "integer"}, "seed": {"type": "integer"}, "num_return_sequences": {"type": "integer"},
        "repetition_penalty": {"type": "number"}, "no_repeat_ngram_size": {"type": "integer"},
        "length_penalty": {"type": "number"}, "suppress_artefacts": {"type": "boolean"},
        "bad_words": {"type": "array", "items": {"type": "string"}},
        "suppress_tokens": {"type": "array", "items": {"type": "integer"}},
        "early_stopping": {"oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["never"]}]},
    },
    "example": {"num_beams": 3},
}
_IMAGE_STRING = {"type": "string", "description": "base64 image bytes, a data: URL, or (with --allow-urls) an "
                                                   "http(s) URL of a public address"}

CAPTION_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {
                "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "options": {"type": "string", "description": "options as a JSON object, e.g. {\"num_beams\": 3}"},
            },
        }},
        "application/json": {"schema": {"oneOf": [
            {"title": "images", "type": "object", "required": ["images"],
             "properties": {"images": {"type": "array", "items": _IMAGE_STRING}, "options": _OPTIONS}},
            {"title": "Hugging Face Inference", "type": "object", "required": ["inputs"],
             "properties": {"inputs": _IMAGE_STRING, "parameters": _OPTIONS}},
        ]}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
