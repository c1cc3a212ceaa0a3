"""Executing SQL data changes on datasets as engine commits (one snapshot per statement).

DuckDB computes what changes (the rows of an INSERT's SELECT, the positions a DELETE's WHERE
selects, the new rows of an UPDATE); the engine commits it. Row positions are only valid on
the snapshot they were read from, so those commits name it as ``expected_snapshot``; if
another writer committed meanwhile, the statement is run again (by the connection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from spacesql.catalog.duckdb import FILE_COLUMN, POSITION_COLUMN, positions_of
from spacesql.engine.inputs import conform
from spacesql.engine.rewrites import RewriteRows
from spacesql.errors import SchemaError, SqlError
from spacesql.sql.ddl import DDL_HANDLERS, count_result
from spacesql.sql.merge import execute_merge
from spacesql.sql.mview.statements import MVIEW_HANDLERS
from spacesql.sql.routing import Write
from spacesql.sql.translate import (
    delete_rows_query,
    generate,
    number_placeholders,
    update_rows_query,
)

if TYPE_CHECKING:
    from spacesql.sql.host import Host as Connection
    from spacesql.sql.host import Params, Relation

__all__ = ["execute_write"]


def execute_write(
    con: Connection, stmt: exp.Expression, decision: Write, params: Params
) -> Relation | None:
    handler = _HANDLERS[decision.kind]
    return handler(con, stmt, decision.table, params)


# --- INSERT ---------------------------------------------------------------------------


def _with_ctes(stmt: exp.Expression, query: exp.Expression) -> exp.Expression:
    """Carry a write's leading ``WITH`` over to the query that computes its rows."""
    ctes = stmt.args.get("with_") or stmt.args.get("with")
    if ctes is None:
        return query
    query = query.copy()
    assert isinstance(query, exp.Query)
    for cte in ctes.expressions:
        query = query.with_(cte.alias, as_=cte.this.copy(), recursive=ctes.args.get("recursive"))
    return query


def _dedupe_keys(data: pa.Table, keys: list[str]) -> pa.Table:
    """Keep the first row of each key (INSERT OR IGNORE semantics within one statement)."""
    if not keys or data.num_rows == 0:
        return data
    indexed = data.append_column("__spacesql_i", pa.array(range(data.num_rows), pa.int64()))
    first = indexed.group_by(keys, use_threads=False).aggregate([("__spacesql_i", "min")])
    return data.take(np.sort(first.column("__spacesql_i_min").to_numpy()))


def _insert(con: Connection, stmt: exp.Expression, name: str, params: Params) -> Any:
    stmt = number_placeholders(stmt)
    assert isinstance(stmt, exp.Insert)
    if stmt.args.get("returning") is not None:
        raise SqlError("INSERT ... RETURNING is not supported on spacesql tables.")
    ds = con.dataset(name)
    schema = ds.schema
    source = stmt.expression
    if isinstance(source, exp.Values):
        query: exp.Expression = exp.select("*").from_(
            exp.Values(
                expressions=source.expressions,
                alias=exp.TableAlias(this=exp.to_identifier("__spacesql_values")),
            )
        )
    elif isinstance(source, exp.Query):
        query = source  # type: ignore[assignment]
    else:
        raise SqlError(f"Unsupported INSERT source into '{name}': {generate(stmt)!r}.")
    data = con.query_arrow(con.register_read(_with_ctes(stmt, query)), params)
    listed = _listed_columns(stmt)
    data = _map_columns(stmt, data, schema, name)
    runner = ds.local()
    keys = ds.primary_keys
    conflict = stmt.args.get("conflict")
    alternative = (stmt.args.get("alternative") or "").upper()
    if (alternative or conflict is not None) and not keys:
        raise SchemaError(
            f"Table '{name}' has no primary key, so INSERT OR {alternative or 'ON CONFLICT'} "
            "has nothing to match; use a plain INSERT."
        )
    if isinstance(conflict, exp.OnConflict):
        _check_conflict_target(conflict, keys, name)
    if alternative == "REPLACE" and listed is not None and set(listed) != set(schema.names):
        # DuckDB updates only the listed columns of an existing row
        sets = [
            exp.EQ(this=exp.column(c), expression=exp.column(c, table="excluded"))
            for c in listed
            if c not in keys
        ]
        return _insert_do_update(con, exp.OnConflict(expressions=sets), name, data, params)
    if alternative == "REPLACE":
        result = runner.upsert(data)
    elif alternative == "IGNORE" or (
        isinstance(conflict, exp.OnConflict) and not conflict.expressions
    ):
        result = runner.insert(_dedupe_keys(data, keys), ignore_existing=True)
    elif isinstance(conflict, exp.OnConflict):
        return _insert_do_update(con, conflict, name, data, params)
    elif alternative:
        raise SqlError(f"INSERT OR {alternative} is not supported; use OR REPLACE or OR IGNORE.")
    else:
        result = runner.insert(data)
    return count_result(con, result.added_rows)


