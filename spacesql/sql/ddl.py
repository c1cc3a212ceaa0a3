"""SQL DDL and procedures on datasets: CREATE TABLE [AS], DROP TABLE, ALTER TABLE ADD
COLUMN, and ``CALL spacesql_*(...)``."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from spacesql.engine.rewrites import AddColumns
from spacesql.errors import SchemaError, SqlError, TableNotFoundError
from spacesql.sql.translate import generate, literal_value, number_placeholders

if TYPE_CHECKING:
    from spacesql.sql.host import Host as Connection
    from spacesql.sql.host import Params, Relation

__all__ = ["DDL_HANDLERS", "count_result"]


def count_result(con: Connection, n: int) -> Relation:
    """The one-row ``Count`` result DuckDB gives for data changes."""
    return con.duckdb.from_arrow(pa.table({"Count": pa.array([n], pa.int64())}))


# --- DDL ---------------------------------------------------------------------------------


def _properties(stmt: exp.Create) -> dict[str, str]:
    out = {}
    props = stmt.args.get("properties")
    for p in props.expressions if props else []:
        if isinstance(p, exp.TemporaryProperty):
            continue
        if not isinstance(p, exp.Property) or p.args.get("value") is None:
            # a property sqlglot knows under its own class (FORMAT, LOCATION, COMMENT, ...)
            key = generate(p).split("=")[0].strip().lower()
            out[key] = generate(p)
            continue
        key = p.name.lower() if p.name else str(p.this).lower()
        out[key] = str(literal_value(p.args["value"], f"WITH ({key} = ...)"))
    unknown = set(out) - {"primary_key", "record_fields"}
    if unknown:
        raise SqlError(
            f"Unknown table option(s) {sorted(unknown)}; supported: primary_key, record_fields."
        )
    return out


def _split_names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _arrow_fields(defs: list[exp.ColumnDef]) -> list[pa.Field]:
    """Arrow fields for column definitions, typed by DuckDB itself."""
    scratch = duckdb.connect()
    try:
        scratch.execute("SET TimeZone = 'UTC'")
        bare = [exp.ColumnDef(this=d.this.copy(), kind=d.args["kind"].copy()) for d in defs]
        ddl = exp.Create(this=exp.Schema(this=exp.to_table("t"), expressions=bare), kind="TABLE")
        try:
            scratch.execute(generate(ddl))
        except duckdb.Error as exc:
            raise SqlError(f"Invalid column definition: {exc}") from exc
        rel = scratch.sql("SELECT * FROM t")
        schema = (
            rel.to_arrow_table().schema if hasattr(rel, "to_arrow_table") else rel.arrow().schema
        )
    finally:
        scratch.close()
    fields = []
    for d, f in zip(defs, schema, strict=True):
        not_null = any(
            isinstance(
                c.args.get("kind"), (exp.NotNullColumnConstraint, exp.PrimaryKeyColumnConstraint)
            )
            for c in d.args.get("constraints") or []
        )
        fields.append(
            _plain_types(f).with_nullable(not not_null or False)
            if not not_null
            else _plain_types(f).with_nullable(False)
        )
    return fields


def _plain_types(f: pa.Field) -> pa.Field:
    """DuckDB may export string views; datasets store plain strings and binaries."""
    t = f.type
    if t == pa.string_view():
        return f.with_type(pa.string())
    if t == pa.binary_view():
        return f.with_type(pa.binary())
    return f


def _already_there(con: Connection, stmt: exp.Create, name: str) -> bool:
    """True if CREATE ... IF NOT EXISTS finds the table (nothing to do); an error if the
    table exists and the statement neither skips nor replaces it."""
    if name not in con.catalog:
        return False
    if stmt.args.get("exists"):
        return True
    if not stmt.args.get("replace"):
        raise SchemaError(
            f"Table '{name}' already exists; use CREATE TABLE IF NOT EXISTS, "
            "CREATE OR REPLACE TABLE or DROP TABLE first."
        )
    return False


def _create(con: Connection, stmt: exp.Expression, name: str, params: Params) -> Any:
    assert isinstance(stmt, exp.Create)
    props = _properties(stmt)
    if _already_there(con, stmt, name):
        return None
    schema_node = stmt.this
    if not isinstance(schema_node, exp.Schema):
        raise SqlError(f"CREATE TABLE {name} needs column definitions or AS SELECT.")
    defs = [e for e in schema_node.expressions if isinstance(e, exp.ColumnDef)]
    names = [d.name for d in defs]
    for n in names:
        if names.count(n) > 1:
            raise SqlError(f"CREATE TABLE {name}: column {n!r} is defined twice.")
    for d in defs:
        for c in d.args.get("constraints") or []:
            kind = c.args.get("kind")
            if not isinstance(kind, (exp.NotNullColumnConstraint, exp.PrimaryKeyColumnConstraint)):
                raise SqlError(
                    f"Column {d.name!r}: constraint {generate(c)!r} is not supported on "
                    "spacesql tables (only PRIMARY KEY and NOT NULL are enforced)."
                )
    keys = [
        d.name
        for d in defs
        if any(
            isinstance(c.args.get("kind"), exp.PrimaryKeyColumnConstraint)
            for c in d.args.get("constraints") or []
        )
    ]
    for e in schema_node.expressions:
        if isinstance(e, exp.PrimaryKey):
            keys.extend(c.name for c in e.expressions)
        elif not isinstance(e, exp.ColumnDef):
            raise SqlError(f"Unsupported table constraint {generate(e)!r} in CREATE TABLE.")
    if keys and props.get("primary_key") and _split_names(props["primary_key"]) != keys:
        raise SqlError(
            f"CREATE TABLE {name}: PRIMARY KEY ({', '.join(keys)}) and WITH (primary_key = "
            f"'{props['primary_key']}') disagree; give the key once."
        )
    if not keys:
        keys = _split_names(props.get("primary_key"))
    schema = pa.schema(_arrow_fields(defs))
    if name in con.catalog and stmt.args.get("replace"):
        _drop_dataset(con, name)
    con.catalog.create(
        name, schema, primary_keys=keys, record_fields=_split_names(props.get("record_fields"))
    )
    return None


def _create_as(con: Connection, stmt: exp.Expression, name: str, params: Params) -> Any:
    assert isinstance(stmt, exp.Create)
    props = _properties(stmt)
    if _already_there(con, stmt, name):
        return None
    query = number_placeholders(stmt).expression
    data = con.query_arrow(con.register_read(query), params)
    schema = pa.schema([_plain_types(f) for f in data.schema])
    data = data.cast(schema)
    keys = _split_names(props.get("primary_key"))
    if name in con.catalog and stmt.args.get("replace"):
        _drop_dataset(con, name)
    ds = con.catalog.create(
        name, schema, primary_keys=keys, record_fields=_split_names(props.get("record_fields"))
    )
    try:
        result = ds.local().insert(data) if keys else ds.local().append(data)
    except BaseException:
        _drop_dataset(con, name)
        raise
    return count_result(con, result.added_rows)


def _drop_dataset(con: Connection, name: str) -> None:
    con.catalog.drop(name)
    con.forget(name)


def _drop(con: Connection, stmt: exp.Expression, name: str, params: Params) -> Any:
    if name not in con.catalog:
        if stmt.args.get("exists"):
            return None
        raise TableNotFoundError(con.catalog._not_found(name))
    _drop_dataset(con, name)
    return None


def _alter(con: Connection, stmt: exp.Expression, name: str, params: Params) -> Any:
    assert isinstance(stmt, exp.Alter)
    existing = set(con.dataset(name).schema.names)
    defs = [
        d
        for d in stmt.args.get("actions") or []
        if not (d.args.get("exists") and d.name in existing)
    ]
    if not defs:
        return None
    for d in defs:
        for c in d.args.get("constraints") or []:
            raise SqlError(
                f"ALTER TABLE {name} ADD COLUMN {d.name}: constraints and defaults are not "
                f"supported ({generate(c)!r}); new columns are NULL for existing rows."
            )
    fields = tuple(f.with_nullable(True) for f in _arrow_fields(defs))
    con.dataset(name).local().commit(AddColumns(fields))
    con.forget(name)
    return None


# --- CALL --------------------------------------------------------------------------------


def _call(con: Connection, stmt: exp.Expression, name: str, params: Params) -> Any:
    func = stmt.this
    assert isinstance(func, exp.Func)
    args = [literal_value(a, f"argument of {name}()") for a in func.expressions]
    usage = _PROCEDURE_USAGE[name]
    lo, hi = usage[1], usage[2]
    if not lo <= len(args) <= hi or not args or not isinstance(args[0], str):
        raise SqlError(f"Usage: CALL {usage[0]}")
    ds = con.dataset(args[0])
    message: str
    if name == "spacesql_tag":
        ds.add_tag(str(args[1]), args[2] if len(args) > 2 else None)
        message = f"tagged {args[0]} snapshot {ds.snapshot(str(args[1])).snapshot_id} as {args[1]}"
    elif name == "spacesql_untag":
        ds.remove_tag(str(args[1]))
        message = f"removed tag {args[1]}"
    elif name == "spacesql_branch":
        ds.add_branch(str(args[1]), args[2] if len(args) > 2 else None)
        message = f"created branch {args[1]}"
    elif name == "spacesql_use_branch":
        ds.set_current_branch(str(args[1]))
        message = f"{args[0]} reads and writes branch {args[1]} in this connection"
    elif name == "spacesql_drop_branch":
        ds.remove_branch(str(args[1]))
        message = f"removed branch {args[1]}"
    elif name == "spacesql_compact":
        result = ds.compact()
        message = (
            "nothing to compact"
            if not result.committed
            else f"compacted into snapshot {result.snapshot_id}"
        )
    elif name == "spacesql_expire_snapshots":
        expired = ds.expire_snapshots(keep_last=int(args[1]) if len(args) > 1 else 1)
        message = f"expired {len(expired)} snapshot(s)"
    else:
        removed = ds.remove_orphan_files(
            older_than=dt.timedelta(seconds=float(args[1]) if len(args) > 1 else 3600)
        )
        message = f"removed {len(removed)} file(s)"
    return con.duckdb.from_arrow(pa.table({"result": [message]}))


_PROCEDURE_USAGE: dict[str, tuple[str, int, int]] = {
    "spacesql_tag": ("spacesql_tag('table', 'tag' [, version])", 2, 3),
    "spacesql_untag": ("spacesql_untag('table', 'tag')", 2, 2),
    "spacesql_branch": ("spacesql_branch('table', 'branch' [, version])", 2, 3),
    "spacesql_drop_branch": ("spacesql_drop_branch('table', 'branch')", 2, 2),
    "spacesql_use_branch": ("spacesql_use_branch('table', 'branch')", 2, 2),
    "spacesql_compact": ("spacesql_compact('table')", 1, 1),
    "spacesql_expire_snapshots": ("spacesql_expire_snapshots('table' [, keep_last])", 1, 2),
    "spacesql_remove_orphan_files": (
        "spacesql_remove_orphan_files('table' [, older_than_seconds])",
        1,
        2,
    ),
}


DDL_HANDLERS = {
    "create": _create,
    "create_as": _create_as,
    "drop": _drop,
    "alter": _alter,
    "call": _call,
}
