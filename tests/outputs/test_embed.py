"""Issue 15, ``--embed``: captions written into JPEG, PNG, WebP and TIFF files, read back with an
independent reader (``exiftool -j -G1 -a``): only the caption fields change, pixels are identical
(JPEG entropy-coded data byte for byte), other languages and fields are kept, mtime is kept, RAW
files get a sidecar, HEIF/AVIF are refused, and a ``kill -9`` leaves every file old or new.

Fixtures are made here: Pillow draws the images, and exiftool itself gives them the metadata an
edited photo has (camera EXIF, XMP subject/rating and a German description, IPTC keywords)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blipcap.outputs.embed import EmbedSink
from blipcap.outputs.records import Record, SinkError
from tests.helpers.folders import popen_cli, run_cli, write_shapes

if shutil.which("exiftool") is None:  # scripts/test.sh sets BLIPCAP_REQUIRE_EXIFTOOL=1: CI must not skip
    if os.environ.get("BLIPCAP_REQUIRE_EXIFTOOL") == "1":
        pytest.fail("exiftool is required (apt-get install libimage-exiftool-perl)", pytrace=False)
    pytest.skip("exiftool is not installed", allow_module_level=True)

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "tif": "TIFF"}
CAPTION = "a red circle on the left"
# what writing a caption may change: the caption fields, exiftool's own bookkeeping, the file itself
CAPTION_TAGS = {"XMP-dc:Description", "IFD0:ImageDescription", "IPTC:Caption-Abstract", "IPTC:CodedCharacterSet",
                "IPTC:EnvelopeRecordVersion", "XMP-iptcCore:AltTextAccessibility"}
VOLATILE = {"SourceFile", "System:FileAccessDate", "System:FileInodeChangeDate", "System:FileSize",
            "System:FileModifyDate", "File:CurrentIPTCDigest", "XMP-x:XMPToolkit", "IFD0:StripOffsets"}
# the tags exiftool must create with a new EXIF block (a PNG without one); added, never changed
NEW_EXIF = {"File:ExifByteOrder", "IFD0:ResolutionUnit", "IFD0:XResolution", "IFD0:YResolution",
            "IFD0:YCbCrPositioning"}


def exiftool_json(*paths) -> list[dict]:
    out = subprocess.run(["exiftool", "-j", "-G1", "-a", *map(str, paths)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def make_photo(path: Path, *, metadata: bool = True) -> None:
    rng = np.random.default_rng(len(path.name))
    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
    if metadata:
        tags = ["-EXIF:Make=Canon", "-EXIF:Model=EOS R5", "-EXIF:Artist=Ann", "-PNG:Comment=kept" if path.suffix == ".png" else "-EXIF:Copyright=Ann", "-XMP-dc:Subject=holiday", "-XMP-xmp:Rating=4",
                "-XMP-dc:Description-de=Ein roter Kreis"]
        if path.suffix in (".jpg", ".tif"):
            tags.append("-IPTC:Keywords=beach")
        subprocess.run(["exiftool", "-q", "-overwrite_original", *tags, str(path)], check=True)


def rec(path, caption=CAPTION) -> Record:
    return Record(str(path), caption, -0.5, "ab" * 32, 64, 48, "tiny", None, "d1g35t")


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def jpeg_scan(data: bytes) -> bytes:
    """The entropy-coded data of a JPEG: from its SOS segment on (segments walked, not searched)."""
    pos = 2
    while data[pos + 1] != 0xDA:
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return data[pos:]


def changed(before: dict, after: dict) -> dict:
    return {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
            if before.get(k) != after.get(k) and k not in VOLATILE}


@pytest.mark.parametrize("ext", list(FORMATS))
def test_only_the_caption_fields_change_and_the_pixels_do_not(tmp_path, ext):
    photo = tmp_path / f"photo.{ext}"
    make_photo(photo)
    old_bytes, old_pixels, old_stat = photo.read_bytes(), pixels(photo), photo.stat()
    (before,) = exiftool_json(photo)
    sink = EmbedSink(alt_text=True)
    assert sink.wants(str(photo)) and sink.write([rec(photo)]) == []
    sink.close()
    (after,) = exiftool_json(photo)
    diff = changed(before, after)
    assert after["XMP-dc:Description"] == after["IFD0:ImageDescription"] == CAPTION
    assert after["XMP-iptcCore:AltTextAccessibility"] == CAPTION
    assert after["XMP-dc:Description-de"] == "Ein roter Kreis"  # the other language is kept
    assert (after["IFD0:Make"], after["XMP-dc:Subject"], after["XMP-xmp:Rating"]) == ("Canon", "holiday", 4)
    if ext in ("jpg", "tif"):
        assert after["IPTC:Caption-Abstract"] == CAPTION and after["IPTC:Keywords"] == "beach"
    else:
        assert "IPTC:Caption-Abstract" not in after  # PNG and WebP have no standard place for IPTC
    assert set(diff) <= CAPTION_TAGS | {"File:FileType", "File:FileTypeExtension", "File:MIMEType"}, diff
    assert np.array_equal(pixels(photo), old_pixels)
    if ext == "jpg":
        assert jpeg_scan(photo.read_bytes()) == jpeg_scan(old_bytes)
    assert photo.stat().st_mtime_ns == old_stat.st_mtime_ns and photo.stat().st_mode == old_stat.st_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == [photo.name]  # no temp file, no sidecar


def test_an_image_without_metadata_gets_the_caption_and_only_the_tags_exif_needs(tmp_path):
    photo = tmp_path / "bare.png"
    make_photo(photo, metadata=False)
    (before,) = exiftool_json(photo)
    EmbedSink().write([rec(photo)])
    (after,) = exiftool_json(photo)
    assert set(changed(before, after)) <= CAPTION_TAGS | NEW_EXIF
    assert after["XMP-dc:Description"] == CAPTION and "XMP-iptcCore:AltTextAccessibility" not in after


def test_existing_modes_and_touch(tmp_path):
    photo = tmp_path / "photo.jpg"
    make_photo(photo)
    sink = EmbedSink()
    assert not sink.has(str(photo))  # a German description alone is not a caption of ours
    sink.write([rec(photo, "first words")])
    assert sink.has(str(photo)) and not sink.wants(str(photo))  # skip: a re-run leaves it alone
    mtime = photo.stat().st_mtime_ns
    EmbedSink("overwrite", touch=True).write([rec(photo, "second words")])
    (after,) = exiftool_json(photo)
    assert after["XMP-dc:Description"] == after["IPTC:Caption-Abstract"] == "second words"
    assert photo.stat().st_mtime_ns != mtime
    EmbedSink("append").write([rec(photo, "third words")])  # one caption per image, as in XMP sidecars
    assert exiftool_json(photo)[0]["XMP-dc:Description"] == "third words"


def test_unicode_captions_in_every_field(tmp_path):
    photo = tmp_path / "ünï.jpg"
    make_photo(photo, metadata=False)
    EmbedSink().write([rec(photo, "ohwx, ein Bäumchen — 木")])
    (after,) = exiftool_json(photo)
    assert after["XMP-dc:Description"] == after["IPTC:Caption-Abstract"] == "ohwx, ein Bäumchen — 木"
    assert after["IFD0:ImageDescription"] == "ohwx, ein Bäumchen — 木"


def test_raw_files_are_never_written_and_get_a_sidecar(tmp_path):
    raw = tmp_path / "IMG_0001.dng"
    make_photo(tmp_path / "x.tif", metadata=False)
    (tmp_path / "x.tif").rename(raw)  # a DNG is a TIFF: this one has no RAW data, which is not read here
    old = raw.read_bytes()
    assert EmbedSink().write([rec(raw)]) == []
    assert raw.read_bytes() == old
    (side,) = exiftool_json(tmp_path / "IMG_0001.dng.xmp")
    assert side["XMP-dc:Description"] == CAPTION


def test_heif_and_other_formats_are_refused_and_left_untouched(tmp_path):
    from PIL import features

    files = [tmp_path / "photo.bmp"]
    Image.new("RGB", (8, 8), "red").save(files[0])
    if features.check("avif"):
        files.append(tmp_path / "photo.avif")
        Image.new("RGB", (8, 8), "red").save(files[-1])
    before = {f: f.read_bytes() for f in files}
    failed = dict((r.path, why) for r, why in EmbedSink().write([rec(f) for f in files]))
    assert "cannot embed a caption in BMP files" in failed[str(files[0])] and "--xmp" in failed[str(files[0])]
    if len(files) > 1:
        assert "not embedded in AVIF files" in failed[str(files[1])]
    assert {f: f.read_bytes() for f in files} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files)


def test_a_temp_file_left_by_a_killed_run_does_not_block_the_write(tmp_path):
    photo = tmp_path / "photo.jpg"
    make_photo(photo, metadata=False)
    (tmp_path / ".photo.jpg.blipcap-tmp").write_bytes(b"half a file")
    assert EmbedSink().write([rec(photo)]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]


def test_without_exiftool_the_job_stops_before_any_model_work(tmp_path):
    with pytest.raises(SinkError, match="libimage-exiftool-perl"):
        EmbedSink(exiftool="no-such-exiftool").prepare([str(tmp_path / "a.jpg")])


def test_kill_9_during_embed_leaves_every_file_old_or_new_and_a_rerun_finishes(tiny_fixture, tmp_path):
    folder = tmp_path / "photos"
    expected = write_shapes(folder, 240, seed=21, fmt="JPEG")
    originals = {p: (Path(p).read_bytes(), pixels(p), os.stat(p).st_ino) for p in expected}
    args = ["caption", str(folder), "--model", str(tiny_fixture), "--embed", "--batch-size", "4", "-q"]
    proc = popen_cli(*args)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(os.stat(p).st_ino != originals[p][2] for p in expected) >= 30:  # renamed over: written
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the job ended before it was killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    tags = {t["SourceFile"]: t for t in exiftool_json(*expected)}
    written = 0
    for path, text in expected.items():
        data, old_pixels, _ = originals[path]
        assert np.array_equal(pixels(path), old_pixels)
        if tags[path].get("XMP-dc:Description") is None:
            assert Path(path).read_bytes() == data  # untouched
        else:
            written += 1
            assert tags[path]["XMP-dc:Description"] == tags[path]["IFD0:ImageDescription"] == text
    assert 30 <= written < len(expected)

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    tags = {t["SourceFile"]: t for t in exiftool_json(*expected)}
    assert {p: tags[p].get("XMP-dc:Description") for p in expected} == expected
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp file left
    for path in expected:
        assert jpeg_scan(Path(path).read_bytes()) == jpeg_scan(originals[path][0])


def test_cli_embed_with_alt_text_and_its_usage_errors(tiny_fixture, tmp_path):
    expected = write_shapes(tmp_path / "p", 2, seed=22)
    r = run_cli("caption", str(tmp_path / "p"), "--model", str(tiny_fixture), "--embed", "--alt-text", "-q")
    assert r.returncode == 0, r.stderr
    tags = {t["SourceFile"]: t for t in exiftool_json(*expected)}
    for path, text in expected.items():
        alt = text[0].upper() + text[1:] + "."
        assert tags[path]["XMP-dc:Description"] == tags[path]["XMP-iptcCore:AltTextAccessibility"] == alt
    again = run_cli("caption", str(tmp_path / "p"), "--model", str(tiny_fixture), "--embed")
    assert again.returncode == 0 and "2 skipped" in again.stderr
    for bad, why in ((["--touch"], "--touch: only with --embed"),
                     (["--embed", "--engine", "ray", "--output", str(tmp_path / "o")], "--embed")):
        r = run_cli("caption", str(tmp_path / "p"), "--model", str(tiny_fixture), *bad)
        assert r.returncode == 2 and why in r.stderr, r.stderr
