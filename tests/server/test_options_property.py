"""Every request shape's options (JSON `options`, the Hugging Face `parameters` and `generate_kwargs`,
the multipart `options` field's JSON): valid options or a 4xx ApiError, never another exception."""

from __future__ import annotations

import base64
import json

import pytest

pytest.importorskip("fastapi")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from blipcap import CaptionOptions, Captioner  # noqa: E402
from blipcap.server.inputs import ApiError, from_json, parse_options  # noqa: E402
from tests.engine.test_options import FIELDS, json_values, likely  # noqa: E402

IMAGE = base64.b64encode(b"not decoded here").decode()
options = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values | likely["int"] | likely["float"],
                          max_size=5)
anything = json_values | options


@pytest.fixture(scope="module")
def cap(tiny_fixture):
    return Captioner.load(tiny_fixture, device="cpu", dtype="float32")


def options_or_4xx(cap, doc) -> None:
    body = json.dumps(doc).encode()  # NaN and Infinity as Python's json writes (and reads) them
    try:
        _, raw = from_json(body)
        opts = parse_options(raw, cap, max_beams=8, max_new_tokens=64)
    except ApiError as e:
        assert 400 <= e.status < 500, e.message
        return
    assert isinstance(opts, CaptionOptions) and opts.max_new_tokens <= 64


@settings(max_examples=300, deadline=None)
@given(options)
def test_our_shape(cap, raw):
    options_or_4xx(cap, {"images": [IMAGE], "options": raw})


@settings(max_examples=300, deadline=None)
@given(anything, anything)
def test_hugging_face_shape(cap, parameters, generate_kwargs):
    if isinstance(parameters, dict):
        parameters = {**parameters, "generate_kwargs": generate_kwargs}
    options_or_4xx(cap, {"inputs": IMAGE, "parameters": parameters})
