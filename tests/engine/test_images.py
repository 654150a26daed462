"""blipcap.images: every input kind -> RGB, every refusal, and pixel parity with transformers."""

import io
import json
import pickle
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from blipcap.images import (
    DEFAULT_MAX_PIXELS,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
    Preprocessor,
    TruncatedImageError,
    UnreadableImageError,
    UrlFetcher,
    UrlRefused,
    load_image,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def noise(h, w, seed=0, channels=3):
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def encode(image, fmt, **kwargs):
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(width, height):
    """A valid all-black 1-bit PNG of any size, made in a fraction of a second."""
    raw = (b"\0" + bytes((width + 7) // 8)) * height  # filter byte + packed row, per row
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(raw, 1)) + png_chunk(b"IEND", b""))  # fmt: skip


def raises(exc_type, source, name=None, **kwargs):
    """Assert load_image(source) raises exactly exc_type, naming the input; return the error."""
    with pytest.raises(exc_type) as info:
        load_image(source, **kwargs)
    err = info.value
    assert type(err) is exc_type
    assert isinstance(err, ImageError) and isinstance(err, ValueError)
    assert (name or str(source)) in str(err)
    assert "\n" not in str(err)
    return err


# -- refusals, one per kind ------------------------------------------------------------------------


def test_missing_path(tmp_path):
    path = tmp_path / "nope.jpg"
    err = raises(UnreadableImageError, path)
    assert "No such file" in str(err)
    raises(UnreadableImageError, str(path))


def test_directory(tmp_path):
    raises(UnreadableImageError, tmp_path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    raises(EmptyImageError, path)


def test_empty_bytes():
    raises(EmptyImageError, b"", name="<bytes of 0 bytes>")
    raises(EmptyImageError, io.BytesIO(b""), name="<file object BytesIO>")


def test_text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture, just some text\n" * 10)
    raises(NotAnImageError, path)


def test_pdf_bytes():
    data = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
    raises(NotAnImageError, data, name=f"<bytes of {len(data)} bytes>")


def test_eps_is_not_opened():
    # Pillow's EPS loader would run Ghostscript on the data; we do not offer it.
    data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    raises(NotAnImageError, data, name=f"<bytes of {len(data)} bytes>")


def test_truncated_jpeg(tmp_path):
    data = encode(Image.fromarray(noise(256, 256)), "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    err = raises(TruncatedImageError, path)
    assert "JPEG" in str(err)


def test_truncated_png(tmp_path):
    data = encode(Image.fromarray(noise(256, 256)), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    raises(TruncatedImageError, path)
    # Corrupt rather than short: flip bytes in the middle of the compressed stream.
    bad = bytearray(data)
    bad[len(bad) // 2 : len(bad) // 2 + 64] = bytes(64)
    raises(TruncatedImageError, bytes(bad), name=f"<bytes of {len(bad)} bytes>")


def test_truncated_images_not_enabled_globally():
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bomb_refused_from_header_without_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bilevel_png(12000, 9000))  # 108 megapixels, ~13 KB on disk
    assert 12000 * 9000 > DEFAULT_MAX_PIXELS
    start = time.perf_counter()
    err = raises(ImageTooLargeError, path)
    assert time.perf_counter() - start < 1.0  # decoding it would take far longer
    assert "12000x9000" in str(err)


def test_header_only_bomb_refused_even_without_our_limit():
    # Header says 40000x40000 (no pixel data): past Pillow's own guard, which becomes ours.
    data = bilevel_png(40000, 40000)[:33] + bilevel_png(1, 1)[33:]  # a 1x1 image's pixel data
    raises(ImageTooLargeError, data, name=f"<bytes of {len(data)} bytes>")
    err = raises(ImageTooLargeError, data, name="<bytes of", max_pixels=None)
    assert "Pillow" in str(err)


def test_configurable_limit(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(noise(100, 100)).save(path)
    err = raises(ImageTooLargeError, path, max_pixels=9_999)
    assert "max_pixels=9,999" in str(err)
    assert load_image(path, max_pixels=10_000).size == (100, 100)
    assert load_image(path, max_pixels=None).size == (100, 100)
    raises(ImageTooLargeError, noise(100, 100), name="<array shape (100, 100, 3)", max_pixels=100)
    raises(ImageTooLargeError, Image.new("RGB", (100, 100)), name="<PIL image RGB 100x100>", max_pixels=100)


def test_url_needs_opt_in():
    err = raises(UnreadableImageError, "https://example.com/cat.jpg")
    assert "allow_urls" in str(err)
    raises(UnreadableImageError, "HTTP://example.com/cat.jpg")


def test_unsupported_inputs():
    raises(UnreadableImageError, 42, name="<int>")
    raises(UnreadableImageError, noise(5, 5, channels=2), name="<array shape (5, 5, 2)")
    raises(UnreadableImageError, np.zeros((2, 3, 4, 5), np.uint8), name="<array shape (2, 3, 4, 5)")
    raises(UnreadableImageError, np.full((4, 4), 300.0), name="<array shape (4, 4)")
    raises(UnreadableImageError, np.full((4, 4), -0.5), name="<array shape (4, 4)")  # normalised model input
    raises(UnreadableImageError, np.full((4, 4), np.nan), name="<array shape (4, 4)")
    raises(UnreadableImageError, np.full((4, 4), 70000, np.int32), name="<array shape (4, 4)")
    raises(EmptyImageError, np.zeros((0, 5, 3), np.uint8), name="<array shape (0, 5, 3)")
    raises(EmptyImageError, Image.new("RGB", (0, 0)), name="<PIL image RGB 0x0>")
    raises(UnreadableImageError, io.StringIO("text"), name="<file object StringIO>")


def test_errors_pickle_and_carry_their_parts():
    err = EmptyImageError("a.jpg", "empty (0 bytes)")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is EmptyImageError
    assert (back.source, back.reason, str(back)) == ("a.jpg", "empty (0 bytes)", "a.jpg: empty (0 bytes)")


# -- URLs (a loopback server; no network) ----------------------------------------------------------


@pytest.fixture
def http_server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    body = encode(Image.new("RGB", (8, 6), (10, 200, 30)), "PNG")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/missing.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()  # no Content-Length: the byte cap must hold while streaming
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    try:
        server = HTTPServer(("127.0.0.1", 0), Handler)
    except OSError:
        pytest.skip("cannot bind a loopback socket here")
    server.handle_error = lambda request, address: None  # a fetch over its byte cap hangs up mid-body
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", len(body)
    server.shutdown()
    server.server_close()


def loopback_fetcher(max_bytes=50_000_000):
    """The library's fetcher, but letting this test's loopback server stand in for a public host."""
    return UrlFetcher(max_bytes=max_bytes, timeout_s=10.0, allow_ip=lambda address: address.is_loopback)


def test_url_fetch(http_server):
    base, size = http_server
    image = load_image(f"{base}/ok.png", allow_urls=True, fetcher=loopback_fetcher())
    assert image.size == (8, 6) and image.getpixel((0, 0)) == (10, 200, 30)
    raises(ImageTooLargeError, f"{base}/ok.png", allow_urls=True, fetcher=loopback_fetcher(size - 1))
    raises(UnreadableImageError, f"{base}/missing.png", allow_urls=True, fetcher=loopback_fetcher())


def test_url_fetch_refuses_private_addresses_like_the_server(http_server):
    base, size = http_server
    err = raises(UrlRefused, f"{base}/ok.png", allow_urls=True)  # the default fetcher: no SSRF
    assert "non-public address 127.0.0.1" in str(err)
    raises(UrlRefused, "http://169.254.169.254/latest/meta-data", allow_urls=True)  # cloud metadata


# -- conversions to RGB ----------------------------------------------------------------------------


def test_grayscale_and_bilevel():
    assert load_image(Image.new("L", (3, 2), 77)).getpixel((1, 1)) == (77, 77, 77)
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    image = load_image(encode(bilevel, "PNG"))
    assert image.mode == "RGB" and [image.getpixel((x, 0)) for x in (0, 1)] == [(0, 0, 0), (255, 255, 255)]


def test_palette_with_transparency():
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # index 0 (red) is transparent
    for source in (palette, encode(palette, "PNG"), encode(palette, "GIF")):
        image = load_image(source)
        assert image.mode == "RGB"
        assert image.getpixel((0, 0)) == (255, 255, 255)
        assert image.getpixel((1, 0)) == (0, 255, 0)


def test_rgba_composited_on_white():
    pixels = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], np.uint8)
    for source in (Image.fromarray(pixels), encode(Image.fromarray(pixels), "PNG"), pixels):
        image = load_image(source)
        assert image.mode == "RGB"
        assert image.getpixel((0, 0)) == (255, 255, 255)
        assert image.getpixel((1, 0)) == (10, 20, 30)
        assert all(126 <= v <= 128 for v in image.getpixel((2, 0)))


def test_la():
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (100, 255))
    image = load_image(encode(la, "PNG"))
    assert [image.getpixel((x, 0)) for x in (0, 1)] == [(255, 255, 255), (100, 100, 100)]


def test_cmyk():
    cmyk = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))
    for source in (cmyk, encode(cmyk, "TIFF")):
        image = load_image(source)
        assert [image.getpixel((x, 0)) for x in (0, 1)] == [(255, 255, 255), (0, 255, 255)]


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 32768, 65535]], np.uint16)
    expected = [0, 100, 128, 255]
    for source in (Image.fromarray(values), encode(Image.fromarray(values), "PNG"), values,
                   Image.fromarray(values.astype(np.int32))):  # fmt: skip
        image = load_image(source)
        assert [image.getpixel((x, 0)) for x in range(4)] == [(v, v, v) for v in expected]


