"""Which files a folder job takes (blipcap.jobs.discover): by content and extension, hidden files and
own outputs skipped, symlink loops, globs, lists, unicode and spaces."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from blipcap.jobs.discover import InputError, find_images, looks_like_image
from tests.helpers.folders import jpeg_bytes
from tests.helpers.shapes import make_image


def png_bytes() -> bytes:
    buf = io.BytesIO()
    make_image("blue", "circle", "top").save(buf, format="PNG")
    return buf.getvalue()


def webp_bytes() -> bytes:
    buf = io.BytesIO()
    make_image("blue", "circle", "top").save(buf, format="WEBP")
    return buf.getvalue()


@pytest.fixture()
def tree(tmp_path) -> Path:
    root = tmp_path / "lib rary"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden dir").mkdir()
    files = {
        "a.jpg": jpeg_bytes(), "B.PNG": png_bytes(), "c.JpEg": jpeg_bytes(), "d.webp": webp_bytes(),
        "IMG_0001": jpeg_bytes(),  # no extension: found by its bytes
        "photo.dat": png_bytes(),  # wrong extension: found by its bytes
        "notes.txt": b"hello", "a.txt": b"a caption sidecar", "a.xmp": b"<x:xmpmeta/>",
        "metadata.jsonl": b'{"file_name": "a.jpg", "text": "x"}\n',
        "empty.gif": b"",  # an image extension: taken, so that it is reported as empty
        ".hidden.jpg": jpeg_bytes(), ".a.txt.blipcap-tmp": b"x",
        "sub/ünï cödé.jpg": jpeg_bytes(), "sub/deeper/z.tif": b"II*\x00 not really",
        ".hidden dir/x.jpg": jpeg_bytes(),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def names(paths, root) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


def test_a_folder_is_walked_by_content_and_extension_in_sorted_order(tree):
    found = find_images([str(tree)])
    assert names(found, tree) == ["B.PNG", "IMG_0001", "a.jpg", "c.JpEg", "d.webp", "empty.gif", "photo.dat",
                                  "sub/ünï cödé.jpg", "sub/deeper/z.tif"]


def test_no_recursive_takes_only_the_folders_own_files(tree):
    assert "sub/ünï cödé.jpg" not in names(find_images([str(tree)], recursive=False), tree)
    assert len(find_images([str(tree)], recursive=False)) == 7


def test_named_files_are_always_taken_and_each_file_once(tree, tmp_path):
    named = [str(tree / "notes.txt"), str(tree / ".hidden.jpg"), str(tmp_path / "missing.png")]
    found = find_images([*named, str(tree / "a.jpg"), str(tree)])
    assert found[:4] == [*named, str(tree / "a.jpg")]  # reported later if they are not images
    assert found.count(str(tree / "a.jpg")) == 1 and len(found) == 3 + 9


def test_the_jobs_own_outputs_are_excluded(tree):
    (tree / "out.png").write_bytes(png_bytes())  # an output that happens to look like an image
    assert "out.png" not in names(find_images([str(tree)], exclude=[tree / "out.png"]), tree)


def test_globs_and_lists(tree, tmp_path):
    assert names(find_images([str(tree / "**" / "*.jpg")]), tree) == ["a.jpg", "sub/ünï cödé.jpg"]
    assert find_images([str(tree / "*.nothing")]) == []
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tree / 'a.jpg'}\n\n{tree / 'sub'}\n{tree / '[literal].jpg'}\n", encoding="utf-8")
    found = find_images([], files_from=str(listing))
    assert names(found[:2], tree) == ["a.jpg", "sub/ünï cödé.jpg"]
    assert found[-1] == str(tree / "[literal].jpg")  # list entries are never globbed
    with pytest.raises(InputError, match="cannot read --files-from"):
        find_images([], files_from=str(tmp_path / "nope.txt"))


def test_a_file_whose_name_looks_like_a_glob_is_taken_literally(tmp_path):
    odd = tmp_path / "[1] photo?.jpg"
    odd.write_bytes(jpeg_bytes())
    assert find_images([str(odd)]) == [str(odd)]


def test_symlink_loops_and_links_to_the_same_folder_are_walked_once(tree):
    os.symlink(tree, tree / "sub" / "loop")
    os.symlink(tree / "sub", tree / "sub again")
    os.symlink(tree / "nowhere.jpg", tree / "dangling.jpg")
    found = find_images([str(tree)])
    assert len(found) == 9 and len({os.path.realpath(p) for p in found}) == 9


def test_signatures(tmp_path):
    assert looks_like_image(__file__) is False
    for i, (data, expected) in enumerate([(jpeg_bytes(), True), (png_bytes(), True), (webp_bytes(), True),
                                          (b"GIF89a...", True), (b"BM....", True), (b"MM\x00*", True),
                                          (b"RIFF....WAVE", False), (b"", False)]):
        path = tmp_path / f"file{i}"
        path.write_bytes(data)
        assert looks_like_image(path) is expected, data[:12]
