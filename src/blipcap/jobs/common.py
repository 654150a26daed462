"""What the folder job and the Ray job share: the options digest and the text written out, failure
texts, the stop request, the failure reporter, and the ordered decode-ahead pool."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import signal
import sys
import threading
from typing import Any, Callable, Iterable, Iterator

from ..options import CaptionOptions
from ..images import ImageError
from ..outputs.alttext import alt_text
from ..outputs.paths import line_path
from .progress import Progress


def options_digest(options: CaptionOptions, alt_text_max: int | None = None, prefix: str = "",
                   suffix: str = "") -> str:
    """16 hex digits naming the caption settings: equal digests, interchangeable captions."""
    spec = {**dataclasses.asdict(options), "alt_text_max": alt_text_max}
    if prefix or suffix:  # only then: the digests of runs without them stay what they were
        spec.update(prefix=prefix, suffix=suffix)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:16]


def resolve_options(captioner, options: CaptionOptions | None, overrides: dict,
                    alt_text_max: int | None, prefix: str = "", suffix: str = "") -> tuple[CaptionOptions, str]:
    """The options caption() will use for these options and overrides, and their digest (what a
    resumed job compares with the digest stored beside each caption)."""
    opts = captioner.merged(options, overrides)
    return opts, options_digest(opts, alt_text_max, prefix, suffix)


def final_text(text: str, alt_text_max: int | None, prefix: str = "", suffix: str = "") -> str:
    """A caption as written out: rewritten as alt text when a length limit is set, then between
    ``prefix`` and ``suffix`` (a training set's trigger word: ``--prefix "ohwx, "``), as given."""
    return prefix + (alt_text(text, alt_text_max) if alt_text_max else text) + suffix


def result_error(result) -> str:
    """The error column for a Caption that came back with an error."""
    return f"{type(result.error).__name__}: {result.error}"


class StopRequest:
    """SIGINT/SIGTERM handling for a job (see the module docstring). ``with stop.installed(): ...``"""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._in_model = False

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and self._in_model:
            raise KeyboardInterrupt  # the second signal: drop the batch in the model
        self.signum = self.signum or signum

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def model_running(self):
        self._in_model = True
        try:
            yield
        finally:
            self._in_model = False


class Reporter:
    """Failure lines: to the error log (``path<TAB>reason``) when there is one, else to stderr."""

    def __init__(self, errors_path: str | os.PathLike | None = None, progress: Progress | None = None):
        self.errors_path, self.progress = errors_path, progress
        self._file = None
        self.count = 0

    def failure(self, path: str, reason: str) -> None:
        self.count += 1
        if self.errors_path is not None:
            if self._file is None:
                self._file = open(self.errors_path, "w", encoding="utf-8", errors="surrogateescape")
            self._file.write(f"{line_path(path)}\t{reason}\n")
            self._file.flush()
        elif self.progress is not None:
            self.progress.note(f"blipcap: failed {path}: {reason}")
        else:
            print(f"blipcap: failed {path}: {reason}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        elif self.errors_path is not None and self.count == 0:
            open(self.errors_path, "w").close()  # an empty log: this run had no failures


_END = object()


def decode_ahead(items: Iterable[Any], fn: Callable[[Any], Any], workers: int, depth: int,
                 stopped: Callable[[], bool] = lambda: False) -> Iterator[Any]:
    """``fn(item)`` for each item in worker threads, yielded in order, with at most ``depth`` in flight.

    The workers are daemon threads and the wait for a result checks ``stopped()`` every 0.2 s, so a
    read that never returns (a stalled network mount, a FIFO) can neither stall a stop request nor
    keep the process alive after it.
    """
    todo: queue.SimpleQueue = queue.SimpleQueue()
    done: dict[int, tuple[bool, Any]] = {}
    ready = threading.Condition()

    def work() -> None:
        while (job := todo.get()) is not None:
            n, item = job
            try:
                out = (True, fn(item))
            except BaseException as e:  # handed to the consumer, raised there
                out = (False, e)
            with ready:
                done[n] = out
                ready.notify_all()

    threads = [threading.Thread(target=work, name="blipcap-decode", daemon=True) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    it, sent, taken = iter(items), 0, 0
    try:
        while True:
            while sent - taken < depth and (item := next(it, _END)) is not _END:
                todo.put((sent, item))
                sent += 1
            if taken == sent:
                return
            with ready:
                while taken not in done:
                    if stopped():
                        return
                    ready.wait(0.2)
                ok, out = done.pop(taken)
            taken += 1
            if not ok:
                raise out
            yield out
    finally:
        while True:  # drop what is queued; each idle worker then takes a None and ends
            try:
                todo.get_nowait()
            except queue.Empty:
                break
        for _ in threads:
            todo.put(None)


def failure_text(e: Exception) -> str:
    """How a file's failure reads in the error column and log: "<ErrorKind>: <reason>"."""
    if isinstance(e, ImageError):
        return f"{type(e).__name__}: {e.reason}"
    if isinstance(e, OSError):
        return f"UnreadableImageError: cannot open: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"
