"""The search page of `blipcap serve --index` in a real headless Chromium: fixture images indexed by
`blipcap index` with the trained tiny model, searched, opened, their alt text copied. Writes the
README's screenshot, docs/search-page.png. Skips and fails as test_server_browser does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from tests.helpers.folders import run_cli, write_shapes  # noqa: E402
from tests.helpers.shapes import caption_for, make_image  # noqa: E402
from .test_server_browser import browser, serve_in_thread, tab_to  # noqa: E402, F401  (browser: a fixture)

try:
    from playwright.sync_api import expect
except ImportError:
    expect = None

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "search-page.png"
SPECS = [("red", "circle", "left"), ("red", "square", "top"), ("blue", "triangle", "right"),
         ("green", "circle", "bottom"), ("yellow", "square", "left"), ("blue", "circle", "top")]


@pytest.fixture(scope="module")
def library(tiny_fixture, tmp_path_factory):
    """Six named shape photos and 24 jittered ones, indexed by `blipcap index` with the tiny model."""
    root = tmp_path_factory.mktemp("search-page")
    photos = root / "photos"
    photos.mkdir()
    for spec in SPECS:
        make_image(*spec, size=(320, 240)).save(photos / f"{spec[0]}-{spec[1]}.jpg", quality=92)
    write_shapes(photos / "more", 24, seed=5)
    db = root / "index.db"
    r = run_cli("index", str(photos), "--model", str(tiny_fixture), "--db", str(db), "-q")
    assert r.returncode == 0, r.stderr
    return root, db


@pytest.fixture(scope="module")
def base(library):
    root, db = library
    with serve_in_thread(None, index_db=str(db), thumbnail_cache=str(root / "cache")) as url:
        yield url


@pytest.fixture()
def page(browser, base):  # noqa: F811
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(base + "/search")
    yield page
    context.close()


def search(page, words: str) -> None:
    page.get_by_label("Search captions").fill(words)
    page.keyboard.press("Enter")


def test_search_red_open_one_and_copy_its_alt_text_by_keyboard(page, library):
    expect(page).to_have_title("blipcap: search your images")
    expect(page.get_by_label("Search captions")).to_be_focused()
    page.keyboard.type("red")
    page.keyboard.press("Enter")
    results = page.locator(".result")
    red = [caption_for(*s) for s in SPECS if s[0] == "red"]
    expect(page.locator("#status")).to_contain_text("match “red”")
    reds = page.locator(".result .thumb").evaluate_all("(imgs) => imgs.map((i) => i.alt)")
    assert set(red) <= set(reds) and all(" red " in f" {alt} " for alt in reds)
    for spec in SPECS[:2]:  # the named red photos: each with its thumbnail and its caption, "red" marked
        caption = caption_for(*spec)
        item = results.filter(has=page.locator(".name", has_text=f"{spec[0]}-{spec[1]}.jpg"))
        expect(item.locator(".thumb")).to_have_attribute("alt", caption)
        expect(item.locator(".snippet mark")).to_have_text(["red"])
        expect(item.locator(".snippet")).to_have_text(caption)
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0",
                               arg=item.locator(".thumb").element_handle())
        assert item.locator(".thumb").evaluate("(img) => [img.naturalWidth, img.naturalHeight]") == [320, 240]
    page.mouse.move(0, 0)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), scale="css", type="png")
    assert SCREENSHOT.stat().st_size < 200_000

    first = results.first
    tab_to(page, ".result .open")
    caption = first.locator(".thumb").get_attribute("alt")
    page.keyboard.press("Enter")
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-caption")).to_have_text(caption)
    expect(page.locator("#viewer-image")).to_have_attribute("alt", caption)
    page.wait_for_function("() => document.getElementById('viewer-image').naturalWidth > 0")
    expect(page.locator("#copy")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == caption
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    assert page.evaluate("document.activeElement === document.querySelector('.result .open')")


def test_more_results_page_on_and_an_empty_result_says_so(page):
    search(page, "a")  # every caption: 30, shown 24 at a time
    expect(page.locator(".result")).to_have_count(24)
    expect(page.locator("#status")).to_have_text("24 images match “a” (more below).")
    page.get_by_role("button", name="More results").click()
    expect(page.locator(".result")).to_have_count(30)
    expect(page.get_by_role("button", name="More results")).to_be_hidden()
    assert page.evaluate("document.activeElement === document.querySelectorAll('.result .open')[24]")
    search(page, "purple hexagon")
    expect(page.locator(".result")).to_have_count(0)
    expect(page.locator("#status")).to_contain_text("No images match “purple hexagon”")
    assert "q=purple+hexagon" in page.url  # a reload or a shared link shows the same search


def test_with_an_api_key_the_page_asks_for_it_and_pictures_come_with_it(browser, library):  # noqa: F811
    root, db = library
    with serve_in_thread(None, index_db=str(db), thumbnail_cache=str(root / "cache"), api_key="k") as url:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(url + "/?q=green")  # search only: the front page is the search page
        expect(page.get_by_label("API key")).to_be_focused()
        page.keyboard.type("k")
        search(page, "green")
        expect(page.locator(".result")).not_to_have_count(0)
        page.wait_for_function("() => [...document.querySelectorAll('.result .thumb')].every((i) => i.naturalWidth)")
        context.close()


def test_edits_from_the_page(browser, tiny_fixture, tmp_path):  # noqa: F811
    make_image("red", "circle", "left").save(tmp_path / "photo.png")
    db = tmp_path / "index.db"
    assert run_cli("index", str(tmp_path / "photo.png"), "--model", str(tiny_fixture), "--db", str(db),
                   "-q").returncode == 0
    with serve_in_thread(None, index_db=str(db), thumbnail_cache=str(tmp_path / "cache"), allow_edits=True) as url:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(url + "/search?q=circle")
        page.locator(".result .open").click()
        page.get_by_role("button", name="Edit caption").click()
        page.get_by_label("Correct the caption").fill("a scarlet ball on a white wall")
        page.keyboard.press("Enter")
        expect(page.locator("#viewer-caption")).to_have_text("a scarlet ball on a white wall")
        page.keyboard.press("Escape")
        search(page, "scarlet")
        expect(page.locator(".result .snippet")).to_have_text(["a scarlet ball on a white wall"])
        context.close()
    r = run_cli("index", str(tmp_path / "photo.png"), "--model", str(tiny_fixture), "--db", str(db),
                "--existing", "overwrite")
    assert r.returncode == 0 and "1 skipped" in r.stderr, r.stderr
    assert "scarlet" in run_cli("search", "scarlet", "--db", str(db)).stdout
    assert os.path.exists(db)


def test_beside_a_model_the_two_pages_link_to_each_other(browser, library, tiny_fixture):  # noqa: F811
    from blipcap import Captioner

    root, db = library
    cap = Captioner.load(tiny_fixture, device="cpu")
    with serve_in_thread(cap, index_db=str(db), thumbnail_cache=str(root / "cache")) as url:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(url)
        expect(page).to_have_title("blipcap: image captions")
        page.get_by_role("link", name="Search the indexed images").click()
        expect(page).to_have_title("blipcap: search your images")
        search(page, "blue")
        expect(page.locator(".result")).not_to_have_count(0)
        page.get_by_role("link", name="Caption new images").click()
        expect(page).to_have_title("blipcap: image captions")
        context.close()
