"""Reading a snapshot: file pruning, deletion vectors, projection and record fields."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from spacesql.engine.files import physical_schema, read_deletes
from spacesql.engine.manifest import FileEntry, TableState
from spacesql.engine.records import RecordReader
from spacesql.engine.store import LocalStore
from spacesql.errors import SchemaError

__all__ = ["Scanner", "check_filter"]

POS = "__spacesql_pos"


def check_filter(schema: pa.Schema, filter_: object, *, dataset: str) -> pc.Expression | None:
    """Validate a filter expression against a schema before any work is done."""
    if filter_ is None:
        return None
    if not isinstance(filter_, pc.Expression):
        raise SchemaError(
            f"A filter must be a pyarrow.compute expression such as pc.field('id') == 8, got "
            f"{type(filter_).__name__}."
        )
    try:
        result = schema.empty_table().filter(filter_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaError(
            f"Filter {filter_} does not apply to dataset '{dataset}' "
            f"(columns: {schema.names}): {exc}"
        ) from exc
    del result
    return filter_


class Scanner:
    """Reads rows of one snapshot state.

    Args:
        store: The dataset's files.
        schema: The snapshot's logical schema.
        record_fields: Columns stored in ArrayRecord files.
        state: The snapshot's live files.
    """

    def __init__(
        self,
        store: LocalStore,
        schema: pa.Schema,
        record_fields: tuple[str, ...],
        state: TableState,
        *,
        dataset: str,
    ) -> None:
        self.store = store
        self.schema = schema
        self.record_fields = tuple(r for r in record_fields if r in schema.names)
        self.physical = physical_schema(schema, self.record_fields)
        self.state = state
        self.dataset = dataset

    def _fields(self, fields: Sequence[str] | None) -> list[str]:
        if fields is None:
            return list(self.schema.names)
        if isinstance(fields, str):
            fields = [fields]
        unknown = [f for f in fields if f not in self.schema.names]
        if unknown:
            raise SchemaError(
                f"Dataset '{self.dataset}' has no field(s) {unknown} (fields: {self.schema.names})."
            )
        return list(fields)

    def check(self, filter_: object) -> pc.Expression | None:
        """Validate a filter for this snapshot (columns exist, no record fields)."""
        return self._check(filter_)

    def _check(self, filter_: object) -> pc.Expression | None:
        expr = check_filter(self.schema, filter_, dataset=self.dataset)
        if expr is not None and self.record_fields:
            try:
                self.schema.empty_table().drop_columns(list(self.record_fields)).filter(expr)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise SchemaError(
                    f"Filter {expr} uses a record field of dataset '{self.dataset}' "
                    f"({list(self.record_fields)}); record fields cannot be filtered on."
                ) from None
        return expr

    def files(self, filter_: pc.Expression | None) -> list[FileEntry]:
        return self.state.prune(self.schema, filter_)

    def _file_table(
        self,
        entry: FileEntry,
        columns: list[str],
        filter_: pc.Expression | None,
        *,
        positions: bool = False,
    ) -> pa.Table:
        """Live rows of one file matching the filter (physical columns, references)."""
        path = self.store.abs(entry.path)
        if entry.deletion_file is None and not positions:
            ds = pads.dataset(path, schema=self.physical, format="parquet")
            return ds.to_table(columns=columns, filter=filter_)
        read_cols = columns
        if filter_ is not None:
            read_cols = [
                c for c in self.physical.names if c not in self.record_fields or c in columns
            ]
        table = pq.read_table(path, columns=read_cols, schema=self.physical)
        pos = np.arange(entry.num_rows, dtype=np.int64)
        if entry.deletion_file is not None:
            mask = read_deletes(self.store, entry).live_mask(entry.num_rows)
            table = table.filter(pa.array(mask))
            pos = pos[mask]
        if positions:
            table = table.append_column(POS, pa.array(pos))
        if filter_ is not None:
            table = table.filter(filter_)
        return table.select([*columns, POS] if positions else columns)

    def referenced_columns(self, filter_: pc.Expression) -> list[str]:
        """Columns a filter reads (found by binding it without each column in turn)."""
        base = self.schema.empty_table()
        used = []
        for name in self.schema.names:
            try:
                base.drop_columns([name]).filter(filter_)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                used.append(name)
        return used

    def live_mask(self, entry: FileEntry) -> np.ndarray | None:
        """Which physical rows of a file are live (None: all of them)."""
        if entry.deletion_file is None:
            return None
        return read_deletes(self.store, entry).live_mask(entry.num_rows)

    def column(self, entry: FileEntry, name: str) -> pa.Array:
        """One physical column of a file, deleted rows included."""
        path = self.store.abs(entry.path)
        table = pq.read_table(path, columns=[name], schema=self.physical)
        return table.column(name).combine_chunks()

    def match_positions(
        self, entry: FileEntry, filter_: pc.Expression, columns: list[str]
    ) -> np.ndarray:
        """Physical positions of the live rows of a file where ``filter_`` is true (null is
        not true), reading only ``columns`` (those the filter references)."""
        live = self.live_mask(entry)
        if columns:
            path = self.store.abs(entry.path)
            table = pq.read_table(path, columns=columns, schema=self.physical)
            values = pads.dataset(table).to_table(columns={"m": filter_}).column("m")
            mask = pc.fill_null(values, False).to_numpy(zero_copy_only=False).astype(bool)
        else:  # a constant filter
            constant = pa.table({"x": [0]}).filter(filter_).num_rows == 1
            mask = np.full(entry.num_rows, constant)
        if live is not None:
            mask &= live
        return np.flatnonzero(mask).astype(np.int64)

    def _resolve_records(self, table: pa.Table, reader: RecordReader) -> pa.Table:
        for name in self.record_fields:
            if name in table.column_names:
                idx = table.schema.get_field_index(name)
                values = reader.read(table.column(name), self.schema.field(name).type)
                table = table.set_column(idx, self.schema.field(name), values)
        return table

    def read_all(self, *, filter_: object = None, fields: Sequence[str] | None = None) -> pa.Table:
        columns = self._fields(fields)
        expr = self._check(filter_)
        entries = self.files(expr)
        out_schema = pa.schema([self.physical.field(c) for c in columns])
        if not entries:
            return self._logical(out_schema.empty_table(), columns)
        if all(e.deletion_file is None for e in entries):
            ds = pads.dataset(
                [self.store.abs(e.path) for e in entries], schema=self.physical, format="parquet"
            )
            table = ds.to_table(columns=columns, filter=expr)
        else:
            with ThreadPoolExecutor(max_workers=4) as pool:
                parts = list(pool.map(lambda e: self._file_table(e, columns, expr), entries))
            table = pa.concat_tables(parts) if parts else out_schema.empty_table()
        return self._logical(table, columns)

    def _logical(self, table: pa.Table, columns: list[str]) -> pa.Table:
        if not any(c in self.record_fields for c in columns):
            return table.cast(pa.schema([self.schema.field(c) for c in columns]))
        reader = RecordReader(str(self.store.root))
        try:
            return self._resolve_records(table, reader)
        finally:
            reader.close()

    def read(
        self,
        *,
        filter_: object = None,
        fields: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Batches of matching live rows, file by file."""
        columns = self._fields(fields)
        expr = self._check(filter_)
        entries = self.files(expr)
        reader = RecordReader(str(self.store.root))
        try:
            for entry in entries:
                table = self._file_table(entry, columns, expr)
                table = self._resolve_records(table, reader) if self.record_fields else table
                yield from table.to_batches(max_chunksize=batch_size)
        finally:
            reader.close()

    def positions(
        self, entry: FileEntry, filter_: pc.Expression | None, columns: Sequence[str] = ()
    ) -> pa.Table:
        """Physical positions (column ``__spacesql_pos``) of live matching rows of a file."""
        return self._file_table(entry, list(columns), filter_, positions=True)

    def take_rows(
        self, entry: FileEntry, positions: np.ndarray, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """Logical rows at physical positions of one file (deleted or not), all columns or
        ``columns``: only those columns and the row groups holding the positions are read."""
        names = [c for c in (columns or self.physical.names) if c in self.physical.names]
        pf = pq.ParquetFile(self.store.abs(entry.path))
        meta = pf.metadata
        starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        positions = np.asarray(positions, dtype=np.int64)
        groups = np.unique(np.searchsorted(starts, positions, side="right") - 1)
        present = [c for c in names if c in pf.schema_arrow.names]
        part = pf.read_row_groups(groups.tolist(), columns=present, use_threads=True)
        # positions in the rows read: the groups read are consecutive in the result
        offsets = np.zeros(meta.num_row_groups, dtype=np.int64)
        offsets[groups] = np.cumsum([0] + [starts[g + 1] - starts[g] for g in groups[:-1]])
        group_of = np.searchsorted(starts, positions, side="right") - 1
        local = positions - starts[group_of] + offsets[group_of]
        taken = part.take(pa.array(local, type=pa.int64()))
        # columns added after this file was written read as nulls (schema evolution)
        table = pa.Table.from_arrays(
            [
                taken.column(c).cast(self.physical.field(c).type)
                if c in present
                else pa.nulls(taken.num_rows, self.physical.field(c).type)
                for c in names
            ],
            schema=pa.schema([self.physical.field(c) for c in names]),
        )
        reader = RecordReader(str(self.store.root))
        try:
            return self._resolve_records(table, reader)
        finally:
            reader.close()
