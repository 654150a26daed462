"""The Ray job's actor: load the model once, then turn batches of (path, bytes) into Record rows;
and the Datasink that writes each write task's rows as one shard."""

from __future__ import annotations

import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np

from ..images import Decoder
from ..options import CaptionOptions
from ..outputs.records import Record, records_table
from ..outputs.shards import ShardFolder, write_shard
from ..spec import ModelSpec
from .common import failure_text, final_text, resolve_options, result_error
from .datasets import Datasets


def require_ray():
    """``import ray`` (and ray.data), or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(f"--engine ray requires the ray extra: pip install 'blipcap[ray]' ({e})") from None
    return ray


def shard_sink(folder: ShardFolder, prefix: str):
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


def dataset_rows(ray, dataset: Datasets, paths: list[str], image_column: str | None, key_column: str | None,
                 num_cpus: float):
    """A Ray Dataset of {path, bytes, error} rows for these sample paths: one read task per shard or
    table, which lists it again where it runs and reads the image bytes of these samples only."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(dataset.label_of(path), []).append(path)
    items = [{"input": label, "paths": wanted} for label, wanted in groups.items()]
    read = functools.partial(read_samples, image_column=image_column, key_column=key_column)
    return ray.data.from_items(items, override_num_blocks=len(items)).flat_map(read, num_cpus=num_cpus)


def read_samples(item: dict, image_column: str | None, key_column: str | None) -> Iterator[dict]:
    source = Datasets([item["input"]], image_column=image_column, key_column=key_column, note=lambda line: None)
    for path, data, error in source.read(item["paths"]):
        yield {"path": path, "bytes": data or b"", "error": error}


def done_key(path: str, sha256: str) -> bytes:
    """16 bytes naming (path, sha256): what a worker looks up to skip a file already captioned."""
    return hashlib.sha256(f"{path}\n{sha256}".encode("utf-8", "surrogateescape")).digest()[:16]


@dataclass(frozen=True)
class WorkerSpec:
    """What every actor loads, how it captions, and where its rows go."""

    model: ModelSpec
    options: CaptionOptions | None  # None: the checkpoint's defaults
    overrides: dict[str, Any]  # CaptionOptions fields, as caption() takes them
    alt_text_max: int | None  # rewrite captions as alt text of at most this many characters
    prefix: str  # turns the paths Ray reports into recorded paths
    decode_threads: int


class CaptionWorker:
    """One actor of the pool: loads the model once, then turns batches of (path, bytes) into rows.

    ``done``: a sorted array of done_key()s, or its ObjectRef (read-only, shared by the actors of a node).
    """

    def __init__(self, spec: WorkerSpec, done):
        from ..captioner import Captioner

        if not isinstance(done, np.ndarray):  # an ObjectRef: Ray Data passes constructor args as given
            done = require_ray().get(done)
        self.spec, self.done = spec, done
        self.cap = Captioner.load(replace(spec.model, threads=spec.model.threads or spec.decode_threads))
        self.options, self.digest = resolve_options(self.cap, spec.options, spec.overrides, spec.alt_text_max)
        self.decoder = Decoder.of(self.cap.preprocessor, self.cap.max_pixels)
        self.pool = ThreadPoolExecutor(spec.decode_threads, thread_name_prefix="blipcap-decode")

    def __call__(self, batch):
        """A pyarrow batch of (bytes, path[, error]) -> a table of Records for the files not done yet;
        ``error``: a dataset sample without an image (dataset_rows)."""
        paths = [self.spec.prefix + p for p in batch.column("path").to_pylist()]
        blobs = batch.column("bytes").to_pylist()
        errors = batch.column("error").to_pylist() if "error" in batch.schema.names else [None] * len(paths)
        shas = list(self.pool.map(lambda b: hashlib.sha256(b).hexdigest(), blobs))  # hashlib frees the GIL
        shas = [None if error else sha for sha, error in zip(shas, errors)]
        todo = [i for i, hit in enumerate(self._done(paths, shas)) if not hit]
        readable = [i for i in todo if not errors[i]]
        decoded = {i: errors[i] for i in todo if errors[i]}
        decoded.update(zip(readable, self.pool.map(self._decode, [blobs[i] for i in readable],
                                                   [shas[i] for i in readable])))
        ready = [i for i in todo if not isinstance(decoded[i], str)]
        results = self.cap.caption([decoded[i] for i in ready], self.options, errors="return",
                                   batch_size=max(1, len(ready))) if ready else []
        results = dict(zip(ready, results))
        records = []
        for i in todo:
            caption = score = width = height = truncated = None
            error = decoded[i] if isinstance(decoded[i], str) else None
            if i in results:
                width, height = decoded[i].width, decoded[i].height
                if results[i].ok:
                    caption, score = final_text(results[i].text, self.spec.alt_text_max), results[i].score
                    truncated = results[i].truncated
                else:  # cannot happen for decoded images; recorded if it ever does
                    error = result_error(results[i])
            records.append(Record(paths[i], caption, score, shas[i], width, height, self.cap.model_id,
                                  self.cap.revision, self.digest, error, truncated=truncated))
        return records_table(records)

    def _done(self, paths: list[str], shas: list[str]) -> np.ndarray:
        if not len(self.done) or not paths:
            return np.zeros(len(paths), dtype=bool)
        keys = np.array([done_key(p, s) for p, s in zip(paths, shas)], dtype="S16")
        at = np.minimum(np.searchsorted(self.done, keys), len(self.done) - 1)
        return self.done[at] == keys

    def _decode(self, data: bytes, sha256: str):
        """A file's bytes -> a model-ready Decoded, or its failure text."""
        try:
            return self.decoder.bytes(data, sha256=sha256)
        except Exception as e:  # one bad file never stops the job
            return failure_text(e)
