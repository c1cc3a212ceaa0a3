"""The runner ``ds.local()``: reads and writes of one dataset, executed in this process."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spacesql.engine.access import RandomAccess
from spacesql.engine.changes import ChangeSet, diff_states
from spacesql.engine.dataset import CommitResult, Dataset
from spacesql.engine.inputs import check_keys, conform, to_table
from spacesql.engine.log import Version
from spacesql.engine.operations import (
    Append,
    Delete,
    Insert,
    Operation,
    Update,
    Upsert,
    validate_values,
)
from spacesql.engine.scan import Scanner
from spacesql.engine.table import Table
from spacesql.errors import ConstraintError, SchemaError

__all__ = ["LocalRunner"]


class LocalRunner:
    """Reads and writes of one dataset, executed in this process."""

    def __init__(self, dataset: Dataset) -> None:
        self._ds = dataset

    @property
    def _table(self) -> Table:
        return self._ds.table

    def commit(self, op: Operation, *, expected_snapshot: int | None = None) -> CommitResult:
        """Commit an operation object (see ``spacesql.engine.operations``); with
        ``expected_snapshot``, a moved branch head raises CommitConflictError."""
        return self._commit(op, expected_snapshot=expected_snapshot)

    def _commit(self, op: Operation, *, expected_snapshot: int | None = None) -> CommitResult:
        record = self._table.commit(
            op.plan,
            branch=self._ds.current_branch,
            expected_snapshot=expected_snapshot,
            needs_state=op.needs_state,
        )
        if record is None:
            return CommitResult(None, op.name)
        return CommitResult(
            record.snapshot_id, op.name, record.summary.added_rows, record.summary.deleted_rows
        )

    def _data(self, data: Any, *, keyed: bool) -> pa.Table:
        schema = self._ds.schema
        table = conform(to_table(data), schema, dataset=self._ds.name)
        if keyed:
            check_keys(table, self._table.info.primary_keys, dataset=self._ds.name)
        else:
            for k in self._table.info.primary_keys:
                if table.column(k).null_count:
                    raise ConstraintError(
                        f"Primary key column {k!r} of dataset '{self._ds.name}' has null "
                        "values; every row needs a key."
                    )
        return table

    # --- writes ------------------------------------------------------------------------

    def append(self, data: Any, *, expected_snapshot: int | None = None) -> CommitResult:
        """Add rows without checking whether their keys exist."""
        return self._commit(
            Append(self._data(data, keyed=False)), expected_snapshot=expected_snapshot
        )

    def insert(
        self,
        data: Any,
        *,
        ignore_existing: bool = False,
        expected_snapshot: int | None = None,
    ) -> CommitResult:
        """Add rows; fails, writing nothing, if any key repeats or already exists (with
        ``ignore_existing``, rows whose key exists are skipped instead)."""
        return self._commit(
            Insert(self._data(data, keyed=True), ignore_existing),
            expected_snapshot=expected_snapshot,
        )

    def upsert(self, data: Any, *, expected_snapshot: int | None = None) -> CommitResult:
        """Add rows, replacing the rows whose primary key exists."""
        if not self._table.info.primary_keys:
            raise SchemaError(
                f"Dataset '{self._ds.name}' has no primary key, so upsert cannot match rows; "
                "use append() or delete() then append()."
            )
        return self._commit(
            Upsert(self._data(data, keyed=True)), expected_snapshot=expected_snapshot
        )

    def delete(
        self, filter_: pc.Expression, *, expected_snapshot: int | None = None
    ) -> CommitResult:
        """Delete the rows for which ``filter_`` is true (null counts as false)."""
        expr = self.scanner().check(filter_)
        if expr is None:
            raise SchemaError("delete() needs a filter; use pc.scalar(True) to delete all rows.")
        return self._commit(Delete(expr), expected_snapshot=expected_snapshot)

    def update(
        self,
        filter_: pc.Expression | None,
        values: dict[str, Any],
        *,
        expected_snapshot: int | None = None,
    ) -> CommitResult:
        """Set columns (to a value or an expression of the row) where ``filter_`` is true."""
        schema = self._ds.schema
        expr = self.scanner().check(filter_)
        validate_values(schema, values, dataset=self._ds.name)
        return self._commit(Update(expr, dict(values)), expected_snapshot=expected_snapshot)

    # --- reads -------------------------------------------------------------------------

    def scanner(self, version: Version | None = None) -> Scanner:
        rec = self._ds.snapshot(version)
        t = self._table
        return Scanner(
            t.store, t.schema(rec.schema_id), t.info.record_fields, t.state(rec), dataset=t.name
        )

    def read(
        self,
        *,
        filter_: pc.Expression | None = None,
        fields: Sequence[str] | None = None,
        version: Version | None = None,
        batch_size: int | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Matching rows as a stream of record batches."""
        return self.scanner(version).read(filter_=filter_, fields=fields, batch_size=batch_size)

    def read_all(
        self,
        *,
        filter_: pc.Expression | None = None,
        fields: Sequence[str] | None = None,
        version: Version | None = None,
        batch_size: int | None = None,
    ) -> pa.Table:
        """Matching rows as one table (record fields resolved to their values)."""
        table = self.scanner(version).read_all(filter_=filter_, fields=fields)
        if batch_size:
            return pa.Table.from_batches(table.to_batches(max_chunksize=batch_size), table.schema)
        return table

    def random_access(
        self, *, fields: Sequence[str] | None = None, version: Version | None = None
    ) -> RandomAccess:
        """Map-style access by row position: ``len(ra)``, ``ra[i]``, ``ra.take(indices)``."""
        return RandomAccess(self.scanner(version), fields)

    def take(
        self,
        indices: Sequence[int],
        *,
        fields: Sequence[str] | None = None,
        version: Version | None = None,
    ) -> pa.Table:
        """Rows at positions of ``read_all()`` order, without scanning other rows."""
        with self.random_access(fields=fields, version=version) as ra:
            return ra.take(indices)

    def diff(
        self,
        start: Version,
        end: Version | None = None,
        *,
        columns: Sequence[str] | None = None,
        deleted_columns: Sequence[str] | None = None,
        cancel: bool = True,
    ) -> Iterator[ChangeSet]:
        """Rows deleted and inserted going from version ``start`` to ``end``.

        Args:
            start: The older version.
            end: The newer version (default: the head).
            columns: Read only these columns (less is read).
            deleted_columns: Read only these columns of deleted rows (e.g. the key).
            cancel: Drop pairs of identical deleted and inserted rows (a multiset
                difference); False keeps them and skips the comparison.
        """
        a, b = self._ds.snapshot(start), self._ds.snapshot(end)
        t = self._table
        state_a, state_b = t.state(a), t.state(b)
        gone = {p for p in state_a.files if p not in state_b.files}
        return diff_states(
            self.scanner(a.snapshot_id),
            self.scanner(b.snapshot_id),
            state_a,
            state_b,
            end_id=b.snapshot_id,
            removals=t.removals(a, b, gone) if gone else None,
            columns=columns,
            deleted_columns=deleted_columns,
            cancel=cancel,
        )

    def changes(self, start: Version, end: Version | None = None) -> pa.Table:
        """The diff as one table: ``change_type``, ``snapshot_id``, then the row's columns."""
        schema = self.scanner(end).schema
        parts = []
        for cs in self.diff(start, end):
            t = cs.data
            t = t.add_column(0, "snapshot_id", pa.array(cs.snapshot_ids, pa.int64()))
            t = t.add_column(0, "change_type", pa.array([cs.change_type] * t.num_rows, pa.string()))
            parts.append(t)
        if not parts:
            empty = pa.schema([("change_type", pa.string()), ("snapshot_id", pa.int64()), *schema])
            return empty.empty_table()
        return pa.concat_tables(parts)
