"""What every output stores: the Record of one image, its columns and Arrow schema, the Sink
interface the jobs write through, and the errors and modes all sinks share."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Iterable, Iterator, Sequence

EXISTING_MODES = ("skip", "overwrite", "append")


@dataclass
class Record:
    """One image's outcome, as the tables store it (``error`` is None when it was captioned)."""

    path: str
    caption: str | None
    score: float | None
    sha256: str | None
    width: int | None  # of the image as stored, EXIF rotation applied
    height: int | None
    model_id: str
    revision: str | None
    options_digest: str  # digest of the caption options (and --alt-text), see jobs.common.options_digest
    error: str | None = None  # "<ErrorKind>: <reason>"
    alternatives: list[tuple[str, float]] = field(default_factory=list, repr=False)  # stdout --json only
    # the caption stopped at max_new_tokens; None: not known (a failure, or a table written before
    # this column existed). Last in COLUMNS so that older tables, which end at ``error``, still read.
    truncated: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


COLUMNS = tuple(f.name for f in fields(Record) if f.name != "alternatives")
LEGACY_COLUMNS = COLUMNS[: COLUMNS.index("truncated")]  # tables written before ``truncated``


def check_mode(existing: str) -> str:
    if existing not in EXISTING_MODES:
        raise ValueError(f"existing must be one of {', '.join(EXISTING_MODES)}, got {existing!r}")
    return existing


class SinkError(RuntimeError):
    """A destination that cannot be written or read back (a setup error: exit status 1)."""


class Sink:
    """Base class. ``write`` gets each batch's records meant for this sink, in order."""

    passive = False  # a passive sink reports what a run did; it never makes the job caption an image
    wants_errors = False  # whether records of images that failed are passed to write()
    existing = "skip"  # what to do about images it already holds: skip, overwrite, append

    def wants(self, path: str) -> bool:
        """Whether this run should write ``path`` here."""
        return self.existing != "skip" or not self.has(path)

    def prepare(self, paths: Sequence[str]) -> None:
        """Check, before any model work, that every destination for ``paths`` can be written."""

    def clash(self, path: str) -> str | None:
        """Why this sink cannot take ``path`` at all (the image is then reported), or None."""
        return None

    def has(self, path: str) -> bool:
        """Whether this sink already holds a caption for ``path`` (used with --existing skip)."""
        return False

    def known(self) -> Iterator[Record]:
        """Captions it holds with their sha256 and options digest, to reuse for identical files."""
        return iter(())

    def write(self, records: list[Record]) -> list[tuple[Record, str]]:
        """Store ``records``; return (record, reason) for each one that could not be stored."""
        raise NotImplementedError

    def close(self) -> None:
        pass



def arrow_schema():
    """The Arrow schema of a Record table: the local Parquet output's and the Ray job's shards."""
    import pyarrow as pa

    types = {"score": pa.float64(), "width": pa.int64(), "height": pa.int64(), "truncated": pa.bool_()}
    return pa.schema([(name, types.get(name, pa.string())) for name in COLUMNS])


def with_all_columns(table):
    """A table of COLUMNS or of LEGACY_COLUMNS (written before ``truncated``) -> one of COLUMNS."""
    import pyarrow as pa

    if table.schema.names == list(LEGACY_COLUMNS):
        table = table.append_column(pa.field("truncated", pa.bool_()), pa.nulls(table.num_rows, pa.bool_()))
    return table


def records_table(records: list[Record]):
    """Records -> a pyarrow Table with arrow_schema()."""
    import pyarrow as pa

    from .paths import path_text

    rows = [{**{k: getattr(r, k) for k in COLUMNS}, "path": path_text(r.path)} for r in records]
    return pa.Table.from_pylist(rows, schema=arrow_schema())


def arrow_strings(values: Iterable[str]):
    import pyarrow as pa

    return pa.array(list(values), type=pa.string())
