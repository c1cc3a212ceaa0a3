"""Registering dataset snapshots in a DuckDB connection as lazy views.

A snapshot becomes a view built with DuckDB's relational API (no SQL text, so no paths or
names are ever spliced into SQL): ``read_parquet`` over its live files, which DuckDB scans
with projection and filter pushdown; files with deletion vectors are anti-joined with their
deleted ``(filename, file_row_number)`` pairs; record fields are resolved through their
references by a vectorized Python UDF, which DuckDB only calls when the column is selected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from spacesql.catalog.catalog import Catalog, is_hidden
from spacesql.engine import Dataset
from spacesql.engine.files import read_deletes
from spacesql.engine.format import SnapshotRecord
from spacesql.engine.log import Version
from spacesql.engine.records import REFERENCE_TYPE, RecordReader

__all__ = ["FILE_COLUMN", "POSITION_COLUMN", "Registrar", "View", "file_positions", "positions_of"]

#: Columns of a positions view: absolute data file path and physical row position.
FILE_COLUMN = "__spacesql_file"
POSITION_COLUMN = "__spacesql_pos"
_FILENAME = "filename"  # what read_parquet(filename=true) calls its column
_ROW = "file_row_number"


@dataclass(frozen=True)
class View:
    """A registered snapshot: the view's name and what it shows."""

    name: str
    dataset: str
    uuid: str
    snapshot_id: int
    positions: bool


def file_positions(
    root: str | os.PathLike[str], pairs: Iterable[tuple[str, int]]
) -> dict[str, np.ndarray]:
    """``(absolute file, position)`` pairs of a positions view as the engine addresses rows:
    data file path relative to the dataset root -> positions."""
    out: dict[str, list[int]] = {}
    for path, pos in pairs:
        out.setdefault(os.path.relpath(path, root).replace(os.sep, "/"), []).append(int(pos))
    return {k: np.array(v, dtype=np.int64) for k, v in out.items()}


def positions_of(root: str | os.PathLike[str], table: pa.Table) -> dict[str, np.ndarray]:
    """The rows of a positions view's result (``__spacesql_file``, ``__spacesql_pos``
    columns) as :func:`file_positions` gives them, grouped by Arrow."""
    if table.num_rows == 0:
        return {}
    grouped = table.group_by(FILE_COLUMN, use_threads=False).aggregate([(POSITION_COLUMN, "list")])
    return {
        os.path.relpath(path, root).replace(os.sep, "/"): np.asarray(pos, dtype=np.int64)
        for path, pos in zip(
            grouped.column(FILE_COLUMN).to_pylist(),
            grouped.column(f"{POSITION_COLUMN}_list").to_pylist(),
            strict=True,
        )
    }


