"""Shared fixtures: random-initialised BLIP checkpoints built with transformers (an independent
construction from blipcap's own, which parity then checks), and the trained tiny fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers.checkpoints import build_random_checkpoint

HERE = Path(__file__).parent

TINY_FIXTURE = HERE / "fixtures" / "tiny-blip"


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory) -> Path:
    return build_random_checkpoint(tmp_path_factory.mktemp("random") / "ckpt", eos_boost=0.0)


@pytest.fixture(scope="session")
def eos_ckpt(tmp_path_factory) -> Path:
    """A random checkpoint whose captions sometimes end early (exercises finished-beam bookkeeping)."""
    return build_random_checkpoint(tmp_path_factory.mktemp("random_eos") / "ckpt", seed=1, eos_boost=14.0)


@pytest.fixture(scope="session")
def tiny_fixture() -> Path:
    if not (TINY_FIXTURE / "model.safetensors").is_file():
        pytest.fail(f"the trained fixture is missing: run `python tools/train_fixture.py` ({TINY_FIXTURE})")
    return TINY_FIXTURE
