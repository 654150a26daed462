"""``--write-back DIR``: a new copy of each dataset input with the captions in it; the inputs are never
modified.

    WebDataset shard   DIR/<shard name>: every member copied in order; each captioned sample's
                       ``.txt`` member holds its caption (replaced, or added after the sample's last
                       member), as img2dataset lays shards out
    Parquet / Arrow    DIR/<file name>: the same rows in the same order, every other column kept,
                       and a ``caption`` column (replaced where the table had one)
    saved HF dataset   DIR/<folder name>: through ``datasets`` (save_to_disk), with a ``caption`` column

A sample that failed keeps what it had (no caption: the table's cell is null). Each copy is written
under a hidden name and renamed: a killed job leaves no half copy.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tarfile
from pathlib import Path

from ..outputs.atomic import replacing
from .datasets import Datasets
from .sources import DatasetError, TableSource, TarShard, open_input

CAPTION_COLUMN = "caption"


def check_destinations(dataset: Datasets, folder: str) -> dict[str, Path]:
    """label -> where its copy goes; raises DatasetError when two inputs would land on one name or a
    copy would replace an input (before any model work)."""
    if "://" in folder:
        raise DatasetError(f"--write-back {folder}: a local folder, please (the copies are written there)")
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"--write-back {folder}: exists and is not a folder")
    out: dict[str, Path] = {}
    for source in dataset.sources:
        name = posixpath.basename(source.label.rstrip("/").split("://")[-1])
        dest = root / name
        if out.get(source.label, dest) != dest or (source.label not in out and dest in out.values()):
            raise DatasetError(f"--write-back {folder}: two inputs are named {name}; write them back separately")
        if not has_scheme_label(source.label) and os.path.realpath(dest) == os.path.realpath(source.label):
            raise DatasetError(f"--write-back {folder}: would replace the input {source.label}; the inputs are "
                               f"never modified: name another folder")
        out[source.label] = dest
    return out


def has_scheme_label(label: str) -> bool:
    return "://" in label


def write_back(dataset: Datasets, captions: dict[str, str], folder: str) -> list[Path]:
    """Write every source's copy (see the module docstring); returns the paths written."""
    dests = check_destinations(dataset, folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    hf: dict[str, list[TableSource]] = {}
    for source in dataset.sources:
        dest = dests[source.label]
        if isinstance(source, TarShard):
            _tar(source, captions, dest)
        elif isinstance(source, TableSource) and source.hf_split is not None:
            hf.setdefault(source.label, []).append(source)
            continue
        elif isinstance(source, TableSource):
            _table(source, captions, dest)
        else:
            continue  # an input that could not be read has nothing to copy
        written.append(dest)
    for label, splits in hf.items():
        _hf(label, splits, captions, dests[label])
        written.append(dests[label])
    return written


def _column(source: TableSource, captions: dict[str, str]) -> list[str | None]:
    return [captions.get(f"{source.label}#{key}") for key in source.listed]


def _with_captions(table, values: list[str | None]):
    import pyarrow as pa

    column = pa.array(values, type=pa.string())
    if CAPTION_COLUMN in table.schema.names:
        return table.set_column(table.schema.get_field_index(CAPTION_COLUMN), CAPTION_COLUMN, column)
    return table.append_column(CAPTION_COLUMN, column)


def _table(source: TableSource, captions: dict[str, str], dest: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = _with_captions(source.whole(), _column(source, captions))
    with replacing(dest) as tmp:
        if source.path.lower().endswith(".parquet"):
            pq.write_table(table, tmp)
        else:
            with pa.ipc.new_file(str(tmp), table.schema) as writer:
                writer.write_table(table)


def _hf(label: str, splits: list[TableSource], captions: dict[str, str], dest: Path) -> None:
    import datasets

    loaded = datasets.load_from_disk(label)
    by_split = {s.hf_split: _column(s, captions) for s in splits}

    def add(ds, split: str):
        if CAPTION_COLUMN in ds.column_names:
            ds = ds.remove_columns(CAPTION_COLUMN)
        return ds.add_column(CAPTION_COLUMN, by_split[split])

    if isinstance(loaded, datasets.DatasetDict):
        copy = datasets.DatasetDict({split: add(ds, split) for split, ds in loaded.items()})
    else:
        copy = add(loaded, "")
    tmp = dest.with_name(f".{dest.name}.blipcap-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copy.save_to_disk(str(tmp))
    if dest.exists():  # an earlier write-back of the same dataset: replaced whole
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _tar(shard: TarShard, captions: dict[str, str], dest: Path) -> None:
    with open_input(shard.path) as f, tarfile.open(fileobj=f, mode="r:") as src, replacing(dest) as tmp, \
            tarfile.open(tmp, "w", format=src.format or tarfile.GNU_FORMAT) as out:
        current, has_text = None, False

        def finish():  # a captioned sample without a .txt member gets one after its last member
            if current is not None and not has_text and f"{shard.label}#{current}" in captions:
                _add_text(out, f"{current}.txt", captions[f"{shard.label}#{current}"], template)

        template = None
        for m in src:
            folder, base = posixpath.split(m.name)
            stem, _, ext = base.partition(".")
            key = posixpath.join(folder, stem) if m.isfile() else None
            if key != current and m.isfile():
                finish()
                current, has_text = key, False
            if m.isfile() and ext.lower() == "txt" and f"{shard.label}#{key}" in captions:
                has_text = True
                _add_text(out, m.name, captions[f"{shard.label}#{key}"], m)
            elif m.isfile():
                template = m
                out.addfile(m, src.extractfile(m))
            else:
                out.addfile(m)
        finish()


def _add_text(out: tarfile.TarFile, name: str, text: str, like: tarfile.TarInfo | None) -> None:
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    if like is not None:  # the sample's own owner, mode and time
        info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
            like.mtime, like.mode, like.uid, like.gid, like.uname, like.gname)
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))
