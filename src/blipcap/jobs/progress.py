"""Progress of a bulk job on stderr: a live bar on a terminal (rich), a plain line every so often
otherwise (logs, CI), nothing with --quiet; and the final summary line.

rich rather than tqdm: its live display redraws from its own thread (a long batch still shows the
clock moving), and lines printed through its console (per-file failures) land above the bar
instead of through it. Both would do; neither computes our rate, which leaves out skipped files
(instant, they would inflate it), so the text beside the bar is ours.
"""

from __future__ import annotations

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


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``update(summary)`` after each batch; ``note(line)`` for a failure line; ``close()`` at the end."""

    def __init__(self, total: int, stream=None, mode: str = "auto", interval: float = 10.0):
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"progress mode must be bar, lines or off, got {mode!r}")
        self.total, self.mode, self.interval = total, mode, interval
        self.start = time.monotonic()
        self._last_draw = self.start  # a log line only every interval
        self._bar = self._task = None
        if mode == "bar":
            self._start_bar()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as LiveBar

        console = Console(file=self.stream, force_terminal=True, highlight=False, markup=False)
        self._bar = LiveBar(BarColumn(bar_width=40), TextColumn("{task.fields[info]}", markup=False),
                            console=console, transient=True, refresh_per_second=10)
        self._task = self._bar.add_task("caption", total=max(self.total, 1), info=self.text(_EMPTY))
        self._bar.start()

    def text(self, s: Summary) -> str:
        elapsed = time.monotonic() - self.start
        worked = s.done - s.skipped  # skips are instant: they would inflate the rate
        rate = worked / elapsed if elapsed > 0 else 0.0
        remaining = self.total - s.done
        eta = _clock(remaining / rate) if rate > 0 else "?"
        pct = 100 * s.done / self.total if self.total else 100.0
        return f"{s.done}/{self.total} ({pct:.0f}%), {rate:.1f} images/s, ETA {eta}, {s.failed} failed"

    def update(self, s: Summary, force: bool = False) -> None:
        if self.mode == "bar":
            self._bar.update(self._task, completed=s.done, info=self.text(s), refresh=force)
        elif self.mode == "lines":
            now = time.monotonic()
            if force or now - self._last_draw >= self.interval:
                self._last_draw = now
                self.stream.write(f"blipcap: {self.text(s)}\n")
                self.stream.flush()

    def note(self, line: str) -> None:
        """Print a line (an error report) without garbling the bar."""
        if self._bar is not None:
            self._bar.console.print(line, soft_wrap=True)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()  # transient: the bar goes, the summary line follows on a clean line
            self._bar = None


_EMPTY = Summary()
