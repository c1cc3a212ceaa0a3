"""Turning what users pass in (Arrow, pandas, dicts, streams) into conforming Arrow tables."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spacesql.errors import ConstraintError, SchemaError

__all__ = ["check_keys", "check_new_schema", "conform", "to_table"]

_NESTED = (pa.types.is_list, pa.types.is_large_list, pa.types.is_struct, pa.types.is_map)


def to_table(data: Any) -> pa.Table:
    """Any Arrow-like input as a table.

    >>> to_table({"id": [1, 2]}).num_rows
    2
    """
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pa.RecordBatchReader):
        return data.read_all()
    if isinstance(data, dict):
        try:
            return pa.table(data)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SchemaError(f"Cannot turn the dict of columns into Arrow: {exc}") from exc
    if type(data).__module__.startswith("pandas") and hasattr(data, "columns"):
        try:
            return pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SchemaError(f"Cannot turn the DataFrame into Arrow: {exc}") from exc
    if hasattr(data, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(data).read_all()
    if hasattr(data, "__arrow_c_array__"):
        return pa.table(data)
    raise SchemaError(
        f"Cannot read data of type {type(data).__name__}: pass a pyarrow Table, RecordBatch, "
        "RecordBatchReader, an object with __arrow_c_stream__, a pandas DataFrame or a dict "
        "of columns."
    )


def conform(table: pa.Table, schema: pa.Schema, *, dataset: str) -> pa.Table:
    """Reorder and cast columns to the dataset's schema, or explain what does not fit."""
    names = table.column_names
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SchemaError(f"The data has duplicate column names {dup}.")
    extra = [n for n in names if n not in schema.names]
    missing = [n for n in schema.names if n not in names]
    if extra or missing:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unknown columns {extra}")
        raise SchemaError(
            f"The data does not match the schema of dataset '{dataset}': {'; '.join(parts)}. "
            f"Expected columns {schema.names}."
        )
    columns = []
    for f in schema:
        col = table.column(f.name)
        if not col.type.equals(f.type) and col.null_count == len(col):
            # an all-NULL column has whatever type its producer guessed (NULL, INTEGER)
            col = pa.chunked_array([pa.nulls(len(col), f.type)])
        if not col.type.equals(f.type):
            try:
                col = col.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise SchemaError(
                    f"Column {f.name!r} has type {col.type}, which does not convert to the "
                    f"dataset's type {f.type} ({exc}). Cast it before writing."
                ) from exc
        if not f.nullable and col.null_count:
            raise SchemaError(f"Column {f.name!r} is NOT NULL but the data has nulls.")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def check_keys(table: pa.Table, keys: tuple[str, ...], *, dataset: str) -> None:
    """Primary keys must be non-null and unique within the data."""
    if not keys or table.num_rows == 0:
        return
    for k in keys:
        nulls = table.column(k).null_count
        if nulls:
            raise ConstraintError(
                f"Primary key column {k!r} of dataset '{dataset}' has {nulls} null value(s); "
                "every row needs a key."
            )
    if len(keys) == 1 and _strictly_increasing(table.column(keys[0])):
        return  # sorted distinct keys (ids from a sequence): no hash table needed
    counts = table.select(list(keys)).group_by(list(keys)).aggregate([([], "count_all")])
    if counts.num_rows != table.num_rows:
        dups = counts.filter(pc.field("count_all") > 1).drop(["count_all"]).slice(0, 3)
        raise ConstraintError(
            f"Duplicate primary key(s) in the data for dataset '{dataset}', e.g. "
            f"{dups.to_pylist()}; each key may appear once."
        )


def _strictly_increasing(column: pa.ChunkedArray) -> bool:
    t = column.type
    if not (pa.types.is_integer(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)):
        return False
    values = column.combine_chunks().to_numpy(zero_copy_only=False)
    return bool(len(values) < 2 or (values[1:] > values[:-1]).all())


def check_new_schema(
    schema: pa.Schema, primary_keys: tuple[str, ...], record_fields: tuple[str, ...]
) -> None:
    """Validate the schema, keys and record fields given to Dataset.create."""
    if not isinstance(schema, pa.Schema):
        raise SchemaError(f"schema must be a pyarrow.Schema, got {type(schema).__name__}.")
    if len(set(schema.names)) != len(schema.names):
        raise SchemaError(f"The schema has duplicate column names: {schema.names}.")
    for k in primary_keys:
        if k not in schema.names:
            raise SchemaError(
                f"Primary key {k!r} is not a column of the schema (columns: {schema.names})."
            )
        t = schema.field(k).type
        if any(p(t) for p in _NESTED) or pa.types.is_floating(t):
            raise SchemaError(
                f"Primary key {k!r} has type {t}; keys must be integers, strings, dates, "
                "timestamps, decimals or binaries."
            )
        if k in record_fields:
            raise SchemaError(f"Column {k!r} cannot be both a primary key and a record field.")
    if len(set(primary_keys)) != len(primary_keys):
        raise SchemaError(f"Primary keys repeat a column: {list(primary_keys)}.")
    if len(set(record_fields)) != len(record_fields):
        raise SchemaError(f"Record fields repeat a column: {list(record_fields)}.")
    for r in record_fields:
        if r not in schema.names:
            raise SchemaError(
                f"Record field {r!r} is not a column of the schema (columns: {schema.names})."
            )
        t = schema.field(r).type
        if not (pa.types.is_binary(t) or pa.types.is_large_binary(t)):
            raise SchemaError(
                f"Record field {r!r} has type {t}; record fields hold bytes, so the column "
                "must be binary or large_binary (serialize other values first)."
            )
