"""Issue 13 item 3: request shapes that gave HTTP 500. Non-finite and absurd option values, a seed
past 64 bits, HF "parameters" that are not an object, JSON nested 200,000 deep (the body, the
parameters, a multipart options field, and the OpenAI and Ollama bodies): each a 4xx in the
documented shape, never a 500, and no NaN ever reaches a JSON answer."""

from __future__ import annotations

import base64
import io
import json

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from blipcap import Captioner  # noqa: E402
from tests.helpers.shapes import make_image  # noqa: E402
from tests.server.test_server_app import run, serving  # noqa: E402

DEEP = "[" * 200_000 + "]" * 200_000


@pytest.fixture(scope="module")
def cap(tiny_fixture):
    return Captioner.load(tiny_fixture, device="cpu", dtype="float32")


def png_b64() -> str:
    buf = io.BytesIO()
    make_image("red", "circle", "left").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_hostile_request_shapes_are_4xx_never_500(cap):
    image = png_b64()
    bad_options = [{"temperature": "NaN", "do_sample": True}, {"repetition_penalty": "Infinity"},
                   {"top_p": 1e-300, "do_sample": True}, {"temperature": "-Infinity", "do_sample": True},
                   {"seed": 2 ** 64, "do_sample": True}, {"length_penalty": "NaN", "num_beams": 2}]

    def raw_json(doc) -> bytes:  # NaN/Infinity as JSON numbers, as Python's json writes them
        return json.dumps(doc).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity").replace(
            '"-Infinity"', "-Infinity").encode()

    async def scenario():
        async with serving(cap) as c:
            bodies = [raw_json({"images": [image], "options": o}) for o in bad_options]
            bodies += [raw_json({"inputs": image, "parameters": p}) for p in ("ab", 5, [1])]
            bodies += [DEEP.encode(), ('{"images": ["x"], "options": ' + DEEP + "}").encode(),
                       ('{"inputs": "x", "parameters": {"prompt": ' + DEEP + "}}").encode()]
            answers = [await c.post("/v1/caption", content=b, headers={"content-type": "application/json"})
                       for b in bodies]
            answers.append(await c.post("/v1/caption", files=[("image", ("a.png", base64.b64decode(image), "image/png"))],
                                        data={"options": DEEP}))
            answers.append(await c.post("/v1/chat/completions", content=DEEP.encode(),
                                        headers={"content-type": "application/json"}))
            answers.append(await c.post("/api/generate", content=DEEP.encode(),
                                        headers={"content-type": "application/json"}))
            for r in answers:
                assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
                assert "NaN" not in r.text and "Infinity" not in r.text.replace("Infinity'", "")
                json.loads(r.text)  # strict enough: the answer is JSON
    run(scenario())
