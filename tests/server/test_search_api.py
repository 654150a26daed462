"""`blipcap serve --index`: /v1/search, /v1/thumbnail/{id} and PUT /v1/captions/{id} in-process, on an
index of generated images (rows put directly: no model), with every refusal: paths in place of ids,
ids of deleted rows, files deleted or swapped for links after indexing, bad parameters, auth."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from blipcap.outputs.index import Index, IndexSink  # noqa: E402
from blipcap.outputs.records import Record  # noqa: E402
from blipcap.server import ServerConfig, create_app  # noqa: E402
from tests.helpers.shapes import caption_for, make_image  # noqa: E402

SPECS = [("red", "circle", "left"), ("red", "square", "top"), ("blue", "triangle", "right"), ("green", "circle", "top")]


def record(path, caption: str, image: Image.Image | None = None) -> Record:
    data = open(path, "rb").read()
    w, h = (image or Image.open(path)).size
    return Record(str(path), caption, -0.1, hashlib.sha256(data).hexdigest(), w, h, "tiny", None, "digest")


@pytest.fixture()
def library(tmp_path):
    """Four shape photos (one a 400x300 JPEG stored sideways: EXIF orientation 6) in an index."""
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = {}
    for spec in SPECS:
        paths[spec] = photos / f"{spec[0]}-{spec[1]}.png"
        make_image(*spec).save(paths[spec])
    sideways = photos / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view: stored 400x300, upright 300x400
    make_image("yellow", "square", "left", size=(400, 300)).save(sideways, exif=exif, quality=90)
    paths["sideways"] = sideways
    index = Index(tmp_path / "index.db")
    index.put([record(paths[s], caption_for(*s)) for s in SPECS])
    index.put([Record(str(sideways), "a yellow square <b>tagged</b> & sideways", None,
                      hashlib.sha256(sideways.read_bytes()).hexdigest(), 300, 400, "tiny", None, "d")])
    ids = {os.path.basename(p): i for i, p in index.db.execute("SELECT id, path FROM images")}
    index.close()
    return tmp_path, paths, ids


def client(tmp_path, captioner=None, **config) -> TestClient:
    config = {"index_db": str(tmp_path / "index.db"), "thumbnail_cache": str(tmp_path / "cache"), **config}
    return TestClient(create_app(captioner, ServerConfig(**config)))


def jpeg_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.size


def test_search_answers_rows_with_ids_sizes_urls_and_highlighted_escaped_snippets(library):
    tmp_path, paths, ids = library
    with client(tmp_path) as c:
        body = c.get("/v1/search", params={"q": "red"}).json()
        rows = body["results"]
        assert {r["path"] for r in rows} == {str(paths[s]) for s in SPECS if s[0] == "red"}
        for r in rows:
            assert r["id"] == ids[os.path.basename(r["path"])] and (r["width"], r["height"]) == (120, 90)
            assert "<mark>red</mark>" in r["snippet"] and r["caption"].startswith("a red ")
            assert r["thumbnail"] == f"/v1/thumbnail/{r['id']}" and r["image"] == r["thumbnail"] + "?size=large"
            assert isinstance(r["rank"], float)
        assert body["next_offset"] is None and body["editable"] is False
        (row,) = c.get("/v1/search", params={"q": "tagged"}).json()["results"]
        assert row["snippet"] == "a yellow square &lt;b&gt;<mark>tagged</mark>&lt;/b&gt; &amp; sideways"
        assert (row["width"], row["height"]) == (300, 400)


def test_the_same_query_semantics_as_blipcap_search(library):
    tmp_path, paths, _ = library
    with client(tmp_path) as c:
        def found(q):
            return [os.path.basename(r["path"]) for r in c.get("/v1/search", params={"q": q}).json()["results"]]
        assert found("RED Circles") == ["red-circle.png"]  # stemming and case, every word first
        assert sorted(found("red hexagon")) == ["red-circle.png", "red-square.png"]  # then any word
        for q in ['"red', "red AND NOT", "NEAR(red", "red*", "caption:red", "-red", "(red"]:
            assert "red-circle.png" in found(q), q
        for q in ["", '"*()', "   ", "purple"]:  # any text is a valid query; these find nothing
            r = c.get("/v1/search", params={"q": q})
            assert r.status_code == 200 and r.json()["results"] == []


def test_pages(library):
    tmp_path, _, _ = library
    with client(tmp_path) as c:
        first = c.get("/v1/search?q=circle&limit=1").json()
        assert len(first["results"]) == 1 and first["next_offset"] == 1
        second = c.get("/v1/search?q=circle&limit=1&offset=1").json()
        assert len(second["results"]) == 1 and second["results"][0]["id"] != first["results"][0]["id"]
        assert second["next_offset"] is None  # the two circles: no third page
        past = c.get("/v1/search?q=circle&limit=1&offset=5").json()
        assert past["results"] == [] and past["next_offset"] is None  # not the any-word fallback


@pytest.mark.parametrize("params", ["limit=0", "limit=101", "limit=x", "limit=1.5", "offset=-1", "offset=abc",
                                    "offset=100001"])
def test_bad_limit_or_offset_is_422_with_error_and_type(library, params):
    tmp_path, _, _ = library
    with client(tmp_path) as c:
        r = c.get(f"/v1/search?q=red&{params}")
        assert r.status_code == 422 and r.json()["error_type"] == "bad_request"
        assert params.split("=")[0] in r.json()["error"]


def test_thumbnails_are_small_upright_jpegs_cached_by_content_with_etags(library):
    tmp_path, paths, ids = library
    with client(tmp_path) as c:
        r = c.get(f"/v1/thumbnail/{ids['red-circle.png']}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert jpeg_size(r.content) == (120, 90)  # never enlarged
        etag, sha = r.headers["etag"], hashlib.sha256(paths[SPECS[0]].read_bytes()).hexdigest()
        assert sha in etag and "max-age" in r.headers["cache-control"]
        assert list((tmp_path / "cache" / "thumbnails" / sha[:2]).glob(f"{sha}-small-*.jpg"))
        again = c.get(f"/v1/thumbnail/{ids['red-circle.png']}", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag

        small = c.get(f"/v1/thumbnail/{ids['sideways.jpg']}")
        assert jpeg_size(small.content) == (240, 320)  # upright (300x400), longest side 320
        upright = Image.open(io.BytesIO(small.content)).convert("RGB")
        assert upright.getpixel((120, 80))[2] < 100 and upright.getpixel((120, 80))[0] > 150  # the yellow square
        large = c.get(f"/v1/thumbnail/{ids['sideways.jpg']}?size=large")
        assert jpeg_size(large.content) == (300, 400) and large.headers["etag"] != small.headers["etag"]
        r = c.get(f"/v1/thumbnail/{ids['sideways.jpg']}?size=huge")
        assert r.status_code == 422 and r.json()["error_type"] == "bad_request"


def test_a_file_changed_in_place_gets_a_new_thumbnail(library):
    tmp_path, paths, ids = library
    with client(tmp_path) as c:
        url = f"/v1/thumbnail/{ids['red-circle.png']}"
        before = c.get(url)
        make_image("blue", "square", "left", size=(200, 100)).save(paths[SPECS[0]])
        after = c.get(url)
        assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]
        assert jpeg_size(after.content) == (200, 100)
        assert c.get(url, headers={"If-None-Match": before.headers["etag"]}).status_code == 200


@pytest.mark.parametrize("path", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "abc", "-1",
                                  "1.0", "999999", "1%20", "0x1"])
def test_only_ids_of_rows_name_images(library, path):
    tmp_path, _, _ = library
    with client(tmp_path) as c:
        r = c.get(f"/v1/thumbnail/{path}")
        # a client that resolves ../ itself asks for /etc/passwd: no route, FastAPI's own JSON 404
        assert r.status_code == 404 and r.json().get("error_type", "not_found") == "not_found"
        assert b"root:" not in r.content


def test_ids_of_deleted_rows_and_deleted_files_are_404_json(library):
    tmp_path, paths, ids = library
    with client(tmp_path) as c:
        index = Index(tmp_path / "index.db")
        index.db.execute("DELETE FROM images WHERE path = ?", (str(paths[SPECS[1]]),))
        index.db.commit()
        index.close()
        r = c.get(f"/v1/thumbnail/{ids['red-square.png']}")
        assert r.status_code == 404 and r.json()["error_type"] == "not_found"
        paths[SPECS[2]].unlink()
        r = c.get(f"/v1/thumbnail/{ids['blue-triangle.png']}")
        assert r.status_code == 404 and r.json()["error_type"] == "file_gone" and "no longer there" in r.json()["error"]


def test_a_link_swapped_in_after_indexing_is_refused(library):
    tmp_path, paths, ids = library
    secret = tmp_path / "secret.png"
    make_image("green", "triangle", "left").save(secret)
    with client(tmp_path) as c:
        target = paths[SPECS[0]]
        assert c.get(f"/v1/thumbnail/{ids['red-circle.png']}").status_code == 200
        target.unlink()
        target.symlink_to(secret)
        r = c.get(f"/v1/thumbnail/{ids['red-circle.png']}")
        assert r.status_code == 403 and r.json()["error_type"] == "file_replaced"
        # so is a folder on the way swapped for a link elsewhere
        photos = tmp_path / "photos"
        photos.rename(tmp_path / "moved")
        (tmp_path / "elsewhere").mkdir()
        make_image("green", "circle", "top").save(tmp_path / "elsewhere" / "green-circle.png")
        photos.symlink_to(tmp_path / "elsewhere")
        r = c.get(f"/v1/thumbnail/{ids['green-circle.png']}")
        assert r.status_code == 403 and r.json()["error_type"] == "file_replaced"


def test_a_link_indexed_as_a_link_is_served_and_rows_of_schema_1_are_checked_by_content(library):
    tmp_path, paths, ids = library
    link = tmp_path / "photos" / "link.png"
    link.symlink_to(paths[SPECS[3]])
    index = Index(tmp_path / "index.db")
    index.put([record(link, "a link to a green circle")])
    (link_id,) = index.db.execute("SELECT id FROM images WHERE path = ?", (str(link),)).fetchone()
    index.close()
    with client(tmp_path) as c:
        assert c.get(f"/v1/thumbnail/{link_id}").status_code == 200
        with sqlite3.connect(tmp_path / "index.db") as db:  # as a schema-1 index left it
            db.execute("UPDATE images SET real_path = NULL")
        assert c.get(f"/v1/thumbnail/{link_id}").status_code == 200  # same bytes as indexed
        link.unlink()
        link.symlink_to(paths[SPECS[0]])
        r = c.get(f"/v1/thumbnail/{link_id}")
        assert r.status_code == 403 and r.json()["error_type"] == "file_replaced"


def test_a_file_that_is_no_longer_an_image_or_a_bomb_is_422_json(library):
    from tests.helpers.folders import png_header_only

    tmp_path, paths, ids = library
    paths[SPECS[0]].write_bytes(b"not an image any more")
    paths[SPECS[1]].write_bytes(png_header_only(20_000, 20_000))
    with client(tmp_path, max_pixels=50_000_000) as c:
        r = c.get(f"/v1/thumbnail/{ids['red-circle.png']}")
        assert r.status_code == 422 and r.json()["error_type"] == "NotAnImageError"
        r = c.get(f"/v1/thumbnail/{ids['red-square.png']}")  # refused from its header, before decoding
        assert r.status_code == 422 and r.json()["error_type"] == "ImageTooLargeError"


def test_the_api_key_guards_search_thumbnails_and_edits_but_not_the_page(library):
    tmp_path, _, ids = library
    with client(tmp_path, api_key="k", allow_edits=True) as c:
        for method, url in [("GET", "/v1/search?q=red"), ("GET", f"/v1/thumbnail/{ids['red-circle.png']}"),
                            ("PUT", f"/v1/captions/{ids['red-circle.png']}")]:
            r = c.request(method, url, json={"caption": "x"})
            assert r.status_code == 401 and "API key" in r.json()["error"], url
            r = c.request(method, url, json={"caption": "a red ball"}, headers={"X-API-Key": "k"})
            assert r.status_code == 200, url
        assert c.get("/search").status_code == 200 and "search.js" in c.get("/search").text


def test_without_a_model_search_only_and_captioning_says_so(library):
    tmp_path, _, _ = library
    with client(tmp_path) as c:
        ready = c.get("/readyz").json()
        assert ready == {"status": "ready", "model": None, "index": str(tmp_path / "index.db")}
        r = c.post("/v1/caption", content=b"x", headers={"content-type": "image/png"})
        assert r.status_code == 404 and r.json()["error"].startswith("this server was started without a model")
        assert "search.js" in c.get("/").text
        metrics = c.get("/metrics").text
        assert 'blipcap_requests_total{route="/v1/caption",status="404"} 1.0' in metrics
    with pytest.raises(ValueError, match="needs a model"):
        create_app(None, ServerConfig())


def test_thumbnail_requests_are_counted_under_their_route(library):
    tmp_path, _, ids = library
    with client(tmp_path) as c:
        c.get(f"/v1/thumbnail/{ids['red-circle.png']}")
        c.get("/v1/thumbnail/nope")
        c.get("/v1/search?q=red")
        metrics = c.get("/metrics").text
        assert 'route="/v1/thumbnail/{id}",status="200"} 1.0' in metrics
        assert 'route="/v1/thumbnail/{id}",status="404"} 1.0' in metrics
        assert 'route="/v1/search",status="200"} 1.0' in metrics


def test_edits_are_off_unless_allowed(library):
    tmp_path, _, ids = library
    with client(tmp_path) as c:
        r = c.put(f"/v1/captions/{ids['red-circle.png']}", json={"caption": "a ball"})
        assert r.status_code == 403 and r.json()["error_type"] == "edits_disabled"


def test_an_edit_is_searchable_and_caption_runs_keep_it(library):
    tmp_path, paths, ids = library
    rid = ids["red-circle.png"]
    with client(tmp_path, allow_edits=True) as c:
        for bad in [{"caption": ""}, {"caption": 3}, {"text": "x"}, ["x"], {"caption": "x" * 1001},
                    {"caption": "a\x00b"}]:
            r = c.put(f"/v1/captions/{rid}", json=bad)
            assert r.status_code == 422 and r.json()["error_type"] == "bad_request", bad
        assert c.put("/v1/captions/999999", json={"caption": "x"}).status_code == 404
        assert c.put("/v1/captions/..%2Fx", json={"caption": "x"}).status_code == 404
        r = c.put(f"/v1/captions/{rid}", json={"caption": "  a scarlet   ball on the left "})
        assert r.json() == {"id": rid, "caption": "a scarlet ball on the left", "edited": True}
        (row,) = c.get("/v1/search?q=scarlet").json()["results"]
        assert row["id"] == rid and row["snippet"] == "a <mark>scarlet</mark> ball on the left"
        assert c.get("/v1/search?q=editable").json()["editable"] is True
    path = str(paths[SPECS[0]])
    for mode in ("skip", "overwrite"):
        sink = IndexSink(tmp_path / "index.db", mode)
        assert not sink.wants(path)
        sink.write([record(path, "a red circle on the left")])  # a run that captions it anyway
        sink.write([Record(path, None, None, None, None, None, "tiny", None, "d", "NotAnImageError: x")])
        assert [h.caption for h in sink.index.search("scarlet")] == ["a scarlet ball on the left"]
        sink.close()


def test_blipcap_serve_index_with_and_without_a_model(library, tiny_fixture):
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from tests.helpers.folders import run_cli
    from .test_server_e2e import free_port

    tmp_path, _, ids = library
    db = str(tmp_path / "index.db")
    r = run_cli("serve", "--index", str(tmp_path / "missing.db"))
    assert r.returncode == 1 and "no search index at" in r.stderr
    r = run_cli("serve", "--allow-edits")
    assert r.returncode == 2 and "--index" in r.stderr
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
    for model in ([], ["--model", str(tiny_fixture), "--device", "cpu"]):
        port = free_port()
        proc = subprocess.Popen([str(Path(sys.executable).with_name("blipcap")), "serve", "--index", db, "--port",
                                 str(port), "--log-level", "warning", *model], env=env, stdin=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, "blipcap serve did not start"
                try:
                    ready = httpx.get(f"{base}/readyz", timeout=2)
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            assert ready.json()["index"] == db and (ready.json()["model"] is None) == (not model)
            assert httpx.get(f"{base}/v1/search", params={"q": "red"}).json()["results"]
            assert httpx.get(f"{base}/v1/thumbnail/{ids['red-circle.png']}").status_code == 200
            status = httpx.post(f"{base}/v1/caption", content=b"x", headers={"content-type": "image/png"}).status_code
            assert status == (422 if model else 404)
        finally:
            proc.terminate()
            proc.wait(30)
    assert list((tmp_path / "xdg-cache" / "blipcap" / "thumbnails").glob("*/*.jpg"))  # the user cache folder
