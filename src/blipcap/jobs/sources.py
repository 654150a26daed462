"""Where dataset samples are read from: a WebDataset tar shard (TarShard), a Parquet/Arrow table or a
Hugging Face dataset saved with save_to_disk (TableSource), each listed without reading image bytes
and read for the keys asked for only. datasets.py puts them together for a job."""

from __future__ import annotations

import bisect
import itertools
import os
import posixpath
import sys
import tarfile
from typing import Any, Callable, Iterator

from ..images import UnreadableImageError, read_file
from ..uris import has_scheme
from .common import failure_text
from .discover import IMAGE_SUFFIXES

TABLE_SUFFIXES = (".parquet", ".arrow", ".feather")
IMAGE_EXTS = tuple(s[1:] for s in sorted(IMAGE_SUFFIXES)) + ("jpe",)  # a tar member's image, by extension
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img")  # preferred when several columns hold bytes
KEY_COLUMNS = ("key", "__key__", "id")


class DatasetError(ValueError):
    """A dataset input that cannot be used as given (a usage error: exit status 2)."""


def open_input(path: str):
    """A seekable binary file: local (unbuffered, so every byte asked for is a byte read), or any URI
    pyarrow.fs reads (s3://, gs://, hdfs://, file://), else fsspec's."""
    if not has_scheme(path):
        return open(path, "rb", buffering=0)
    from pyarrow import fs as pafs

    try:
        filesystem, inner = pafs.FileSystem.from_uri(path)
    except (ValueError, OSError):  # ArrowInvalid is a ValueError: a scheme pyarrow does not know
        import fsspec

        return fsspec.open(path, "rb").open()
    return filesystem.open_input_file(inner)


class Source:
    """One shard or table: ``keys()`` lists it without image bytes, ``read(keys)`` yields (bytes, error)
    per key asked for, keys in listing order."""

    label: str  # the recorded path's part before '#'

    def keys(self) -> list[str]:
        raise NotImplementedError

    def read(self, keys: list[str]) -> Iterator[tuple[bytes | None, str | None]]:
        raise NotImplementedError


def _no_image(reason: str) -> str:
    return failure_text(UnreadableImageError("", reason))


