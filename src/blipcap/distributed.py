"""The Ray Data job: the folder job's captions, on a Ray cluster (``blipcap caption --engine ray``).

    inputs -> plan (driver): local folders, files and lists through discover.py; URIs (s3://, gs://,
              file://, ...) listed with pyarrow.fs; the output folder's earlier rows, last one per path
      -> ray.data.read_binary_files(include_paths=True): each file's bytes, read by Ray tasks
      -> map_batches(CaptionWorker, ActorPoolStrategy): each actor loads the model once; per batch it
         hashes the bytes, drops files the output already holds captioned with the same sha256,
         decodes the rest as the folder job does (bulk.decode_bytes: EXIF, draft JPEGs, the
         preprocessor's resize; a bad file becomes an error row) and captions them in one call
      -> shards: one Parquet file per write task, written under a hidden name and renamed, with the
         columns of the local ``--output x.parquet`` (sinks.COLUMNS)
      -> driver: an error row for each file Ray found missing; earlier rows that this run's rows
         supersede are compacted away, so the folder holds one row per image; the summary

Shard names start ``part-<UTC time>-<run id>-``, so "the last row per path" is the last in name
order. A killed job leaves whole shards only: a re-run skips what they hold. A worker lost mid-run
costs its batch: Ray restarts the actor and retries the batch, and a retried write task rewrites
the same shard name, so no row is written twice.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import numpy as np

from .bulk import Reporter, decode_bytes, failure_text, final_text, resolve_options, result_error
from .decoding import CaptionOptions
from .discover import IMAGE_SUFFIXES, find_images, read_path_list
from .hub import MODELS
from .images import UnreadableImageError
from .progress import Summary
from .sinks import COLUMNS, Record, SinkError

IO_CPUS = 0.25  # what each read and write task reserves: the actors never take the last of the CPUs


class RayJobError(RuntimeError):
    """The Ray job stopped (a worker could not load the model, the cluster went away, ...)."""


def require_ray():
    """``import ray`` (and ray.data), or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(f"--engine ray requires the ray extra: pip install 'blipcap[ray]' ({e})") from None
    return ray


@dataclass(frozen=True)
class ModelSpec:
    """What every actor loads, and how it captions (the arguments of Captioner.load and caption)."""

    model: str = "large"  # short name, Hub repo id, or a directory every node can read
    revision: str | None = None
    backend: str = "auto"
    device: str = "auto"  # auto: CUDA when Ray gave the actor a GPU
    dtype: str = "auto"
    threads: int | None = None  # ONNX Runtime intra-op threads (default: the actor's CPUs)
    options: CaptionOptions | None = None  # None: the checkpoint's defaults
    overrides: dict[str, Any] = field(default_factory=dict)  # CaptionOptions fields, as caption() takes them
    alt_text_max: int | None = None  # rewrite captions as alt text of at most this many characters


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


# --- inputs ----------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """The files of one job, all on one filesystem."""

    paths: list[str]  # as the output records them: absolute local paths, or full URIs
    filesystem: Any = None  # pyarrow filesystem of URI inputs; None: local files
    prefix: str = ""  # a path Ray reports back, prefixed with this, is its recorded path ("s3://")
    unreadable: dict[str, str] = field(default_factory=dict)  # local path -> why Ray cannot read it

    def to_read(self) -> list[str]:
        """The paths to hand to Ray: the readable ones, inside ``filesystem``."""
        n = len(self.prefix)
        return [p[n:] for p in self.paths if p not in self.unreadable]


def _has_scheme(item: str) -> bool:
    head, sep, _ = item.partition("://")
    return bool(sep) and head.isascii() and head.replace("+", "").isalnum() and len(head) > 1


def plan_inputs(inputs: Sequence[str], *, files_from: str | None = None, recursive: bool = True) -> Inputs:
    """Every image the inputs name, each once: local ones as the folder job finds them
    (discover.find_images), URIs listed with pyarrow. Raises ValueError on mixed filesystems."""
    listed = read_path_list(files_from) if files_from is not None else []
    remote = [i for i in list(inputs) + listed if _has_scheme(i)]
    if any(i[:8].lower().startswith(("http://", "https://")) for i in remote):
        raise ValueError("--engine ray reads files and object stores (s3://, gs://, ...), not http(s) URLs; "
                         "caption URLs with the local engine and --allow-urls")
    if not remote:  # a listed folder is searched, a listed file taken as named (as find_images does)
        found = find_images(inputs, recursive=recursive)
        for line in listed:
            found += find_images([line], recursive=recursive) if os.path.isdir(line) else [line]
        paths = list(dict.fromkeys(os.path.abspath(p) for p in found))
        with ThreadPoolExecutor(16) as pool:  # a stat per file: worth overlapping on network filesystems
            reasons = list(pool.map(_unreadable, paths))
        return Inputs(paths, unreadable={p: r for p, r in zip(paths, reasons) if r})
    if len(remote) < len(inputs) + len(listed):
        raise ValueError("--engine ray reads one filesystem per job: give local paths or URIs, not both")
    return _plan_uris(remote, from_list=set(listed), recursive=recursive)


