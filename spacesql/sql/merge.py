"""``MERGE INTO`` a dataset: DuckDB decides each row's fate, the engine commits it at once.

Three queries, each over the positions view of the target (one snapshot):

* target rows matched by the source: which ``WHEN MATCHED`` clause applies (the first whose
  condition holds) and the row's new values;
* source rows matching no target row: which ``WHEN NOT MATCHED [BY TARGET]`` clause applies
  and the values it inserts;
* target rows matching no source row: which ``WHEN NOT MATCHED BY SOURCE`` clause applies.

Updated and deleted rows are removed by position and updated and inserted rows are added, in
one ``RewriteRows`` commit against the snapshot the queries read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from spacesql.catalog.duckdb import FILE_COLUMN, POSITION_COLUMN, file_positions
from spacesql.engine.inputs import conform
from spacesql.engine.rewrites import RewriteRows
from spacesql.errors import SqlError
from spacesql.sql.translate import generate, number_placeholders

if TYPE_CHECKING:
    from spacesql.sql.host import Host, Params, Relation

__all__ = ["MergeQueries", "execute_merge", "merge_queries"]

CLAUSE = "__spacesql_clause"


@dataclass(frozen=True)
class MergeQueries:
    """The queries of one MERGE and what each clause does (by 1-based clause number)."""

    matched: exp.Select | None
    matched_actions: dict[int, str]
    inserted: exp.Select | None
    by_source: exp.Select | None
    by_source_actions: dict[int, str]


def _action(when: exp.When) -> str:
    then = when.args.get("then")
    if isinstance(then, exp.Update):
        return "update"
    if isinstance(then, exp.Insert):
        return "insert"
    text = str(then.this if isinstance(then, exp.Var) else then).upper()
    if text == "DELETE":
        return "delete"
    if text == "DO NOTHING":
        return "nothing"
    raise SqlError(f"Unsupported MERGE action {generate(when)!r}.")


def _case(
    conditions: list[exp.Expression], values: list[exp.Expression], default: exp.Expression
) -> exp.Expression:
    case = exp.Case()
    for cond, value in zip(conditions, values, strict=True):
        case = case.when(cond.copy(), value.copy())
    return case.else_(default.copy())


def _updates(when: exp.When, columns: list[str], source: str) -> dict[str, exp.Expression]:
    then = when.args["then"]
    sets: dict[str, exp.Expression] = {}
    for item in then.expressions:
        if isinstance(item, exp.Star):
            sets.update({c: exp.column(c, table=source) for c in columns})
        elif isinstance(item, exp.EQ) and isinstance(item.this, exp.Column):
            if item.this.name not in columns:
                raise SqlError(f"MERGE: no column {item.this.name!r} to SET.")
            sets[item.this.name] = item.expression
        else:
            raise SqlError(f"Unsupported MERGE SET clause {generate(item)!r}.")
    return sets


def _inserts(when: exp.When, columns: list[str], source: str) -> dict[str, exp.Expression]:
    then = when.args["then"]
    if isinstance(then.this, exp.Star):
        return {c: exp.column(c, table=source) for c in columns}
    names = (
        [c.name for c in then.this.expressions]
        if isinstance(then.this, exp.Tuple)
        else list(columns)
    )
    values = then.expression.expressions if isinstance(then.expression, exp.Tuple) else []
    if len(names) != len(values):
        raise SqlError(f"MERGE INSERT names {len(names)} columns but gives {len(values)} values.")
    unknown = [n for n in names if n not in columns]
    if unknown:
        raise SqlError(f"MERGE INSERT: no column(s) {unknown}.")
    return dict(zip(names, values, strict=True))


def merge_queries(stmt: exp.Merge, columns: list[str], view: str) -> MergeQueries:
    """Build the queries of a MERGE against the positions view ``view`` of its target.

    >>> from spacesql.sql.dialect import parse
    >>> q = merge_queries(parse("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN "
    ...                         "DELETE")[0], ["id"], "pos_t")
    >>> generate(q.matched)
    'SELECT t.__spacesql_file, t.__spacesql_pos, CASE WHEN TRUE THEN 1 ELSE 0 END AS \
__spacesql_clause, CASE WHEN TRUE THEN t.id ELSE t.id END AS id FROM "pos_t" AS t JOIN s ON \
t.id = s.id'
    """
    target = stmt.this
    assert isinstance(target, exp.Table)
    alias = target.alias_or_name
    source = stmt.args["using"]
    source_name = source.alias_or_name
    on = stmt.args["on"]
    whens = list(stmt.args["whens"].expressions)
    matched = [w for w in whens if w.args.get("matched")]
    by_target = [w for w in whens if not w.args.get("matched") and not w.args.get("source")]
    by_source = [w for w in whens if not w.args.get("matched") and w.args.get("source")]
    view_table = exp.Table(
        this=exp.to_identifier(view, quoted=True),
        alias=exp.TableAlias(this=exp.to_identifier(alias)),
    )

    def cond(w: exp.When) -> exp.Expression:
        return w.args.get("condition") or exp.true()

    def target_rows(
        clauses: list[exp.When], from_: exp.Select
    ) -> tuple[exp.Select, dict[int, str]]:
        actions = {i + 1: _action(w) for i, w in enumerate(clauses)}
        if any(a == "insert" for a in actions.values()):
            raise SqlError("MERGE: INSERT is only allowed in WHEN NOT MATCHED [BY TARGET].")
        conds = [cond(w) for w in clauses]
        clause = _case(
            conds, [exp.Literal.number(i + 1) for i in range(len(clauses))], exp.Literal.number(0)
        )
        exprs: list[Any] = [
            exp.column(FILE_COLUMN, table=alias),
            exp.column(POSITION_COLUMN, table=alias),
            exp.alias_(clause, CLAUSE),
        ]
        sets = [
            _updates(w, columns, source_name) if actions[i + 1] == "update" else {}
            for i, w in enumerate(clauses)
        ]
        for c in columns:
            own = exp.column(c, table=alias)
            values = [s.get(c, own) for s in sets]
            exprs.append(exp.alias_(_case(conds, values, own), c))
        return from_.select(*exprs), actions

    matched_q: exp.Select | None = None
    matched_actions: dict[int, str] = {}
    if matched:
        base = exp.select().from_(view_table).join(source.copy(), on=on.copy())
        matched_q, matched_actions = target_rows(matched, base)
    source_q = None
    if by_target:
        for w in by_target:
            if _action(w) not in ("insert", "nothing"):
                raise SqlError("MERGE: WHEN NOT MATCHED [BY TARGET] can only INSERT.")
        conds = [cond(w) for w in by_target]
        clause = _case(
            conds, [exp.Literal.number(i + 1) for i in range(len(by_target))], exp.Literal.number(0)
        )
        rows = [
            _inserts(w, columns, source_name) if _action(w) == "insert" else {} for w in by_target
        ]
        exprs = [exp.alias_(clause, CLAUSE)]
        exprs += [
            exp.alias_(_case(conds, [r.get(c, exp.null()) for r in rows], exp.null()), c)
            for c in columns
        ]
        exists = exp.Exists(this=exp.select("1").from_(view_table.copy()).where(on.copy()))
        source_q = exp.select(*exprs).from_(source.copy()).where(exp.not_(exists))
    by_source_q: exp.Select | None = None
    by_source_actions: dict[int, str] = {}
    if by_source:
        exists = exp.Exists(this=exp.select("1").from_(source.copy()).where(on.copy()))
        base = exp.select().from_(view_table.copy()).where(exp.not_(exists))
        by_source_q, by_source_actions = target_rows(by_source, base)
    return MergeQueries(matched_q, matched_actions, source_q, by_source_q, by_source_actions)


def execute_merge(host: Host, stmt: exp.Expression, name: str, params: Params) -> Relation:
    from spacesql.sql.ddl import count_result

    numbered = number_placeholders(stmt)
    assert isinstance(numbered, exp.Merge)
    ds = host.dataset(name)
    schema = ds.schema
    view, snapshot = host.register_positions(f"__spacesql_pos_{name}", name)
    queries = merge_queries(numbered, list(schema.names), view)
    pairs_all: list[tuple[str, int]] = []
    added: list[pa.Table] = []
    changed = 0
    for query, actions in (
        (queries.matched, queries.matched_actions),
        (queries.by_source, queries.by_source_actions),
    ):
        if query is None:
            continue
        found = host.query_arrow(host.register_read(query), params)
        clause = found.column(CLAUSE).to_numpy(zero_copy_only=False)
        touched = np.isin(clause, [k for k, a in actions.items() if a in ("update", "delete")])
        rows = found.filter(pa.array(touched))
        pairs = list(
            zip(
                rows.column(FILE_COLUMN).to_pylist(),
                rows.column(POSITION_COLUMN).to_pylist(),
                strict=True,
            )
        )
        if len(set(pairs)) != len(pairs):
            raise SqlError(
                f"MERGE into '{name}' matches a target row with more than one source row; "
                "make the ON condition match each target row at most once."
            )
        pairs_all.extend(pairs)
        updates = rows.filter(
            pc.is_in(
                rows.column(CLAUSE),
                pa.array(
                    [k for k, a in actions.items() if a == "update"], rows.column(CLAUSE).type
                ),
            )
        )
        if updates.num_rows:
            added.append(conform(updates.select(schema.names), schema, dataset=name))
        changed += rows.num_rows
    if queries.inserted is not None:
        found = host.query_arrow(host.register_read(queries.inserted), params)
        inserts = found.filter(pc.not_equal(found.column(CLAUSE), 0))
        inserts = inserts.filter(
            pc.is_in(
                inserts.column(CLAUSE),
                pa.array(
                    [i + 1 for i, w in enumerate(_not_matched(numbered)) if _action(w) == "insert"],
                    inserts.column(CLAUSE).type,
                ),
            )
        )
        if inserts.num_rows:
            added.append(conform(inserts.select(schema.names), schema, dataset=name))
            changed += inserts.num_rows
    positions = file_positions(ds.location, pairs_all)
    if not positions and not added:
        return count_result(host, 0)
    data = pa.concat_tables(added) if added else None
    op = RewriteRows(
        positions=positions,
        data=data,
        operation="merge",
    )
    ds.local().commit(op, expected_snapshot=snapshot)
    return count_result(host, changed)


def _not_matched(stmt: exp.Merge) -> list[exp.When]:
    return [
        w
        for w in stmt.args["whens"].expressions
        if not w.args.get("matched") and not w.args.get("source")
    ]
