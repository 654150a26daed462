"""The Parquet output (``--output FILE.parquet``): Parquet cannot be appended to, so rows go to a
hidden JSONL journal beside the table, which is rebuilt from the old file plus the journal, through a
temp file and a rename, when the job ends (or, after a kill, when the next run ends)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from .atomic import check_writable, lock_output, replacing
from .paths import path_from_text
from .records import (COLUMNS, LEGACY_COLUMNS, Record, Sink, SinkError, arrow_schema, check_mode, records_table,
                      with_all_columns)
from .tables import JsonlSink, record_of


class ParquetSink(Sink):
    """A Parquet table with the COLUMNS fields, rebuilt at the end from the old file + a journal."""

    what = "output"
    wants_errors = True

    def __init__(self, path: str | os.PathLike, existing: str = "skip"):
        try:
            import pyarrow  # noqa: F401
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise SinkError("--output *.parquet requires the pyarrow package: pip install 'blipcap[parquet]'") from None
        self.path, self.existing = Path(path), check_mode(existing)
        check_writable(self.path, "output")
        self._lock = lock_output(self.path, "output")
        self.journal = JsonlSink(self.path.with_name(f".{self.path.name}.partial.jsonl"), "append", lock=False)
        self._old = self._read_old()
        self._last: dict[str, str | None] = {}
        for path_, error in zip(self._old.column("path").to_pylist(), self._old.column("error").to_pylist()):
            self._last[path_from_text(path_)] = error
        self._last.update(self.journal._last)

    def _read_old(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.path.is_file() or self.path.stat().st_size == 0:
            return pa.Table.from_pylist([], schema=arrow_schema())
        try:
            table = pq.read_table(self.path)
        except (pa.ArrowException, OSError) as e:
            raise SinkError(f"{self.path} cannot be read as Parquet ({e}); use another file name or move it away") from e
        if table.schema.names not in (list(COLUMNS), list(LEGACY_COLUMNS)):
            raise SinkError(f"{self.path} has the columns {table.schema.names}, not a blipcap output's")
        return with_all_columns(table).cast(arrow_schema())

    def has(self, path: str) -> bool:
        return path in self._last and self._last[path] is None

    def known(self) -> Iterator[Record]:
        for row in self._old.to_pylist():
            if not row["error"] and row["sha256"]:
                yield Record(**row)
        yield from self.journal.known()

    def write(self, records: list[Record]) -> list[tuple[Record, str]]:
        keep = [r for r in records if r.ok or self._last.get(r.path, ...) != r.error]
        for r in keep:
            self._last[r.path] = r.error
        return self.journal.write(keep)

    def close(self) -> None:
        try:
            self._close()
        finally:
            self._lock.release()

    def _close(self) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        self.journal.close()
        if not self.journal.path.is_file():
            return
        new = records_table(self.journal_rows())
        old = self._old
        if self.existing != "append":
            old = old.filter(pc.invert(pc.is_in(old.column("path"), value_set=new.column("path"))))
        try:
            with replacing(self.path) as tmp:
                pq.write_table(pa.concat_tables([old, new]), tmp)
        except OSError as e:  # the journal stays: the next run rebuilds the table from it
            raise SinkError(f"cannot write output {self.path}: {e.strerror or e}; its rows are kept in "
                            f"{self.journal.path.name} and a re-run writes them") from e
        self.journal.path.unlink()
        self._old = pq.read_table(self.path)

    def journal_rows(self) -> list[Record]:
        rows = [record_of(row) for row in self.journal.rows()]
        if self.existing == "append":
            return rows
        last = {r.path: i for i, r in enumerate(rows)}
        return [r for i, r in enumerate(rows) if last[r.path] == i]
