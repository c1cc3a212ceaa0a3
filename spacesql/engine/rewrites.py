"""Operations addressed by row position, and schema changes.

SQL ``DELETE`` and ``UPDATE`` find their rows with DuckDB (any WHERE clause, subqueries,
joins) on one snapshot, as ``(file, position)`` pairs. These operations apply such a result;
positions are only meaningful on the snapshot they were computed on, so they are always
committed with ``expected_snapshot`` and never re-planned: a moved head is a
``CommitConflictError`` and the statement is run again by its caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from spacesql.engine.files import DataWriter
from spacesql.engine.format import SnapshotRecord
from spacesql.engine.inputs import check_keys
from spacesql.engine.manifest import TableState
from spacesql.engine.operations import (
    Operation,
    _apply_deletes,
    _matching_keys,
    _scanner,
    _write_rows,
)
from spacesql.engine.table import Plan, Table
from spacesql.errors import ConstraintError, SchemaError

__all__ = ["AddColumns", "Overwrite", "RewriteRows", "WithProperties"]


@dataclass(frozen=True)
class RewriteRows(Operation):
    """Delete rows at positions and add new rows (an UPDATE, or a DELETE without data).

    Attributes:
        positions: Data file path (relative) -> physical positions to delete.
        data: Rows to add (conforming to the schema), or None.
        check_keys: Reject added rows whose key exists among the rows that stay.
    """

    positions: Mapping[str, np.ndarray] = field(default_factory=dict)
    data: pa.Table | None = None
    check_keys: bool = True
    operation: str = "update"
    #: Recorded on the snapshot (e.g. the source snapshots a materialized view reflects).
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.operation

    def plan(
        self, table: Table, head: SnapshotRecord, state: TableState, writer: DataWriter
    ) -> Plan | None:
        plan = Plan(self.operation, properties=dict(self.properties))
        hits = []
        for path, pos in self.positions.items():
            entry = state.files.get(path)
            if entry is None:
                raise SchemaError(
                    f"File {path} is not part of snapshot {head.snapshot_id} of "
                    f"'{table.name}'; the positions were computed on another snapshot."
                )
            hits.append((entry, np.unique(np.asarray(pos, dtype=np.int64))))
        keys = table.info.primary_keys
        data = self.data
        if data is not None and data.num_rows and keys and self.check_keys:
            check_keys(data, keys, dataset=table.name)
            deleted = {e.path: p for e, p in hits}
            for e, p in _matching_keys(_scanner(table, head, state), data.select(list(keys))):
                if len(np.setdiff1d(p, deleted.get(e.path, np.empty(0, dtype=np.int64)))):
                    raise ConstraintError(
                        f"The change gives rows of '{table.name}' primary keys that other "
                        "rows already have; keys must stay unique."
                    )
        _apply_deletes(writer, hits, plan)
        if data is not None and data.num_rows:
            plan.adds.extend(_write_rows(writer, data))
            plan.added_rows = data.num_rows
        return plan


@dataclass(frozen=True)
class AddColumns(Operation):
    """Add nullable columns at the end of the schema (older files read them as null)."""

    fields: tuple[pa.Field, ...]
    name = "add_columns"

    def plan(
        self, table: Table, head: SnapshotRecord, state: TableState, writer: DataWriter
    ) -> Plan | None:
        schema = table.schema(head.schema_id)
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise SchemaError(f"ADD COLUMN repeats a column name: {names}.")
        for f in self.fields:
            if f.name in schema.names:
                raise SchemaError(f"Table '{table.name}' already has a column {f.name!r}.")
        new = pa.schema(
            [*schema, *(f.with_nullable(True) for f in self.fields)], metadata=schema.metadata
        )
        schema_id = head.schema_id + 1
        while not table.write_schema(schema_id, new):
            if table.schema(schema_id).equals(new):
                break
            schema_id += 1
        return Plan(self.name, schema_id=schema_id)


@dataclass(frozen=True)
class Overwrite(Operation):
    """Replace every row with ``data`` (a full recompute of a materialized view).

    Attributes:
        data: The new rows (conforming to the schema).
        properties: Recorded on the snapshot.
    """

    data: pa.Table
    properties: Mapping[str, str] = field(default_factory=dict)
    operation: str = "overwrite"

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.operation

    def plan(
        self, table: Table, head: SnapshotRecord, state: TableState, writer: DataWriter
    ) -> Plan | None:
        keys = table.info.primary_keys
        if keys and self.data.num_rows:
            check_keys(self.data, keys, dataset=table.name)
        plan = Plan(self.operation, properties=dict(self.properties))
        plan.removes.extend(state.files.values())
        plan.deleted_rows = sum(e.live_rows for e in state.files.values())
        if self.data.num_rows:
            plan.adds.extend(_write_rows(writer, self.data))
            plan.added_rows = self.data.num_rows
        return plan


@dataclass(frozen=True)
class WithProperties(Operation):
    """Another operation, recording ``properties`` on its snapshot (what an import or a sync
    changed, where it came from).

    >>> from spacesql.engine.operations import Append
    >>> WithProperties(Append(pa.table({"id": [1]})), {"source": "export.json"}).name
    'append'
    """

    inner: Operation
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def needs_state(self) -> bool:  # type: ignore[override]
        return self.inner.needs_state

    def plan(
        self, table: Table, head: SnapshotRecord, state: TableState, writer: DataWriter
    ) -> Plan | None:
        plan = self.inner.plan(table, head, state, writer)
        if plan is not None:
            plan.properties.update(self.properties)
        return plan
