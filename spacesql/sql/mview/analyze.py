"""How a materialized view's query can be maintained: a pure analysis of its sqlglot tree.

:func:`analyze` qualifies the query against the schemas of the tables it reads (``*``
expanded, every column qualified, every table aliased) and classifies it:

* :class:`RowPlan`: one or more ``UNION ALL`` branches ``SELECT ... FROM root [JOIN ...]
  [, UNNEST ...] WHERE ...``; each output row comes from exactly one row of its branch's
  root table, which must have a primary key (stored as hidden columns).
* :class:`AggregatePlan`: ``GROUP BY`` (or ``SELECT DISTINCT``) over such a body, with
  mergeable aggregates (COUNT, SUM, AVG, MIN, MAX) and holistic ones recomputed per group.
* :class:`FullPlan`: anything else, with the reason and the SQL of the node that forces a
  full recompute.

The plans also carry the *full form* of the query: the query computing the visible columns
and the hidden state, used for creation and full recomputes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify

from spacesql.sql.dialect import SpaceSQL

__all__ = [
    "AggSpec",
    "AggregatePlan",
    "Branch",
    "FullPlan",
    "Plan",
    "RowPlan",
    "TableInfo",
    "analyze",
    "sql",
]

N_COLUMN = "__spacesql_n"

#: sqlglot classes of functions whose value changes between calls or queries.
_VOLATILE_CLASSES: tuple[type[exp.Expr], ...] = (
    exp.Rand,
    exp.Randn,
    exp.Uuid,
    exp.CurrentDate,
    exp.CurrentTimestamp,
    exp.CurrentTime,
    exp.CurrentDatetime,
    exp.Localtimestamp,
    exp.CurrentTimestampLTZ,
)


@dataclass(frozen=True)
class TableInfo:
    """What the analysis needs to know about a table the query reads.

    Attributes:
        columns: Visible column name -> DuckDB type (as DuckDB spells it).
        primary_keys: The table's primary key columns (empty: no key).
    """

    columns: Mapping[str, str]
    primary_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class FullPlan:
    """Recomputed in full on each refresh."""

    query: exp.Query
    reason: str
    culprit: str | None = None
    #: The query qualified, ``*`` expanded, items named as DuckDB names them (None if the
    #: analysis could not qualify it): what a view stores, so later source columns do not
    #: change it.
    visible: exp.Query | None = None
    kind = "full"


@dataclass
class Branch:
    """One ``SELECT`` over a root table: its rows are partitioned by root row.

    Attributes:
        select: The qualified select (visible items aliased with their final names).
        root: Alias of the root table in the select.
        root_table: The root's table name.
        root_keys: The root's primary key columns.
        key_columns: Hidden columns holding the root key in the view.
        tables: Alias -> table name of every table the select reads (root included).
        full: The select computing the view's columns for this branch (hidden ones too).
    """

    select: exp.Select
    root: str
    root_table: str
    root_keys: tuple[str, ...]
    key_columns: tuple[str, ...]
    tables: dict[str, str]
    full: exp.Select | None = None


@dataclass(frozen=True)
class RowPlan:
    """Rows maintained per root row: delete the rows of changed roots, insert them anew."""

    branches: list[Branch]
    query: exp.Query
    visible: exp.Query | None = None
    kind = "rows"


@dataclass(frozen=True)
class AggSpec:
    """One aggregate call of the query.

    Attributes:
        kind: ``count_star``, ``count``, ``sum``, ``avg``, ``min``, ``max`` or ``holistic``.
        node: The call as written (with its FILTER, if any).
        arg: Its argument (with the FILTER folded in as a CASE), None for COUNT(*).
        columns: Hidden columns holding its mergeable state.
    """

    kind: str
    node: exp.Expr
    arg: exp.Expr | None
    columns: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregatePlan:
    """Groups merged from the signed change of the body's rows."""

    body: Branch
    groups: list[exp.Expr]
    group_columns: list[str]
    aggs: list[AggSpec]
    #: Visible column name -> expression over hidden group columns and aggregate
    #: placeholders (``__spacesql_agg{i}``).
    items: list[tuple[str, exp.Expr]]
    query: exp.Query
    visible: exp.Query | None = None
    kind = "aggregate"

    @property
    def holistic(self) -> bool:
        return any(a.kind == "holistic" for a in self.aggs)

    @property
    def extremes(self) -> bool:
        return any(a.kind in ("min", "max") for a in self.aggs)