def _col(name: str) -> Any:
    return duckdb.ColumnExpression(name)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Registrar:
    """Creates and caches the views of dataset snapshots in one DuckDB connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
        self.con = con
        self.catalog = catalog
        self._views: dict[str, View] = {}
        self._keep: dict[str, list[Any]] = {}
        self._udfs: dict[str, str] = {}

    def resolve(self, name: str, version: Version | None) -> tuple[Dataset, SnapshotRecord]:
        ds = self.catalog.dataset(name)
        return ds, ds.snapshot(version)

    def register(
        self,
        view_name: str,
        name: str,
        version: Version | None = None,
        *,
        positions: bool = False,
    ) -> View:
        """Make ``view_name`` show ``name`` at ``version`` (re-created only if it changed)."""
        ds, record = self.resolve(name, version)
        current = self._views.get(view_name)
        view = View(view_name, name, ds.table.info.uuid, record.snapshot_id, positions)
        if current == view:
            return current
        rel, keep = self.relation(ds, record, positions=positions)
        rel.create_view(view_name, replace=True)
        self._views[view_name] = view
        self._keep[view_name] = keep
        return view

    def unregister(self, view_name: str) -> None:
        if self._views.pop(view_name, None) is not None:
            self.con.execute(f"DROP VIEW IF EXISTS {_quote(view_name)}")
            self._keep.pop(view_name, None)

    def forget_dataset(self, name: str) -> None:
        """Drop every view showing dataset ``name`` (it was dropped or replaced)."""
        for view in [v for v in self._views.values() if v.dataset == name]:
            self.unregister(view.name)

    def refresh(self) -> set[str]:
        """Move registered head views to their dataset's newest snapshot, so DuckDB views
        and macros defined over them see other commits too. Returns the refreshed names."""
        fresh = set()
        for view in list(self._views.values()):
            if view.name != view.dataset or view.positions:
                continue
            if view.dataset not in self.catalog:
                self.unregister(view.name)
                continue
            self.register(view.name, view.dataset)
            fresh.add(view.name)
        return fresh

    def _null(self, field: pa.Field) -> Any:
        """A NULL of the DuckDB type of an Arrow field."""
        typ = self.con.from_arrow(pa.schema([field]).empty_table()).types[0]
        return duckdb.ConstantExpression(None).cast(typ).alias(field.name)

    def relation(
        self, ds: Dataset, record: SnapshotRecord, *, positions: bool = False
    ) -> tuple[duckdb.DuckDBPyRelation, list[Any]]:
        """A lazy relation over one snapshot, and objects it needs kept alive."""
        table = ds.table
        schema = table.schema(record.schema_id)
        physical = pa.schema(
            [pa.field(f.name, REFERENCE_TYPE) if f.name in ds.record_fields else f for f in schema]
        )
        state = table.state(record)
        root = ds.location
        entries = [e for e in state.files.values() if e.live_rows > 0]
        plain = [str(root / e.path) for e in entries if e.deletion_file is None]
        holey = [e for e in entries if e.deletion_file is not None]
        keep: list[Any] = []
        evolved = record.schema_id > 1
        parts = []
        if plain:
            parts.append(
                self.con.read_parquet(
                    plain, filename=positions, file_row_number=positions, union_by_name=evolved
                )
            )
        if holey:
            codes, rows = [], []
            for i, e in enumerate(holey):
                dv = read_deletes(table.store, e)
                codes.append(np.full(len(dv.positions), i, dtype=np.int32))
                rows.append(dv.positions)
            # file names as a dictionary decoded by Arrow (no Python string per deleted row)
            files = pa.DictionaryArray.from_arrays(
                pa.array(np.concatenate(codes), pa.int32()),
                pa.array([str(root / e.path) for e in holey], pa.string()),
            ).cast(pa.string())
            deleted = pa.table({_FILENAME: files, _ROW: pa.array(np.concatenate(rows), pa.int64())})
            keep.append(deleted)
            scan = self.con.read_parquet(
                [str(root / e.path) for e in holey],
                filename=True,
                file_row_number=True,
                union_by_name=evolved,
            )
            parts.append(
                scan.join(self.con.from_arrow(deleted), f"{_FILENAME}, {_ROW}", how="anti")
            )
        if not parts:
            empty = physical.empty_table()
            if positions:
                empty = empty.append_column(_FILENAME, pa.array([], pa.string()))
                empty = empty.append_column(_ROW, pa.array([], pa.int64()))
            keep.append(empty)
            parts.append(self.con.from_arrow(empty))
        rel = None
        for part in parts:
            # every part is projected to the full schema (columns added later read as typed
            # NULLs), so parts with different files always union
            exprs = [_col(f.name) if f.name in part.columns else self._null(f) for f in physical]
            if positions:
                exprs.append(_col(_FILENAME).alias(FILE_COLUMN))
                exprs.append(_col(_ROW).alias(POSITION_COLUMN))
            projected = part.project(*exprs)
            rel = projected if rel is None else rel.union(projected)
        assert rel is not None
        final = []
        for f in schema:
            if is_hidden(f.name) and not positions:
                continue
            if f.name in ds.record_fields:
                udf = self._record_udf(ds)
                final.append(duckdb.FunctionExpression(udf, _col(f.name)).alias(f.name))
            else:
                final.append(_col(f.name))
        if positions:
            final.extend([_col(FILE_COLUMN), _col(POSITION_COLUMN)])
        return rel.project(*final), keep

    def _record_udf(self, ds: Dataset) -> str:
        """A UDF resolving references of this dataset to record bytes."""
        root = str(ds.location)
        name = self._udfs.get(root)
        if name is not None:
            return name
        name = f"__spacesql_records_{len(self._udfs)}"
        reader = RecordReader(root)

        def resolve(refs: pa.Array) -> pa.Array:
            return reader.read(refs, pa.binary())

        ref_type = duckdb.struct_type({"file": "VARCHAR", "row": "BIGINT"})
        self.con.create_function(name, resolve, [ref_type], "BLOB", type="arrow")
        self._udfs[root] = name
        return name
