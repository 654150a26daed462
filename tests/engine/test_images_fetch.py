"""SSRF-safe URL fetching (blipcap.images.fetch). Every connection is to 127.0.0.1: the resolver is a
table (no DNS query is made), and the connector refuses, and records, any other address. The test
stands in "127.0.0.1" for a public address, so that redirects and caps can be checked end to end."""

from __future__ import annotations

import http.server
import ipaddress
import io
import socket
import threading
import time

import pytest

from blipcap.images import ImageTooLargeError, UnreadableImageError
from blipcap.images.fetch import UrlFetcher, UrlRefused, is_public
from tests.helpers.shapes import make_image


@pytest.mark.parametrize("address, public", [
    ("127.0.0.1", False), ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("255.255.255.255", False), ("::1", False), ("fe80::1", False), ("fd00::1", False), ("::", False),
    ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::", False), ("64:ff9b::a9fe:a9fe", False),  # 6to4 and NAT64 of 169.254.169.254
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),  # Teredo whose client is 10.0.0.1
    ("8.8.8.8", True), ("1.1.1.1", True), ("2606:4700:4700::1111", True), ("::ffff:8.8.8.8", True),
])
def test_is_public(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


IMAGE = io.BytesIO()
make_image("red", "circle", "left").save(IMAGE, "PNG")
IMAGE = IMAGE.getvalue()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        port = self.server.server_address[1]
        routes = {
            "/redirect-metadata": "http://169.254.169.254/latest/meta-data/",
            "/redirect-mixed": f"http://mixed.test:{port}/ok.png",
            "/redirect-file": "file:///etc/passwd",
            "/redirect-ok": f"http://img.test:{port}/ok.png",
            "/redirect-relative": "/ok.png",
            "/loop": "/loop",
        }
        self.server.paths.append(self.path)
        if self.path in routes:
            self.send_response(302)
            self.send_header("Location", routes[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/ok.png":
            self._send(IMAGE)
        elif self.path == "/big-declared":
            self._send(b"x" * 5000)
        elif self.path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):  # a byte every 50 ms: each read is quick, the whole is not
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.05)
        else:
            self.send_error(404)

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.paths = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


NAMES = {"img.test": ["127.0.0.1"], "mixed.test": ["127.0.0.1", "10.0.0.7"], "meta.test": ["169.254.169.254"],
         "v6.test": ["::ffff:192.168.0.1"]}


class Recorder:
    """A resolver (table and numeric literals only) and a connector (loopback only), recording both."""

    def __init__(self):
        self.resolved, self.connected = [], []

    def resolve(self, host, port):
        self.resolved.append(host)
        if host in NAMES:
            return NAMES[host]
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            raise OSError(f"{host}: unknown to the test resolver") from None

    def connect(self, ip, port, timeout):
        self.connected.append(ip)
        if ip != "127.0.0.1":
            raise AssertionError(f"tried to connect to {ip}")
        return socket.create_connection((ip, port), timeout=timeout)


@pytest.fixture()
def rec():
    return Recorder()


def fetcher(rec, max_bytes=100_000, timeout_s=2.0):
    return UrlFetcher(max_bytes=max_bytes, timeout_s=timeout_s, resolver=rec.resolve, connector=rec.connect,
                      allow_ip=lambda a: str(a) == "127.0.0.1")


def test_fetches_an_image_and_follows_a_checked_redirect(server, rec):
    port = server.server_address[1]
    assert fetcher(rec).fetch(f"http://img.test:{port}/ok.png") == IMAGE
    assert fetcher(rec).fetch(f"http://127.0.0.1:{port}/redirect-ok") == IMAGE
    assert fetcher(rec).fetch(f"http://img.test:{port}/redirect-relative") == IMAGE
    assert set(rec.connected) == {"127.0.0.1"}


@pytest.mark.parametrize("path, words", [
    ("/redirect-metadata", "169.254.169.254 resolves to non-public address 169.254.169.254 (redirected to"),
    ("/redirect-mixed", "mixed.test resolves to non-public address 10.0.0.7"),
    ("/redirect-file", "only http and https URLs are fetched (redirected to file:///etc/passwd)"),
    ("/loop", "more than 3 redirects"),
])
def test_redirects_are_rechecked_before_connecting(server, rec, path, words):
    port = server.server_address[1]
    url = f"http://img.test:{port}{path}"
    with pytest.raises(UrlRefused) as info:
        fetcher(rec).fetch(url)
    assert str(info.value).startswith(f"{url}: ") and words in str(info.value)
    assert set(rec.connected) == {"127.0.0.1"}  # the refused hop was never dialled


@pytest.mark.parametrize("url", ["http://meta.test/latest/", "http://v6.test/", "http://10.0.0.1/",
                                 "https://[fe80::1]/", "http://[::ffff:169.254.169.254]/"])
def test_private_targets_are_refused_without_any_connection(rec, url):
    f = UrlFetcher(max_bytes=1000, timeout_s=1, resolver=rec.resolve, connector=rec.connect)  # the real rule
    with pytest.raises(UrlRefused, match="non-public address"):
        f.fetch(url)
    assert rec.connected == []


def test_the_real_rule_refuses_loopback(server, rec):
    port = server.server_address[1]
    f = UrlFetcher(max_bytes=1000, timeout_s=1, resolver=rec.resolve, connector=rec.connect)
    with pytest.raises(UrlRefused, match="127.0.0.1 resolves to non-public address 127.0.0.1"):
        f.fetch(f"http://127.0.0.1:{port}/ok.png")
    assert rec.connected == []


@pytest.mark.parametrize("path", ["/big-declared", "/big-chunked"])
def test_bodies_are_size_capped(server, rec, path):
    port = server.server_address[1]
    with pytest.raises(ImageTooLargeError, match="URL cap"):
        fetcher(rec, max_bytes=4096).fetch(f"http://img.test:{port}{path}")


def test_fetches_are_time_capped_in_total(server, rec):
    port = server.server_address[1]
    start = time.monotonic()
    with pytest.raises(UnreadableImageError, match="longer than 0.5 s|timed out"):
        fetcher(rec, timeout_s=0.5).fetch(f"http://img.test:{port}/slow")
    assert time.monotonic() - start < 1.5  # not the 5 s the server would take


def test_http_errors_and_unresolvable_names(server, rec):
    port = server.server_address[1]
    with pytest.raises(UnreadableImageError, match="HTTP 404"):
        fetcher(rec).fetch(f"http://img.test:{port}/missing.png")
    with pytest.raises(UnreadableImageError, match="cannot resolve nowhere.test"):
        fetcher(rec).fetch("http://nowhere.test/a.png")
    with pytest.raises(UrlRefused, match="invalid URL"):
        fetcher(rec).fetch("http://img.test:notaport/a.png")


def test_the_app_captions_a_fetched_url(server, rec, tiny_fixture):
    pytest.importorskip("fastapi")
    import asyncio

    from tests.server.test_server_app import serving

    from blipcap import Captioner

    cap = Captioner.load(tiny_fixture, device="cpu")
    port = server.server_address[1]

    async def scenario():
        async with serving(cap, allow_urls=True, fetcher=fetcher(rec)) as c:
            r = await c.post("/v1/caption", json={"images": [f"http://img.test:{port}/redirect-ok",
                                                             f"http://img.test:{port}/redirect-metadata"]})
            assert r.status_code == 200
            ok, refused = r.json()
            assert ok["generated_text"] == "a red circle on the left"
            assert refused["error_type"] == "UrlRefused" and "169.254.169.254" in refused["error"]
    asyncio.run(scenario())
    assert set(rec.connected) == {"127.0.0.1"}
