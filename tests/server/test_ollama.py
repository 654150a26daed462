"""The Ollama-compatible endpoints on a live `blipcap serve` (127.0.0.1, the trained fixture), driven
by the official `ollama` client; every caption is checked against /v1/caption and the Python API for
the same image and options. Then the exact JSON and NDJSON framing over raw HTTP, and every refusal."""

from __future__ import annotations

import base64
import json

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
ollama = pytest.importorskip("ollama", reason="the ollama client is not installed (test extra)")
import httpx  # noqa: E402

from blipcap import Captioner  # noqa: E402
from tests.helpers.shapes import make_image  # noqa: E402
from .test_server_app import metric  # noqa: E402
from .test_server_e2e import launch, png  # noqa: E402

KEY = "ollama-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
RED, BLUE, GREEN = ("red", "circle", "left"), ("blue", "square", "top"), ("green", "triangle", "right")


@pytest.fixture(scope="module")
def server(tiny_fixture):
    with launch(tiny_fixture, "--served-model-name", "blip", "--api-key-env", "BLIPCAP_TEST_KEY",
                "--log-level", "warning", env={"BLIPCAP_TEST_KEY": KEY}) as (base, _):
        yield base


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server, headers=AUTH, timeout=60)


@pytest.fixture(scope="module")
def cap(tiny_fixture):
    return Captioner.load(tiny_fixture, device="cpu", dtype="float32")


def v1_caption(server: str, spec, options: dict) -> str:
    r = httpx.post(f"{server}/v1/caption", headers=AUTH, timeout=60,
                   json={"images": [base64.b64encode(png(*spec)).decode()], "options": options})
    assert r.status_code == 200, r.text
    return r.json()[0]["generated_text"]


def python_api(cap, spec, **options):
    return cap.caption(make_image(*spec), **options)[0]


# --- the official client ------------------------------------------------------------------------------

def test_list_show_and_version(client, server, tiny_fixture):
    assert [m.model for m in client.list().models] == [f"{tiny_fixture}:latest", "blip:latest"]
    shown = client.show("blip")
    assert "vision" in shown.capabilities and shown.details.family == "blip"
    assert client.show("blip:latest").details.format == "pytorch"
    from blipcap import __version__

    assert httpx.get(f"{server}/api/version", headers=AUTH).json() == {"version": __version__}


def test_generate_equals_v1_caption_and_python(client, server, cap):
    reply = client.generate("blip", "Describe this image.", images=[png(*RED)], stream=False)
    want = python_api(cap, RED)
    assert reply.response == v1_caption(server, RED, {}) == want.text == "a red circle on the left"
    assert reply.done and reply.done_reason == "stop" and reply.model == "blip"
    assert (reply.prompt_eval_count, reply.eval_count) == (1, len(want.token_ids) + 1)


def test_generate_streaming(client, server, cap):
    parts = list(client.generate("blip:latest", "", images=[png(*BLUE)], stream=True))
    assert "".join(p.response for p in parts) == v1_caption(server, BLUE, {}) == python_api(cap, BLUE).text
    assert [p.done for p in parts] == [False, True] and parts[-1].done_reason == "stop"


def test_chat_with_images_whole_and_streaming(client, server, cap):
    messages = [{"role": "user", "content": "What is in this picture?", "images": [png(*GREEN)]}]
    reply = client.chat("blip", messages=messages)
    want = python_api(cap, GREEN).text
    assert reply.message.content == v1_caption(server, GREEN, {}) == want == "a green triangle on the right"
    assert reply.message.role == "assistant" and reply.done_reason == "stop"
    parts = list(client.chat("blip", messages=messages, stream=True))
    assert "".join(p.message.content for p in parts) == want and parts[-1].done
    two = client.chat("blip", messages=[{"role": "user", "content": "", "images": [png(*RED), png(*BLUE)]}])
    assert two.message.content == "a red circle on the left\na blue square at the top"


