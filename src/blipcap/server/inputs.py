"""Request bodies -> uploads and caption options; uploads -> decoded images (or their errors).

Three body shapes carry images: multipart files named `image` (with an optional `options` JSON
field), JSON `{"images": [...], "options": {...}}`, and the Hugging Face Inference shape
`{"inputs": ..., "parameters": {...}}`; a raw `image/*` body is one image. A JSON image is base64,
a `data:` URL, or (with --allow-urls) an http(s) URL. A string is never a file path.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from ..images import Decoded, Decoder, ImageError, UnreadableImageError
from ..options import CaptionOptions, OptionsError


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
    except RecursionError:  # [[[[... nested past Python's stack: not a 500
        raise ApiError(400, "body is not valid JSON: nested too deeply", "bad_request") from None
    if not isinstance(doc, dict):
        raise ApiError(400, 'JSON body must be an object: {"images": [...]} or {"inputs": ...}', "bad_request")
    if "images" in doc:
        images, options = doc["images"], doc.get("options") or {}
        if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
            raise ApiError(400, '"images" must be a list of base64 strings or URLs', "bad_request")
        uploads = [from_string(s, f"images[{i}]") for i, s in enumerate(images)]
    elif "inputs" in doc:  # the Hugging Face Inference API shape
        inputs, options = doc["inputs"], doc.get("parameters") or {}
        if not isinstance(options, dict):
            raise ApiError(422, '"parameters" must be a JSON object', "bad_options")
        options = dict(options)
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
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    try:
        form = await request.form(max_files=max_files, max_fields=16)
    except (MultiPartException, HTTPException) as e:  # Starlette raises the one or the other, by version
        message = getattr(e, "message", None) or getattr(e, "detail", str(e))
        if "Too many files" in message:  # more images than the queue admits
            raise ApiError(413, f"more than {max_files} images in one request; the limit is {max_files}",
                           "too_many_images") from e
        raise ApiError(400, f"malformed multipart body: {message}", "bad_request") from e
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
        except RecursionError:
            raise ApiError(422, "the options field is not valid JSON: nested too deeply", "bad_options") from None
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

def parse_options(raw: dict, captioner: Any, max_beams: int, max_new_tokens: int) -> CaptionOptions:
    """Client options over the checkpoint's defaults, refused (422) unless valid and affordable."""
    try:
        opts = captioner.merged(None, raw)
        captioner.check(opts, max_beams=max_beams, max_new_tokens=max_new_tokens)
    except OptionsError as e:
        raise ApiError(422, str(e), "bad_options") from e
    return opts


# --- decoding (runs on the decode threads) ----------------------------------------------------------

def decode(upload: Upload, decoder: Decoder) -> Decoded | ImageError:
    """One upload -> a model-ready image (already at the model's input size, so a queued image costs
    ~0.5 MB however large it came), or the ImageError that names it."""
    try:
        if upload.error is not None:
            return upload.error
        if upload.url is not None:
            if decoder.fetcher is None:
                reason = "URL inputs are off on this server (start it with --allow-urls)"
                raise UnreadableImageError(upload.label, reason)
            return decoder.url(upload.url)
        return decoder.bytes(upload.data)
    except ImageError as e:
        return type(e)(upload.label, e.reason)
    except Exception as e:  # a decoder bug must not take the request down with a 500
        return UnreadableImageError(upload.label, f"cannot decode ({type(e).__name__}: {e})")


def is_image(x: Any) -> bool:
    return isinstance(x, Decoded)
