"""The Ray job's plan: every input it names, each once, on one filesystem (local files through
discover.py, URIs such as s3:// listed with pyarrow.fs)."""

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
