"""Issue 15 through the folder job's CLI: HEIC, AVIF and RAW found in a folder and captioned, and
``--embed`` on a mixed folder: JPEGs written, the RAW gets a sidecar, HEIC is refused per image."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import features

from tests.helpers.folders import run_cli
from tests.helpers.raw import dng_bytes
from tests.helpers.shapes import make_image

pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is in the test extra")
pytest.importorskip("rawpy", reason="rawpy is in the test extra")


def test_a_mixed_folder_with_embed(tiny_fixture, tmp_path):
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed (scripts/test.sh requires it through test_embed.py)")
    folder = tmp_path / "phone"
    folder.mkdir()
    shapes = {"IMG_0001.jpg": ("red", "circle", "left"), "IMG_0002.HEIC": ("blue", "square", "top"),
              "DSC_0003.dng": ("green", "triangle", "right")}
    for name, combo in shapes.items():
        image = make_image(*combo, size=(120, 90))
        if name.endswith(".HEIC"):
            buf = io.BytesIO()
            pillow_heif.from_pillow(image).save(buf, quality=95, format="HEIF")
            (folder / name).write_bytes(buf.getvalue())
        elif name.endswith(".dng"):
            (folder / name).write_bytes(dng_bytes(np.asarray(image)))
        else:
            image.save(folder / name, quality=95)
    if features.check("avif"):
        make_image("yellow", "circle", "top", size=(120, 90)).save(folder / "web.avif", quality=95)
    before = {n: (folder / n).read_bytes() for n in ("IMG_0002.HEIC", "DSC_0003.dng")}

    r = run_cli("caption", str(folder), "--model", str(tiny_fixture), "--embed", "--output", str(tmp_path / "o.jsonl"),
                "--errors", str(tmp_path / "errors.log"), "-q")
    assert r.returncode == 3, r.stderr
    rows = {json.loads(line)["path"]: json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()}
    assert rows[str(folder / "IMG_0002.HEIC")]["caption"] == "a blue square at the top"  # captioned, not embedded
    assert rows[str(folder / "DSC_0003.dng")]["caption"] == "a green triangle on the right"
    log = (tmp_path / "errors.log").read_text()
    assert "IMG_0002.HEIC\tcaptions are not embedded in HEIC files" in log
    assert {n: (folder / n).read_bytes() for n in before} == before  # neither written
    tags = {t["SourceFile"]: t for t in json.loads(subprocess.run(
        ["exiftool", "-j", "-G1", str(folder / "IMG_0001.jpg"), str(folder / "DSC_0003.dng.xmp")],
        capture_output=True, text=True, check=True).stdout)}
    assert tags[str(folder / "IMG_0001.jpg")]["XMP-dc:Description"] == "a red circle on the left"
    assert tags[str(folder / "DSC_0003.dng.xmp")]["XMP-dc:Description"] == "a green triangle on the right"
    if features.check("avif"):
        assert rows[str(folder / "web.avif")]["caption"] == "a yellow circle at the top"
        assert "web.avif\tcaptions are not embedded in AVIF files" in log
