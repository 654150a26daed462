"""What users see does not change under a refactor: the README's fixture examples, byte for byte,
against the files make_golden.py wrote on the code before the architecture change (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .make_golden import produce

EXPECTED = Path(__file__).parent / "expected"


@pytest.mark.slow
def test_cli_and_server_outputs_are_byte_identical_to_before():
    got = produce()
    want = {p.name: p.read_bytes() for p in EXPECTED.iterdir()}
    assert sorted(got) == sorted(want)
    different = [name for name in sorted(want) if got[name] != want[name]]
    assert not different, {name: (want[name][:300], got[name][:300]) for name in different}
