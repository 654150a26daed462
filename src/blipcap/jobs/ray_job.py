"""The Ray Data job: the folder job's captions, on a Ray cluster (``blipcap caption --engine ray``).

    inputs -> plan (driver): local folders, files and lists through discover.py; URIs (s3://, gs://,
              file://, ...) listed with pyarrow.fs, each with its size and mtime; the output folder's
              earlier rows, last one per path, and its listing (``_listing.parquet``: path, size,
              mtime of each file captioned): a file captioned before whose size and mtime are
              unchanged is not read at all
      -> ray.data.read_binary_files(include_paths=True): the other files' bytes, read by Ray tasks
      -> map_batches(CaptionWorker, ActorPoolStrategy): each actor loads the model once; per batch it
         hashes the bytes, drops files the output already holds captioned with the same sha256,
         decodes the rest as the folder job does (images.Decoder: EXIF, draft JPEGs, the
         preprocessor's resize; a bad file becomes an error row) and captions them in one call
      -> shards: one Parquet file per write task, written under a hidden name and renamed, with the
         columns of the local ``--output x.parquet`` (sinks.COLUMNS)
      -> driver: an error row for each file Ray found missing; earlier rows that this run's rows
         supersede are compacted away, so the folder holds one row per image; the summary

Hashing is the fallback: a file with a row but no listing entry (shards of an earlier blipcap, a
job killed before it wrote the listing, a filesystem that gives no mtime) or a changed size/mtime
is read and hashed, and skipped if its sha256 is the one recorded. pyarrow.fs gives no ETag or
object version, so size and mtime are what is compared.

Shard names start ``part-<UTC time>-<run id>-``, so "the last row per path" is the last in name
order. A killed job leaves whole shards only: a re-run skips what they hold. A worker lost mid-run
costs its batch: Ray restarts the actor and retries the batch, and a retried write task rewrites
the same shard name, so no row is written twice.
"""

from __future__ import annotations

import errno
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from ..options import CaptionOptions
from ..hub import MODELS
from ..spec import ModelSpec
from ..outputs.records import Record, records_table
from ..outputs.shards import ShardFolder, ShardRow
from .common import Reporter, failure_text
from .progress import Summary
from .ray_plan import Inputs, plan_inputs, read_listing, write_listing
from .datasets import Datasets, is_dataset
from .ray_worker import CaptionWorker, WorkerSpec, dataset_rows, done_key, require_ray, shard_sink


IO_CPUS = 0.25  # what each read and write task reserves: the actors never take the last of the CPUs


def print_stderr(line: str) -> None:
    print(line, file=sys.stderr)


class RayJobError(RuntimeError):
    """The Ray job stopped (a worker could not load the model, the cluster went away, ...)."""




@dataclass(frozen=True)
class PoolSpec:
    """The actor pool: how many model copies, and what Ray reserves for each."""

    workers: int | None = None  # None: as many as the cluster holds when the job starts
    cpus_per_worker: float = 1.0  # also the decoding threads (at least 1) and torch's threads
    gpus_per_worker: float = 0.0  # 0.5 puts two actors on a GPU
    batch_size: int = 8  # images per model call

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError("cpus per worker must be > 0 and GPUs per worker >= 0")


