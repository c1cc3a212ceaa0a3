"""``spacesql duckdb-init``: plain SQL views for the stock DuckDB shell (read-only)."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa

from spacesql.catalog import Catalog
from spacesql.catalog.catalog import is_hidden
from spacesql.engine import Dataset
from spacesql.engine.format import SnapshotRecord
from spacesql.sql.rendering import identifier, render, string_literal

__all__ = ["duckdb_init_script"]


@dataclass(frozen=True)
class _Delete:
    file: str
    path: str


@dataclass(frozen=True)
class _View:
    name: str
    columns: str
    files: list[str]
    deletes: list[_Delete]
    evolved: bool
    empty: str


def _view(name: str, ds: Dataset, record: SnapshotRecord) -> _View:
    table = ds.table
    # a materialized view's hidden state columns are not shown (as in spacesql.connect)
    full = table.schema(record.schema_id)
    schema = pa.schema([f for f in full if not is_hidden(f.name)])
    state = table.state(record)
    root = ds.location
    live = [e for e in state.files.values() if e.live_rows > 0]
    files = [string_literal(str(root / e.path)) for e in live]
    deletes = [
        _Delete(string_literal(str(root / e.path)), string_literal(str(root / e.deletion_file)))
        for e in live
        if e.deletion_file is not None
    ]
    con = duckdb.connect()
    try:
        types = [str(t) for t in con.from_arrow(schema.empty_table()).types]
    finally:
        con.close()
    empty = ", ".join(
        f"CAST(NULL AS {t}) AS {identifier(f.name)}" for f, t in zip(schema, types, strict=True)
    )
    return _View(
        name=identifier(name),
        columns=", ".join(identifier(f.name) for f in schema),
        files=files,
        deletes=deletes,
        evolved=record.schema_id > 1,
        empty=empty,
    )


def duckdb_init_script(catalog: Catalog) -> str:
    """Views ``<table>`` (current snapshot) and ``<table>__<tag>`` (each tag)."""
    views = []
    for name in catalog.names():
        ds = catalog.dataset(name)
        views.append(_view(name, ds, ds.snapshot()))
        for tag, snapshot_id in sorted(ds.table.log.tags().items()):
            views.append(_view(f"{name}__{tag}", ds, ds.snapshot(snapshot_id)))
    return render("duckdb_init.sql.j2", catalog=str(catalog.path), views=views)
