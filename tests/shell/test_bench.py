"""`blipcap bench` and the random checkpoints it builds (checked against transformers, not timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blipcap import Captioner
from blipcap.random_checkpoint import build_random_checkpoint


def test_random_checkpoint_loads_into_transformers_without_missing_tensors(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = build_random_checkpoint(tmp_path / "r", "tiny", seed=3)
    model, info = transformers.BlipForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert info["missing_keys"] == set() or info["missing_keys"] == []
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    cap = Captioner.load(path, device="cpu")
    pix = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (2, 3, 32, 32)).astype(np.float32))
    seq = torch.tensor([[30522, 1000, 2000]] * 2)
    with torch.no_grad():
        ref = model.eval()(pixel_values=pix, input_ids=seq).logits[:, -1]
    _, ours = cap.backend.start(cap.backend.encode(pix.numpy()), 1, seq.numpy(), np.ones((2, 3), bool), 2)
    assert (ours - ref).abs().max() / ref.abs().max() < 1e-5
    # conditioned like the test suite's: peaked distributions, the image matters
    assert (ref.softmax(-1).max(-1).values > 1000 / ref.shape[-1]).all()  # far above uniform
    assert cap.caption([pix[0].numpy().transpose(1, 2, 0).clip(0, 1)], max_new_tokens=3)[0].token_ids


def run_cli(*args):
    r = subprocess.run([sys.executable, "-m", "blipcap", "bench", *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_bench_against_transformers_reports_every_figure():
    pytest.importorskip("transformers")
    out = json.loads(run_cli("--random", "tiny", "--images", "2", "--beams", "2", "--new-tokens", "3",
                             "--against", "transformers", "--json"))
    engines = [(r["engine"], r["dtype"]) for r in out["runs"]]
    assert engines == [("blipcap", "float32"), ("transformers", "float32"), ("transformers", "bfloat16")]
    ours = out["runs"][0]
    assert ours["seconds"] > 0 and 0 < ours["encode_seconds"] < ours["seconds"]
    assert ours["load_seconds"] > 0 and ours["peak_rss_mb"] > 0 and ours["images_per_s"] > 0
    assert out["agreement"]["transformers float32"] == 1.0
    assert set(out["speedup"]) == {"transformers float32", "transformers bfloat16"}


def test_bench_table_for_the_onnx_int8_backend():
    pytest.importorskip("onnxruntime")
    text = run_cli("--random", "tiny", "--backend", "onnx", "--dtype", "int8", "--images", "2", "--new-tokens", "3")
    assert "backend onnx" in text and "| blipcap | int8 |" in text


def test_bench_needs_exactly_one_model():
    r = subprocess.run([sys.executable, "-m", "blipcap", "bench"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2


def test_the_summary_line_parses_back_in_seconds_and_milliseconds():
    """Benchmarks time the CLI by its summary line: under a second it reads in ms, which a parser
    looking for "s" alone missed."""
    from blipcap.jobs.progress import Summary
    from tests.helpers.summary import parse_line

    s = Summary(total=4, captioned=4)
    for seconds in (0.25, 12.5):
        s.seconds = seconds
        assert parse_line("loading...\n" + s.line()) == (4, seconds, 4)
    with pytest.raises(ValueError):
        parse_line("no summary here")


def test_gpu_script_refuses_an_unknown_step_before_touching_anything(tmp_path):
    # a typo in a lent GPU's one call must cost seconds, not the machine's minutes
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.sh"
    run = subprocess.run(["bash", str(script), "tests", "benchmark"], capture_output=True, text=True,
                         cwd=script.parents[1], env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)}, timeout=30)
    assert run.returncode == 2
    assert "unknown step: benchmark" in run.stderr
    assert "===" not in run.stdout  # nothing ran, not even the machine check
