"""Write operations as data, and how each is planned against a head snapshot.

An operation is a small frozen dataclass. ``plan()`` computes what it changes on a given head:
new data files, and deletion vectors for rows it removes. If another writer moves the branch
head first, the commit loop plans again on the new head, so each operation behaves as if it
ran alone, after every commit that landed before it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from spacesql.engine.files import DataWriter, read_deletes
from spacesql.engine.format import SnapshotRecord
from spacesql.engine.inputs import check_keys
from spacesql.engine.manifest import PENDING, FileEntry, TableState
from spacesql.engine.scan import POS, Scanner
from spacesql.engine.table import Plan, Table
from spacesql.errors import ConstraintError, SchemaError

__all__ = ["Append", "Delete", "Insert", "Operation", "Update", "Upsert"]

#: Rows per data file written by one operation.
MAX_ROWS_PER_FILE = 4 * 1024 * 1024


def _scanner(table: Table, head: SnapshotRecord, state: TableState) -> Scanner:
    return Scanner(
        table.store,
        table.schema(head.schema_id),
        table.info.record_fields,
        state,
        dataset=table.name,
    )


def _write_rows(writer: DataWriter, data: pa.Table) -> list[FileEntry]:
    return [
        writer.write(data.slice(off, MAX_ROWS_PER_FILE))
        for off in range(0, data.num_rows, MAX_ROWS_PER_FILE)
    ]


def _delete_positions(
    writer: DataWriter, entry: FileEntry, positions: np.ndarray
) -> tuple[FileEntry | None, int] | None:
    """A new entry for ``entry`` with ``positions`` deleted (None when no row is left: the
    file leaves the state); None if nothing new is deleted."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) and (positions.min() < 0 or positions.max() >= entry.num_rows):
        raise SchemaError(
            f"Row positions out of range for {entry.path} ({entry.num_rows} rows); they were "
            "computed on another snapshot."
        )
    old = read_deletes(writer.store, entry)
    dv = old.union(positions, PENDING)
    added = len(dv.positions) - len(old.positions)
    if added == 0:
        return None
    if len(dv.positions) == entry.num_rows:
        return None, added
    rel = writer.write_deletes(dv)
    return entry.with_deletes(rel, len(dv.positions)), added


def _key_filter(keys: pa.Table) -> pc.Expression:
    """A pruning filter that holds for every row whose key is in ``keys``."""
    expr: pc.Expression | None = None
    for name in keys.column_names:
        values = pc.unique(keys.column(name))
        term = pc.field(name).isin(values)
        expr = term if expr is None else expr & term
    assert expr is not None
    return expr


def _matching_keys(scanner: Scanner, keys: pa.Table) -> list[tuple[FileEntry, np.ndarray]]:
    """Live rows of the snapshot whose primary key is in ``keys``: (file, positions)."""
    names = keys.column_names
    out = []
    prune = _key_filter(keys) if keys.num_rows <= 100_000 else None

    def lookup(entry: FileEntry) -> np.ndarray:
        if len(names) == 1:
            return _single_key_positions(scanner, entry, names[0], keys.column(names[0]))
        found = scanner.positions(entry, None, names)
        joined = found.join(keys, keys=names, join_type="inner").column(POS)
        return np.asarray(joined.to_numpy(), dtype=np.int64)

    entries = scanner.files(prune)
    for entry, pos in zip(entries, _each_file(lookup, entries), strict=True):
        if len(pos):
            out.append((entry, np.asarray(pos, dtype=np.int64)))
    return out


def _each_file(
    work: Callable[[FileEntry], np.ndarray], entries: list[FileEntry]
) -> list[np.ndarray]:
    """Run a per-file lookup on several files at once (Parquet decoding and Arrow kernels
    release the GIL)."""
    if len(entries) < 2:
        return [work(e) for e in entries]
    with ThreadPoolExecutor(max_workers=min(len(entries), os.cpu_count() or 2)) as pool:
        return list(pool.map(work, entries))


