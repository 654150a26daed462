"""The CLI, driven through its real entry points in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def run(*args: str, env: dict | None = None, entry: str = "module") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "blipcap", *args]
    if entry == "script":
        cmd = [str(Path(sys.executable).with_name("blipcap")), *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=300)


@pytest.fixture()
def folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    d = tmp_path / "photos dir"
    (d / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.JPG", "ünï code.png"):
        im = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).resize((40, 30))
        im.save(d / name, format="JPEG" if name.endswith("JPG") else "PNG")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (d / "notes.txt").write_text("not an image, and not picked up from a folder")
    (d / ".hidden.png").write_bytes(b"")
    return d


def test_caption_folder_prints_tab_separated_lines_and_reports_bad_files(random_ckpt, folder):
    r = run("caption", str(folder), "--model", str(random_ckpt), "--max-new-tokens", "4")
    assert r.returncode == 3, r.stderr
    lines = r.stdout.strip().splitlines()
    paths = [line.split("\t")[0] for line in lines]
    assert sorted(Path(p).name for p in paths) == ["a.png", "b.JPG", "ünï code.png"]
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] for line in lines)
    assert "broken.png" in r.stderr and "1 of 4" in r.stderr
    assert "Traceback" not in r.stderr


def test_caption_json_lines_and_exit_zero_when_all_succeed(random_ckpt, folder):
    good = [str(folder / "a.png"), str(folder / "sub" / "b.JPG")]
    r = run("caption", *good, "--model", str(random_ckpt), "--json", "--beams", "2", "--max-new-tokens", "3",
            entry="script")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["path"] for rec in records] == good
    assert all(isinstance(rec["caption"], str) and rec["score"] < 0 for rec in records)


def test_cli_captions_equal_the_python_api(random_ckpt, folder):
    from blipcap import Captioner

    path = str(folder / "a.png")
    r = run("caption", path, "--model", str(random_ckpt), "--prompt", "a picture of", "--max-new-tokens", "4")
    expected = Captioner.load(random_ckpt, device="cpu").caption(path, prompt="a picture of", max_new_tokens=4)
    assert r.stdout.strip() == f"{path}\t{expected[0].text}"


def test_missing_model_offline_is_one_paragraph_without_traceback(tmp_path, folder):
    r = run("caption", str(folder / "a.png"), env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "Salesforce/blip-image-captioning-large" in r.stderr and "HF_HUB_OFFLINE" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_impossible_options_are_a_usage_error_before_loading(folder):
    r = run("caption", str(folder / "a.png"), "--model", "/nonexistent", "--beams", "0")
    assert r.returncode == 2 and "num_beams" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("flags", [("--repetition-penalty", "nan"), ("--sample", "--temperature", "nan"),
                                   ("--top-p", "inf"), ("--seed", str(2**64))])
def test_non_finite_or_huge_options_are_a_usage_error(random_ckpt, folder, flags):
    # issue 13, item 7: NaN captions with exit 0, or a traceback
    r = run("caption", str(folder / "a.png"), "--model", str(random_ckpt), *flags)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_unknown_flag_is_a_usage_error(folder):
    assert run("caption", str(folder), "--bogus").returncode == 2


def test_models_lists_short_names(tmp_path):
    r = run("models", env={"HF_HUB_CACHE": str(tmp_path)})
    assert r.returncode == 0
    assert "Salesforce/blip-image-captioning-large" in r.stdout and "not downloaded" in r.stdout


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("blipcap ")
