"""Reading the bulk job's summary line back (tests and benchmarks that time the CLI)."""

from __future__ import annotations

import re

_LINE = re.compile(r"(\d+) image\(s\) in ([\d.]+) (m?s): (\d+) captioned")


def parse_line(text: str) -> tuple[int, float, int]:
    """(images, seconds, captioned) from the summary line `Summary.line` wrote somewhere in `text`
    (a job's stderr); for scripts that time the CLI. ValueError when there is none."""
    m = _LINE.search(text)
    if m is None:
        raise ValueError("no blipcap summary line in the text")
    return int(m.group(1)), float(m.group(2)) / (1000 if m.group(3) == "ms" else 1), int(m.group(4))