def _single_key_positions(
    scanner: Scanner, entry: FileEntry, name: str, wanted: pa.ChunkedArray
) -> np.ndarray:
    """Live positions of a file whose key is in ``wanted``. Keys of a file are unique, and
    files written from sequences are sorted: then a binary search replaces the hash probe."""
    values = scanner.column(entry, name)
    live = scanner.live_mask(entry)
    t = values.type
    if (pa.types.is_integer(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)) and (
        values.null_count == 0
    ):
        arr = values.to_numpy(zero_copy_only=False)
        if len(arr) < 2 or (arr[1:] > arr[:-1]).all():
            query = np.unique(wanted.cast(t).to_numpy(zero_copy_only=False))
            idx = np.searchsorted(arr, query)
            inside = idx < len(arr)
            idx, query = idx[inside], query[inside]
            pos: np.ndarray = idx[arr[idx] == query].astype(np.int64)
            return pos if live is None else pos[live[pos]]
    mask = pc.is_in(values, value_set=wanted).to_numpy(zero_copy_only=False).astype(bool)
    if live is not None:
        mask &= live
    return np.flatnonzero(mask).astype(np.int64)


def _apply_deletes(
    writer: DataWriter, hits: list[tuple[FileEntry, np.ndarray]], plan: Plan
) -> None:
    for entry, positions in hits:
        result = _delete_positions(writer, entry, positions)
        if result is not None:
            new_entry, n = result
            plan.removes.append(entry)
            if new_entry is not None:
                plan.adds.append(new_entry)
            plan.deleted_rows += n


@dataclass(frozen=True)
class Operation:
    """Base of write operations."""

    name = "operation"
    #: Whether planning reads the head's files (state); appends do not.
    needs_state = True

    def plan(
        self, table: Table, head: SnapshotRecord, state: TableState, writer: DataWriter
    ) -> Plan | None:
        raise NotImplementedError


@dataclass(frozen=True)
class Append(Operation):
    """Add rows without checking keys."""

    data: pa.Table
    name = "append"
    needs_state = False

    def plan(
        self, table: Table, head: SnapshotRecord, state: TableState, writer: DataWriter
    ) -> Plan | None:
        if self.data.num_rows == 0:
            return None
        return Plan(self.name, adds=_write_rows(writer, self.data), added_rows=self.data.num_rows)


@dataclass(frozen=True)
class Insert(Operation):
    """Add rows whose keys must not exist yet."""

    data: pa.Table
    ignore_existing: bool = False
    name = "insert"

    def plan(
        self, table: Table, head: SnapshotRecord, state: TableState, writer: DataWriter
    ) -> Plan | None:
        data = self.data
        keys = list(table.info.primary_keys)
        if data.num_rows and keys:
            scanner = _scanner(table, head, state)
            hits = _matching_keys(scanner, data.select(keys))
            if hits and self.ignore_existing:
                existing = pa.concat_tables([scanner.take_rows(e, p).select(keys) for e, p in hits])
                # join on the keys and a row index only: other columns may be of types
                # (lists, structs) that hash joins cannot carry
                index = data.select(keys).append_column(
                    "__spacesql_i", pa.array(np.arange(data.num_rows, dtype=np.int64))
                )
                kept = index.join(existing, keys=keys, join_type="left anti")
                data = data.take(np.sort(kept.column("__spacesql_i").to_numpy()))
            elif hits:
                entry, pos = hits[0]
                existing = scanner.take_rows(entry, pos[:3])
                raise ConstraintError(
                    f"Primary key(s) already in dataset '{table.name}': "
                    f"{existing.select(keys).to_pylist()}. Use upsert() (INSERT OR "
                    "REPLACE) to replace existing rows."
                )
        if data.num_rows == 0:
            return None
        return Plan(self.name, adds=_write_rows(writer, data), added_rows=data.num_rows)


