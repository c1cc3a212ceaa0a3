"""Routing: what to do with one parsed statement. A pure function, no I/O.

Every statement gets exactly one decision:

* :class:`PassThrough`: DuckDB runs the original text untouched (no dataset involved);
* :class:`Query`: DuckDB runs it after the datasets it reads are registered as views (a
  SELECT, but also ``COPY (SELECT ...) TO``, ``INSERT INTO temp_table SELECT ... FROM ds``);
* :class:`Write`: spacesql turns it into an engine commit (or catalog change);
* :class:`Reject`: it touches a dataset in a way spacesql does not support, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlglot import exp

from spacesql.sql.dialect import Call, RefreshView

__all__ = [
    "METADATA_FUNCTIONS",
    "PROCEDURES",
    "TABLE_FUNCTIONS",
    "Decision",
    "PassThrough",
    "Query",
    "Reject",
    "Write",
    "dataset_tables",
    "is_table_function",
    "route",
    "table_refs",
]

#: Table functions over catalog metadata.
METADATA_FUNCTIONS = frozenset(
    {
        "spacesql_snapshots",
        "spacesql_tags",
        "spacesql_branches",
        "spacesql_files",
        "spacesql_changes",
        "spacesql_tables",
    }
)
#: Table functions added by integrations (``spacesql_read_labelstudio``, ...), registered
#: through ``spacesql.session.metadata.register_table_function``.
TABLE_FUNCTIONS: set[str] = set()


def is_table_function(name: str) -> bool:
    """Whether ``FROM name(...)`` is one of spacesql's table functions."""
    return name in METADATA_FUNCTIONS or name in TABLE_FUNCTIONS


#: Procedures for ``CALL``.
PROCEDURES = frozenset(
    {
        "spacesql_tag",
        "spacesql_untag",
        "spacesql_branch",
        "spacesql_drop_branch",
        "spacesql_use_branch",
        "spacesql_compact",
        "spacesql_expire_snapshots",
        "spacesql_remove_orphan_files",
    }
)

WriteKind = Literal[
    "insert",
    "delete",
    "update",
    "merge",
    "create",
    "create_as",
    "drop",
    "alter",
    "truncate",
    "call",
    "create_mv",
    "refresh_mv",
    "explain_refresh",
    "drop_mv",
]


@dataclass(frozen=True)
class PassThrough:
    """Run in DuckDB as written."""


@dataclass(frozen=True)
class Query:
    """Run in DuckDB after registering the datasets (and metadata functions) it reads."""

    tables: tuple[str, ...]


@dataclass(frozen=True)
class Write:
    """A change to a dataset or to the catalog."""

    kind: WriteKind
    table: str


@dataclass(frozen=True)
class Reject:
    """Not supported; the message says why and what to do instead."""

    message: str


Decision = PassThrough | Query | Write | Reject


def _cte_names(stmt: exp.Expression) -> set[str]:
    return {cte.alias_or_name for cte in stmt.find_all(exp.CTE)}


def _is_plain(table: exp.Table) -> bool:
    return (
        not table.args.get("db")
        and not table.args.get("catalog")
        and isinstance(table.this, exp.Identifier)
    )


def dataset_tables(stmt: exp.Expression, is_dataset: Callable[[str], bool]) -> list[exp.Table]:
    """Table references in ``stmt`` that name datasets (CTEs shadow datasets).

    >>> from spacesql.sql.dialect import parse
    >>> [t.name for t in dataset_tables(parse("SELECT * FROM a JOIN b USING (id)")[0],
    ...                                 lambda n: n == "a")]
    ['a']
    """
    return [t for t in table_refs(stmt)[0] if is_dataset(t.name)]


