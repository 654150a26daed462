"""The Ollama API shapes (/api/generate, /api/chat, /api/tags, /api/show, /api/version) as Ollama
spells them, and its error shape {"error": "..."}.

Ollama's model options that mean something to BLIP are read (num_predict, temperature, top_p, top_k,
seed, repeat_penalty); the others (num_ctx, mirostat...) are accepted and ignored, as are `format`,
`system`, `template`, `keep_alive`. blipcap's extensions, as on the OpenAI endpoint: `caption_options`
and `text_as_prompt`.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..compat import route_class
from ..inputs import ApiError

# --- requests ----------------------------------------------------------------------------------------


class Options(BaseModel):
    model_config = ConfigDict(extra="allow")
    num_predict: int | None = None  # -> max_new_tokens; <= 0 (Ollama's "unlimited") keeps the default
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    repeat_penalty: float | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    prompt: str | None = None
    images: list[str] | None = None  # base64
    options: Options | None = None
    stream: bool = True
    caption_options: dict[str, Any] | None = None
    text_as_prompt: bool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = None
    images: list[str] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(default_factory=list)
    options: Options | None = None
    stream: bool = True
    caption_options: dict[str, Any] | None = None
    text_as_prompt: bool = False


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    name: str | None = None  # the older spelling


# --- responses ---------------------------------------------------------------------------------------


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: str  # "pytorch" or "onnx"
    family: str = "blip"
    families: list[str] = ["blip"]
    parameter_size: str = ""
    quantization_level: str = ""


class ModelEntry(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsResponse(BaseModel):
    models: list[ModelEntry]


class ShowResponse(BaseModel):
    modelfile: str = ""
    parameters: str = ""
    template: str = ""
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str] = ["completion", "vision"]
    modified_at: str


class VersionResponse(BaseModel):
    version: str


class Timings(BaseModel):
    total_duration: int  # ns, the whole request
    load_duration: int = 0
    prompt_eval_count: int
    eval_count: int
    eval_duration: int  # ns: the whole request too; the batched model time is not one request's


class GenerateResponse(BaseModel):
    model: str
    created_at: str
    response: str
    done: bool
    done_reason: Literal["stop", "length", "load"] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatResponse(BaseModel):
    model: str
    created_at: str
    message: AssistantMessage
    done: bool
    done_reason: Literal["stop", "length", "load"] | None = None


# --- errors ------------------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    error: str



def model_not_found(name: str) -> ApiError:
    return ApiError(404, f'model "{name}" not found', "model_not_found")


def parse_request(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, f"{where}: {first['msg']}", "bad_request") from None


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)


OllamaRoute = route_class(error_response, "Ollama")  # refusals in Ollama's error shape