class RayJob:
    """Caption ``inputs`` into the shard folder ``output`` on Ray. ``run(address)`` returns a Summary.

    Subclasses may set ``worker`` to a CaptionWorker subclass (the tests do, to kill one mid-run).
    """

    worker = CaptionWorker

    def __init__(self, inputs: Sequence[str], output: str, model: ModelSpec | None = None,
                 pool: PoolSpec | None = None, *, options: CaptionOptions | None = None,
                 overrides: dict[str, Any] | None = None, alt_text_max: int | None = None,
                 files_from: str | None = None, recursive: bool = True, reporter: Reporter | None = None,
                 quiet: bool = False, image_column: str | None = None, key_column: str | None = None):
        """model: what every actor loads (device auto: CUDA when Ray gave the actor a GPU; threads
        default: the actor's CPUs). options (None: the checkpoint's defaults) and overrides (CaptionOptions
        fields, as caption() takes them) say how it captions; alt_text_max rewrites captions as alt text."""
        model = model or ModelSpec()
        if os.path.isdir(os.path.expanduser(model.model)):  # the actors' working folder is not ours
            model = replace(model, model=os.path.abspath(os.path.expanduser(model.model)))
        self.inputs, self.output, self.model, self.pool = list(inputs), output, model, pool or PoolSpec()
        self.options, self.overrides, self.alt_text_max = options, dict(overrides or {}), alt_text_max
        self.files_from, self.recursive = files_from, recursive
        self.reporter = reporter or Reporter()
        self.quiet = quiet
        self.image_column, self.key_column = image_column, key_column  # dataset tables (datasets.py)
        self.dataset: Datasets | None = None  # the dataset inputs, once planned

    def run(self, address: str | None = None) -> Summary:
        """Plan (usage and output errors come before Ray starts), caption, then settle the folder."""
        ray = require_ray()
        start = time.monotonic()
        plan = self._plan()
        folder = ShardFolder(self.output)
        folder.clean()
        before = folder.scan()
        done = {p: before[p].sha256 for p in plan.paths
                if p in before and before[p].error is None and before[p].sha256}
        listing = read_listing(folder)
        unchanged = {p for p in done if p in plan.stats and listing.get(p) == plan.stats[p]}
        run = f"part-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}-"
        to_read = plan.to_read(skip=unchanged)  # a done file without a listing match is read and hashed
        hashed = done
        if self.dataset is not None:  # a sample is named by shard + key: done by path, never read
            to_read, hashed = [p for p in plan.paths if p not in done], {}
        if to_read:
            self._caption(ray, address, plan, to_read, hashed, folder, run)
        summary = self._settle(plan, folder, run, before, done)
        self._list(plan, folder, listing, before)
        summary.seconds = time.monotonic() - start
        self.reporter.close()
        return summary

    def _plan(self) -> Inputs:
        if not (self.inputs and self.files_from is None and all(is_dataset(i) for i in self.inputs)):
            return plan_inputs(self.inputs, files_from=self.files_from, recursive=self.recursive)
        self.dataset = Datasets(self.inputs, image_column=self.image_column, key_column=self.key_column,
                                note=(lambda line: None) if self.quiet else print_stderr)
        return Inputs(list(self.dataset.paths))

    def captions(self) -> dict[str, str]:
        """path -> caption of every row of the output folder that holds one (for --write-back)."""
        import pyarrow.parquet as pq

        folder, out = ShardFolder(self.output), {}
        for name in folder.shards():
            table = pq.read_table(folder.path(name), filesystem=folder.fs, columns=["path", "caption", "error"])
            out.update((p, c) for p, c, e in zip(*(table.column(n).to_pylist() for n in ("path", "caption", "error")))
                       if e is None and c is not None)
        return out

    def _caption(self, ray, address, plan: Inputs, to_read: list[str], done: dict[str, str],
                 folder: ShardFolder, run: str) -> None:
        started = not ray.is_initialized()
        local = started and address is None and not os.environ.get("RAY_ADDRESS")
        if started:
            try:
                ray.init(address=address, include_dashboard=False if local else None,
                         logging_level="WARNING" if self.quiet else "INFO", log_to_driver=not self.quiet)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise RayJobError(f"cannot start or reach Ray (--ray-address {address or 'unset'}): {e}") from e
        try:
            if self.quiet:
                ray.data.DataContext.get_current().enable_progress_bars = False
            workers = self._pool_size(ray, local)
            keys = ray.put(np.array(sorted(done_key(p, s) for p, s in done.items()), dtype="S16"))
            spec = WorkerSpec(self.model, self.options, self.overrides, self.alt_text_max, plan.prefix,
                              max(1, math.floor(self.pool.cpus_per_worker)))
            # one block per batch: an actor task is one batch, so every worker gets work and a lost
            # worker costs one batch (Ray sizes blocks by bytes: a small job would be one block)
            blocks = math.ceil(len(to_read) / self.pool.batch_size)
            if self.dataset is not None:
                ds = dataset_rows(ray, self.dataset, to_read, self.image_column, self.key_column, IO_CPUS)
            else:
                ds = ray.data.read_binary_files(to_read, include_paths=True, filesystem=plan.filesystem,
                                                ignore_missing_paths=True, num_cpus=IO_CPUS, override_num_blocks=blocks)
            ds = ds.map_batches(self.worker, fn_constructor_args=(spec, keys),
                                batch_size=self.pool.batch_size, batch_format="pyarrow",
                                compute=ray.data.ActorPoolStrategy(size=workers),
                                num_cpus=self.pool.cpus_per_worker, num_gpus=self.pool.gpus_per_worker or None)
            ds.write_datasink(shard_sink(folder, run), ray_remote_args={"num_cpus": IO_CPUS})
        except ray.exceptions.RayError as e:  # the cause is the last line: the rest is Ray's stack
            cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise RayJobError(f"the Ray job stopped: {cause}\nThe shards written so far are kept; run the "
                              f"same command again to continue.") from e
        finally:
            if started:
                ray.shutdown()

    def _pool_size(self, ray, local: bool) -> int:
        """--workers, or as many as the cluster holds; refused (on a Ray started here) if they cannot fit."""
        pool, have = self.pool, ray.cluster_resources()
        cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
        fit = math.floor((cpus - IO_CPUS) / pool.cpus_per_worker + 1e-9)
        if pool.gpus_per_worker:
            fit = min(fit, math.floor(gpus / pool.gpus_per_worker + 1e-9))
        if pool.workers is None:
            return max(1, fit)
        if pool.workers > fit:
            why = (f"{pool.workers} worker(s) of {pool.cpus_per_worker:g} CPU and {pool.gpus_per_worker:g} GPU "
                   f"do not fit the cluster's {cpus:g} CPUs and {gpus:g} GPUs ({IO_CPUS:g} CPU is kept for "
                   f"reading and writing files)")
            if local:
                raise ValueError(f"{why}; use fewer --workers or a smaller --cpus-per-worker/--gpus-per-worker")
            print(f"blipcap: {why}; the job waits until the cluster grows", file=sys.stderr)
        return pool.workers

    def _list(self, plan: Inputs, folder: ShardFolder, listing: dict, before: dict[str, ShardRow]) -> None:
        """Record the listing of every file whose last row is a caption: what a re-run compares. The
        listing was taken before the bytes were read, so a file changed meanwhile is read again."""
        last = {p: row.error for p, row in before.items()} | self._outcomes
        stats = {p: st for p, st in listing.items() if p not in plan.stats}  # the folder's other inputs
        stats.update({p: plan.stats[p] for p in plan.paths if p in plan.stats and p in last and last[p] is None})
        if stats != listing:
            write_listing(folder, stats)

    def _settle(self, plan: Inputs, folder: ShardFolder, run: str, before: dict[str, ShardRow],
                done: dict[str, str]) -> Summary:
        """Rows for the files Ray could not read; superseded rows dropped; the counts and failures."""
        import pyarrow.parquet as pq

        new: dict[str, str | None] = {}  # path -> error, of this run's rows
        model_id, revision, digest = MODELS.get(self.model.model, self.model.model), self.model.revision, ""
        for name in folder.shards(run):
            table = pq.read_table(folder.path(name), filesystem=folder.fs,
                                  columns=["path", "error", "model_id", "revision", "options_digest"])
            new.update(zip(table.column("path").to_pylist(), table.column("error").to_pylist()))
            model_id, revision, digest = (table.column(c)[0].as_py() for c in ("model_id", "revision", "options_digest"))
        missing = failure_text(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))
        lost = {p: plan.unreadable.get(p, missing) for p in plan.paths if p not in new and p not in done}
        fresh = [Record(p, None, None, None, None, None, model_id, revision, digest, error)
                 for p, error in lost.items() if not (p in before and before[p].error == error)]
        if fresh:  # a failure already recorded as the path's last row is not written again
            folder.write(f"{run}unread.parquet", records_table(fresh))
        drops = {shard: set(paths) for shard, paths in folder.stale.items()}
        for path in [*new, *(r.path for r in fresh)]:
            if path in before:
                drops.setdefault(before[path].shard, set()).add(path)
        folder.drop_rows(drops)

        summary = Summary(total=len(plan.paths))
        new.update(lost)
        self._outcomes = new  # path -> error (None: captioned) of this run's rows
        for path in plan.paths:
            error = new.get(path, ...)
            if error is ...:
                summary.skipped += 1
            elif error is None:
                summary.captioned += 1
            else:
                summary.failed += 1
                self.reporter.failure(path, error)
        return summary