def _unreadable(path: str) -> str | None:
    """Why Ray could not read this local file (read as an error row, never a failed job)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return failure_text(e)
    if not stat.S_ISREG(st.st_mode):
        return failure_text(UnreadableImageError(path, "not a regular file"))
    if not os.access(path, os.R_OK):
        return failure_text(PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    return None


def _plan_uris(uris: list[str], from_list: set[str], recursive: bool) -> Inputs:
    from pyarrow import fs as pafs

    filesystem, prefix, paths, seen = None, None, [], set()
    for uri in uris:
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as e:  # ArrowInvalid is a ValueError
            raise ValueError(f"cannot read {uri}: {e}") from None
        head = uri[: uri.find(path)] if path and path in uri else uri.split("://")[0] + "://"
        if prefix is None:
            filesystem, prefix = fs, head
        elif head != prefix:
            raise ValueError(f"--engine ray reads one filesystem per job: {uri} is not on {prefix}")
        if uri in from_list:
            found = [path]  # a listed file is taken as named: a missing one is reported, not dropped
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                found = _list_folder(fs, path, recursive)
            else:
                found = [path]
        for p in found:
            if p not in seen:
                seen.add(p)
                paths.append(prefix + p)
    return Inputs(paths, filesystem, prefix)


def _list_folder(fs, path: str, recursive: bool) -> list[str]:
    """Images in a folder of a pyarrow filesystem, by extension, hidden files and folders skipped."""
    from pyarrow import fs as pafs

    base = path.rstrip("/") + "/"
    found = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=recursive)):
        rel = info.path[len(base):] if info.path.startswith(base) else info.base_name
        if (info.type == pafs.FileType.File and not any(part.startswith(".") for part in rel.split("/"))
                and os.path.splitext(info.base_name)[1].lower() in IMAGE_SUFFIXES):
            found.append(info.path)
    return sorted(found)


# --- the output folder ------------------------------------------------------------------------------


@dataclass
class _Row:
    sha256: str | None
    error: str | None
    shard: str


class ShardFolder:
    """``--output DIR``: Parquet shards, each with the columns of the local ``--output x.parquet``."""

    def __init__(self, output: str):
        from pyarrow import fs as pafs

        self.output = output
        if _has_scheme(output):
            self.fs, self.root = pafs.FileSystem.from_uri(output)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(output)
        self.root = self.root.rstrip("/") or "/"
        try:
            kind = self.fs.get_file_info(self.root).type
            if kind == pafs.FileType.NotFound:
                self.fs.create_dir(self.root, recursive=True)
            elif kind != pafs.FileType.Directory:
                raise SinkError(f"--output {output}: exists and is not a folder; with --engine ray, --output "
                                f"names a folder of Parquet shards")
            if isinstance(self.fs, pafs.LocalFileSystem) and not os.access(self.root, os.W_OK | os.X_OK):
                raise SinkError(f"cannot write --output {output}: permission denied")
        except OSError as e:
            raise SinkError(f"cannot write --output {output}: {e}") from e

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def shards(self, prefix: str = "") -> list[str]:
        """Names of the visible ``*.parquet`` files (every one ours), sorted: later rows win."""
        from pyarrow import fs as pafs

        names = sorted(info.base_name for info in self.fs.get_file_info(pafs.FileSelector(self.root))
                       if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
                       and not info.base_name.startswith((".", "_")))
        return [n for n in names if n.startswith(prefix)]

    def scan(self) -> dict[str, _Row]:
        """The last row per path in the folder; ``stale``: shard -> paths with a later row elsewhere
        (an interrupted run's). Raises SinkError on a Parquet file that is not ours."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        last: dict[str, _Row] = {}
        self.stale: dict[str, set[str]] = {}
        for name in self.shards():
            try:
                names = pq.read_schema(self.path(name), filesystem=self.fs).names
                if names != list(COLUMNS):
                    raise SinkError(f"{self.output}/{name} has the columns {names}, not a blipcap output's; "
                                    f"use another folder or move it away")
                table = pq.read_table(self.path(name), columns=["path", "sha256", "error"], filesystem=self.fs)
            except (pa.ArrowException, OSError) as e:
                raise SinkError(f"{self.output}/{name} cannot be read as Parquet ({e}); move it away") from e
            for path, sha, error in zip(*(table.column(c).to_pylist() for c in ("path", "sha256", "error"))):
                if path in last and last[path].shard != name:
                    self.stale.setdefault(last[path].shard, set()).add(path)
                last[path] = _Row(sha, error, name)
        return last

    def clean(self) -> None:
        """Delete the hidden temp files a killed job left behind."""
        from pyarrow import fs as pafs

        for info in self.fs.get_file_info(pafs.FileSelector(self.root)):
            if info.base_name.startswith(".part-") and info.base_name.endswith(".blipcap-tmp"):
                self.fs.delete_file(info.path)

    def write(self, name: str, table) -> None:
        write_shard(self.fs, self.root, name, table)

    def drop_rows(self, drops: dict[str, set[str]]) -> None:
        """Rewrite each shard without the rows of ``drops[shard]`` (rows a later one supersedes)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        for name, paths in drops.items():
            table = pq.read_table(self.path(name), filesystem=self.fs)
            kept = table.filter(pc.invert(pc.is_in(table.column("path"), value_set=_arrow_strings(paths))))
            if kept.num_rows:
                self.write(name, kept)
            else:
                self.fs.delete_file(self.path(name))


def write_shard(fs, root: str, name: str, table) -> None:
    """Write ``table`` as ``root/name``: to a hidden temp file, then renamed (a reader never sees half)."""
    import pyarrow.parquet as pq

    tmp = f"{root}/.{name}.blipcap-tmp"
    try:
        with fs.open_output_stream(tmp) as f:
            pq.write_table(table, f)
        fs.move(tmp, f"{root}/{name}")
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise


def _arrow_strings(values: Iterable[str]):
    import pyarrow as pa

    return pa.array(list(values), type=pa.string())


def _records_table(records: list[Record]):
    import pyarrow as pa

    from .tables import _arrow_schema  # the local Parquet output's schema: the same columns and types

    return pa.Table.from_pylist([{k: getattr(r, k) for k in COLUMNS} for r in records], schema=_arrow_schema())


def _shard_sink(folder: ShardFolder, prefix: str):
    """A Ray Datasink writing one shard per write task, named ``<prefix><task index>.parquet``:
    a retried task rewrites its own shard."""
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    fs, root = folder.fs, folder.root

    class ShardSink(Datasink):
        def write(self, blocks, ctx) -> None:
            import pyarrow as pa

            tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            tables = [t for t in tables if t.num_rows]
            if tables:
                write_shard(fs, root, f"{prefix}{ctx.task_idx:06d}.parquet", pa.concat_tables(tables))

    return ShardSink()


# --- the actors ---------------------------------------------------------------------------------------


def done_key(path: str, sha256: str) -> bytes:
    """16 bytes naming (path, sha256): what a worker looks up to skip a file already captioned."""
    return hashlib.sha256(f"{path}\n{sha256}".encode("utf-8", "surrogateescape")).digest()[:16]


@dataclass(frozen=True)
class WorkerSpec:
    model: ModelSpec
    prefix: str  # turns the paths Ray reports into recorded paths
    decode_threads: int


class CaptionWorker:
    """One actor of the pool: loads the model once, then turns batches of (path, bytes) into rows.

    ``done``: a sorted array of done_key()s, or its ObjectRef (read-only, shared by the actors of a node).
    """

    def __init__(self, spec: WorkerSpec, done):
        from .captioner import Captioner

        if not isinstance(done, np.ndarray):  # an ObjectRef: Ray Data passes constructor args as given
            done = require_ray().get(done)
        m = spec.model
        self.spec, self.done = spec, done
        threads = m.threads or spec.decode_threads
        self.cap = Captioner.load(m.model, revision=m.revision, backend=m.backend, device=m.device, dtype=m.dtype,
                                  threads=threads)
        self.options, self.digest = resolve_options(self.cap, m.options, m.overrides, m.alt_text_max)
        pre = self.cap.preprocessor
        self._decode_args = (pre.size, pre.resample, pre.do_resize, self.cap.max_pixels)
        self.pool = ThreadPoolExecutor(spec.decode_threads, thread_name_prefix="blipcap-decode")

    def __call__(self, batch):
        """A pyarrow batch of (bytes, path) -> a table of Records for the files not done yet."""
        paths = [self.spec.prefix + p for p in batch.column("path").to_pylist()]
        blobs = batch.column("bytes").to_pylist()
        shas = list(self.pool.map(lambda b: hashlib.sha256(b).hexdigest(), blobs))  # hashlib frees the GIL
        todo = [i for i, hit in enumerate(self._done(paths, shas)) if not hit]
        decoded = dict(zip(todo, self.pool.map(self._decode, [blobs[i] for i in todo])))  # image, w, h | error
        ready = [i for i in todo if not isinstance(decoded[i], str)]
        results = self.cap.caption([decoded[i][0] for i in ready], self.options, errors="return",
                                   batch_size=max(1, len(ready))) if ready else []
        results = dict(zip(ready, results))
        records = []
        for i in todo:
            caption = score = width = height = None
            error = decoded[i] if isinstance(decoded[i], str) else None
            if i in results:
                _, width, height = decoded[i]
                if results[i].ok:
                    caption, score = final_text(results[i].text, self.spec.model.alt_text_max), results[i].score
                else:  # cannot happen for decoded images; recorded if it ever does
                    error = result_error(results[i])
            records.append(Record(paths[i], caption, score, shas[i], width, height, self.cap.model_id,
                                  self.cap.revision, self.digest, error))
        return _records_table(records)

    def _done(self, paths: list[str], shas: list[str]) -> np.ndarray:
        if not len(self.done) or not paths:
            return np.zeros(len(paths), dtype=bool)
        keys = np.array([done_key(p, s) for p, s in zip(paths, shas)], dtype="S16")
        at = np.minimum(np.searchsorted(self.done, keys), len(self.done) - 1)
        return self.done[at] == keys

    def _decode(self, data: bytes):
        try:
            return decode_bytes(data, *self._decode_args)
        except Exception as e:  # one bad file never stops the job
            return failure_text(e)


# --- the job -----------------------------------------------------------------------------------------


class RayJob:
    """Caption ``inputs`` into the shard folder ``output`` on Ray. ``run(address)`` returns a Summary.

    Subclasses may set ``worker`` to a CaptionWorker subclass (the tests do, to kill one mid-run).
    """

    worker = CaptionWorker

    def __init__(self, inputs: Sequence[str], output: str, model: ModelSpec | None = None,
                 pool: PoolSpec | None = None, *, files_from: str | None = None, recursive: bool = True,
                 reporter: Reporter | None = None, quiet: bool = False):
        model = model or ModelSpec()
        if os.path.isdir(os.path.expanduser(model.model)):  # the actors' working folder is not ours
            model = replace(model, model=os.path.abspath(os.path.expanduser(model.model)))
        self.inputs, self.output, self.model, self.pool = list(inputs), output, model, pool or PoolSpec()
        self.files_from, self.recursive = files_from, recursive
        self.reporter = reporter or Reporter()
        self.quiet = quiet

    def run(self, address: str | None = None) -> Summary:
        """Plan (usage and output errors come before Ray starts), caption, then settle the folder."""
        ray = require_ray()
        start = time.monotonic()
        plan = plan_inputs(self.inputs, files_from=self.files_from, recursive=self.recursive)
        folder = ShardFolder(self.output)
        folder.clean()
        before = folder.scan()
        done = {p: before[p].sha256 for p in plan.paths
                if p in before and before[p].error is None and before[p].sha256}
        run = f"part-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}-"
        to_read = plan.to_read()
        if to_read:  # even when every path is done: only its bytes tell whether the file changed
            self._caption(ray, address, plan, to_read, done, folder, run)
        summary = self._settle(plan, folder, run, before, done)
        summary.seconds = time.monotonic() - start
        self.reporter.close()
        return summary

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
            spec = WorkerSpec(self.model, plan.prefix, max(1, math.floor(self.pool.cpus_per_worker)))
            # one block per batch: an actor task is one batch, so every worker gets work and a lost
            # worker costs one batch (Ray sizes blocks by bytes: a small job would be one block)
            blocks = math.ceil(len(to_read) / self.pool.batch_size)
            ds = ray.data.read_binary_files(to_read, include_paths=True, filesystem=plan.filesystem,
                                            ignore_missing_paths=True, num_cpus=IO_CPUS, override_num_blocks=blocks)
            ds = ds.map_batches(self.worker, fn_constructor_args=(spec, keys),
                                batch_size=self.pool.batch_size, batch_format="pyarrow",
                                compute=ray.data.ActorPoolStrategy(size=workers),
                                num_cpus=self.pool.cpus_per_worker, num_gpus=self.pool.gpus_per_worker or None)
            ds.write_datasink(_shard_sink(folder, run), ray_remote_args={"num_cpus": IO_CPUS})
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

    def _settle(self, plan: Inputs, folder: ShardFolder, run: str, before: dict[str, _Row],
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
            folder.write(f"{run}unread.parquet", _records_table(fresh))
        drops = {shard: set(paths) for shard, paths in folder.stale.items()}
        for path in [*new, *(r.path for r in fresh)]:
            if path in before:
                drops.setdefault(before[path].shard, set()).add(path)
        folder.drop_rows(drops)

        summary = Summary(total=len(plan.paths))
        new.update(lost)
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
