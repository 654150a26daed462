"""The OpenAI-compatible endpoints on a live `blipcap serve` (127.0.0.1, the trained fixture), driven
by the official `openai` client; every caption is checked against /v1/caption and the Python API for
the same image and options. Then the exact JSON and SSE framing over raw HTTP, and every refusal."""

from __future__ import annotations

import base64
import json

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
openai = pytest.importorskip("openai", reason="the openai client is not installed (test extra)")
import httpx  # noqa: E402

from blipcap import Captioner  # noqa: E402
from tests.helpers.shapes import make_image  # noqa: E402
from .test_server_app import metric  # noqa: E402
from .test_server_e2e import launch, png  # noqa: E402

KEY = "sk-test-key"
RED, BLUE, GREEN = ("red", "circle", "left"), ("blue", "square", "top"), ("green", "triangle", "right")


@pytest.fixture(scope="module")
def server(tiny_fixture):
    with launch(tiny_fixture, "--served-model-name", "blip", "--api-key-env", "BLIPCAP_TEST_KEY",
                "--log-level", "warning", env={"BLIPCAP_TEST_KEY": KEY}) as (base, _):
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def cap(tiny_fixture):
    return Captioner.load(tiny_fixture, device="cpu", dtype="float32")


def data_url(spec) -> str:
    return "data:image/png;base64," + base64.b64encode(png(*spec)).decode()


def user(*specs, text: str | None = "Describe this image.") -> list[dict]:
    parts = ([{"type": "text", "text": text}] if text else []) + [
        {"type": "image_url", "image_url": {"url": data_url(spec)}} for spec in specs]
    return [{"role": "user", "content": parts}]


def v1_caption(server: str, spec, options: dict) -> list[str]:
    """The captions /v1/caption gives for one image: best first, then the alternatives."""
    r = httpx.post(f"{server}/v1/caption", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"images": [base64.b64encode(png(*spec)).decode()], "options": options})
    assert r.status_code == 200, r.text
    entry = r.json()[0]
    return [entry["generated_text"], *(a["generated_text"] for a in entry.get("alternatives", []))]


def python_api(cap, spec, **options) -> list:
    caption = cap.caption(make_image(*spec), **options)[0]
    return [caption, *caption.alternatives]


# --- the official client ------------------------------------------------------------------------------