@dataclass(frozen=True)
class Upsert(Operation):
    """Add rows, replacing those whose key exists."""

    data: pa.Table
    name = "upsert"

    def plan(
        self, table: Table, head: SnapshotRecord, state: TableState, writer: DataWriter
    ) -> Plan | None:
        if self.data.num_rows == 0:
            return None
        keys = table.info.primary_keys
        plan = Plan(self.name)
        hits = _matching_keys(_scanner(table, head, state), self.data.select(list(keys)))
        _apply_deletes(writer, hits, plan)
        plan.adds.extend(_write_rows(writer, self.data))
        plan.added_rows = self.data.num_rows
        return plan


@dataclass(frozen=True)
class Delete(Operation):
    """Remove live rows for which the filter is true (not false, not null)."""

    filter: pc.Expression
    name = "delete"

    def plan(
        self, table: Table, head: SnapshotRecord, state: TableState, writer: DataWriter
    ) -> Plan | None:
        scanner = _scanner(table, head, state)
        plan = Plan(self.name)
        columns = scanner.referenced_columns(self.filter)
        entries = scanner.files(self.filter)
        found = _each_file(lambda e: scanner.match_positions(e, self.filter, columns), entries)
        hits = [(e, pos) for e, pos in zip(entries, found, strict=True) if len(pos)]
        _apply_deletes(writer, hits, plan)
        return plan


@dataclass(frozen=True)
class Update(Operation):
    """Set columns of the live rows matching a filter (to values or expressions)."""

    filter: pc.Expression | None
    values: dict[str, Any] = field(default_factory=dict)
    name = "update"

    def plan(
        self, table: Table, head: SnapshotRecord, state: TableState, writer: DataWriter
    ) -> Plan | None:
        scanner = _scanner(table, head, state)
        schema = scanner.schema
        plan = Plan(self.name)
        hits, parts = [], []
        for entry in scanner.files(self.filter):
            pos = scanner.positions(entry, self.filter).column(POS).to_numpy().astype(np.int64)
            if len(pos):
                hits.append((entry, pos))
                parts.append(scanner.take_rows(entry, pos))
        if not hits:
            return None
        rows = pa.concat_tables(parts)
        for name, value in self.values.items():
            target = schema.field(name)
            try:
                if isinstance(value, pc.Expression):
                    new = pads.dataset(rows).to_table(columns={name: value}).column(name)
                else:
                    new = pa.array([value] * rows.num_rows, type=target.type)
                new = new.cast(target.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"Cannot set column {name!r} ({target.type}) of dataset '{table.name}' "
                    f"to {value!r}: {exc}"
                ) from exc
            if not target.nullable and new.null_count:
                raise SchemaError(f"Column {name!r} is NOT NULL; the update sets it to null.")
            rows = rows.set_column(rows.schema.get_field_index(name), target, new)
        keys = table.info.primary_keys
        if keys and any(k in self.values for k in keys):
            check_keys(rows, keys, dataset=table.name)
            updated = {e.path: p for e, p in hits}
            for e, p in _matching_keys(scanner, rows.select(list(keys))):
                if len(np.setdiff1d(p, updated.get(e.path, np.empty(0, dtype=np.int64)))):
                    raise ConstraintError(
                        f"The update gives rows of dataset '{table.name}' primary keys that "
                        "other rows already have; keys must stay unique."
                    )
        _apply_deletes(writer, hits, plan)
        plan.adds.extend(_write_rows(writer, rows))
        plan.added_rows = rows.num_rows
        return plan


def validate_values(schema: pa.Schema, values: dict[str, Any], *, dataset: str) -> None:
    unknown = [k for k in values if k not in schema.names]
    if unknown:
        raise SchemaError(
            f"Dataset '{dataset}' has no column(s) {unknown} to update (columns: {schema.names})."
        )
    if not values:
        raise SchemaError("update() needs at least one column to set.")
