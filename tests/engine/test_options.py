"""blipcap.options: untyped options -> CaptionOptions, merging over a checkpoint, checks against a model."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blipcap import CaptionOptions, OptionsError
from blipcap.checkpoint import TextDims
from blipcap.options import check_against, checkpoint_defaults, merge, parse_overrides

DIMS = TextDims(vocab=100, hidden=8, layers=1, heads=1, mlp=8, max_positions=32, encoder_hidden=8, eps=1e-12)
FIELDS = [f.name for f in dataclasses.fields(CaptionOptions)]


def refused(raw, field, words, **kw):
    with pytest.raises(OptionsError, match=words) as e:
        CaptionOptions.from_mapping(raw, **kw)
    assert e.value.field == field
    return e.value


def test_typed_values_come_back_typed():
    o = CaptionOptions.from_mapping({"num_beams": 3, "temperature": 1, "suppress_tokens": [5, 7],
                                     "bad_words": "dog", "early_stopping": "never", "seed": None})
    assert (o.num_beams, o.temperature, o.suppress_tokens, o.bad_words, o.early_stopping, o.seed) == (
        3, 1, (5, 7), ("dog",), "never", None)


def test_from_mapping_lays_values_over_base():
    base = CaptionOptions.preset("quality")
    o = CaptionOptions.from_mapping({"min_new_tokens": 2}, base=base)
    assert (o.num_beams, o.max_new_tokens, o.min_new_tokens) == (3, 20, 2)


@pytest.mark.parametrize("raw, field, words", [
    ({"beams": 3}, "beams", "unknown option"),
    ({"num_beams": "3"}, "num_beams", "option num_beams must be an integer, got \"3\""),
    ({"num_beams": 3.0}, "num_beams", "must be an integer"),  # the server has always refused a JSON 3.0
    ({"num_beams": True}, "num_beams", "must be an integer"),  # a bool is not an int here
    ({"temperature": True}, "temperature", "must be a number"),
    ({"do_sample": 1}, "do_sample", "true or false"),
    ({"suppress_tokens": [1, "2"]}, "suppress_tokens", "a list of integers"),
    ({"suppress_tokens": 5}, "suppress_tokens", "a list of integers"),
    ({"bad_words": [1]}, "bad_words", "a list of strings"),
    ({"prompt": 5}, "prompt", "a string"),
    ({"early_stopping": 1}, "early_stopping", "true or false"),
    ({"early_stopping": "sometimes"}, "early_stopping", "early_stopping must be"),
    ({"num_beams": 0}, "num_beams", "num_beams must be >= 1"),
    ({"num_return_sequences": 2}, "num_return_sequences", "greedy search returns one caption"),
])
def test_refusals_name_the_field(raw, field, words):
    refused(raw, field, words)


@pytest.mark.parametrize("name", ["temperature", "top_p", "repetition_penalty", "length_penalty"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_non_finite_floats_are_refused(name, value):
    refused({name: value}, name, "finite")
    with pytest.raises(OptionsError, match=name):  # the dataclass itself refuses them too (issue 13, item 7)
        CaptionOptions(**{name: value})


@pytest.mark.parametrize("name", ["temperature", "top_p", "repetition_penalty"])
def test_vanishing_floats_are_refused(name):
    # 1e-300 is 0 in float32: logits / 0 or a top_p nothing reaches made NaN captions or a 500
    with pytest.raises(OptionsError, match=f"{name} must be at least"):
        CaptionOptions(**{name: 1e-300})


@pytest.mark.parametrize("seed", [2**63, 2**64, -1])
def test_seed_outside_int64_is_refused(seed):
    with pytest.raises(OptionsError, match="seed"):
        CaptionOptions(seed=seed)
    assert CaptionOptions(seed=2**63 - 1).seed == 2**63 - 1


def test_unknown_names_are_a_type_error_too():
    # Captioner.caption(beams=3) raised TypeError before options.py; callers may still catch that
    with pytest.raises(TypeError, match="beams"):
        CaptionOptions().replace(beams=3)
    with pytest.raises(TypeError):
        parse_overrides({"beams": 3})


def test_parse_overrides_keeps_only_what_was_given():
    assert parse_overrides({"num_beams": 3, "temperature": 2.5}) == {"num_beams": 3, "temperature": 2.5}
    with pytest.raises(OptionsError, match="cannot exceed"):  # checked over base, not over CaptionOptions()
        parse_overrides({"num_return_sequences": 4}, base=CaptionOptions.preset("quality"))


def test_merge_fills_max_new_tokens_from_the_checkpoint():
    defaults = checkpoint_defaults({"text_config": {"max_length": 20}})
    assert defaults.max_new_tokens == 19
    assert merge(defaults) == defaults
    assert merge(defaults, CaptionOptions(num_beams=2)).max_new_tokens == 19
    assert merge(defaults, None, {"num_beams": 2}) == defaults.replace(num_beams=2)
    assert merge(defaults, None, {"max_new_tokens": None}).max_new_tokens == 19
    assert merge(defaults, CaptionOptions.preset("quality"), {"min_new_tokens": 1}).max_new_tokens == 20
    with pytest.raises(OptionsError, match="max_new_tokens"):
        merge(defaults, None, {"max_new_tokens": 1.5})


def test_checkpoint_defaults_read_generation_config_over_config():
    d = checkpoint_defaults({"num_beams": 2, "max_length": 10}, {"num_beams": 3, "max_length": 30, "min_length": 5})
    assert (d.num_beams, d.max_new_tokens, d.min_new_tokens) == (3, 29, 4)


def test_check_against_the_model_and_the_caps():
    o = CaptionOptions(num_beams=4, max_new_tokens=20)
    check_against(o, DIMS, prompt_len=12)
    with pytest.raises(OptionsError, match="limited to 3") as e:
        check_against(o, DIMS, max_beams=3)
    assert e.value.field == "num_beams"
    with pytest.raises(OptionsError, match="limited to 10"):
        check_against(o, DIMS, max_new_tokens=10)
    with pytest.raises(OptionsError, match=r"ids in \[0, 100\)"):
        check_against(o.replace(suppress_tokens=(100,)), DIMS)
    with pytest.raises(OptionsError, match="need 33 positions; the model has 32"):
        check_against(o, DIMS, prompt_len=13)


# --- property: anything JSON-ish is options or an OptionsError, never another exception ----------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
names = st.sampled_from(FIELDS) | st.text(max_size=12)
likely = {  # values near the edges for each field, so most examples reach _verify and not only the type check
    "int": st.integers(-3, 70) | st.integers(),
    "float": st.floats() | st.floats(0, 2) | st.integers(-2, 3),
}


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(names, json_values | likely["int"] | likely["float"], max_size=6))
def test_any_mapping_gives_options_or_options_error(raw):
    try:
        o = CaptionOptions.from_mapping(raw)
    except OptionsError as e:
        assert e.field is None or e.field in FIELDS or e.field in raw
        return
    assert all(math.isfinite(getattr(o, n)) for n in ("temperature", "top_p", "repetition_penalty", "length_penalty"))
    json.dumps(dataclasses.asdict(o), allow_nan=False)  # valid options serialise as strict JSON (no NaN)
    try:
        check_against(merge(checkpoint_defaults({}), o), DIMS, prompt_len=1, max_beams=8, max_new_tokens=64)
    except OptionsError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values | likely["int"] | likely["float"], max_size=6))
def test_merge_over_defaults_gives_options_or_options_error(raw):
    defaults = checkpoint_defaults({"max_length": 20})
    try:
        o = merge(defaults, None, raw)
    except OptionsError:
        return
    assert o.max_new_tokens is not None
