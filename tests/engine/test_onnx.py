"""ONNX export and the ONNX Runtime backend: same decoding code, same captions, torch-free loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from blipcap import Captioner  # noqa: E402
from blipcap.checkpoint import CheckpointError  # noqa: E402
from blipcap.export import ExportError, export_onnx  # noqa: E402
from tests.helpers.shapes import COLORS, POSITIONS, SHAPES, caption_for, make_image  # noqa: E402

SEP = 102


def fixture_images(seed: int, n: int = 12):
    rng = np.random.default_rng(seed)
    combos = [(COLORS[i % 4], SHAPES[i % 3], POSITIONS[(i // 3) % 4]) for i in range(n)]
    return [make_image(*c, rng=rng) for c in combos], [caption_for(*c) for c in combos]


@pytest.fixture(scope="module")
def tiny_exports(tiny_fixture, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return {
        "float32": export_onnx(tiny_fixture, root / "fp32"),
        "int8": export_onnx(tiny_fixture, root / "int8", int8=True),
    }


@pytest.mark.parametrize("dtype", ["float32", "int8"])
@pytest.mark.parametrize("beams", [1, 3])
def test_exported_fixture_captions_right(tiny_exports, dtype, beams):
    cap = Captioner.load(tiny_exports[dtype], backend="onnx")
    assert cap.backend.name == "onnx"
    images, expected = fixture_images(seed=beams)
    assert [c.text for c in cap.caption(images, num_beams=beams)] == expected


def test_fp16_export_validates_and_captions_right(tiny_fixture, tmp_path):
    """fp16 is meant for GPUs; the export's own validation and this check run it on the CPU
    provider, which is enough to catch a graph ONNX Runtime cannot run in fp16 (e.g. a fused op)."""
    out = export_onnx(tiny_fixture, tmp_path / "fp16", fp16=True)
    cap = Captioner.load(out)
    assert cap.backend.info()["dtype"] == "float16"
    images, expected = fixture_images(seed=4)
    assert [c.text for c in cap.caption(images)] == expected


def test_export_directory_is_self_contained_with_a_manifest(tiny_exports, tiny_fixture):
    out = tiny_exports["int8"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "blipcap-onnx" and manifest["dtype"] == "int8"
    assert manifest["source_model"] == str(tiny_fixture) and manifest["opset"] >= 17
    for name in ("encoder.onnx", "decoder.onnx", "config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))


def test_both_backends_satisfy_the_backend_protocol(tiny_exports, tiny_fixture):
    from blipcap.backends.base import Backend

    for model in (tiny_fixture, tiny_exports["int8"]):
        backend = Captioner.load(model).backend
        assert isinstance(backend, Backend), type(backend)
    assert not isinstance(object(), Backend)  # the check has teeth


def test_auto_backend_picks_onnx_for_an_export_and_refuses_mismatches(tiny_exports, tiny_fixture):
    assert Captioner.load(tiny_exports["float32"]).backend.name == "onnx"
    assert Captioner.load(tiny_fixture, backend="auto").backend.name == "torch"
    with pytest.raises(CheckpointError, match="export-onnx"):
        Captioner.load(tiny_fixture, backend="onnx")
    with pytest.raises(CheckpointError, match="backend='onnx'"):
        Captioner.load(tiny_exports["float32"], backend="torch")


def test_export_of_another_graph_interface_is_refused_with_what_to_do(tiny_exports, tmp_path):
    """An export made by a blipcap whose graphs take other inputs must not be fed wrong inputs."""
    from blipcap.backends.onnx import GRAPH_VERSION

    old = tmp_path / "old"
    shutil.copytree(tiny_exports["float32"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["graph_version"] == GRAPH_VERSION
    del manifest["graph_version"]  # what exports before version 2 wrote
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="interface version 1.*export again"):
        Captioner.load(old)


def test_session_options_are_set_on_purpose(tiny_exports):
    from blipcap.backends.onnx import physical_cores

    cap = Captioner.load(tiny_exports["float32"], threads=1)
    opts = cap.backend.decoder.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.graph_optimization_level.name == "ORT_ENABLE_ALL"
    default = Captioner.load(tiny_exports["float32"]).backend.encoder.get_session_options()
    assert default.intra_op_num_threads == physical_cores()
    with pytest.raises(ValueError, match="not available"):
        Captioner.load(tiny_exports["float32"], providers=["NoSuchExecutionProvider"])


def test_onnx_fp32_tokens_equal_torch_and_transformers(random_ckpt, tmp_path):
    transformers = pytest.importorskip("transformers")

    from .test_parity import hf_generate, ids_with_eos, pixels_for

    torch_cap = Captioner.load(random_ckpt, backend="torch", device="cpu")
    onnx_cap = Captioner.load(export_onnx(random_ckpt, tmp_path / "x"), backend="onnx")
    model = transformers.BlipForConditionalGeneration.from_pretrained(random_ckpt).eval()
    images, pix = pixels_for(torch_cap, 3, seed=9)
    for kw in (dict(max_new_tokens=8), dict(num_beams=3, max_new_tokens=8), dict(max_new_tokens=6, prompt="a picture of")):
        ours = onnx_cap.caption(images, **kw)
        assert [c.token_ids for c in ours] == [c.token_ids for c in torch_cap.caption(images, **kw)]
        if "prompt" not in kw:
            assert ids_with_eos(onnx_cap, ours, kw["max_new_tokens"]) == hf_generate(model, pix, **kw)


def test_export_that_disagrees_fails_loudly(random_ckpt, tiny_fixture, tmp_path):
    from blipcap.backends.torch import TorchBackend
    from blipcap.checkpoint import dims_from_config, read_config
    from blipcap.export import _validate

    out = export_onnx(random_ckpt, tmp_path / "good")
    other = build_other(tmp_path)
    export_onnx(other, tmp_path / "other")
    shutil.copy(tmp_path / "other" / "decoder.onnx", out / "decoder.onnx")  # same shapes, other weights
    dims = dims_from_config(read_config(random_ckpt))
    with pytest.raises(ExportError, match="disagree"):
        _validate(TorchBackend.load(random_ckpt, dims, device="cpu", dtype="float32"), out, dims, "float32")


def build_other(tmp_path: Path) -> Path:
    from tests.helpers.checkpoints import build_random_checkpoint

    return build_random_checkpoint(tmp_path / "other-ckpt", seed=99)


def test_cli_export_and_caption_with_the_onnx_backend(tiny_fixture, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "cli-export"
    r = subprocess.run([sys.executable, "-m", "blipcap", "export-onnx", "--model", str(tiny_fixture), "--out", str(out),
                        "--int8"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    image = tmp_path / "img.png"
    make_image("green", "square", "right", rng=np.random.default_rng(1)).save(image)
    r = subprocess.run([sys.executable, "-m", "blipcap", "caption", str(image), "--model", str(out), "--backend", "onnx"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{image}\ta green square on the right"


def test_captioning_needs_no_torch(tiny_exports, tmp_path):
    """In an environment without torch (CI builds one: BLIPCAP_TORCHFREE_PYTHON), an export captions."""
    python = os.environ.get("BLIPCAP_TORCHFREE_PYTHON")
    if not python:
        if os.environ.get("BLIPCAP_REQUIRE_TORCHFREE"):
            pytest.fail("BLIPCAP_REQUIRE_TORCHFREE is set but BLIPCAP_TORCHFREE_PYTHON is not")
        pytest.skip("set BLIPCAP_TORCHFREE_PYTHON to a Python with blipcap[onnx] and no torch")
    image = tmp_path / "img.png"
    make_image("yellow", "triangle", "bottom", rng=np.random.default_rng(2)).save(image)
    code = (
        "import sys, importlib.util\n"
        "assert importlib.util.find_spec('torch') is None, 'torch is installed here'\n"
        "from blipcap import Captioner\n"
        f"cap = Captioner.load({str(tiny_exports['int8'])!r})\n"
        f"print(cap({str(image)!r}, num_beams=3))\n"
        "assert 'torch' not in sys.modules\n"
    )
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "a yellow triangle at the bottom"