def test_float_mode():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert unit.mode == "F"
    assert [load_image(unit).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    wide = Image.fromarray(np.array([[-1.0, 1.0, 3.0]], np.float32))  # min-max stretched
    assert [load_image(wide).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_animated_gif_takes_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
    assert load_image(path).getpixel((4, 4)) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_other_animations_take_first_frame(fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    red, green, blue = load_image(data).getpixel((4, 4))
    assert red > 250 and green < 5 and blue < 5


def exif_jpeg(orientation, size=(64, 32)):
    """A JPEG stored `size` (w, h) with a red top-left quadrant, tagged with `orientation`."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1] // 2))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def is_red(pixel):
    return pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


@pytest.mark.parametrize(
    "orientation, size, red_at, black_at",
    [
        (1, (64, 32), (16, 8), (48, 24)),
        (3, (64, 32), (48, 24), (16, 8)),  # rotated 180: red ends bottom-right
        (6, (32, 64), (24, 16), (8, 16)),  # turned 90 clockwise: top-right
        (8, (32, 64), (8, 48), (8, 16)),  # turned 90 anticlockwise: bottom-left
    ],
)
def test_exif_orientation(orientation, size, red_at, black_at):
    image = load_image(exif_jpeg(orientation))
    assert image.size == size
    assert is_red(image.getpixel(red_at)) and not is_red(image.getpixel(black_at))
    # an uprighted image is upright: loading it again (e.g. a PIL image handed to caption()) keeps it
    again = load_image(image)
    assert again.size == size and is_red(again.getpixel(red_at)) and not is_red(again.getpixel(black_at))


# -- every input kind ------------------------------------------------------------------------------


def test_path_bytes_and_file_inputs(tmp_path):
    pixels = noise(12, 20)
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    with open(path, "rb") as f:
        from_file = load_image(f)
    sources = [str(path), path, data, bytearray(data), memoryview(data), io.BytesIO(data)]
    for image in [load_image(s) for s in sources] + [from_file]:
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), pixels)


def test_file_object_errors_are_named(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with open(path, "rb") as f:
        raises(NotAnImageError, f, name=str(path))


def test_pil_input_is_not_modified():
    original = Image.fromarray(noise(5, 7))
    image = load_image(original)
    assert image is not original
    image.paste((1, 2, 3), (0, 0, 7, 5))
    np.testing.assert_array_equal(np.asarray(original), noise(5, 7))


def test_numpy_inputs():
    rgb = noise(6, 9)
    gray = noise(6, 9, channels=1)
    cases = [
        (rgb, rgb),
        (gray, np.repeat(gray[..., None], 3, axis=2)),
        (gray[..., None], np.repeat(gray[..., None], 3, axis=2)),
        (np.dstack([rgb, np.full((6, 9), 255, np.uint8)]), rgb),  # opaque RGBA
        (rgb / 255.0, rgb),  # float in [0, 1]
        (rgb.astype(np.float32), rgb),  # float in 0..255
        (rgb.astype(np.uint16) * 257, rgb),
        (rgb.astype(np.int64), rgb),
        (rgb.transpose(2, 0, 1), rgb),  # CHW, unambiguous
        (rgb[:, ::-1], rgb[:, ::-1]),  # not contiguous
        (gray > 127, np.repeat(np.where(gray > 127, 255, 0).astype(np.uint8)[..., None], 3, axis=2)),
    ]
    for source, expected in cases:
        image = load_image(source)
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), expected)


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    hwc = noise(6, 9)
    chw = torch.from_numpy(hwc.transpose(2, 0, 1).copy())
    cases = [
        chw,
        torch.from_numpy(hwc),
        chw.float() / 255,
        torch.from_numpy(hwc).float() / 255,
        (chw.float() / 255).to(torch.bfloat16),
        (chw.float() / 255).requires_grad_(),
        chw[:1],  # grey CHW
    ]
    for i, source in enumerate(cases):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (9, 6)
        expected = np.repeat(hwc[..., :1], 3, axis=2) if i == len(cases) - 1 else hwc
        tolerance = 2 if source.dtype == torch.bfloat16 else 0  # bfloat16 holds ~3 significant digits
        assert np.abs(np.asarray(image, int) - expected).max() <= tolerance
    # 3x5x3 could be either: a tensor is read as CHW.
    square = torch.from_numpy(noise(3, 5, channels=3)).permute(2, 0, 1)  # (3, 3, 5)
    assert load_image(square).size == (5, 3)
    raises(UnreadableImageError, chw[None], name="<tensor shape (1, 3, 6, 9)")


def test_package_does_not_import_torch():
    import subprocess
    import sys

    import blipcap.images

    # Load the package under an empty stand-in for blipcap, so that only its own imports are judged.
    code = (
        "import sys, types\n"
        "parent = sys.modules['blipcap'] = types.ModuleType('blipcap')\n"
        f"parent.__path__ = [{str(Path(blipcap.images.__file__).parents[1])!r}]\n"
        "import blipcap.images\n"
        "assert 'torch' not in sys.modules, 'blipcap.images imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- JPEG draft decoding ---------------------------------------------------------------------------


def test_draft_size_decodes_large_jpegs_smaller(tmp_path):
    path = tmp_path / "big.jpg"
    Image.linear_gradient("L").resize((3000, 2000)).convert("RGB").save(path, quality=85)
    assert load_image(path).size == (3000, 2000)  # off by default
    small = load_image(path, draft_size=(384, 384))
    assert small.mode == "RGB" and small.size == (1500, 1000)  # 1/4 would leave under 2 x 384 rows
    assert min(load_image(path, draft_size=(100, 100)).size) >= 200


def test_draft_size_respects_exif_orientation():
    data = exif_jpeg(6, size=(4000, 1600))  # shown 1600 wide x 4000 tall
    image = load_image(data, draft_size=(800, 200))
    assert image.size == (800, 2000)  # 1/2 scale; both sides still >= twice the target
    assert is_red(image.getpixel((600, 500))) and not is_red(image.getpixel((200, 500)))
    assert load_image(encode(Image.new("RGB", (4000, 1600)), "PNG"), draft_size=(8, 8)).size == (4000, 1600)


# -- Preprocessor ----------------------------------------------------------------------------------

BLIP_LARGE_CONFIG = {  # Salesforce/blip-image-captioning-large preprocessor_config.json
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "BlipImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "BlipProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 384, "width": 384},
}


def test_from_config(tmp_path):
    pre = Preprocessor.from_config(BLIP_LARGE_CONFIG)
    assert pre == Preprocessor()
    assert pre.size == (384, 384) and pre.resample == Image.Resampling.BICUBIC
    assert pre.mean == tuple(BLIP_LARGE_CONFIG["image_mean"]) and pre.std == tuple(BLIP_LARGE_CONFIG["image_std"])
    assert Preprocessor.from_config({}) == pre
    assert Preprocessor.from_config({"size": 224}).size == (224, 224)
    assert Preprocessor.from_config({"size": {"shortest_edge": 256}}).size == (256, 256)
    assert Preprocessor.from_config({"size": {"height": 200, "width": 300}}).size == (200, 300)
    assert Preprocessor.from_config({"image_mean": 0.5, "do_normalize": False}).mean == (0.5, 0.5, 0.5)
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(BLIP_LARGE_CONFIG))
    assert Preprocessor.from_file(path) == pre
    with pytest.raises(ValueError):
        Preprocessor.from_config({"size": {"longest_edge": 9}})
    with pytest.raises(ValueError):
        Preprocessor(std=(0.5, 0.0, 0.5))


def test_output_layout_and_batch():
    pre = Preprocessor(size=(32, 48))
    images = [Image.fromarray(noise(h, w, seed=h)) for h, w in ((10, 10), (32, 48), (70, 20))]
    one = pre(images[0])
    assert one.shape == (3, 32, 48) and one.dtype == np.float32 and one.flags.c_contiguous
    batch = pre.batch(images)
    assert batch.shape == (3, 3, 32, 48) and batch.dtype == np.float32 and batch.flags.c_contiguous
    for image, row in zip(images, batch, strict=True):
        np.testing.assert_array_equal(row, pre(image))
    assert pre.batch([]).shape == (0, 3, 32, 48)
    np.testing.assert_array_equal(pre(Image.new("L", (5, 5), 9)), pre(Image.new("RGB", (5, 5), (9, 9, 9))))
    raw = Preprocessor(size=(4, 4), do_resize=False, do_rescale=False, do_normalize=False)
    np.testing.assert_array_equal(raw(images[0]), noise(10, 10, seed=10).transpose(2, 0, 1).astype(np.float32))
    assert raw.batch(images[:1]).shape == (1, 3, 10, 10)


def reference(config):
    transformers = pytest.importorskip("transformers")
    try:
        from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil as Reference
    except ImportError:  # older transformers: the slow processor is the PIL one
        Reference = transformers.BlipImageProcessor
    processor = Reference(**{k: v for k, v in config.items() if k not in ("image_processor_type", "processor_class")})
    return lambda images: np.asarray(processor(images, return_tensors="np")["pixel_values"])


@pytest.mark.parametrize(
    "config",
    [
        BLIP_LARGE_CONFIG,
        {"size": {"height": 224, "width": 160}, "resample": 2, "image_mean": 0.5, "image_std": [0.5, 0.4, 0.3]},
        {"size": {"height": 64, "width": 64}, "do_normalize": False},
        {"size": {"height": 64, "width": 64}, "do_rescale": False},
    ],
)
def test_parity_with_transformers(config):
    ref = reference(config)
    pre = Preprocessor.from_config(config)
    sizes = [(384, 384), (480, 640), (333, 500), (17, 1023), (1, 1), (2000, 30)]
    images = [Image.fromarray(noise(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]
    for image in images:
        ours, theirs = pre(image), ref([image])[0]
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        assert np.abs(ours - theirs).max() < 1e-5 * max(1.0, np.abs(theirs).max())  # relative if unscaled
    assert np.abs(pre.batch(images) - ref(images)).max() < 1e-5 * max(1.0, np.abs(ref(images)).max())


def test_parity_through_load_image_for_other_modes():
    # transformers converts modes itself; load_image + Preprocessor must land on the same pixels.
    ref, pre = reference(BLIP_LARGE_CONFIG), Preprocessor()
    rgba = noise(50, 70, channels=4)
    palette = Image.fromarray(noise(50, 70)).convert("P")
    palette.info["transparency"] = 3
    for image in (Image.fromarray(rgba), Image.fromarray(noise(50, 70, channels=1)), palette,
                  Image.fromarray(rgba).convert("LA")):  # fmt: skip
        assert np.abs(pre(load_image(image)) - ref([image])[0]).max() < 1e-5


def test_examples_load():
    for name in ("astronaut", "coffee", "chelsea"):
        path = EXAMPLES / f"{name}.jpg"
        assert path.stat().st_size <= 150_000
        image = load_image(path)
        assert image.mode == "RGB" and min(image.size) >= 300


def test_png_xmp_orientation_is_applied_once():
    """A PNG keeps XMP in info["XML:com.adobe.xmp"], which Image.getexif() reads an orientation
    from too: once load_image has turned the image, loading the result again must not turn it back."""
    from PIL import PngImagePlugin

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), "red").save(buf, "PNG", pnginfo=info)
    upright = load_image(buf.getvalue())
    assert upright.size == (20, 40)  # orientation 6: turned a quarter
    assert load_image(upright).size == (20, 40)