class TarShard(Source):
    """A WebDataset shard: members grouped by key (dir/name up to the first dot), the image member
    chosen by extension (IMAGE_EXTS order)."""

    def __init__(self, path: str):
        self.label = self.path = path
        self._image: dict[str, tuple[int, int] | str] = {}  # key -> (offset, size) of its image, or why none

    def keys(self) -> list[str]:
        members: dict[str, dict[str, tuple[int, int]]] = {}
        with open_input(self.path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:  # headers only: tarfile seeks over each member's data
                if not m.isfile():
                    continue
                folder, base = posixpath.split(m.name)
                stem, _, ext = base.partition(".")
                members.setdefault(posixpath.join(folder, stem), {})[ext.lower()] = (m.offset_data, m.size)
        for key, exts in members.items():
            found = [e for e in IMAGE_EXTS if e in exts]
            self._image[key] = exts[found[0]] if found else _no_image(
                f"no image member in the sample (has: {', '.join(sorted(exts)) or 'nothing'})")
        return list(members)

    def read(self, keys: list[str]) -> Iterator[tuple[bytes | None, str | None]]:
        with open_input(self.path) as f:
            for key in keys:
                where = self._image[key]
                if isinstance(where, str):
                    yield None, where
                    continue
                f.seek(where[0])
                yield f.read(where[1]), None


class TableSource(Source):
    """Parquet (read by row group) or Arrow IPC (memory-mapped) with an image column: raw bytes
    (img2dataset) or the Hugging Face Image struct {bytes, path}."""

    def __init__(self, path: str, image_column: str | None, key_column: str | None,
                 note: Callable[[str], None], *, table=None, label: str | None = None, hf_split: str | None = None):
        self.path, self.label, self.hf_split = path, label or path, hf_split
        self.key_prefix = f"{hf_split}/" if hf_split else ""
        self.listed: list[str] = []  # the keys, in row order
        self._table, self._parquet = table, None
        if table is None and path.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetFile(open_input(path))
            schema = self._parquet.schema_arrow
        else:
            if table is None:
                self._table = _read_ipc(path)
            schema = self._table.schema
        self.image_column = image_column or _detect_image_column(schema, path)
        if self.image_column not in schema.names:
            raise DatasetError(f"{path}: no column {self.image_column!r} (--image-column); it has {schema.names}")
        self.key_column = key_column if key_column is not None else next((c for c in KEY_COLUMNS if c in schema.names), None)
        if self.key_column and self.key_column not in schema.names:
            raise DatasetError(f"{path}: no column {self.key_column!r} (--key-column); it has {schema.names}")
        self.struct = _is_image_struct(schema.field(self.image_column).type)
        kind = "Hugging Face Image struct" if self.struct else "bytes"
        keys = f"keys from column {self.key_column!r}" if self.key_column else "keys are row numbers"
        note(f"blipcap: {self.label}: images from column {self.image_column!r} ({kind}), {keys}")
        self._row: dict[str, int] = {}

    def _groups(self) -> list[int]:
        """Rows per row group (Parquet) or record batch (Arrow)."""
        if self._parquet is not None:
            md = self._parquet.metadata
            return [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        self._batches = self._table.to_batches()
        return [len(b) for b in self._batches]

    def _column(self, name: str, group: int):
        if self._parquet is not None:
            return self._parquet.read_row_group(group, columns=[name]).column(0)
        return self._batches[group].column(name)

    def keys(self) -> list[str]:
        sizes = self._groups()
        n = sum(sizes)
        keys = None
        if self.key_column:
            values = [v for g in range(len(sizes)) for v in self._column(self.key_column, g).to_pylist()]
            keys = [str(v) for v in values]
            if None in values or len(set(keys)) < n:
                print(f"blipcap: {self.label}: column {self.key_column!r} has empty or repeated keys; "
                      f"keys are row numbers", file=sys.stderr)
                keys = None
        keys = [self.key_prefix + k for k in (keys or map(str, range(n)))]
        self._row = {k: i for i, k in enumerate(keys)}
        self._starts = list(itertools.accumulate([0] + sizes))
        self.listed = keys
        return keys

    def whole(self):
        """The whole table, every column (for --write-back)."""
        return self._parquet.read() if self._parquet is not None else self._table

    def read(self, keys: list[str]) -> Iterator[tuple[bytes | None, str | None]]:
        cached_group, values = -1, []
        for key in keys:
            row = self._row[key]
            group = bisect.bisect_right(self._starts, row) - 1
            if group != cached_group:  # the image column of a row group holding wanted rows, once
                cached_group, values = group, self._column(self.image_column, group).to_pylist()
            yield self._image(values[row - self._starts[group]])

    def _image(self, value: Any) -> tuple[bytes | None, str | None]:
        if self.struct and isinstance(value, dict):
            if value.get("bytes") is not None:
                return value["bytes"], None
            if value.get("path"):  # an Image feature that points at a file instead of embedding it
                try:
                    return read_file(self._resolve(value["path"])), None
                except UnreadableImageError as e:
                    return None, failure_text(e)
            value = None
        if value is None:
            return None, _no_image(f"no image in column {self.image_column!r}")
        return value, None

    def _resolve(self, path: str) -> str:
        if os.path.isabs(path) or has_scheme(self.path):
            return path
        return os.path.join(os.path.dirname(self.path), path)


def _read_ipc(path: str):
    """An Arrow IPC file or stream (Hugging Face's .arrow files are streams), memory-mapped when local."""
    import pyarrow as pa

    source = pa.memory_map(path) if not has_scheme(path) else pa.BufferReader(open_input(path).read())
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_stream(source).read_all()


def _is_image_struct(t) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} >= {"bytes", "path"}


def _detect_image_column(schema, path: str) -> str:
    import pyarrow as pa

    found = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
             or _is_image_struct(f.type)]
    preferred = [c for c in IMAGE_COLUMNS if c in found]
    if len(found) == 1 or preferred:
        return (preferred or found)[0]
    what = f"several ({', '.join(found)})" if found else "none"
    raise DatasetError(f"{path}: which column holds the images? Columns of image bytes or Image structs: "
                       f"{what}; name one with --image-column")


def hf_sources(folder: str, image_column: str | None, key_column: str | None,
               note: Callable[[str], None]) -> list[TableSource]:
    """A dataset saved with ``save_to_disk`` (a Dataset, or a DatasetDict: one source per split)."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{folder} is a Hugging Face dataset: reading it requires the datasets extra: "
                          f"pip install 'blipcap[datasets]'") from None
    loaded = datasets.load_from_disk(folder)
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    return [TableSource(folder, image_column, key_column, note, table=ds.data.table, label=folder, hf_split=split)
            for split, ds in splits]
