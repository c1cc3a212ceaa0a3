"""Manifest entries (one per live data file), their statistics, and table states.

A snapshot's *state* is the set of its live data files. It is stored as deltas: each snapshot
writes a manifest of the entries it adds and removes (a change to a file's deletion vector is
a remove plus an add of the same path), and every ``CHECKPOINT_INTERVAL`` commits along a
chain a checkpoint with the whole state. Reading a state is: nearest checkpoint, then at most
``CHECKPOINT_INTERVAL`` deltas.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

#: Placeholder for "the snapshot that commits this", unknown while a commit is planned.
PENDING = -1

__all__ = ["PENDING", "ColumnStats", "FileEntry", "TableState", "compute_stats", "stats_columns"]


@dataclass(frozen=True)
class ColumnStats:
    """Min, max (None when unknown) and null count of one column in one file."""

    min: Any
    max: Any
    null_count: int


@dataclass(frozen=True)
class FileEntry:
    """One data file of a snapshot, with its deletion vector and statistics.

    Attributes:
        path: The Parquet index file, relative to the dataset root.
        num_rows: Physical rows in the file (deleted ones included).
        size_bytes: Size of the Parquet file.
        added_snapshot: The snapshot that added the file.
        deletion_file: Deletion vector file, if rows of this file are deleted.
        deletion_snapshot: The snapshot that wrote the deletion vector (its new positions
            are stored with snapshot id -1, meaning this one).
        deleted_rows: Number of deleted positions.
        record_files: ArrayRecord files the file's references point to.
        stats: Per-column statistics (physical row values, deleted rows included).
    """

    path: str
    num_rows: int
    size_bytes: int
    added_snapshot: int
    deletion_file: str | None = None
    deleted_rows: int = 0
    deletion_snapshot: int | None = None
    record_files: tuple[str, ...] = ()
    stats: Mapping[str, ColumnStats] = field(default_factory=dict)

    @property
    def live_rows(self) -> int:
        return self.num_rows - self.deleted_rows

    def with_deletes(self, deletion_file: str, deleted_rows: int) -> FileEntry:
        return replace(
            self, deletion_file=deletion_file, deleted_rows=deleted_rows, deletion_snapshot=PENDING
        )

    def stamped(self, snapshot_id: int) -> FileEntry:
        """Fill in the id of the snapshot that commits this entry."""
        return replace(
            self,
            added_snapshot=snapshot_id if self.added_snapshot == PENDING else self.added_snapshot,
            deletion_snapshot=(
                snapshot_id if self.deletion_snapshot == PENDING else self.deletion_snapshot
            ),
        )


def _stat_type(t: pa.DataType) -> bool:
    if pa.types.is_float16(t):
        return False  # no min/max kernel for half floats
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_date(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_time(t)
        or pa.types.is_boolean(t)
    )


def stats_columns(schema: pa.Schema, record_fields: Iterable[str]) -> list[pa.Field]:
    """Top-level columns that get min/max statistics (orderable scalar types)."""
    skip = set(record_fields)
    return [f for f in schema if f.name not in skip and _stat_type(f.type)]


def compute_stats(table: pa.Table, columns: list[pa.Field]) -> dict[str, ColumnStats]:
    """Min/max/null count of the statistic columns of a table about to be written."""
    out: dict[str, ColumnStats] = {}
    for f in columns:
        col = table.column(f.name)
        nulls = col.null_count
        lo = hi = None
        if nulls < len(col):
            if pa.types.is_floating(f.type) and pc.any(pc.is_nan(col)).as_py():
                pass  # NaN is unordered: no bounds, so no pruning on this column
            else:
                mm = pc.min_max(col)
                lo, hi = mm["min"].as_py(), mm["max"].as_py()
        out[f.name] = ColumnStats(lo, hi, nulls)
    return out


def file_guarantee(entry: FileEntry, schema: pa.Schema) -> pc.Expression:
    """What every row of a file satisfies, for fragment pruning by pyarrow."""
    guarantee: pc.Expression | None = None
    for name, st in entry.stats.items():
        if name not in schema.names:
            continue
        col = pc.field(name)
        typ = schema.field(name).type
        if st.min is None or st.max is None:
            if st.null_count == entry.num_rows and entry.num_rows > 0:
                term = col.is_null()
            else:
                continue
        else:
            lo, hi = pa.scalar(st.min, type=typ), pa.scalar(st.max, type=typ)
            term = (col >= lo) & (col <= hi)
            if st.null_count:
                term = term | col.is_null()
        guarantee = term if guarantee is None else guarantee & term
    return guarantee if guarantee is not None else pc.scalar(True)


# --- manifests on disk ------------------------------------------------------------------


def _stats_type(columns: list[pa.Field]) -> pa.DataType:
    return pa.struct(
        [
            pa.field(
                f.name,
                pa.struct([("min", f.type), ("max", f.type), ("null_count", pa.int64())]),
            )
            for f in columns
        ]
    )


def manifest_schema(columns: list[pa.Field], *, with_action: bool) -> pa.Schema:
    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("num_rows", pa.int64(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("added_snapshot", pa.int64(), nullable=False),
        pa.field("deletion_file", pa.string()),
        pa.field("deleted_rows", pa.int64(), nullable=False),
        pa.field("deletion_snapshot", pa.int64()),
        pa.field("record_files", pa.list_(pa.string())),
    ]
    if columns:  # Parquet cannot store a struct without fields
        fields.append(pa.field("stats", _stats_type(columns)))
    if with_action:
        fields.insert(0, pa.field("action", pa.string(), nullable=False))
    return pa.schema(fields)


def entries_to_table(
    entries: list[tuple[str, FileEntry]] | list[FileEntry],
    columns: list[pa.Field],
    *,
    with_action: bool,
) -> pa.Table:
    """Entries (optionally with an action, 'add' or 'remove') as a manifest table."""
    rows = []
    for item in entries:
        action, e = item if isinstance(item, tuple) else (None, item)
        row: dict[str, Any] = {
            "path": e.path,
            "num_rows": e.num_rows,
            "size_bytes": e.size_bytes,
            "added_snapshot": e.added_snapshot,
            "deletion_file": e.deletion_file,
            "deleted_rows": e.deleted_rows,
            "deletion_snapshot": e.deletion_snapshot,
            "record_files": list(e.record_files),
        }
        if columns:
            row["stats"] = {
                f.name: (
                    {
                        "min": e.stats[f.name].min,
                        "max": e.stats[f.name].max,
                        "null_count": e.stats[f.name].null_count,
                    }
                    if f.name in e.stats
                    else None
                )
                for f in columns
            }
        if with_action:
            row["action"] = action
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=manifest_schema(columns, with_action=with_action))


def table_to_entries(table: pa.Table) -> list[tuple[str | None, FileEntry]]:
    out: list[tuple[str | None, FileEntry]] = []
    has_action = "action" in table.column_names
    for row in table.to_pylist():
        stats = {
            name: ColumnStats(s["min"], s["max"], s["null_count"])
            for name, s in (row.get("stats") or {}).items()
            if s is not None
        }
        entry = FileEntry(
            path=row["path"],
            num_rows=row["num_rows"],
            size_bytes=row["size_bytes"],
            added_snapshot=row["added_snapshot"],
            deletion_file=row["deletion_file"],
            deleted_rows=row["deleted_rows"],
            deletion_snapshot=row["deletion_snapshot"],
            record_files=tuple(row["record_files"] or ()),
            stats=stats,
        )
        out.append((row["action"] if has_action else None, entry))
    return out


def encode_table(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def decode_table(data: bytes) -> pa.Table:
    # ParquetFile reads one file directly; read_table would set up a dataset scan (slower)
    return pq.ParquetFile(pa.BufferReader(data)).read()


@dataclass(frozen=True)
class TableState:
    """The live data files of one snapshot, in the order they were added."""

    files: dict[str, FileEntry]

    @property
    def num_rows(self) -> int:
        return sum(e.live_rows for e in self.files.values())

    def apply(self, changes: list[tuple[str | None, FileEntry]]) -> TableState:
        """The state after removing and adding entries; a re-added path keeps its place."""
        removed = {e.path for a, e in changes if a == "remove"}
        added = {e.path: e for a, e in changes if a == "add"}
        files: dict[str, FileEntry] = {}
        for path, entry in self.files.items():
            if path in added:
                files[path] = added.pop(path)
            elif path not in removed:
                files[path] = entry
        files.update(added)
        return TableState(files)

    def prune(self, schema: pa.Schema, filter_: pc.Expression | None) -> list[FileEntry]:
        """Files that may hold rows matching ``filter_``, by their min/max statistics."""
        entries = [e for e in self.files.values() if e.live_rows > 0]
        if filter_ is None or not entries:
            return entries
        dataset = pads.FileSystemDataset.from_paths(
            [e.path for e in entries],
            schema=schema,
            format=pads.ParquetFileFormat(),
            filesystem=_NULL_FS,
            partitions=[file_guarantee(e, schema) for e in entries],
        )
        keep = {frag.path for frag in dataset.get_fragments(filter=filter_)}
        return [e for e in entries if e.path in keep]


# Fragments are only used for pruning, never opened.
_NULL_FS = pafs.LocalFileSystem()