def table_refs(stmt: exp.Expression) -> tuple[list[exp.Table], list[str]]:
    """Plain table references (CTE names excluded) and metadata function calls of a
    statement: one walk of the tree, remembered for that tree object (parsed trees are cached
    by text and never modified, so repeated statements skip the walk)."""
    hit = _TABLES.get(id(stmt))
    if hit is not None and hit[0] is stmt:
        return hit[1]
    ctes = _cte_names(stmt)
    plain, functions = [], []
    for t in stmt.find_all(exp.Table):
        if _is_plain(t) and t.name not in ctes:
            plain.append(t)
        elif isinstance(t.this, exp.Anonymous) and is_table_function(t.this.name.lower()):
            functions.append(t.this.name.lower())
    if len(_TABLES) > 1024:
        _TABLES.clear()
    # keyed by identity (trees compare equal by content, and a copy has its own nodes); the
    # tree is kept alive with its entry so an id is never reused while cached
    _TABLES[id(stmt)] = (stmt, (plain, functions))
    return plain, functions


_TABLES: dict[int, tuple[exp.Expression, tuple[list[exp.Table], list[str]]]] = {}


def _functions(stmt: exp.Expression) -> list[str]:
    return table_refs(stmt)[1]


def _target(node: exp.Expression | None) -> exp.Table | None:
    if isinstance(node, exp.Schema):
        node = node.this
    return node if isinstance(node, exp.Table) else None


def _read(stmt: exp.Expression, is_dataset: Callable[[str], bool]) -> Decision:
    tables = dataset_tables(stmt, is_dataset)
    if not tables and not _functions(stmt):
        return PassThrough()
    return Query(tuple(dict.fromkeys(t.name for t in tables)))


def route(stmt: exp.Expression, is_dataset: Callable[[str], bool]) -> Decision:
    """Decide what to do with a statement.

    >>> from spacesql.sql.dialect import parse
    >>> ds = {"images"}.__contains__
    >>> [route(s, ds) for s in parse("SELECT 1; SELECT * FROM images; DELETE FROM images")]
    [PassThrough(), Query(tables=('images',)), Write(kind='delete', table='images')]
    """
    if isinstance(stmt, Call):
        func = stmt.this
        name = func.name.lower() if isinstance(func, exp.Func) else ""
        if name in PROCEDURES:
            return Write("call", name)
        return _read(stmt, is_dataset)

    if isinstance(stmt, (exp.Insert, exp.Delete, exp.Update, exp.Merge, exp.TruncateTable)):
        targets = stmt.expressions if isinstance(stmt, exp.TruncateTable) else [stmt.this]
        target = _target(targets[0]) if targets else None
        if target is None or not _is_plain(target) or not is_dataset(target.name):
            return _read(stmt, is_dataset)
        if target.args.get("when") is not None:
            return Reject(
                f"Cannot write to '{target.name}' at a past version: historic snapshots are "
                "read-only. Write to the table without AT (...), or branch from that version "
                f"with CALL spacesql_branch('{target.name}', 'name', version) and write there "
                f"after CALL spacesql_use_branch('{target.name}', 'name')."
            )
        kind: WriteKind = {
            exp.Insert: "insert",
            exp.Delete: "delete",
            exp.Update: "update",
            exp.TruncateTable: "truncate",
            exp.Merge: "merge",
        }[type(stmt)]  # type: ignore[assignment]
        return Write(kind, target.name)

    if isinstance(stmt, RefreshView):
        target = _target(stmt.this)
        if target is None or not _is_plain(target):
            return Reject("REFRESH MATERIALIZED VIEW needs a plain view name.")
        return Write("refresh_mv", target.name)

    if isinstance(stmt, exp.Create):
        kind_name = (stmt.args.get("kind") or "").upper()
        target = _target(stmt.this)
        if kind_name == "VIEW" and _materialized(stmt):
            if target is None or not _is_plain(target):
                return Reject("CREATE MATERIALIZED VIEW needs a plain name (no schema).")
            return Write("create_mv", target.name)
        temporary = any(
            isinstance(p, exp.TemporaryProperty)
            for p in (stmt.args.get("properties") or exp.Properties()).expressions
        )
        if kind_name == "TABLE" and target is not None and _is_plain(target) and not temporary:
            return Write("create_as" if stmt.expression is not None else "create", target.name)
        if target is not None and _is_plain(target) and is_dataset(target.name):
            return Reject(
                f"'{target.name}' is a spacesql table; CREATE {kind_name} cannot replace or "
                "index it. Pick another name."
            )
        return _read(stmt, is_dataset)

    if isinstance(stmt, exp.Drop):
        kind_name = (stmt.args.get("kind") or "").upper()
        if kind_name == "VIEW" and stmt.args.get("materialized"):
            nodes = stmt.args.get("tables") or [stmt.this]
            target = _target(nodes[0]) if len(nodes) == 1 else None
            if target is None or not _is_plain(target):
                return Reject("Drop materialized views one at a time, by plain name.")
            return Write("drop_mv", target.name)
        for node in stmt.args.get("tables") or [stmt.this]:
            target = _target(node)
            if target is not None and _is_plain(target) and is_dataset(target.name):
                if kind_name != "TABLE":
                    return Reject(f"'{target.name}' is a table; use DROP TABLE {target.name}.")
                if len(stmt.args.get("tables") or []) > 1:
                    return Reject("Drop spacesql tables one statement at a time.")
                return Write("drop", target.name)
        return PassThrough()

    if isinstance(stmt, exp.Alter):
        target = _target(stmt.this)
        if target is not None and _is_plain(target) and is_dataset(target.name):
            actions = stmt.args.get("actions") or []
            if actions and all(isinstance(a, exp.ColumnDef) for a in actions):
                return Write("alter", target.name)
            return Reject(
                f"ALTER TABLE {target.name}: only ADD COLUMN is supported on spacesql tables."
            )
        return PassThrough()

    if isinstance(stmt, exp.Copy):
        target = _target(stmt.this)
        if (
            stmt.args.get("kind")
            and target is not None
            and _is_plain(target)
            and is_dataset(target.name)
        ):
            return Reject(
                f"COPY {target.name} FROM is not supported; use INSERT INTO {target.name} "
                "SELECT * FROM read_csv(...) / read_parquet(...) / read_json(...)."
            )
        return _read(stmt, is_dataset)

    if isinstance(stmt, exp.Command):
        return _command(stmt, is_dataset)
    return _read(stmt, is_dataset)


