"""The OpenAI chat-completions and models shapes, as the protocol (and vLLM) spells them, and its
error shape {"error": {"message", "type", "param", "code"}}.

Fields the protocol has and BLIP cannot honour (tools, stop, logprobs, penalties...) are accepted
and ignored, as vLLM accepts extra fields. blipcap's extensions: `caption_options` (CaptionOptions
fields) and `text_as_prompt` (use the message's text as the caption prompt).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from ..compat import route_class
from ..inputs import ApiError

# --- requests ----------------------------------------------------------------------------------------


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str
    detail: str | None = None  # accepted; every image is resized to the model's input anyway


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str  # "text" and "image_url" are read; other parts are ignored
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # wins over max_tokens
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # blipcap's extensions
    caption_options: dict[str, Any] | None = None
    text_as_prompt: bool = False


# --- responses ---------------------------------------------------------------------------------------


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None

    @field_serializer("delta")
    def _only_sent_fields(self, delta: Delta) -> dict:
        return delta.model_dump(exclude_none=True)


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None  # present (null until the last chunk) only with include_usage


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "blipcap"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# --- errors ------------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 422: "invalid_request_error", 503: "service_unavailable_error",
          504: "timeout_error"}


class OpenAIError(ApiError):
    """A refusal that names the request field at fault."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None):
        super().__init__(status, message, kind)
        self.param = param


def model_not_found(name: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{name}` does not exist.", "model_not_found", "model")


def parse_request(body: bytes) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise OpenAIError(400, f"{param or 'body'}: {first['msg']}", "bad_request", param) from None


def error_response(e: ApiError) -> JSONResponse:
    info = ErrorInfo(message=e.message, type=_TYPES.get(e.status, "server_error"), param=getattr(e, "param", None),
                     code=e.kind)
    return JSONResponse(ErrorResponse(error=info).model_dump(), status_code=e.status, headers=e.headers)


OpenAIRoute = route_class(error_response, "OpenAI")  # refusals in OpenAI's error shape
