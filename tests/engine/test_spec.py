"""ModelSpec: one value saying which model to load and how; Captioner.load takes it or keywords."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from blipcap import Captioner, ModelSpec
from tests.helpers.shapes import caption_for, make_image


def test_a_spec_loads_what_the_keywords_load(tiny_fixture):
    spec = ModelSpec(Path(tiny_fixture), device="cpu", dtype="float32")
    assert spec.model == str(tiny_fixture)  # paths kept as str: the spec pickles to Ray actors plainly
    by_spec, by_keywords = Captioner.load(spec), Captioner.load(tiny_fixture, device="cpu", dtype="float32")
    image = make_image("red", "circle", "left")
    assert by_spec(image) == by_keywords(image) == caption_for("red", "circle", "left")
    assert by_spec.model_id == by_keywords.model_id


def test_a_spec_with_clashing_keywords_is_refused(tiny_fixture):
    with pytest.raises(TypeError, match="device"):
        Captioner.load(ModelSpec(str(tiny_fixture)), device="cpu")


def test_spec_is_a_frozen_hashable_value():
    spec = ModelSpec("base", providers=["CPUExecutionProvider"])
    assert spec.providers == ("CPUExecutionProvider",)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert hash(spec) == hash(ModelSpec("base", providers=("CPUExecutionProvider",)))
    with pytest.raises(AttributeError):
        spec.model = "large"  # type: ignore[misc]
