"""SQL statements of materialized views: CREATE, REFRESH, EXPLAIN REFRESH, DROP."""

from __future__ import annotations

from typing import Any, cast

import pyarrow as pa
from sqlglot import exp

from spacesql.errors import SqlError, TableNotFoundError
from spacesql.sql.dialect import RefreshView
from spacesql.sql.host import Host, Params, Relation
from spacesql.sql.mview.refresh import MaterializedViewError, RefreshResult, ViewManager
from spacesql.sql.translate import generate, literal_value

__all__ = ["MVIEW_HANDLERS", "explain_rows", "manager"]


def manager(con: Host) -> ViewManager:
    """The session's view manager (one per connection)."""
    found = getattr(con, "_view_manager", None)
    if found is None:
        found = ViewManager(con)
        con._view_manager = found  # type: ignore[attr-defined]
    return found


def _options(stmt: exp.Create) -> dict[str, Any]:
    out: dict[str, Any] = {}
    props = stmt.args.get("properties")
    for p in props.expressions if props else []:
        if isinstance(p, exp.MaterializedProperty):
            continue
        if not isinstance(p, exp.Property) or p.args.get("value") is None:
            raise SqlError(
                f"Unknown materialized view option {generate(p)!r}; supported: primary_key."
            )
        key = p.name.lower() if p.name else str(p.this).lower()
        if key != "primary_key":
            raise SqlError(f"Unknown materialized view option {key!r}; supported: primary_key.")
        value = literal_value(p.args["value"], f"WITH ({key} = ...)")
        out[key] = tuple(v.strip() for v in str(value).split(",") if v.strip())
    return out


def _result(con: Host, result: RefreshResult) -> Relation:
    return con.duckdb.from_arrow(result.to_arrow())


def _create(con: Host, stmt: exp.Expr, name: str, params: Params) -> Any:
    assert isinstance(stmt, exp.Create)
    if params:
        raise SqlError("CREATE MATERIALIZED VIEW takes no parameters: its query is stored.")
    options = _options(stmt)
    query = stmt.expression
    if query is None:
        raise SqlError(f"CREATE MATERIALIZED VIEW {name} needs AS SELECT ...")
    if con.catalog.__contains__(name) and not con.catalog.is_view(name):
        if stmt.args.get("exists"):
            return None
        raise SqlError(
            f"'{name}' is a table; a materialized view needs its own name (or DROP TABLE "
            f"{name} first)."
        )
    result = manager(con).create(
        name,
        query,
        primary_key=options.get("primary_key", ()),
        replace=bool(stmt.args.get("replace")),
        if_not_exists=bool(stmt.args.get("exists")),
    )
    return _result(con, result)


def _version(node: exp.Expr | None) -> Any:
    if node is None:
        return None
    return literal_value(cast(exp.Expression, node), "TO VERSION")


def _refresh(con: Host, stmt: exp.Expr, name: str, params: Params) -> Any:
    assert isinstance(stmt, RefreshView)
    _require_view(con, name)
    progress = getattr(con, "progress", None)
    result = manager(con).refresh(
        name,
        to=_version(stmt.args.get("version")),
        full=bool(stmt.args.get("full")),
        progress=progress,
    )
    return _result(con, result)


def explain_rows(result: RefreshResult) -> pa.Table:
    """EXPLAIN REFRESH as (key, value) rows."""
    rows = [
        ("strategy", result.strategy),
        ("reason", result.reason or "-"),
        ("rule", result.rule),
    ]
    for source, (start, end) in result.sources.items():
        rows.append((f"source {source}", f"snapshot {start} -> {end}"))
    rows.append(("changed source rows", str(result.changed_rows)))
    return pa.table({"key": [r[0] for r in rows], "value": [r[1] for r in rows]})


def _explain(con: Host, stmt: exp.Expr, name: str, params: Params) -> Any:
    if isinstance(stmt, exp.Command):  # EXPLAIN <statement> is kept as text by sqlglot
        from spacesql.sql.dialect import parse

        stmt = parse(stmt.expression.name)[0]
    assert isinstance(stmt, RefreshView)
    _require_view(con, name)
    result = manager(con).explain(
        name, to=_version(stmt.args.get("version")), full=bool(stmt.args.get("full"))
    )
    return con.duckdb.from_arrow(explain_rows(result))


def _drop(con: Host, stmt: exp.Expr, name: str, params: Params) -> Any:
    if name not in con.catalog:
        if stmt.args.get("exists"):
            return None
        raise TableNotFoundError(con.catalog._not_found(name))
    if not con.catalog.is_view(name):
        raise SqlError(f"'{name}' is a table, not a materialized view; use DROP TABLE {name}.")
    con.catalog.drop(name)
    con.forget(name)
    return None


def _require_view(con: Host, name: str) -> None:
    if name not in con.catalog:
        raise TableNotFoundError(con.catalog._not_found(name))
    if not con.catalog.is_view(name):
        raise MaterializedViewError(
            f"'{name}' is a table, not a materialized view; REFRESH applies to views made "
            "with CREATE MATERIALIZED VIEW."
        )


MVIEW_HANDLERS = {
    "create_mv": _create,
    "refresh_mv": _refresh,
    "explain_refresh": _explain,
    "drop_mv": _drop,
}
