"""The web page at / in a real headless Chromium (Debian's, driven by Playwright's Python API).

Skipped only when Chromium or Playwright is missing AND BLIPCAP_REQUIRE_BROWSER is unset; CI sets it,
so there a missing browser fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from tests.helpers.shapes import caption_for, make_image  # noqa: E402
from .test_server_e2e import free_port  # noqa: E402

CHROMIUM = os.environ.get("BLIPCAP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def _unavailable(why: str):
    if os.environ.get("BLIPCAP_REQUIRE_BROWSER"):
        pytest.fail(f"BLIPCAP_REQUIRE_BROWSER is set but {why}")
    pytest.skip(why)


try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        _unavailable("playwright is not installed (the test extra)")
    if not Path(CHROMIUM).is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield b
        b.close()


@contextmanager
def serve_in_thread(captioner, **config):
    import httpx
    import uvicorn

    from blipcap.server import ServerConfig, create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(captioner, ServerConfig(**config)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(15)


class Recording:
    """The real captioner, recording the options and prompts of each model call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def caption(self, images, options=None, **kwargs):
        if options is not None:  # not the warm-up call
            self.calls.append((options, kwargs.get("prompt")))
        return self.inner.caption(images, options, **kwargs)


@pytest.fixture(scope="module")
def cap(tiny_fixture):
    from blipcap import Captioner

    return Captioner.load(tiny_fixture, device="cpu")


@pytest.fixture(scope="module")
def recording(cap):
    return Recording(cap)


@pytest.fixture(scope="module")
def base(recording):
    with serve_in_thread(recording) as url:
        yield url


@pytest.fixture()
def page(browser, base, recording):
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = context.new_page()
    page.set_default_timeout(20_000)
    # Playwright turns on file-chooser interception when the first listener is added, asynchronously:
    # add one now so that a chooser opened later is never missed
    page.on("filechooser", lambda chooser: None)
    recording.calls.clear()
    page.goto(base)
    yield page
    context.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("page-images")
    paths = {}
    for spec in [("red", "circle", "left"), ("blue", "square", "top"), ("green", "triangle", "right")]:
        paths[spec] = folder / f"{spec[0]}-{spec[1]}.png"
        make_image(*spec).save(paths[spec])
    (folder / "notes.txt").write_text("not an image")
    paths["text"] = folder / "notes.txt"
    return paths


def tab_to(page, selector: str, limit: int = 30) -> None:
    """Press Tab until the first element matching `selector` has the focus, as a keyboard user would."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement === document.querySelector(s)", selector):
            return
    raise AssertionError(f"{selector} cannot be reached with Tab")


def model_calls(recording) -> list[tuple[int, list]]:
    """(num_beams, prompts) of each image that reached the model."""
    return [(options.num_beams, prompt) for options, prompts in recording.calls for prompt in prompts]


def test_keyboard_only_pick_beams_and_captions(page, images, recording):
    expect(page).to_have_title("blipcap: image captions")
    tab_to(page, "#beams")
    page.keyboard.press("Control+A")
    page.keyboard.type("3")
    tab_to(page, "#pick")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files([images[("red", "circle", "left")], images[("blue", "square", "top")]])
    captions = page.locator(".card.done .caption")
    expect(captions).to_have_text([caption_for("red", "circle", "left"), caption_for("blue", "square", "top")])
    expect(page.locator(".card img").first).to_have_attribute("alt", caption_for("red", "circle", "left"))
    assert model_calls(recording) == [(3, None), (3, None)]
    expect(page.locator("#status")).to_have_text("Captioned 2 of 2 images.")
    # the copy button is reachable by keyboard and copies the caption as alt text
    tab_to(page, ".card .copy")
    page.keyboard.press("Enter")
    expect(page.locator(".card .copy").first).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == caption_for("red", "circle", "left")


def test_drop_prompt_and_caption_again(page, images, cap, recording):
    page.get_by_label("Prompt").fill("a green")
    data = images[("green", "triangle", "right")].read_bytes()
    transfer = page.evaluate_handle(
        """(bytes) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
            return dt;
        }""", list(data))
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expected = cap.caption([make_image("green", "triangle", "right")], prompt="a green", keep_prompt=True)[0].text
    assert expected.startswith("a green")
    expect(page.locator(".card.done .caption")).to_have_text([expected])
    expect(page.locator(".card .name")).to_have_text(["dropped.png"])
    assert model_calls(recording) == [(1, "a green")] and recording.calls[0][0].keep_prompt

    page.get_by_label("Prompt").fill("")
    page.get_by_label("Beams").fill("2")
    page.get_by_role("button", name="Caption all again with these settings").click()
    expect(page.locator(".card.done .caption")).to_have_text([caption_for("green", "triangle", "right")])
    assert model_calls(recording) == [(1, "a green"), (2, None)]


def test_api_key_prompt_and_per_image_errors(browser, cap, images):
    with serve_in_thread(cap, api_key="page-key") as url:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(url)
        page.locator("#file").set_input_files([images[("red", "circle", "left")], images["text"]])
        expect(page.locator(".card.error")).to_have_count(2)
        expect(page.get_by_label("API key")).to_be_visible()
        expect(page.get_by_label("API key")).to_be_focused()
        expect(page.locator(".card .caption").first).to_contain_text("needs an API key")
        page.keyboard.type("page-key")
        for card in page.locator(".card").all():
            card.locator(".retry").focus()
            page.keyboard.press("Enter")
        expect(page.locator(".card .caption")).to_have_text(
            [caption_for("red", "circle", "left"), "notes.txt: not a recognised image format"])
        expect(page.locator(".card.error .retry")).to_be_visible()
        expect(page.locator("#status")).to_have_text("Captioned 1 of 2 images; 1 failed.")
        page.screenshot(path=str(Path(os.environ.get("TMPDIR", "/tmp")) / "blipcap-page.png"), full_page=True)
        context.close()
