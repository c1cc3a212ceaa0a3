"""Changes between two snapshots, from manifests and deletion vectors alone.

The diff of two states compares them file by file:

* a file live only in ``end``: its live rows were inserted;
* a file live only in ``start``: its live rows were deleted;
* a file in both whose deletion vector differs: the positions deleted in ``end`` but not in
  ``start`` were deleted (and the reverse were inserted, when going back in time).

Only files that differ are opened, and only the affected positions are taken. Each deleted
position carries the snapshot that deleted it (stored in the deletion vector), each inserted
row the snapshot that added its file. A row that leaves one file and reappears unchanged in
another (compaction, or an upsert writing the same values) would show as a delete plus an
insert; those pairs cancel, so the diff is the net change.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from spacesql.engine.files import DeletionVector, read_deletes
from spacesql.engine.manifest import FileEntry, TableState
from spacesql.engine.scan import Scanner

__all__ = ["CHANGE_TYPE", "SNAPSHOT_ID", "ChangeSet", "diff_states"]

CHANGE_TYPE = "change_type"
SNAPSHOT_ID = "snapshot_id"


@dataclass(frozen=True)
class ChangeSet:
    """Rows inserted or deleted between two versions (full rows, logical schema)."""

    change_type: str  # "insert" or "delete"
    data: pa.Table
    snapshot_ids: np.ndarray


def _dv(scanner: Scanner, entry: FileEntry | None) -> DeletionVector:
    if entry is None:
        return DeletionVector.empty()
    return read_deletes(scanner.store, entry)


def _file_changes(
    scanner: Scanner, start: FileEntry | None, end: FileEntry | None, start_id: int
) -> Iterator[tuple[str, FileEntry, np.ndarray, np.ndarray]]:
    """(change type, file, positions, snapshot ids) for one path."""
    entry = end or start
    assert entry is not None
    n = entry.num_rows
    if start is None:
        assert end is not None
        live = np.flatnonzero(_dv(scanner, end).live_mask(n)).astype(np.int64)
        yield "insert", end, live, np.full(len(live), end.added_snapshot)
        return
    if end is None:
        live = np.flatnonzero(_dv(scanner, start).live_mask(n)).astype(np.int64)
        yield "delete", start, live, np.full(len(live), -1)
        return
    dv_start, dv_end = _dv(scanner, start), _dv(scanner, end)
    # deletion vectors hold sorted unique positions
    deleted = np.setdiff1d(dv_end.positions, dv_start.positions, assume_unique=True)
    if len(deleted):
        snaps = dv_end.snapshots[np.searchsorted(dv_end.positions, deleted)]
        yield "delete", end, deleted, snaps
    revived = np.setdiff1d(dv_start.positions, dv_end.positions, assume_unique=True)
    if len(revived):
        yield "insert", end, revived, np.full(len(revived), start_id)


def diff_states(
    scanner_start: Scanner,
    scanner_end: Scanner,
    start: TableState,
    end: TableState,
    *,
    end_id: int,
    removals: Mapping[str, tuple[int, FileEntry]] | None = None,
    columns: Sequence[str] | None = None,
    deleted_columns: Sequence[str] | None = None,
    cancel: bool = True,
) -> Iterator[ChangeSet]:
    """Inserted and deleted rows going from ``start`` to ``end`` (all columns, or
    ``columns``: a multiset difference over those columns).

    ``deleted_columns`` reads fewer columns of deleted rows (e.g. only the key); ``cancel``
    False keeps pairs of identical deleted and inserted rows (a rewrite shows as both), for
    callers to whom such pairs are harmless and the comparison is wasted work.

    ``removals`` maps a file that left the state (all its rows deleted) to the snapshot that
    removed it and its entry just before, so each of its rows gets the exact deleting snapshot.
    """
    paths = list(start.files) + [p for p in end.files if p not in start.files]
    inserted: list[tuple[pa.Table, np.ndarray]] = []
    deleted: list[tuple[pa.Table, np.ndarray]] = []
    for path in paths:
        a, b = start.files.get(path), end.files.get(path)
        if a is not None and b is not None and a.deletion_file == b.deletion_file:
            continue
        for kind, entry, pos, snaps in _file_changes(scanner_end, a, b, end_id):
            if len(pos) == 0:
                continue
            scanner = scanner_end if kind == "insert" or b is not None else scanner_start
            wanted = columns if kind == "insert" or deleted_columns is None else deleted_columns
            rows = scanner.take_rows(entry, pos, wanted)
            if kind == "delete" and b is None:
                snaps = _removal_snapshots(scanner_start, path, pos, removals or {}, end_id)
            (inserted if kind == "insert" else deleted).append((rows, snaps))
    full = scanner_end.schema
    schema = full if columns is None else pa.schema([full.field(c) for c in columns])
    del_schema = (
        schema if deleted_columns is None else pa.schema([full.field(c) for c in deleted_columns])
    )
    ins = _concat(inserted, schema)
    dels = _concat(deleted, del_schema)
    if cancel and ins[0].num_rows and dels[0].num_rows and schema == del_schema:
        ins, dels = _cancel(ins, dels)
    if dels[0].num_rows:
        yield ChangeSet("delete", dels[0], dels[1])
    if ins[0].num_rows:
        yield ChangeSet("insert", ins[0], ins[1])


def _removal_snapshots(
    scanner: Scanner,
    path: str,
    positions: np.ndarray,
    removals: Mapping[str, tuple[int, FileEntry]],
    default: int,
) -> np.ndarray:
    """Deleting snapshot of each position of a file that left the state."""
    found = removals.get(path)
    if found is None:
        return np.full(len(positions), default)
    removed_by, before = found
    snaps = np.full(len(positions), removed_by)
    dv = _dv(scanner, before)
    if len(dv.positions):
        idx = np.searchsorted(dv.positions, positions)
        idx = np.minimum(idx, len(dv.positions) - 1)
        earlier = dv.positions[idx] == positions
        snaps[earlier] = dv.snapshots[idx[earlier]]
    return snaps


def _concat(
    parts: list[tuple[pa.Table, np.ndarray]], schema: pa.Schema
) -> tuple[pa.Table, np.ndarray]:
    if not parts:
        return schema.empty_table(), np.empty(0, dtype=np.int64)
    tables = [_align(t, schema) for t, _ in parts]
    return pa.concat_tables(tables), np.concatenate([s for _, s in parts]).astype(np.int64)


def _cancel(
    ins: tuple[pa.Table, np.ndarray], dels: tuple[pa.Table, np.ndarray]
) -> tuple[tuple[pa.Table, np.ndarray], tuple[pa.Table, np.ndarray]]:
    """Drop pairs of identical rows that were deleted and inserted (multiset difference)."""
    import duckdb

    a, b = ins[0], dels[0]
    # Positional column names keep user identifiers out of the SQL text entirely.
    names = [f"c{i}" for i in range(a.num_columns)]
    con = duckdb.connect()
    try:
        con.register("ins_rows", _numbered(a, names))
        con.register("del_rows", _numbered(b, names))
        same = " AND ".join(f"x.{c} IS NOT DISTINCT FROM y.{c}" for c in names)
        over = ", ".join(names)
        pairs = con.execute(
            f"""
            WITH x AS (SELECT *, row_number() OVER (PARTITION BY {over}) AS n FROM ins_rows),
                 y AS (SELECT *, row_number() OVER (PARTITION BY {over}) AS n FROM del_rows)
            SELECT x.idx, y.idx FROM x JOIN y ON {same} AND x.n = y.n
            """
        ).fetchall()
    finally:
        con.close()
    if not pairs:
        return ins, dels
    drop_i = np.array([p[0] for p in pairs], dtype=np.int64)
    drop_d = np.array([p[1] for p in pairs], dtype=np.int64)
    keep_i = np.setdiff1d(np.arange(a.num_rows), drop_i)
    keep_d = np.setdiff1d(np.arange(b.num_rows), drop_d)
    return (a.take(pa.array(keep_i)), ins[1][keep_i]), (b.take(pa.array(keep_d)), dels[1][keep_d])


def _align(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows read with an older schema, in the end schema (added columns are null)."""
    if table.schema == schema:
        return table
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _numbered(table: pa.Table, names: list[str]) -> pa.Table:
    # DuckDB cannot read half floats: compare them as floats (same equality)
    table = pa.Table.from_arrays(
        [c.cast(pa.float32()) if pa.types.is_float16(c.type) else c for c in table.columns],
        names=table.column_names,
    )
    renamed = table.rename_columns(names)
    return renamed.append_column("idx", pa.array(np.arange(table.num_rows, dtype=np.int64)))
