"""A folder of Parquet shards (the Ray job's output, local or on any pyarrow filesystem): its rows,
last one per path, written whole under hidden names and renamed, compacted to one row per image."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..uris import has_scheme
from .atomic import is_temp, temp_name
from .records import COLUMNS, LEGACY_COLUMNS, SinkError, arrow_strings


@dataclass
class ShardRow:
    sha256: str | None
    error: str | None
    shard: str


class ShardFolder:
    """``--output DIR``: Parquet shards, each with the columns of the local ``--output x.parquet``."""

    def __init__(self, output: str):
        from pyarrow import fs as pafs

        self.output = output
        if has_scheme(output):
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

    def scan(self) -> dict[str, ShardRow]:
        """The last row per path in the folder; ``stale``: shard -> paths with a later row elsewhere
        (an interrupted run's). Raises SinkError on a Parquet file that is not ours."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        last: dict[str, ShardRow] = {}
        self.stale: dict[str, set[str]] = {}
        for name in self.shards():
            try:
                names = pq.read_schema(self.path(name), filesystem=self.fs).names
                if names not in (list(COLUMNS), list(LEGACY_COLUMNS)):  # older shards still read
                    raise SinkError(f"{self.output}/{name} has the columns {names}, not a blipcap output's; "
                                    f"use another folder or move it away")
                table = pq.read_table(self.path(name), columns=["path", "sha256", "error"], filesystem=self.fs)
            except (pa.ArrowException, OSError) as e:
                raise SinkError(f"{self.output}/{name} cannot be read as Parquet ({e}); move it away") from e
            for path, sha, error in zip(*(table.column(c).to_pylist() for c in ("path", "sha256", "error"))):
                if path in last and last[path].shard != name:
                    self.stale.setdefault(last[path].shard, set()).add(path)
                last[path] = ShardRow(sha, error, name)
        return last

    def clean(self) -> None:
        """Delete the hidden temp files a killed job left behind."""
        from pyarrow import fs as pafs

        for info in self.fs.get_file_info(pafs.FileSelector(self.root)):
            if info.base_name.startswith(".part-") and is_temp(info.base_name):
                self.fs.delete_file(info.path)

    def write(self, name: str, table) -> None:
        write_shard(self.fs, self.root, name, table)

    def drop_rows(self, drops: dict[str, set[str]]) -> None:
        """Rewrite each shard without the rows of ``drops[shard]`` (rows a later one supersedes)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        for name, paths in drops.items():
            table = pq.read_table(self.path(name), filesystem=self.fs)
            kept = table.filter(pc.invert(pc.is_in(table.column("path"), value_set=arrow_strings(paths))))
            if kept.num_rows:
                self.write(name, kept)
            else:
                self.fs.delete_file(self.path(name))


def write_shard(fs, root: str, name: str, table) -> None:
    """Write ``table`` as ``root/name``: to a hidden temp file, then renamed (a reader never sees half)."""
    import pyarrow.parquet as pq

    tmp = f"{root}/{temp_name(name)}"
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
