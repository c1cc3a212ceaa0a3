"""Translation of parsed statements: version references, metadata functions, and the queries
that find the rows a write touches. Pure functions on sqlglot trees.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.errors import ErrorLevel

from spacesql.catalog.duckdb import FILE_COLUMN, POSITION_COLUMN
from spacesql.errors import SqlError
from spacesql.sql.dialect import SpaceSQL
from spacesql.sql.routing import dataset_tables, is_table_function, table_refs

__all__ = [
    "FILE",
    "POS",
    "FunctionRef",
    "TableRef",
    "delete_rows_query",
    "generate",
    "literal_value",
    "number_placeholders",
    "rewrite_references",
    "update_rows_query",
]

FILE = FILE_COLUMN
POS = POSITION_COLUMN

Version = int | str | dt.datetime


@dataclass(frozen=True)
class TableRef:
    """A dataset read by a statement, at a version (None: the current head)."""

    name: str
    version: Version | None


@dataclass(frozen=True)
class FunctionRef:
    """A metadata table function call with literal arguments."""

    function: str
    args: tuple[Any, ...]


def generate(stmt: exp.Expression) -> str:
    """SQL text for DuckDB; anything the generator cannot express is an error, not dropped."""
    return stmt.sql(dialect=SpaceSQL, unsupported_level=ErrorLevel.RAISE)


def literal_value(node: exp.Expression, what: str) -> Any:
    """The Python value of a literal (numbers, strings, TIMESTAMP '...', NULL).

    >>> from sqlglot import parse_one
    >>> literal_value(parse_one("3"), "version"), literal_value(parse_one("'v1'"), "version")
    (3, 'v1')
    """
    if isinstance(node, exp.Neg):
        value = literal_value(node.this, what)
        return -value
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        text = node.this
        return float(text) if any(c in text for c in ".eE") else int(text)
    if (
        isinstance(node, exp.Cast)
        and isinstance(node.this, exp.Literal)
        and node.to.is_type(
            exp.DataType.Type.TIMESTAMP,
            exp.DataType.Type.TIMESTAMPTZ,
            exp.DataType.Type.TIMESTAMPNTZ,
            exp.DataType.Type.DATE,
        )
    ):
        try:
            return dt.datetime.fromisoformat(node.this.this)
        except ValueError:
            raise SqlError(f"Invalid timestamp {node.this.this!r} in {what}.") from None
    raise SqlError(
        f"{what} must be a literal value (a number, a string or TIMESTAMP '...'), got "
        f"{node.sql(dialect=SpaceSQL)!r}."
    )


def _version(table: exp.Table) -> Version | None:
    when = table.args.get("when")
    if when is None:
        return None
    if not isinstance(when, exp.HistoricalData) or str(when.this).upper() != "AT":
        raise SqlError(
            f"Unsupported time travel clause on '{table.name}': "
            f"{when.sql(dialect=SpaceSQL)}. Use AT (VERSION => n | 'tag') or "
            "AT (TIMESTAMP => TIMESTAMP '...')."
        )
    kind = str(when.args.get("kind") or "").upper()
    value = literal_value(when.expression, f"AT ({kind} => ...) on '{table.name}'")
    if kind == "VERSION":
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise SqlError(f"AT (VERSION => ...) takes a snapshot id or a tag, got {value!r}.")
        return value
    if kind == "TIMESTAMP":
        if isinstance(value, str):
            value = literal_value(
                exp.Cast(this=exp.Literal.string(value), to=exp.DataType.build("TIMESTAMP")),
                "AT (TIMESTAMP => ...)",
            )
        if not isinstance(value, dt.datetime):
            raise SqlError(f"AT (TIMESTAMP => ...) takes a timestamp, got {value!r}.")
        return value
    raise SqlError(f"Unsupported AT ({kind} => ...); use VERSION or TIMESTAMP.")


def rewrite_references(
    stmt: exp.Expression,
    is_dataset: Callable[[str], bool],
    view_for: Callable[[TableRef], str],
    function_view: Callable[[FunctionRef], str],
) -> tuple[exp.Expression, bool]:
    """Point dataset references with ``AT (...)`` and metadata function calls at registered
    views. Returns the statement and whether it changed (if not, run the original text)."""
    changed = False
    if not _needs_rewrite(stmt):
        for table in dataset_tables(stmt, is_dataset):
            view_for(TableRef(table.name, None))
        return stmt, False
    stmt = stmt.copy()
    for table in dataset_tables(stmt, is_dataset):
        version = _version(table)
        if version is None:
            view_for(TableRef(table.name, None))
            continue
        name = view_for(TableRef(table.name, version))
        _point_at(table, name)
        changed = True
    for table in list(stmt.find_all(exp.Table)):
        func = table.this
        if isinstance(func, exp.Anonymous) and is_table_function(func.name.lower()):
            args = tuple(
                literal_value(a, f"argument of {func.name.lower()}()") for a in func.expressions
            )
            name = function_view(FunctionRef(func.name.lower(), args))
            _point_at(table, name, alias=func.name.lower())
            changed = True
    return stmt, changed


def _needs_rewrite(stmt: exp.Expression) -> bool:
    """Whether a statement has time travel or metadata functions (else it runs as written)."""
    plain, functions = table_refs(stmt)
    return bool(functions) or any(t.args.get("when") is not None for t in plain)


def _point_at(table: exp.Table, view: str, *, alias: str | None = None) -> None:
    if not table.alias:
        table.set("alias", exp.TableAlias(this=exp.to_identifier(alias or table.name)))
    table.set("this", exp.to_identifier(view, quoted=True))
    table.set("when", None)


def number_placeholders(stmt: exp.Expression) -> exp.Expression:
    """Turn ``?`` into ``$1, $2, ...`` in order, so parts of a statement can be moved around
    without changing which parameter binds where.

    >>> from spacesql.sql.dialect import parse
    >>> generate(number_placeholders(parse("UPDATE t SET b = ? WHERE a = ?")[0]))
    'UPDATE t SET b = $1 WHERE a = $2'
    """
    stmt = stmt.copy()
    n = 0
    for ph in list(stmt.find_all(exp.Placeholder)):
        if ph.this is None:
            n += 1
            ph.replace(exp.Placeholder(this=str(n)))
    return stmt


def _target_select(table: exp.Table, columns: Sequence[Any]) -> exp.Select:
    qualifier = table.alias_or_name
    source = exp.Table(
        this=exp.to_identifier(table.name), alias=exp.TableAlias(this=exp.to_identifier(qualifier))
    )
    cols = [exp.column(FILE, table=qualifier), exp.column(POS, table=qualifier), *columns]
    return exp.select(*cols).from_(source)


def delete_rows_query(stmt: exp.Delete) -> exp.Select:
    """``SELECT file, pos FROM t [, using...] WHERE ...`` for a DELETE.

    >>> from spacesql.sql.dialect import parse
    >>> generate(delete_rows_query(parse("DELETE FROM t WHERE id > 3")[0]))
    'SELECT DISTINCT t.__spacesql_file, t.__spacesql_pos FROM t AS t WHERE id > 3'
    """
    table = stmt.this
    assert isinstance(table, exp.Table)
    select = _target_select(table, [])
    for extra in stmt.args.get("using") or []:
        select = select.join(extra.copy(), join_type="CROSS")
    where = stmt.args.get("where")
    if where is not None:
        select = select.where(where.this.copy())
    if stmt.args.get("returning") is not None:
        raise SqlError("DELETE ... RETURNING is not supported on spacesql tables.")
    return select.distinct()


def update_rows_query(stmt: exp.Update, columns: Sequence[str]) -> exp.Select:
    """``SELECT file, pos, <new row> FROM t [FROM ...] WHERE ...`` for an UPDATE.

    >>> from spacesql.sql.dialect import parse
    >>> generate(update_rows_query(parse("UPDATE t SET b = b + 1 WHERE a = 2")[0], ["a", "b"]))
    'SELECT t.__spacesql_file, t.__spacesql_pos, t.a AS a, b + 1 AS b FROM t AS t WHERE a = 2'
    """
    table = stmt.this
    assert isinstance(table, exp.Table)
    qualifier = table.alias_or_name
    sets: dict[str, exp.Expression] = {}
    for eq in stmt.expressions:
        if not isinstance(eq, exp.EQ) or not isinstance(eq.this, exp.Column):
            raise SqlError(f"Unsupported SET clause {eq.sql(dialect=SpaceSQL)!r}.")
        name = eq.this.name
        if name not in columns:
            raise SqlError(
                f"Table '{table.name}' has no column {name!r} to SET (columns: {list(columns)})."
            )
        if name in sets:
            raise SqlError(f"Column {name!r} is SET twice.")
        sets[name] = eq.expression.copy()
    exprs: list[Any] = [
        exp.alias_(sets[c], c) if c in sets else exp.alias_(exp.column(c, table=qualifier), c)
        for c in columns
    ]
    select = _target_select(table, exprs)
    source = stmt.args.get("from") or stmt.args.get("from_")
    if source is not None:
        select = select.join(source.this.copy(), join_type="CROSS")
    where = stmt.args.get("where")
    if where is not None:
        select = select.where(where.this.copy())
    if stmt.args.get("returning") is not None:
        raise SqlError("UPDATE ... RETURNING is not supported on spacesql tables.")
    return select