def test_options_map_onto_caption_options(client, server, cap):
    short = client.generate("blip", "", images=[png(*RED)], options={"num_predict": 2})
    want = python_api(cap, RED, max_new_tokens=2)
    assert short.response == v1_caption(server, RED, {"max_new_tokens": 2}) == want.text
    assert want.truncated and short.done_reason == "length" and short.eval_count == 2
    sampled = client.generate("blip", "", images=[png(*GREEN)], options={"temperature": 0.9, "seed": 3, "top_k": 5})
    options = {"do_sample": True, "temperature": 0.9, "seed": 3, "top_k": 5}
    assert sampled.response == v1_caption(server, GREEN, options) == python_api(cap, GREEN, **options).text
    ignored = client.generate("blip", "", images=[png(*RED)], options={"num_ctx": 4096, "mirostat": 0})
    assert ignored.response == "a red circle on the left"


def test_prompt_ignored_unless_asked(server, cap):
    body = {"model": "blip", "prompt": "a blue", "images": [base64.b64encode(png(*BLUE)).decode()], "stream": False}
    r = httpx.post(f"{server}/api/generate", json=body, headers=AUTH, timeout=60)
    assert r.json()["response"] == "a blue square at the top"
    r = httpx.post(f"{server}/api/generate", json={**body, "text_as_prompt": True}, headers=AUTH, timeout=60)
    assert r.json()["response"] == python_api(cap, BLUE, prompt="a blue").text == "square at the top"
    r = httpx.post(f"{server}/api/generate", json={**body, "caption_options": {"num_beams": 3}}, headers=AUTH,
                   timeout=60)
    assert r.json()["response"] == v1_caption(server, BLUE, {"num_beams": 3})


def test_refusals_raise_the_clients_errors(client, server):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("llava", "", images=[png(*RED)])
    assert e.value.status_code == 404 and e.value.error == 'model "llava" not found'
    with pytest.raises(ollama.ResponseError) as e:
        client.show("llava")
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=server).list()
    assert e.value.status_code == 401 and "API key" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("blip", "Why is the sky blue?")
    assert e.value.status_code == 400 and "images" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("blip", messages=[{"role": "user", "content": "hello"}])
    assert e.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("blip", "", images=[b"not an image"])
    assert e.value.status_code == 400 and "images[0]" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("blip", "", images=[png(*RED)], options={"num_predict": 500})
    assert e.value.status_code == 422


# --- raw HTTP: the exact framing ----------------------------------------------------------------------

def test_raw_ndjson_framing_stream_defaults_to_true(server):
    image = base64.b64encode(png(*RED)).decode()
    r = httpx.post(f"{server}/api/generate", json={"model": "blip", "images": [image]}, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert r.text.endswith("}\n")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [(x["response"], x["done"]) for x in lines] == [("a red circle on the left", False), ("", True)]
    assert list(lines[0]) == ["model", "created_at", "response", "done"]
    assert lines[1]["done_reason"] == "stop" and lines[1]["eval_count"] == 7 and lines[1]["prompt_eval_count"] == 1
    assert lines[0]["created_at"].endswith("Z")
    body = {"model": "blip", "messages": [{"role": "user", "content": "", "images": [image]}]}
    r = httpx.post(f"{server}/api/chat", json=body, headers=AUTH, timeout=60)
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [x["message"] for x in lines] == [{"role": "assistant", "content": "a red circle on the left"},
                                             {"role": "assistant", "content": ""}]
    assert [x["done"] for x in lines] == [False, True]
    r = httpx.post(f"{server}/api/chat", json={**body, "stream": False}, headers=AUTH, timeout=60)
    assert r.headers["content-type"] == "application/json" and r.json()["done"] is True


def test_raw_load_call_and_tags(server):
    r = httpx.post(f"{server}/api/generate", json={"model": "blip"}, headers=AUTH, timeout=60)
    assert r.json()["done"] is True and r.json()["done_reason"] == "load" and r.json()["response"] == ""
    tags = httpx.get(f"{server}/api/tags", headers=AUTH).json()["models"]
    assert set(tags[1]) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert tags[1]["name"] == "blip:latest"


def test_raw_refusals_in_ollama_shape(server):
    for body, status in [(b"{not json", 400), (b'{"prompt": "x"}', 400), (b'{"model": "nope"}', 404)]:
        r = httpx.post(f"{server}/api/generate", content=body, headers=AUTH, timeout=60)
        assert r.status_code == status and list(r.json()) == ["error"], r.text
    text = httpx.get(f"{server}/metrics", headers=AUTH).text
    assert metric(text, 'blipcap_requests_total{route="/api/generate",status="404"}') >= 1
    assert metric(text, 'blipcap_requests_total{route="/api/tags",status="200"}') >= 1
