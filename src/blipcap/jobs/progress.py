"""Progress of a bulk job on stderr: a redrawn bar on a terminal, a plain line every so often
otherwise (logs, CI), nothing with --quiet; and the final summary line."""

from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass


@dataclass
class Summary:
    total: int = 0  # images found
    captioned: int = 0  # by the model
    reused: int = 0  # identical bytes to an image already captioned: its caption reused
    skipped: int = 0  # every requested output already held them (--existing skip)
    failed: int = 0
    seconds: float = 0.0
    signal: int | None = None  # the signal that stopped the job early

    @property
    def done(self) -> int:
        return self.captioned + self.reused + self.skipped + self.failed

    @property
    def rate(self) -> float:
        """Images captioned (or reused) per second."""
        return (self.captioned + self.reused) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        parts = [f"{self.captioned} captioned"]
        if self.reused:
            parts.append(f"{self.reused} reused (identical files)")
        parts.append(f"{self.skipped} skipped (already done)")
        parts.append(f"{self.failed} failed")
        stopped = f"stopped by signal {self.signal} after {self.done}" if self.signal else str(self.total)
        took = f"{self.seconds:.1f} s" if self.seconds >= 1 else f"{1000 * self.seconds:.0f} ms"
        return (f"{stopped} image(s) in {took}: {', '.join(parts)}; "
                f"{self.rate:.1f} images/s")


_LINE = re.compile(r"(\d+) image\(s\) in ([\d.]+) (m?s): (\d+) captioned")


def parse_line(text: str) -> tuple[int, float, int]:
    """(images, seconds, captioned) from the summary line `Summary.line` wrote somewhere in `text`
    (a job's stderr); for scripts that time the CLI. ValueError when there is none."""
    m = _LINE.search(text)
    if m is None:
        raise ValueError("no blipcap summary line in the text")
    return int(m.group(1)), float(m.group(2)) / (1000 if m.group(3) == "ms" else 1), int(m.group(4))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``update(summary)`` after each batch; draws at most ``1/min_gap`` times a second."""

    def __init__(self, total: int, stream=None, mode: str = "auto", interval: float = 10.0):
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"progress mode must be bar, lines or off, got {mode!r}")
        self.total, self.mode, self.interval = total, mode, interval
        self.start = time.monotonic()
        self._last_draw = self.start if mode == "lines" else float("-inf")  # a log line only every interval
        self._drawn = False  # a bar is on the current terminal line

    def text(self, s: Summary) -> str:
        elapsed = time.monotonic() - self.start
        worked = s.done - s.skipped  # skips are instant: they would inflate the rate
        rate = worked / elapsed if elapsed > 0 else 0.0
        remaining = self.total - s.done
        eta = _clock(remaining / rate) if rate > 0 else "?"
        pct = 100 * s.done / self.total if self.total else 100.0
        return f"{s.done}/{self.total} ({pct:.0f}%), {rate:.1f} images/s, ETA {eta}, {s.failed} failed"

    def update(self, s: Summary, force: bool = False) -> None:
        if self.mode == "off":
            return
        now = time.monotonic()
        gap = 0.1 if self.mode == "bar" else self.interval
        if not force and now - self._last_draw < gap:
            return
        self._last_draw = now
        if self.mode == "lines":
            self.stream.write(f"blipcap: {self.text(s)}\n")
        else:
            width = shutil.get_terminal_size((80, 24)).columns
            info = self.text(s)
            room = max(10, min(40, width - len(info) - 4))
            filled = room * s.done // self.total if self.total else room
            bar = "#" * filled + "-" * (room - filled)
            self.stream.write("\r" + f"[{bar}] {info}"[: width - 1] + "\x1b[K")  # then erase the rest
            self._drawn = True
        self.stream.flush()

    def note(self, line: str) -> None:
        """Print a line (an error report) without garbling the bar."""
        self._clear()
        self.stream.write(line + "\n")
        self.stream.flush()
        if self.mode == "bar":
            self._last_draw = float("-inf")  # redraw the bar on the next update

    def close(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")  # carriage return, erase to end of line
            self._drawn = False
