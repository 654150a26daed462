"""The Ray job's plan: every input it names, each once, on one filesystem (local files through
discover.py, URIs such as s3:// listed with pyarrow.fs), with what the listing says of each file
(size and mtime): a re-run reads only the files whose listing changed (see ``LISTING``)."""

from __future__ import annotations

import errno
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..images import UnreadableImageError
from ..uris import has_scheme, is_http_url
from .common import failure_text
from .discover import IMAGE_SUFFIXES, find_images, read_path_list


Stat = tuple  # (size, mtime in ns): what the listing says of a file


LISTING = "_listing.parquet"  # in the output folder: (path, size, mtime_ns) of each file captioned


def read_listing(folder) -> dict[str, Stat]:
    """What the output folder's listing says of the files its rows were made from ({} if none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(folder.path(LISTING), filesystem=folder.fs)
    except (FileNotFoundError, pa.ArrowException, OSError):  # none yet, or unreadable: files are hashed
        return {}
    return {p: (size, mtime) for p, size, mtime in zip(*(table.column(c).to_pylist()
                                                        for c in ("path", "size", "mtime_ns")))}


def write_listing(folder, stats: dict[str, Stat]) -> None:
    import pyarrow as pa

    from ..outputs.shards import write_shard

    paths = sorted(stats)
    table = pa.table({"path": pa.array(paths, pa.string()), "size": pa.array([stats[p][0] for p in paths], pa.int64()),
                      "mtime_ns": pa.array([stats[p][1] for p in paths], pa.int64())})
    write_shard(folder.fs, folder.root, LISTING, table)


@dataclass
class Inputs:
    """The files of one job, all on one filesystem."""

    paths: list[str]  # as the output records them: absolute local paths, or full URIs
    filesystem: Any = None  # pyarrow filesystem of URI inputs; None: local files
    prefix: str = ""  # a path Ray reports back, prefixed with this, is its recorded path ("s3://")
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> why Ray cannot read it
    stats: dict[str, Stat] = field(default_factory=dict)  # path -> its listing, where the filesystem gives one

    def to_read(self, skip: set[str] = frozenset()) -> list[str]:
        """The paths to hand to Ray: the readable ones not in ``skip``, inside ``filesystem``."""
        n = len(self.prefix)
        return [p[n:] for p in self.paths if p not in self.unreadable and p not in skip]


def plan_inputs(inputs: Sequence[str], *, files_from: str | None = None, recursive: bool = True) -> Inputs:
    """Every image the inputs name, each once: local ones as the folder job finds them
    (discover.find_images), URIs listed with pyarrow. Raises ValueError on mixed filesystems."""
    listed = read_path_list(files_from) if files_from is not None else []
    remote = [i for i in list(inputs) + listed if has_scheme(i)]
    if any(is_http_url(i) for i in remote):
        raise ValueError("--engine ray reads files and object stores (s3://, gs://, ...), not http(s) URLs; "
                         "caption URLs with the local engine and --allow-urls")
    if not remote:  # a listed folder is searched, a listed file taken as named (as find_images does)
        found = find_images(inputs, recursive=recursive)
        for line in listed:
            found += find_images([line], recursive=recursive) if os.path.isdir(line) else [line]
        paths = list(dict.fromkeys(os.path.abspath(p) for p in found))
        with ThreadPoolExecutor(16) as pool:  # a stat per file: worth overlapping on network filesystems
            checked = list(pool.map(_unreadable, paths))
        return Inputs(paths, unreadable={p: r for p, (r, _) in zip(paths, checked) if r},
                      stats={p: st for p, (_, st) in zip(paths, checked) if st})
    if len(remote) < len(inputs) + len(listed):
        raise ValueError("--engine ray reads one filesystem per job: give local paths or URIs, not both")
    return _plan_uris(remote, from_list=set(listed), recursive=recursive)


def _unreadable(path: str) -> tuple[str | None, Stat | None]:
    """Why Ray could not read this local file (read as an error row, never a failed job), or its listing."""
    try:
        st = os.stat(path)
    except OSError as e:
        return failure_text(e), None
    if not stat.S_ISREG(st.st_mode):
        return failure_text(UnreadableImageError(path, "not a regular file")), None
    if not os.access(path, os.R_OK):
        return failure_text(PermissionError(errno.EACCES, os.strerror(errno.EACCES))), None
    return None, (st.st_size, st.st_mtime_ns)


def _plan_uris(uris: list[str], from_list: set[str], recursive: bool) -> Inputs:
    from pyarrow import fs as pafs

    filesystem, prefix, paths, seen, infos = None, None, [], set(), {}
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
                listed = _list_folder(fs, path, recursive)
                infos.update((i.path, i) for i in listed)
                found = [i.path for i in listed]
            else:
                infos[path] = info
                found = [path]
        for p in found:
            if p not in seen:
                seen.add(p)
                paths.append(prefix + p)
    unlisted = [p[len(prefix):] for p in paths if p[len(prefix):] not in infos]  # named in a list
    if unlisted:
        infos.update(zip(unlisted, filesystem.get_file_info(unlisted)))
    stats = {prefix + p: (i.size, i.mtime_ns) for p, i in infos.items()  # no size or mtime: that file is hashed
             if i.type == pafs.FileType.File and i.size is not None and i.mtime_ns is not None}
    missing = failure_text(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))
    gone = {prefix + p: missing for p, i in infos.items() if i.type == pafs.FileType.NotFound}
    return Inputs(paths, filesystem, prefix, unreadable=gone, stats=stats)


def _list_folder(fs, path: str, recursive: bool) -> list:
    """FileInfos of the images in a folder of a pyarrow filesystem, by extension, hidden files and
    folders skipped, sorted by path."""
    from pyarrow import fs as pafs

    base = path.rstrip("/") + "/"
    found = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=recursive)):
        rel = info.path[len(base):] if info.path.startswith(base) else info.base_name
        if (info.type == pafs.FileType.File and not any(part.startswith(".") for part in rel.split("/"))
                and os.path.splitext(info.base_name)[1].lower() in IMAGE_SUFFIXES):
            found.append(info)
    return sorted(found, key=lambda i: i.path)
