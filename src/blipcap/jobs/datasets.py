"""Dataset inputs: images stored inside WebDataset tar shards, Parquet/Arrow tables and Hugging Face
datasets, captioned where they live.

A sample is recorded under the path ``<source>#<key>``, the source as it was given:

    shards/000123.tar#000123045    a WebDataset member group (``__key__``: its name without extension)
    data/part-0.parquet#8812       a table row: the --key-column's value, else the row number
    ds#train/17                    a Hugging Face dataset saved with save_to_disk: split/row number

Listing a source reads no image bytes (tar headers, the key column of a table), so a re-run decides
from the listing which samples are done and reads the image bytes of the others only. A sample
without an image (no image member, a null cell) or a shard that cannot be read is an error row,
never a failed job. The image is decoded by ``images.Decoder`` like any file.
"""

from __future__ import annotations

import glob
import itertools
import os
import sys
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from ..images import UnreadableImageError
from ..uris import has_scheme
from .common import failure_text
from .sources import TABLE_SUFFIXES, DatasetError, Source, TableSource, TarShard, hf_sources

__all__ = ["Datasets", "DatasetError", "is_dataset"]


def is_dataset(item: str) -> bool:
    """Whether an input names a dataset (shard, table, saved HF dataset, or a glob of shards)."""
    lower = item.lower()
    if lower.endswith((".tar",) + TABLE_SUFFIXES):
        return True
    return not has_scheme(item) and os.path.isdir(item) and _is_hf_dataset(item)


def _is_hf_dataset(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, n)) for n in ("state.json", "dataset_dict.json"))


class _Unreadable(Source):
    def __init__(self, label: str, error: Exception):
        self.label, self.error = label, error

    def keys(self) -> list[str]:
        raise self.error


@dataclass
class _Entry:
    source: Source
    key: str


class Datasets:
    """Every sample of a job's dataset inputs, in order: ``paths`` (the listing), ``read(paths)``."""

    def __init__(self, inputs: Sequence[str], *, image_column: str | None = None, key_column: str | None = None,
                 note: Callable[[str], None] = lambda line: print(line, file=sys.stderr)):
        self.sources: list[Source] = []
        for item in _expand(inputs):
            if item.lower().endswith(".tar"):
                self.sources.append(TarShard(item))
            elif item.lower().endswith(TABLE_SUFFIXES):
                try:
                    self.sources.append(TableSource(item, image_column, key_column, note))
                except DatasetError:
                    raise
                except (OSError, ValueError) as e:  # missing, or not Parquet/Arrow: its error row
                    self.sources.append(_Unreadable(item, e))
            elif os.path.isdir(item) and _is_hf_dataset(item):
                self.sources += hf_sources(item, image_column, key_column, note)
            else:
                raise DatasetError(f"{item}: not a dataset input (.tar shards, .parquet/.arrow tables, or a "
                                   f"folder made by save_to_disk); images and folders are captioned separately")
        self.paths: list[str] = []
        self.entries: dict[str, _Entry] = {}
        self.unlisted: dict[str, str] = {}  # a shard that cannot be listed -> its error row
        for source in self.sources:
            try:
                keys = source.keys()
            except (OSError, tarfile.TarError, ValueError) as e:  # a missing or corrupt shard: an error row
                keys, self.unlisted[source.label] = [], failure_text(UnreadableImageError(source.label, f"cannot read shard: {e}"))
                self.paths.append(source.label)
            for key in keys:
                path = f"{source.label}#{key}"
                self.entries[path] = _Entry(source, key)
                self.paths.append(path)

    def label_of(self, path: str) -> str:
        """The source (shard, table, dataset folder) a sample path belongs to."""
        entry = self.entries.get(path)
        return entry.source.label if entry else path

    def read(self, paths: Iterable[str]) -> Iterator[tuple[str, bytes | None, str | None]]:
        """(path, bytes, error) for each path asked for, in order; ``paths`` in listing order. Only the
        image bytes of these samples are read."""
        def source_of(path: str):
            entry = self.entries.get(path)
            return entry.source if entry else path

        for source, group in itertools.groupby(paths, key=source_of):
            group = list(group)  # one shard's wanted samples
            if isinstance(source, str):  # a shard that cannot be listed, or a sample gone since
                for path in group:
                    yield path, None, self.unlisted.get(path) or failure_text(
                        UnreadableImageError(path, "not in the dataset any more"))
                continue
            given = 0
            try:
                for path, (data, error) in zip(group, source.read([self.entries[p].key for p in group])):
                    given += 1
                    yield path, data, error
            except (OSError, tarfile.TarError, ValueError) as e:  # vanished or changed since it was listed
                for path in group[given:]:
                    yield path, None, failure_text(UnreadableImageError(path, f"cannot read shard: {e}"))


def _expand(inputs: Sequence[str]) -> list[str]:
    """Inputs with glob patterns (``shards/*.tar``, ``s3://bucket/shards/*.tar``) expanded, sorted; each once."""
    out: list[str] = []
    for item in inputs:
        if has_scheme(item) and glob.has_magic(item.split("://", 1)[1]):
            out += _expand_uri(item)
        elif not has_scheme(item) and not os.path.lexists(item) and glob.has_magic(item):
            out += sorted(glob.glob(item, recursive=True))
        else:
            out.append(item)
    return list(dict.fromkeys(out))


def _expand_uri(pattern: str) -> list[str]:
    """``scheme://folder/<pattern>``: the files of that folder (pyarrow.fs) whose names match."""
    import fnmatch

    from pyarrow import fs as pafs

    folder, name = pattern.rsplit("/", 1)
    filesystem, inner = pafs.FileSystem.from_uri(folder)
    head = folder[: len(folder) - len(inner)] if folder.endswith(inner) else folder.split("://")[0] + "://"
    infos = filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(head + i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, name))
