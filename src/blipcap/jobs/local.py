"""The folder job: plan, decode ahead in parallel, caption in batches, write, resume.

    paths (discover.py) -> plan: which sinks still want each image (--existing skip: none -> skipped)
      -> decode pool: worker threads read, hash (sha256) and decode each file, JPEGs at reduced
         scale (Pillow draft) when far larger than the model input, and resize it to the model
         input exactly as the preprocessor would, then normalise it to float32 (so the model's
         thread only copies pixels into a batch); at most ``depth`` images wait in the queue
      -> main thread: identical bytes (sha256) reuse a caption; the rest is batched to the model
      -> sinks (sinks.py, index.py), once per batch; failures -> the error log or stderr

Pillow's decoders, its resize and hashlib release the GIL, so threads decode in parallel while
the model runs, and no pixels are copied between processes. Memory holds one batch, the decode
queue and about 200 bytes per file of bookkeeping (its path, and the sha256 -> caption map that
finds identical files), whatever the number of files.

Stopping: the first SIGINT/SIGTERM lets the batch in the model finish and be written, a second
one drops it; either way every sink is flushed and closed, and ``Summary.signal`` says which
signal stopped the job. A re-run with --existing skip then continues where it stopped.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from ..options import CaptionOptions
from ..images import Decoded, Decoder, UnreadableImageError, UrlFetcher, read_file, sha256
from ..images.fetch import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_S
from ..outputs.records import Record, Sink
from ..uris import is_http_url
from .common import Reporter, StopRequest, decode_ahead, failure_text, final_text, resolve_options, result_error
from .progress import Progress, Summary

@dataclass
class Pending:
    path: str
    targets: list[Sink]  # the sinks that still want this image
    seq: int = 0  # its place in the input order
    failures: list[str] = field(default_factory=list)  # reasons some sink cannot take it
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    image: Decoded | None = None  # model-ready: caption() takes it as it is
    error: str | None = None  # "<ErrorKind>: <reason>"
    data: bytes | None = None  # a dataset sample's bytes, read in input order (datasets.py)


def _decode_with(decoder: Decoder):
    """The worker function: an Pending -> the same item with its sha256, stored size and model-ready
    image, or its error."""

    def decode(item: Pending) -> Pending:
        path = item.path
        if item.error is not None:  # a dataset sample without an image
            return item
        try:
            if item.data is not None:
                data, item.data = item.data, None
            elif is_http_url(path):
                if decoder.fetcher is None:
                    raise UnreadableImageError(path, "URLs are fetched only with --allow-urls")
                data = decoder.fetcher.fetch(path)
            else:
                data = read_file(path)  # a FIFO or device is an error for this item, never a hang
            item.sha256 = sha256(data)  # recorded even when the bytes do not decode
            item.image = decoder.bytes(data, name=path, sha256=item.sha256)
            item.width, item.height = item.image.width, item.image.height
        except Exception as e:  # one bad file never stops the job
            item.error = failure_text(e)
        return item

    return decode


class BulkJob:
    """Caption ``paths`` into ``sinks``. ``run(captioner)`` returns a Summary; see the module docstring.

    Each sink's ``existing`` says what to do about images it already holds: skip (an image every
    sink holds is not read, let alone captioned), overwrite (caption again and replace), append
    (caption again and add). ``alt_text_max``: rewrite captions as alt text of at most that many characters.
    ``prefix``/``suffix``: text written before/after every caption (jobs.common.final_text).
    """

    def __init__(self, paths: Sequence[str], sinks: Sequence[Sink], *, options: CaptionOptions | None = None,
                 overrides: dict[str, Any] | None = None, batch_size: int = 8, workers: int | None = None,
                 alt_text_max: int | None = None, reporter: Reporter | None = None,
                 progress: Progress | None = None, stop: StopRequest | None = None, prefix: str = "",
                 suffix: str = "", source=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.paths, self.sinks = list(paths), list(sinks)
        self.options, self.overrides = options, dict(overrides or {})  # as Captioner.caption takes them
        self.batch_size, self.alt_text_max = batch_size, alt_text_max
        self.prefix, self.suffix = prefix, suffix
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.progress = progress or Progress(len(self.paths), mode="off")
        self.reporter = reporter or Reporter(progress=self.progress)
        self.stop = stop
        self.source = source  # datasets.Datasets whose sample paths ``paths`` are: it reads their bytes
        self._prepared = False

    def prepare(self) -> None:
        """Check every destination before any model work (raises SinkError or ValueError)."""
        if not self._prepared:
            for sink in self.sinks:
                sink.prepare(self.paths)
            self._prepared = True

    def run(self, captioner) -> Summary:
        self.prepare()
        self.summary = Summary(total=len(self.paths))
        self.cap = captioner
        self.opts, self.digest = resolve_options(captioner, self.options, self.overrides, self.alt_text_max,
                                                 self.prefix, self.suffix)
        self.active = [s for s in self.sinks if not s.passive]
        self.cache: dict[str, tuple[str, float | None, bool | None]] = {}  # sha256 -> caption, score, truncated
        if all(s.existing == "skip" for s in self.active):  # overwrite/append ask for fresh captions
            self._seed_cache()
        self._ready: list[tuple[Pending, Record, str]] = []
        fetcher = UrlFetcher(max_bytes=DEFAULT_MAX_BYTES, timeout_s=DEFAULT_TIMEOUT_S) if captioner.allow_urls else None
        # the float32 pixels made on the decode threads too: the model's thread only copies them
        decode = _decode_with(Decoder.of(captioner.preprocessor, captioner.max_pixels, fetcher, pixels=True))
        depth = max(2 * self.batch_size, 2 * self.workers)
        start = time.monotonic()
        decoded = decode_ahead(self._plan(), decode, self.workers, depth, self._stopping)
        try:
            self._loop(decoded)
        except KeyboardInterrupt:
            if self.stop is None:
                raise
            self.stop.signum = self.stop.signum or signal.SIGINT
        finally:
            decoded.close()  # stops the workers: queued files are dropped, not decoded
            try:
                self._flush()
            finally:
                self._close_all()
                self.summary.seconds = time.monotonic() - start
                self.progress.close()
        self.summary.signal = self.stop.signum if self.stop else None
        return self.summary

    def _close_all(self) -> None:
        """Close every sink and the error log, even when one of them fails; then raise the first error."""
        first: BaseException | None = None
        for closer in [s.close for s in self.sinks] + [self.reporter.close]:
            try:
                closer()
            except BaseException as e:  # noqa: BLE001 - the others must still be closed
                first = first or e
        if first is not None:
            raise first

    # --- the steps ----------------------------------------------------------------------------------

    def _seed_cache(self) -> None:
        """Captions earlier runs stored, made with the same model and options, by sha256."""
        for sink in self.active:
            for r in sink.known():
                if (r.options_digest == self.digest and r.model_id == self.cap.model_id
                        and r.revision == self.cap.revision and r.sha256 and r.caption is not None):
                    self.cache[r.sha256] = (r.caption, r.score, r.truncated)

    def _plan(self) -> Iterator[Pending]:
        if self.source is None:
            yield from self._planned()
            return
        pending: collections.deque[Pending] = collections.deque()

        def wanted() -> Iterator[str]:
            for item in self._planned():
                pending.append(item)
                yield item.path

        for _, data, error in self.source.read(wanted()):  # the bytes of the samples still wanted only
            item = pending.popleft()
            item.data, item.error = data, error
            yield item

    def _planned(self) -> Iterator[Pending]:
        for seq, path in enumerate(self.paths):
            if self._stopping():
                return  # a long run of skipped files must not outlast a stop request
            item = Pending(path, [], seq=seq)
            for sink in self.active:
                reason = sink.clash(path)
                if reason:
                    item.failures.append(reason)
                elif sink.wants(path):
                    item.targets.append(sink)
            if self.active and not item.targets:
                if item.failures:
                    self._report(item, None)
                else:
                    self.summary.skipped += 1
                    self.progress.update(self.summary)
                continue
            yield item

    def _loop(self, decoded: Iterator[Pending]) -> None:
        # torch on CUDA: a full batch is staged (its pixels made and copied to the device on a helper
        # thread) and captioned once the next one is full, so that its preparation overlaps the
        # model's work on the batch before it (Captioner.stage)
        ahead = getattr(self.cap, "overlaps_input", False)
        staged: tuple | None = None  # (batch, waiting, Staged): full and staged, not yet captioned
        batch: list[Pending] = []
        waiting: dict[str, list[Pending]] = {}  # sha256 in the batch -> its duplicates
        for item in decoded:
            if self._stopping():
                return  # the batch not yet started is dropped; a re-run does it
            if item.error is not None:
                self._emit(item, None, None, None, "failed")
            elif item.sha256 in self.cache:
                self._emit(item, *self.cache[item.sha256], "reused")
            elif item.sha256 in waiting:
                waiting[item.sha256].append(item)
            elif staged and item.sha256 in staged[1]:
                staged[1][item.sha256].append(item)  # a twin of an image in the staged batch
            else:
                waiting[item.sha256] = []
                batch.append(item)
                if len(batch) >= self.batch_size:
                    if ahead:
                        staged, previous = (batch, waiting, self.cap.stage([i.image for i in batch])), staged
                        if previous:
                            self._caption(*previous)
                    else:
                        self._caption(batch, waiting)
                    batch, waiting = [], {}
            if len(self._ready) >= 4 * self.batch_size:
                self._flush()
        last = [staged] if staged else []
        if batch:
            last.append((batch, waiting, self.cap.stage([i.image for i in batch]) if ahead else None))
        for entry in last:
            if self._stopping():
                return
            self._caption(*entry)

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.signum is not None

    def _caption(self, batch: list[Pending], waiting: dict[str, list[Pending]], staged=None) -> None:
        images = staged if staged is not None else [item.image for item in batch]
        with self.stop.model_running() if self.stop else contextlib.nullcontext():
            results = self.cap.caption(images, self.opts, errors="return", batch_size=len(images))
        for item, result in zip(batch, results):
            item.image = None
            if not result.ok:  # cannot happen for decoded images; reported if it ever does
                item.error = result_error(result)
                self._emit(item, None, None, None, "failed")
                continue
            text = final_text(result.text, self.alt_text_max, self.prefix, self.suffix)
            self.cache[item.sha256] = (text, result.score, result.truncated)
            alternatives = [(final_text(a.text, self.alt_text_max, self.prefix, self.suffix), a.score)
                            for a in result.alternatives]
            self._emit(item, text, result.score, result.truncated, "captioned", alternatives)
            for twin in waiting.get(item.sha256, ()):
                self._emit(twin, text, result.score, result.truncated, "reused")
        self._flush()

    def _emit(self, item: Pending, caption: str | None, score: float | None, truncated: bool | None, outcome: str,
              alternatives: list | None = None) -> None:
        item.image = None
        record = Record(item.path, caption, score, item.sha256, item.width, item.height, self.cap.model_id,
                        self.cap.revision, self.digest, item.error, alternatives or [], truncated)
        self._ready.append((item, record, outcome))

    def _flush(self) -> None:
        """Write the records ready so far to every sink that wants them; count and report them."""
        ready, self._ready = self._ready, []
        if not ready:
            return
        ready.sort(key=lambda entry: entry[0].seq)  # failures and reused captions come back first
        failures: dict[int, list[str]] = {}
        for sink in self.sinks:
            wanted = [(i, r) for i, (item, r, _) in enumerate(ready)
                      if (sink.passive or sink in item.targets) and (r.ok or sink.wants_errors)]
            if not wanted:
                continue
            index_of = {id(r): i for i, r in wanted}
            for record, reason in sink.write([r for _, r in wanted]):
                failures.setdefault(index_of[id(record)], []).append(reason)
        for i, (item, record, outcome) in enumerate(ready):
            reasons = item.failures + failures.get(i, [])
            if record.error is not None or reasons:
                self._report(item, record.error, reasons)
            elif outcome == "captioned":
                self.summary.captioned += 1
            else:
                self.summary.reused += 1
        self.progress.update(self.summary)

    def _report(self, item: Pending, error: str | None, reasons: Sequence[str] = ()) -> None:
        self.summary.failed += 1
        for reason in ([error] if error else []) + list(reasons or item.failures):
            self.reporter.failure(item.path, reason)
        self.progress.update(self.summary)