def _listed_columns(stmt: exp.Insert) -> list[str] | None:
    target = stmt.this
    if isinstance(target, exp.Schema) and target.expressions:
        return [c.name for c in target.expressions]
    return None


def _check_conflict_target(conflict: exp.OnConflict, keys: list[str], name: str) -> None:
    target = [c.name for c in conflict.args.get("conflict_keys") or []]
    if target and set(target) != set(keys):
        raise SqlError(
            f"ON CONFLICT ({', '.join(target)}): the conflict target must be the primary key "
            f"of '{name}' ({', '.join(keys)}); conflicts are detected on the primary key only."
        )


def _map_columns(stmt: exp.Insert, data: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    target = stmt.this
    if stmt.args.get("by_name"):
        columns = list(data.column_names)
    elif isinstance(target, exp.Schema) and target.expressions:
        columns = [c.name for c in target.expressions]
    else:
        if data.num_columns != len(schema):
            raise SchemaError(
                f"INSERT into '{name}' gives {data.num_columns} values per row but the table "
                f"has {len(schema)} columns {schema.names}; list the columns, e.g. "
                f"INSERT INTO {name} ({', '.join(schema.names[:2])}, ...)."
            )
        columns = list(schema.names)
    unknown = [c for c in columns if c not in schema.names]
    if unknown:
        raise SchemaError(f"Table '{name}' has no column(s) {unknown} (columns: {schema.names}).")
    if len(columns) != data.num_columns:
        raise SchemaError(
            f"INSERT into '{name}' names {len(columns)} columns but gives {data.num_columns} "
            "values per row."
        )
    arrays = dict(zip(columns, data.columns, strict=True))
    full = {f.name: arrays.get(f.name, pa.nulls(data.num_rows, f.type)) for f in schema}
    return conform(pa.table(full), schema, dataset=name)


def _insert_do_update(
    con: Connection, conflict: exp.OnConflict, name: str, data: pa.Table, params: Params
) -> Relation:
    """``ON CONFLICT DO UPDATE SET c = expr``: existing rows joined with their ``excluded``
    counterparts compute the new values; rows without a conflict are inserted."""
    ds = con.dataset(name)
    schema = ds.schema
    keys = ds.primary_keys
    excluded = "__spacesql_excluded"
    con.duckdb.register(excluded, data)
    try:
        view, snapshot = con.register_positions(f"__spacesql_pos_{name}", name)

        def requalify(node: exp.Expression) -> exp.Expression:
            node = node.copy()
            for col in node.find_all(exp.Column):
                if col.table.lower() == "excluded":
                    col.set("table", exp.to_identifier(excluded))
                elif not col.table or col.table == name:
                    col.set("table", exp.to_identifier("__spacesql_target"))
            return node

        sets: dict[str, exp.Expression] = {}
        for eq in conflict.expressions:
            if not isinstance(eq, exp.EQ) or not isinstance(eq.this, exp.Column):
                raise SqlError(f"Unsupported DO UPDATE clause {generate(eq)!r}.")
            if eq.this.name not in schema.names:
                raise SqlError(f"Table '{name}' has no column {eq.this.name!r} to SET.")
            sets[eq.this.name] = requalify(eq.expression)
        target = exp.Table(
            this=exp.to_identifier(view, quoted=True),
            alias=exp.TableAlias(this=exp.to_identifier("__spacesql_target")),
        )
        on = exp.and_(
            *[
                exp.column(k, table="__spacesql_target").eq(exp.column(k, table=excluded))
                for k in keys
            ]
        )
        cols = [
            exp.alias_(sets[f.name], f.name)
            if f.name in sets
            else exp.alias_(exp.column(f.name, table="__spacesql_target"), f.name)
            for f in schema
        ]
        query = exp.select(*cols).from_(target).join(exp.to_table(excluded), on=on)
        where = conflict.args.get("where")
        if where is not None:
            query = query.where(requalify(where.this))
        updated = conform(con.query_arrow(query, params), schema, dataset=name)
        matched = (
            exp.select(*[exp.column(k, table="__spacesql_target") for k in keys])
            .from_(target)
            .join(exp.to_table(excluded), on=on)
        )
        conflicting = con.query_arrow(matched, params)
        fresh = (
            data.join(conflicting.cast(data.select(keys).schema), keys=keys, join_type="left anti")
            .select(schema.names)
            .cast(schema)
        )
        rows = pa.concat_tables([updated, fresh])
        if rows.num_rows == 0:
            return count_result(con, 0)
        result = ds.local().upsert(rows, expected_snapshot=snapshot)
        return count_result(con, result.added_rows)
    finally:
        con.duckdb.unregister(excluded)


# --- DELETE / UPDATE / TRUNCATE ---------------------------------------------------------


def _point_target(select: exp.Select, view: str) -> exp.Select:
    source = select.args["from_"].this if "from_" in select.args else select.args["from"].this
    source.set("this", exp.to_identifier(view, quoted=True))
    return select


def _delete(con: Connection, stmt: exp.Expression, name: str, params: Params) -> Any:
    assert isinstance(stmt, exp.Delete)
    ds = con.dataset(name)
    view, snapshot = con.register_positions(f"__spacesql_pos_{name}", name)
    numbered = number_placeholders(stmt)
    assert isinstance(numbered, exp.Delete)
    select = _with_ctes(numbered, _point_target(delete_rows_query(numbered), view))
    query = con.register_read(select)
    found = con.query_arrow(query, params)
    if found.num_rows == 0:
        return count_result(con, 0)
    op = RewriteRows(positions=positions_of(ds.location, found), operation="delete")
    result = ds.local().commit(op, expected_snapshot=snapshot)
    return count_result(con, result.deleted_rows)


def _update(con: Connection, stmt: exp.Expression, name: str, params: Params) -> Any:
    assert isinstance(stmt, exp.Update)
    ds = con.dataset(name)
    schema = ds.schema
    view, snapshot = con.register_positions(f"__spacesql_pos_{name}", name)
    numbered = number_placeholders(stmt)
    assert isinstance(numbered, exp.Update)
    select = _with_ctes(numbered, _point_target(update_rows_query(numbered, schema.names), view))
    found = con.query_arrow(con.register_read(select), params)
    if found.num_rows == 0:
        return count_result(con, 0)
    pairs = found.select([FILE_COLUMN, POSITION_COLUMN])
    if pairs.group_by([FILE_COLUMN, POSITION_COLUMN]).aggregate([]).num_rows != found.num_rows:
        raise SqlError(
            f"UPDATE of '{name}' matches some rows more than once through its FROM clause; "
            "make the join match each row once."
        )
    rows = conform(found.drop_columns([FILE_COLUMN, POSITION_COLUMN]), schema, dataset=name)
    op = RewriteRows(positions=positions_of(ds.location, found), data=rows, operation="update")
    ds.local().commit(op, expected_snapshot=snapshot)
    return count_result(con, rows.num_rows)


def _truncate(con: Connection, stmt: exp.Expression, name: str, params: Params) -> Any:
    result = con.dataset(name).local().delete(pc.scalar(True))
    return count_result(con, result.deleted_rows)


_HANDLERS = {
    "insert": _insert,
    "delete": _delete,
    "update": _update,
    "truncate": _truncate,
    "merge": execute_merge,
    **DDL_HANDLERS,
    **MVIEW_HANDLERS,
}
