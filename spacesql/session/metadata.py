"""Catalog metadata as tables: ``FROM spacesql_snapshots('t')`` and friends."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from spacesql.errors import SqlError

if TYPE_CHECKING:
    from spacesql.session.connection import Connection

__all__ = ["metadata_table"]

_USAGE = {
    "spacesql_snapshots": ("spacesql_snapshots('table')", 1, 1),
    "spacesql_tags": ("spacesql_tags('table')", 1, 1),
    "spacesql_branches": ("spacesql_branches('table')", 1, 1),
    "spacesql_files": ("spacesql_files('table' [, version])", 1, 2),
    "spacesql_changes": ("spacesql_changes('table', start [, end])", 2, 3),
    "spacesql_tables": ("spacesql_tables()", 0, 0),
}


#: Table functions registered by integrations: name -> (usage, min args, max args, function).
_EXTRA: dict[str, tuple[str, int, int, Callable[[Connection, tuple[Any, ...]], pa.Table]]] = {}


def register_table_function(
    name: str,
    usage: str,
    function: Callable[[Connection, tuple[Any, ...]], pa.Table],
    *,
    min_args: int,
    max_args: int,
) -> None:
    """Make ``FROM name(literal args)`` call ``function(connection, args)`` for its rows."""
    from spacesql.sql.routing import TABLE_FUNCTIONS

    _EXTRA[name] = (usage, min_args, max_args, function)
    TABLE_FUNCTIONS.add(name)


def metadata_table(con: Connection, function: str, args: tuple[Any, ...]) -> pa.Table:
    extra = _EXTRA.get(function)
    if extra is not None:
        usage, lo, hi, fn = extra
        if not lo <= len(args) <= hi:
            raise SqlError(f"Usage: FROM {usage}")
        return fn(con, args)
    usage, lo, hi = _USAGE[function]
    if not lo <= len(args) <= hi or (args and not isinstance(args[0], str)):
        raise SqlError(f"Usage: FROM {usage}")
    if function == "spacesql_tables":
        rows = []
        for name in con.catalog.names():
            ds = con.dataset(name)
            rec = ds.snapshot()
            rows.append(
                {
                    "table_name": name,
                    "snapshot_id": rec.snapshot_id,
                    "rows": rec.summary.total_rows,
                    "files": rec.summary.total_files,
                    "primary_key": ds.primary_keys,
                    "record_fields": ds.record_fields,
                }
            )
        return pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [
                    ("table_name", pa.string()),
                    ("snapshot_id", pa.int64()),
                    ("rows", pa.int64()),
                    ("files", pa.int64()),
                    ("primary_key", pa.list_(pa.string())),
                    ("record_fields", pa.list_(pa.string())),
                ]
            ),
        )
    ds = con.dataset(args[0])
    if function == "spacesql_snapshots":
        return ds.versions()
    if function == "spacesql_tags":
        tags = ds.table.log.tags()
        return pa.table(
            {
                "tag": pa.array(sorted(tags), pa.string()),
                "snapshot_id": pa.array([tags[t] for t in sorted(tags)], pa.int64()),
            }
        )
    if function == "spacesql_branches":
        log = ds.table.log
        latest = log.latest()
        branches = log.branches()
        names = sorted(branches)
        return pa.table(
            {
                "branch": pa.array(names, pa.string()),
                "head_snapshot_id": pa.array(
                    [log.head(branches[n], latest) for n in names], pa.int64()
                ),
                "start_snapshot_id": pa.array(
                    [branches[n].start_snapshot for n in names], pa.int64()
                ),
            }
        )
    if function == "spacesql_files":
        return ds.manifest(args[1] if len(args) > 1 else None)
    return ds.local().changes(args[1], args[2] if len(args) > 2 else None)