def _materialized(stmt: exp.Create) -> bool:
    props = stmt.args.get("properties")
    if props is None:
        return False
    return any(isinstance(p, exp.MaterializedProperty) for p in props.expressions)


def _command(stmt: exp.Command, is_dataset: Callable[[str], bool]) -> Decision:
    """Statements sqlglot keeps as opaque text: EXPLAIN is unwrapped, others must not touch
    a dataset (checked on tokens, not on text)."""
    from sqlglot.errors import ParseError

    from spacesql.sql.dialect import SpaceSQL, parse

    keyword = str(stmt.this).upper()
    rest = stmt.expression.name if isinstance(stmt.expression, exp.Literal) else ""
    if keyword == "EXPLAIN" and rest:
        inner = rest
        for prefix in ("ANALYZE ", "ANALYSE "):
            if inner.upper().startswith(prefix):
                inner = inner[len(prefix) :]
        try:
            statements = parse(inner)
        except ParseError:
            statements = []
        if len(statements) == 1 and isinstance(statements[0], RefreshView):
            decision = route(statements[0], is_dataset)
            if isinstance(decision, Write):
                return Write("explain_refresh", decision.table)
            return decision
        if len(statements) == 1:
            decision = route(statements[0], is_dataset)
            if isinstance(decision, (Query, PassThrough)):
                return decision
            return Reject("EXPLAIN of a write to a spacesql table is not supported.")
    names = {
        tok.text
        for tok in SpaceSQL().tokenize(rest)
        if tok.token_type.name in ("VAR", "IDENTIFIER")
    }
    touched = sorted(n for n in names if is_dataset(n))
    if touched:
        return Reject(
            f"{keyword} on spacesql table(s) {touched} is not supported; spacesql could not "
            "parse this statement, so it will not pass it to DuckDB."
        )
    return PassThrough()
