"""Request bodies -> uploads and caption options; uploads -> decoded images (or their errors).

Three body shapes carry images: multipart files named `image` (with an optional `options` JSON
field), JSON `{"images": [...], "options": {...}}`, and the Hugging Face Inference shape
`{"inputs": ..., "parameters": {...}}`; a raw `image/*` body is one image. A JSON image is base64,
a `data:` URL, or (with --allow-urls) an http(s) URL. A string is never a file path.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..decoding import CaptionOptions
from ..jobs.local import decode_bytes
from ..images import ImageError, UnreadableImageError
from .urls import UrlFetcher


class ApiError(Exception):
    """A refusal of the whole request: HTTP status, message, and the kind counted in /metrics."""

    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


@dataclass
class Upload:
    label: str  # how its error names it: a file name, "images[2]", a URL
    data: bytes | None = None
    url: str | None = None
    error: ImageError | None = None  # refused while parsing (bad base64)


def from_json(body: bytes) -> tuple[list[Upload], dict]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"body is not valid JSON: {e}", "bad_request") from e
    if not isinstance(doc, dict):
        raise ApiError(400, 'JSON body must be an object: {"images": [...]} or {"inputs": ...}', "bad_request")
    if "images" in doc:
        images, options = doc["images"], doc.get("options") or {}
        if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
            raise ApiError(400, '"images" must be a list of base64 strings or URLs', "bad_request")
        uploads = [from_string(s, f"images[{i}]") for i, s in enumerate(images)]
    elif "inputs" in doc:  # the Hugging Face Inference API shape
        inputs, options = doc["inputs"], dict(doc.get("parameters") or {})
        if isinstance(inputs, str):
            uploads = [from_string(inputs, "inputs")]
        elif isinstance(inputs, list) and all(isinstance(x, str) for x in inputs):
            uploads = [from_string(s, f"inputs[{i}]") for i, s in enumerate(inputs)]
        else:
            raise ApiError(400, '"inputs" must be a base64 string or URL (or a list of them)', "bad_request")
        extra = options.pop("generate_kwargs", None) or {}  # transformers' pipeline spelling
        if not isinstance(extra, dict):
            raise ApiError(422, '"generate_kwargs" must be an object', "bad_options")
        options.update(extra)
    else:
        raise ApiError(400, 'JSON body needs "images" (a list) or "inputs"', "bad_request")
    if not uploads:
        raise ApiError(400, "no images in the request", "bad_request")
    if not isinstance(options, dict):
        raise ApiError(422, "options must be a JSON object", "bad_options")
    return uploads, options


async def from_form(request: Any, max_files: int) -> tuple[list[Upload], dict]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException

    try:
        form = await request.form(max_files=max_files, max_fields=16)
    except MultiPartException as e:
        raise ApiError(400, f"malformed multipart body: {e.message}", "bad_request") from e
    try:
        files = [f for f in form.getlist("image") if isinstance(f, UploadFile)]
        if not files:
            raise ApiError(400, "no images: send one or more multipart files named 'image'", "bad_request")
        uploads = [Upload(f.filename or f"image[{i}]", data=await f.read()) for i, f in enumerate(files)]
        raw = form.get("options")
    finally:
        await form.close()
    options: Any = {}
    if isinstance(raw, str) and raw.strip():
        try:
            options = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ApiError(422, f"the options field is not valid JSON: {e}", "bad_options") from e
    if not isinstance(options, dict):
        raise ApiError(422, "options must be a JSON object", "bad_options")
    return uploads, options


def from_string(s: str, label: str) -> Upload:
    """A JSON image string (base64, a data: URL, or an http(s) URL) -> an Upload, or its error."""
    head = s[:16].lower()
    if head.startswith(("http://", "https://")):
        return Upload(s if len(s) <= 200 else s[:197] + "...", url=s)
    if _OTHER_URL.match(head):
        return Upload(label, error=UnreadableImageError(label, "only http and https URLs are accepted"))
    if head.startswith("data:"):
        meta, _, s = s.partition(",")
        if not meta.endswith(";base64"):
            return Upload(label, error=UnreadableImageError(label, "data: URLs must be base64-encoded"))
    try:
        return Upload(label, data=base64.b64decode("".join(s.split()), validate=True))
    except (binascii.Error, ValueError):
        reason = "not valid base64 (send base64 image bytes, a data: URL, or an http(s) URL)"
        return Upload(label, error=UnreadableImageError(label, reason))


_OTHER_URL = re.compile(r"[a-z][a-z0-9+.-]*://")  # file://, ftp://, gopher://...


# --- options ---------------------------------------------------------------------------------------

_INT = ("num_beams", "num_return_sequences", "max_new_tokens", "min_new_tokens", "top_k", "no_repeat_ngram_size")
_FLOAT = ("length_penalty", "temperature", "top_p", "repetition_penalty")
_BOOL = ("do_sample", "suppress_artefacts", "keep_prompt")


def _type_error(name: str, value: Any) -> str | None:
    if name in _INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "an integer"
    if name in _FLOAT:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if name in _BOOL:
        return None if isinstance(value, bool) else "true or false"
    if name == "seed":
        return None if value is None or (isinstance(value, int) and not isinstance(value, bool)) else "an integer"
    if name == "early_stopping":
        return None if isinstance(value, bool) or value == "never" else 'true, false or "never"'
    if name == "prompt":
        return None if value is None or isinstance(value, str) else "a string"
    if name == "bad_words":
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(w, str) for w in value))
        return None if ok else "a list of strings"
    if name == "suppress_tokens":
        ok = isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
        return None if ok else "a list of token ids"
    return None


def parse_options(raw: dict, captioner: Any, max_beams: int, max_new_tokens: int) -> CaptionOptions:
    """Client options over the checkpoint's defaults, refused (422) unless valid and affordable."""
    known = {f.name for f in dataclasses.fields(CaptionOptions)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ApiError(422, f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                       "bad_options")
    for name, value in raw.items():
        expected = _type_error(name, value)
        if expected:
            raise ApiError(422, f"option {name} must be {expected}, got {json.dumps(value)[:50]}", "bad_options")
    try:
        opts = captioner.defaults.replace(**raw)
    except (TypeError, ValueError) as e:
        raise ApiError(422, f"invalid options: {e}", "bad_options") from e
    if opts.num_beams > max_beams or opts.num_return_sequences > max_beams:
        raise ApiError(422, f"num_beams and num_return_sequences are limited to {max_beams} here", "bad_options")
    if opts.max_new_tokens > max_new_tokens:
        raise ApiError(422, f"max_new_tokens is limited to {max_new_tokens} here", "bad_options")
    vocab = captioner.backend.dims.text.vocab
    if any(not 0 <= t < vocab for t in opts.suppress_tokens):
        raise ApiError(422, f"suppress_tokens must be ids in [0, {vocab})", "bad_options")
    positions = captioner.backend.dims.text.max_positions
    used = len(captioner.codec.prompt_ids(opts.prompt)) + opts.max_new_tokens
    if used > positions:
        raise ApiError(422, f"prompt and max_new_tokens need {used} positions; the model has {positions}",
                       "bad_options")
    return opts


# --- decoding (runs on the decode threads) ----------------------------------------------------------

def decode(upload: Upload, *, max_pixels: int | None, preprocessor: Any, fetcher: UrlFetcher | None):
    """One upload -> an RGB image already at the model's input size (so a queued image costs
    ~0.5 MB however large it came), or the ImageError that names it."""
    try:
        if upload.error is not None:
            return upload.error
        data = upload.data
        if upload.url is not None:
            if fetcher is None:
                raise UnreadableImageError(upload.label, "URL inputs are off on this server (start it with --allow-urls)")
            data = fetcher.fetch(upload.url)
        # the folder job's decoding: a large JPEG decoded at reduced scale, then exactly the
        # preprocessor's resize; upright, without the orientation tag it applied
        image, _, _ = decode_bytes(data, preprocessor.size, preprocessor.resample, preprocessor.do_resize, max_pixels)
        return image
    except ImageError as e:
        return type(e)(upload.label, e.reason)
    except Exception as e:  # a decoder bug must not take the request down with a 500
        return UnreadableImageError(upload.label, f"cannot decode ({type(e).__name__}: {e})")


def is_image(x: Any) -> bool:
    return isinstance(x, Image.Image)
