"""Property test of the command line's caption options (issue 13): any values on the option flags
give checked options or a clean usage error (argparse's exit 2, or ValueError, which main() turns
into exit 2), never an exception of another kind. The JSON, form and HF shapes have theirs in
tests/engine/test_options.py and tests/server/test_options_property.py."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from blipcap.cli import build_parser, caption_options
from blipcap.options import CaptionOptions

FLAGS = ["--beams", "--max-new-tokens", "--min-new-tokens", "--repetition-penalty", "--temperature", "--top-p",
         "--top-k", "--seed", "--prompt", "--preset"]
VALUES = st.one_of(st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["nan", "inf", "-inf", "1e-300", "1e400", "", "0", "-1", "quality", "default",
                                    "x", "0x10", "1_000", " 3 "]),
                   st.text(max_size=12))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FLAGS), VALUES), max_size=4), st.booleans())
def test_any_option_flags_give_checked_options_or_a_usage_error(pairs, sample):
    argv = ["caption", "x.jpg"] + [f"{flag}={value}" for flag, value in pairs] + (["--sample"] if sample else [])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse refused a value: usage error
        assert e.code == 2
        return
    try:
        base, overrides = caption_options(args)
        options = (base or CaptionOptions()).replace(**overrides)
    except ValueError:  # main() prints it as one line and exits 2
        return
    for name in ("temperature", "top_p", "repetition_penalty"):
        assert math.isfinite(getattr(options, name)) and getattr(options, name) > 0


def test_the_issue_examples_are_usage_errors(capsys):
    from blipcap.cli import main

    assert main(["caption", "x.jpg", "--repetition-penalty", "nan"]) == 2
    assert main(["caption", "x.jpg", "--sample", "--temperature", "nan"]) == 2
    assert "Traceback" not in capsys.readouterr().err