def test_models_list_and_retrieve(client, tiny_fixture):
    assert [m.id for m in client.models.list()] == [str(tiny_fixture), "blip"]
    assert client.models.retrieve("blip").id == "blip"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_caption_equals_v1_caption_and_python(client, server, cap):
    reply = client.chat.completions.create(model="blip", messages=user(RED))
    want = python_api(cap, RED)[0]
    assert v1_caption(server, RED, {}) == [want.text] == ["a red circle on the left"]
    assert [c.message.content for c in reply.choices] == [want.text]
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.role == "assistant"
    assert reply.model == "blip" and reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    # [DEC] is the whole prompt; the completion is the generated ids and the closing [SEP]
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1, len(want.token_ids) + 1)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream(client, server, cap):
    stream = client.chat.completions.create(model="blip", messages=user(BLUE), stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == v1_caption(server, BLUE, {})[0] == python_api(cap, BLUE)[0].text == "a blue square at the top"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 1


def test_n2_sampling_with_a_seed(client, server, cap):
    reply = client.chat.completions.create(model="blip", messages=user(GREEN), n=2, temperature=0.9, seed=7)
    texts = [c.message.content for c in reply.choices]
    options = {"do_sample": True, "temperature": 0.9, "seed": 7, "num_return_sequences": 2}
    assert texts == v1_caption(server, GREEN, options) == [c.text for c in python_api(cap, GREEN, **options)]
    again = client.chat.completions.create(model="blip", messages=user(GREEN), n=2, temperature=0.9, seed=7)
    assert [c.message.content for c in again.choices] == texts
    assert [c.index for c in reply.choices] == [0, 1]


def test_n2_without_temperature_is_the_two_best_beams(client, server, cap):
    reply = client.chat.completions.create(model="blip", messages=user(RED), n=2)
    options = {"num_beams": 2, "num_return_sequences": 2}
    texts = [c.message.content for c in reply.choices]
    assert texts == v1_caption(server, RED, options) == [c.text for c in python_api(cap, RED, **options)]
    assert texts[0] == "a red circle on the left"


def test_max_tokens_gives_finish_reason_length(client, server, cap):
    reply = client.chat.completions.create(model="blip", messages=user(RED), max_tokens=2)
    want = python_api(cap, RED, max_new_tokens=2)[0]
    assert want.truncated and reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == v1_caption(server, RED, {"max_new_tokens": 2})[0] == want.text
    assert reply.usage.completion_tokens == 2
    full = client.chat.completions.create(model="blip", messages=user(RED), max_completion_tokens=19)
    assert full.choices[0].finish_reason == "stop"


def test_caption_options_and_text_as_prompt(client, server, cap):
    reply = client.chat.completions.create(model="blip", messages=user(RED),
                                           extra_body={"caption_options": {"num_beams": 3, "min_new_tokens": 2}})
    options = {"num_beams": 3, "min_new_tokens": 2}
    assert reply.choices[0].message.content == v1_caption(server, RED, options)[0] == python_api(cap, RED, **options)[0].text
    # the text part is ignored unless asked for; then it is the caption prompt (BLIP continues it)
    ignored = client.chat.completions.create(model="blip", messages=user(BLUE, text="a blue"))
    assert ignored.choices[0].message.content == "a blue square at the top"
    prompted = client.chat.completions.create(model="blip", messages=user(BLUE, text="a blue"),
                                              extra_body={"text_as_prompt": True})
    want = python_api(cap, BLUE, prompt="a blue")[0].text
    assert prompted.choices[0].message.content == v1_caption(server, BLUE, {"prompt": "a blue"})[0] == want
    assert want == "square at the top" and prompted.usage.prompt_tokens == 3  # [DEC] a blue


def test_several_images_one_caption_each_in_order(client):
    reply = client.chat.completions.create(model="blip", messages=user(RED, BLUE, GREEN, text=None))
    assert reply.choices[0].message.content == ("a red circle on the left\na blue square at the top\n"
                                                "a green triangle on the right")
    assert reply.usage.prompt_tokens == 3
    # the last user message with images is the one answered: earlier turns were answered already
    history = user(RED) + [{"role": "assistant", "content": "a red circle on the left"}] + user(GREEN)
    assert client.chat.completions.create(model="blip", messages=history).choices[0].message.content == \
        "a green triangle on the right"


# --- refusals, through the client ---------------------------------------------------------------------

def test_refusals_raise_the_clients_errors(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=user(RED))
    assert e.value.body == {"message": "The model `gpt-4o` does not exist.", "type": "not_found_error",
                            "param": "model", "code": "model_not_found"}
    keyless = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        keyless.chat.completions.create(model="blip", messages=user(RED))
    assert e.value.body["type"] == "authentication_error" and e.value.body["code"] == "unauthorized"
    with pytest.raises(openai.AuthenticationError):
        keyless.models.list()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="blip", messages=[{"role": "user", "content": "hello"}])
    assert e.value.body["code"] == "no_image" and e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="blip", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"no").decode()}}]}])
    assert e.value.body["code"] == "invalid_image" and "messages[0].content[0]" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="blip", messages=user(RED), temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="blip", messages=user(RED), n=9)
    assert e.value.body["code"] == "bad_options"
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="blip", messages=user(RED), extra_body={"caption_options": {"beams": 2}})
    with pytest.raises(openai.UnprocessableEntityError):  # beam sampling is not supported
        client.chat.completions.create(model="blip", messages=user(RED), temperature=0.5,
                                       extra_body={"caption_options": {"num_beams": 2}})
    with pytest.raises(openai.BadRequestError) as e:  # an http URL without --allow-urls
        client.chat.completions.create(model="blip", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    assert "--allow-urls" in e.value.body["message"]


# --- raw HTTP: the exact framing ----------------------------------------------------------------------

def post(server: str, body: dict | bytes, key: str | None = KEY) -> httpx.Response:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server}/v1/chat/completions", content=content, headers=headers, timeout=60)


def test_raw_json_framing(server):
    r = post(server, {"model": "blip", "messages": user(RED)})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert list(doc) == ["id", "object", "created", "model", "choices", "usage"]
    assert doc["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "a red circle on the left"},
                               "logprobs": None, "finish_reason": "stop"}]
    assert doc["usage"] == {"prompt_tokens": 1, "completion_tokens": 7, "total_tokens": 8}
    assert isinstance(doc["created"], int)
    models = httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert models["object"] == "list" and models["data"][1] == {
        "id": "blip", "object": "model", "created": models["data"][1]["created"], "owned_by": "blipcap"}


def test_raw_sse_framing(server):
    r = post(server, {"model": "blip", "messages": user(RED), "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("\n\ndata: [DONE]\n\n")
    events = r.text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "a red circle on the left"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
    ]
    r = post(server, {"model": "blip", "messages": user(RED), "stream": True, "stream_options": {"include_usage": True}})
    chunks = [json.loads(e.removeprefix("data: ")) for e in r.text.split("\n\n")[:-2]]
    assert [c["usage"] for c in chunks[:-1]] == [None] * 3
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7


def test_raw_refusals_in_openai_shape(server):
    for body, key, status, code in [
        ({"model": "blip", "messages": user(RED)}, None, 401, "unauthorized"),
        (b"{not json", KEY, 400, "bad_request"),
        ({"model": "blip", "messages": []}, KEY, 400, "bad_request"),
        ({"model": "nope", "messages": user(RED)}, KEY, 404, "model_not_found"),
        ({"model": "blip", "messages": user(RED), "max_tokens": 500}, KEY, 422, "bad_options"),
    ]:
        r = post(server, body, key)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert post(server, {"model": "blip", "messages": user(RED)}, None).headers["www-authenticate"] == "Bearer"


def test_metrics_count_the_routes(server, client):
    client.models.list()
    text = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert metric(text, 'blipcap_requests_total{route="/v1/models",status="200"}') >= 1
    assert metric(text, 'blipcap_requests_total{route="/v1/chat/completions",status="200"}') >= 1