Plan = FullPlan | RowPlan | AggregatePlan


def sql(node: exp.Expr) -> str:
    """DuckDB SQL of a node."""
    return node.sql(dialect=SpaceSQL)


class _Unsupported(Exception):
    def __init__(self, reason: str, node: exp.Expr | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.culprit = None if node is None else sql(node)


def analyze(
    query: exp.Expr,
    tables: Mapping[str, TableInfo],
    *,
    output_names: Sequence[str],
    aggregates: frozenset[str] = frozenset(),
    volatile: frozenset[str] = frozenset(),
    merge_sums: bool = True,
) -> Plan:
    """Classify a view's query.

    Args:
        query: The parsed query.
        tables: The spacesql tables the query may read.
        output_names: The names DuckDB gives the query's columns (the view's columns).
        aggregates: Lower-case names of aggregate functions sqlglot does not know.
        volatile: Lower-case names of functions whose result is not a function of the
            arguments (random, now, ...).
        merge_sums: Merge SUM and AVG as running sums; False recomputes their touched groups
            (for arguments DuckDB cannot sum, such as AVG of a TIMESTAMP).

    Returns:
        The plan. Queries the analysis cannot follow get a :class:`FullPlan` saying why.
    """
    if not isinstance(query, exp.Query):
        return FullPlan(_as_query(query), "the statement is not a query")
    schema: dict[str, object] = {name: dict(info.columns) for name, info in tables.items()}
    try:
        qualified = qualify(
            query.copy(),
            schema=schema,
            dialect=SpaceSQL,
            validate_qualify_columns=True,
            identify=True,
        )
    except (SqlglotError, KeyError, ValueError) as exc:
        return FullPlan(query, f"spacesql could not analyze the query ({exc})")
    assert isinstance(qualified, exp.Query)
    _restore_case(qualified, tables)
    try:
        _rename_outputs(qualified, output_names)
    except _Unsupported as exc:
        return FullPlan(query, exc.reason, exc.culprit)
    visible = qualified.copy()
    try:
        _check_volatile(qualified, volatile)
        plan = _plan(qualified, tables, aggregates, merge_sums)
        return dataclasses.replace(plan, visible=visible)
    except _Unsupported as exc:
        return FullPlan(qualified, exc.reason, exc.culprit, visible)


def _restore_case(query: exp.Expr, tables: Mapping[str, TableInfo]) -> None:
    """sqlglot folds identifiers to lower case for DuckDB's dialect; spacesql's table and
    column names keep theirs (the engine's schemas are case-sensitive)."""
    names = {n.lower(): n for n in tables}
    aliases: dict[str, str] = {}
    for table in query.find_all(exp.Table):
        real = names.get(table.name.lower())
        if real is None or not isinstance(table.this, exp.Identifier):
            continue
        if real != table.name:
            table.set("this", exp.to_identifier(real, quoted=True))
        aliases[table.alias_or_name] = real
    for column in query.find_all(exp.Column):
        real_table = aliases.get(column.table)
        if real_table is None:
            continue
        columns = {c.lower(): c for c in tables[real_table].columns}
        real = columns.get(column.name.lower())
        if real is not None and real != column.name:
            column.set("this", exp.to_identifier(real, quoted=True))


def _as_query(node: exp.Expr) -> exp.Query:
    assert isinstance(node, exp.Query)
    return node


def _rename_outputs(query: exp.Query, names: Sequence[str]) -> None:
    """Alias the visible items with the names DuckDB gives them."""
    selects = _branches(query) if isinstance(query, exp.Union) else [query]
    for select in selects:
        if not isinstance(select, exp.Select):
            continue
        items = select.expressions
        if len(items) != len(names):
            raise _Unsupported(
                f"the query has {len(items)} columns after expanding '*' but DuckDB gives "
                f"{len(names)}"
            )
        for item, name in zip(items, names, strict=True):
            item.replace(exp.alias_(item.unalias().copy(), name, quoted=True))


def _branches(query: exp.Expr) -> list[exp.Expr]:
    if isinstance(query, exp.Union) and not query.args.get("distinct"):
        return [*_branches(query.this), *_branches(query.expression)]
    return [query]


def _check_volatile(query: exp.Expr, volatile: frozenset[str]) -> None:
    for node in query.find_all(exp.Func):
        name = _func_name(node)
        if isinstance(node, _VOLATILE_CLASSES) or name in volatile:
            raise _Unsupported(
                f"{sql(node)} gives a different value on each call or query, so a refresh "
                "cannot reuse earlier results",
                node,
            )


def _func_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return str(node.sql_name()).lower()


def _plan(
    query: exp.Query,
    tables: Mapping[str, TableInfo],
    aggregates: frozenset[str],
    merge_sums: bool = True,
) -> Plan:
    if isinstance(query, exp.SetOperation):
        if not isinstance(query, exp.Union) or query.args.get("distinct"):
            kind = type(query).__name__.upper()
            raise _Unsupported(f"{kind} is not maintained incrementally (UNION ALL is)", query)
        parts = _branches(query)
        branches = []
        for i, part in enumerate(parts):
            if not isinstance(part, exp.Select):
                raise _Unsupported("a UNION ALL branch that is not a plain SELECT", part)
            if _aggregate_calls(part, aggregates) or part.args.get("group"):
                raise _Unsupported("an aggregate inside UNION ALL", part)
            if part.args.get("distinct"):
                raise _Unsupported("DISTINCT inside UNION ALL", part)
            branches.append(_branch(part, tables, i, keyed=True))
        return RowPlan(branches, _row_full_form(branches, tables))
    if not isinstance(query, exp.Select):
        raise _Unsupported("the query is not a SELECT", query)
    calls = _aggregate_calls(query, aggregates)
    distinct = query.args.get("distinct")
    if distinct is not None and distinct.args.get("on") is not None:
        raise _Unsupported("DISTINCT ON", distinct)
    if not calls and query.args.get("group") is None and distinct is None:
        branch = _branch(query, tables, 0, keyed=True)
        return RowPlan([branch], _row_full_form([branch], tables))
    return _aggregate_plan(query, tables, calls, aggregates, merge_sums)


def _common_checks(select: exp.Select) -> None:
    for arg, what in (
        ("with_", "WITH (a common table expression)"),
        ("with", "WITH (a common table expression)"),
        ("order", "ORDER BY"),
        ("limit", "LIMIT"),
        ("offset", "OFFSET"),
        ("qualify", "QUALIFY"),
        ("having", "HAVING"),
        ("sample", "a sample"),
    ):
        node = select.args.get(arg)
        if node is not None:
            raise _Unsupported(f"{what} is not maintained incrementally", node)
    for node in select.find_all(exp.Window):
        raise _Unsupported("a window function is not maintained incrementally", node)
    for node in select.find_all(exp.Select):
        if node is not select:
            raise _Unsupported("a subquery is not maintained incrementally", node)
    for node in select.find_all(exp.Table):
        if node.args.get("when") is not None:
            raise _Unsupported(
                "a table read at a fixed version (AT ...) has no changes to follow", node
            )
    for node in select.find_all(exp.GroupingSets, exp.Rollup, exp.Cube):
        raise _Unsupported("GROUPING SETS, ROLLUP and CUBE are not maintained incrementally", node)


def _branch(
    select: exp.Select, tables: Mapping[str, TableInfo], index: int, *, keyed: bool
) -> Branch:
    _common_checks(select)
    source = select.args.get("from_") or select.args.get("from")
    if source is None:
        raise _Unsupported("a SELECT without FROM reads no table", select)
    root = source.this
    if not isinstance(root, exp.Table) or not _is_table(root, tables):
        raise _Unsupported(
            "the first table of FROM must be a spacesql table (it decides which rows a change "
            "touches)",
            root,
        )
    names = {root.alias_or_name: root.name}
    for join in select.args.get("joins") or []:
        side = (join.args.get("side") or "").upper()
        kind = (join.args.get("kind") or "").upper()
        if side in ("RIGHT", "FULL") or kind in ("ASOF", "POSITIONAL", "NATURAL"):
            raise _Unsupported(f"{side or kind} JOIN is not maintained incrementally", join)
        target = join.this
        if isinstance(target, exp.Table):
            if not _is_table(target, tables):
                raise _Unsupported(
                    f"'{sql(target)}' is not a spacesql table, so it has no snapshots to diff",
                    target,
                )
            names[target.alias_or_name] = target.name
        elif not isinstance(target, (exp.Unnest, exp.Lateral)):
            raise _Unsupported("only tables and UNNEST may be joined", target)
    info = tables[root.name]
    keys = info.primary_keys
    if keyed and not keys:
        raise _Unsupported(
            f"table '{root.name}' has no primary key, so view rows cannot be traced back to "
            "its rows; give it one (CREATE TABLE ... PRIMARY KEY) for incremental refreshes",
            root,
        )
    key_columns = tuple(f"__spacesql_k{index}_{j}" for j in range(len(keys)))
    return Branch(select, root.alias_or_name, root.name, keys, key_columns, names)


def _is_table(node: exp.Table, tables: Mapping[str, TableInfo]) -> bool:
    return isinstance(node.this, exp.Identifier) and not node.args.get("db") and node.name in tables


def _row_full_form(branches: list[Branch], tables: Mapping[str, TableInfo]) -> exp.Query:
    parts: list[exp.Select] = []
    for b in branches:
        select = b.select.copy()
        for other in branches:
            for col, key in zip(other.key_columns, other.root_keys, strict=True):
                if other is b:
                    value: exp.Expr = exp.column(key, table=b.root, quoted=True)
                else:
                    typ = tables[other.root_table].columns[key]
                    value = exp.cast(exp.null(), exp.DataType.build(typ, dialect=SpaceSQL))
                select = select.select(exp.alias_(value, col, quoted=True), copy=False)
        b.full = select
        parts.append(select.copy())
    query: exp.Query = parts[0]
    for part in parts[1:]:
        query = exp.union(query, part, distinct=False)
    return query


# --- aggregates -------------------------------------------------------------------------


def _aggregate_calls(node: exp.Expr, aggregates: frozenset[str]) -> list[exp.Expr]:
    """Outermost aggregate calls in select items (with their FILTER wrapper)."""
    found: list[exp.Expr] = []

    def visit(n: exp.Expr) -> None:
        if isinstance(n, exp.Filter) and _is_aggregate(n.this, aggregates):
            found.append(n)
            return
        if _is_aggregate(n, aggregates):
            found.append(n)
            return
        for child in n.iter_expressions():
            visit(child)

    if isinstance(node, exp.Select):
        for item in node.expressions:
            visit(item)
    return found


def _is_aggregate(node: exp.Expr, aggregates: frozenset[str]) -> bool:
    if isinstance(node, exp.AggFunc):
        return True
    return isinstance(node, exp.Anonymous) and str(node.name).lower() in aggregates


def _spec(i: int, node: exp.Expr) -> AggSpec:
    cond = None
    call = node
    if isinstance(node, exp.Filter):
        call = node.this
        where = node.expression
        cond = where.this if isinstance(where, exp.Where) else where
    arg: exp.Expr | None = None
    kind = "holistic"
    if isinstance(call, exp.Count):
        inner = call.this
        if isinstance(inner, exp.Distinct) or len(call.expressions) > 0:
            kind = "holistic"
        elif inner is None or isinstance(inner, exp.Star):
            kind = "count_star" if cond is None else "count"
            arg = None if cond is None else exp.Literal.number(1)
        else:
            kind, arg = "count", inner
    elif isinstance(call, (exp.Sum, exp.Avg, exp.Min, exp.Max)):
        inner = call.this
        if not isinstance(inner, exp.Distinct) and not call.expressions:
            kind = type(call).__name__.lower()
            arg = inner
    if kind == "holistic":
        return AggSpec("holistic", node, None)
    if cond is not None and arg is not None:
        arg = exp.Case(ifs=[exp.If(this=cond.copy(), true=arg.copy())])
    p = f"__spacesql_a{i}"
    columns = {
        "count": {"c": f"{p}_c"},
        "sum": {"s": f"{p}_s", "c": f"{p}_c"},
        "avg": {"s": f"{p}_s", "c": f"{p}_c"},
        "min": {"m": f"{p}_m"},
        "max": {"m": f"{p}_m"},
        "count_star": {},
    }[kind]
    return AggSpec(kind, node, None if arg is None else arg.copy(), columns)


def _aggregate_plan(
    select: exp.Select,
    tables: Mapping[str, TableInfo],
    calls: list[exp.Expr],
    aggregates: frozenset[str],
    merge_sums: bool = True,
) -> Plan:
    body = _branch(select, tables, 0, keyed=False)
    distinct = select.args.get("distinct") is not None
    items = [(item.alias_or_name, item.unalias()) for item in select.expressions]
    group = select.args.get("group")
    if distinct:
        if group is not None or calls:
            raise _Unsupported("DISTINCT together with GROUP BY or aggregates", select)
        groups = [e.copy() for _, e in items]
    elif group is None:
        groups = []
    elif group.args.get("all"):
        groups = [e.copy() for _, e in items if not _aggregate_calls_in(e, aggregates)]
    else:
        groups = []
        for g in group.expressions:
            if isinstance(g, exp.Literal) and not g.is_string:
                groups.append(items[int(g.name) - 1][1].copy())
            else:
                groups.append(g.copy())
    for g in groups:
        if _aggregate_calls_in(g, aggregates):
            raise _Unsupported("an aggregate inside GROUP BY", g)
    group_columns = [f"__spacesql_g{j}" for j in range(len(groups))]
    specs = [_spec(i, c) for i, c in enumerate(calls)]
    if not merge_sums:
        specs = [
            AggSpec("holistic", spec.node, None) if spec.kind in ("sum", "avg") else spec
            for spec in specs
        ]
    # the full form: visible items, group expressions, count and mergeable state
    full = select.copy()
    # items over the stored state are rewritten on a copy (aggregates matched by identity)
    work = select.copy()
    work_calls = _aggregate_calls(work, aggregates)
    merged = [
        (item.alias_or_name, _over_state(item.unalias(), work_calls, groups, group_columns))
        for item in work.expressions
    ]
    full.set("distinct", None)
    for g, col in zip(groups, group_columns, strict=True):
        full = full.select(exp.alias_(g.copy(), col, quoted=True), copy=False)
    count = exp.Count(this=exp.Star())
    full = full.select(exp.alias_(count, N_COLUMN, quoted=True), copy=False)
    for spec in specs:
        for part, col in spec.columns.items():
            full = full.select(exp.alias_(_state_call(spec, part), col, quoted=True), copy=False)
    if groups:
        full.set("group", exp.Group(expressions=[g.copy() for g in groups]))
    else:
        full.set("group", None)
    return AggregatePlan(body, groups, group_columns, specs, merged, full)


def _aggregate_calls_in(node: exp.Expr, aggregates: frozenset[str]) -> bool:
    return any(_is_aggregate(n, aggregates) for n in node.walk())


def _state_call(spec: AggSpec, part: str) -> exp.Expr:
    arg = spec.arg.copy() if spec.arg is not None else None
    assert arg is not None
    if part == "c":
        return exp.Count(this=arg)
    if part == "s":
        return exp.Sum(this=arg)
    return exp.Min(this=arg) if spec.kind == "min" else exp.Max(this=arg)


def _over_state(
    expr: exp.Expr,
    calls: list[exp.Expr],
    groups: list[exp.Expr],
    group_columns: list[str],
) -> exp.Expr:
    """A select item rewritten over the stored state: aggregates become placeholders
    ``__spacesql_agg{i}``, group expressions their hidden columns."""

    def rewrite(node: exp.Expr) -> exp.Expr:
        for i, call in enumerate(calls):
            if node is call:
                return exp.column(f"__spacesql_agg{i}", quoted=True)
        for g, col in zip(groups, group_columns, strict=True):
            if node == g:
                return exp.column(col, quoted=True)
        for key, child in list(node.args.items()):
            if isinstance(child, exp.Expr):
                node.set(key, rewrite(child))
            elif isinstance(child, list):
                node.set(key, [rewrite(c) if isinstance(c, exp.Expr) else c for c in child])
        return node

    # calls are matched by identity, so rewrite a tree that still holds them
    out = rewrite(expr)
    for column in out.find_all(exp.Column):
        if not column.name.startswith("__spacesql_"):
            raise _Unsupported(f"column {sql(column)} is neither grouped nor aggregated", column)
    return out.copy()
