"""Issue 15, XMP sidecar names: ``photo.jpg.xmp`` (darktable, digiKam, Immich) or ``photo.xmp``
(Adobe, for RAW); by default the one that exists is updated, else the ext form is written."""

from __future__ import annotations

import pytest

from blipcap.outputs.records import Record
from blipcap.outputs.sinks import XmpSink
from blipcap.outputs.xmp import merge_caption, read_description
from tests.helpers.folders import run_cli


def rec(path, caption="a red circle on the left") -> Record:
    return Record(str(path), caption, -0.5, "ab" * 32, 120, 90, "tiny", None, "d1g35t")


def write_all(sink: XmpSink, paths) -> list:
    """As the job does: clash for each image first (in order), then write the ones without a clash."""
    reasons = {str(p): sink.clash(str(p)) for p in paths}
    failed = sink.write([rec(p, f"caption of {p.name}") for p in paths if reasons[str(p)] is None])
    return [r for r in reasons.values() if r] + [why for _, why in failed]


def test_default_writes_the_ext_form_and_two_images_with_one_stem_get_their_own(tmp_path):
    jpg, png = tmp_path / "photo.jpg", tmp_path / "photo.png"
    assert write_all(XmpSink(), [jpg, png]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg.xmp", "photo.png.xmp"]
    assert read_description(tmp_path / "photo.jpg.xmp") == "caption of photo.jpg"
    assert read_description(tmp_path / "photo.png.xmp") == "caption of photo.png"


def test_default_updates_an_existing_base_form_and_does_not_share_it(tmp_path):
    (tmp_path / "photo.xmp").write_bytes(merge_caption(None, "old words"))
    jpg, png = tmp_path / "photo.jpg", tmp_path / "photo.png"
    sink = XmpSink("overwrite")
    assert sink.has(str(jpg))  # the existing photo.xmp counts as this image's
    assert write_all(sink, [jpg, png]) == []
    assert read_description(tmp_path / "photo.xmp") == "caption of photo.jpg"
    assert read_description(tmp_path / "photo.png.xmp") == "caption of photo.png"
    assert not (tmp_path / "photo.jpg.xmp").exists()


def test_default_prefers_an_existing_ext_form_over_a_base_form(tmp_path):
    (tmp_path / "photo.xmp").write_bytes(merge_caption(None, "adobe's"))
    (tmp_path / "photo.jpg.xmp").write_bytes(merge_caption(None, "darktable's"))
    assert write_all(XmpSink("overwrite"), [tmp_path / "photo.jpg"]) == []
    assert read_description(tmp_path / "photo.jpg.xmp") == "caption of photo.jpg"
    assert read_description(tmp_path / "photo.xmp") == "adobe's"


def test_skip_counts_a_sidecar_in_either_form(tmp_path):
    (tmp_path / "a.xmp").write_bytes(merge_caption(None, "x"))
    (tmp_path / "b.jpg.xmp").write_bytes(merge_caption(None, "y"))
    sink = XmpSink()
    assert not sink.wants(str(tmp_path / "a.jpg")) and not sink.wants(str(tmp_path / "b.jpg"))
    assert sink.wants(str(tmp_path / "c.jpg"))


def test_forced_names(tmp_path):
    (tmp_path / "photo.xmp").write_bytes(merge_caption(None, "old words"))
    jpg, png = tmp_path / "photo.jpg", tmp_path / "photo.png"
    assert write_all(XmpSink("overwrite", "ext"), [jpg]) == []
    assert read_description(tmp_path / "photo.xmp") == "old words"  # not ours to touch in ext mode
    assert read_description(tmp_path / "photo.jpg.xmp") == "caption of photo.jpg"
    reasons = write_all(XmpSink("overwrite", "base"), [jpg, png])
    assert len(reasons) == 1 and "photo.xmp would also be that of photo.jpg" in reasons[0]
    assert read_description(tmp_path / "photo.xmp") == "caption of photo.jpg"
    with pytest.raises(ValueError, match="ext, base"):
        XmpSink(name="sidecar")


def test_cli_xmp_name(tiny_fixture, tmp_path):
    from tests.helpers.folders import write_shapes

    expected = write_shapes(tmp_path / "p", 2, seed=7)
    r = run_cli("caption", str(tmp_path / "p"), "--model", str(tiny_fixture), "--xmp", "--xmp-name", "base", "-q")
    assert r.returncode == 0, r.stderr
    for path, text in expected.items():
        assert read_description(path[: -len(".png")] + ".xmp") == text
    bad = run_cli("caption", str(tmp_path / "p"), "--model", str(tiny_fixture), "--xmp-name", "ext")
    assert bad.returncode == 2 and "--xmp-name: only with --xmp" in bad.stderr
