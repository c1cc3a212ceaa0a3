"""The SQL of an incremental refresh, built as sqlglot trees: which roots a change touches,
the signed change of an aggregate's input, and the merge of that change into stored groups."""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp

from spacesql.catalog.duckdb import FILE_COLUMN, POSITION_COLUMN
from spacesql.sql.mview.analyze import N_COLUMN, AggregatePlan, Branch

__all__ = [
    "MERGE_EXTRA",
    "anti",
    "column",
    "detection",
    "merge_query",
    "restricted_full",
    "select_all",
    "signed_input",
]

#: Columns of the merge query's result that are not the view's.
MERGE_EXTRA = (FILE_COLUMN, POSITION_COLUMN, "__spacesql_recompute")


def select_all(relation: str) -> exp.Select:
    return exp.select("*").from_(exp.to_table(relation, quoted=True))


def detection(branch: Branch) -> exp.Select:
    """Root keys of rows joined to a table's changed rows: the branch's FROM with every
    join made inner, no WHERE, distinct root keys."""
    sel = branch.select.copy()
    sel.set(
        "expressions",
        [exp.column(k, table=branch.root, quoted=True) for k in branch.root_keys],
    )
    sel.set("where", None)
    sel.set("group", None)
    sel.set("distinct", exp.Distinct())
    for join in sel.args.get("joins") or []:
        join.set("side", None)
        if (join.args.get("kind") or "").upper() in ("SEMI", "ANTI", "OUTER"):
            join.set("kind", None)
    return sel


def anti(table: pa.Table, minus: pa.Table, keys: list[str]) -> pa.Table:
    joined = table.join(minus, keys, join_type="left anti", use_threads=False)
    return joined.select(keys)


def signed_input(plan: AggregatePlan, sign: int) -> exp.Select:
    """The body's rows as group values, aggregate arguments and a sign."""
    sel = plan.body.select.copy()
    items: list[exp.Expr] = [
        exp.alias_(g.copy(), col, quoted=True)
        for g, col in zip(plan.groups, plan.group_columns, strict=True)
    ]
    for i, spec in enumerate(plan.aggs):
        if spec.arg is not None:
            items.append(exp.alias_(spec.arg.copy(), f"__spacesql_x{i}", quoted=True))
    items.append(exp.alias_(exp.Literal.number(sign), "__spacesql_sign", quoted=True))
    sel.set("expressions", items)
    sel.set("distinct", None)
    sel.set("group", None)
    return sel


def column(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table=table, quoted=True)


def merge_query(plan: AggregatePlan, signed: exp.Expr, positions_view: str) -> exp.Select:
    """Per touched group: the merged state, whether it must be recomputed, and the stored
    row it replaces."""
    sign = column("__spacesql_sign")
    pos, neg = sign.copy() > 0, sign.copy() < 0
    d_items: list[exp.Expr] = [exp.alias_(column(g), g, quoted=True) for g in plan.group_columns]
    # sums over no rows are NULL: a global aggregate whose change is all filtered out
    # still gets its one row, with nothing to add
    d_items.append(
        exp.alias_(
            exp.Coalesce(this=exp.Sum(this=sign.copy()), expressions=[exp.Literal.number(0)]),
            "__spacesql_dn",
            quoted=True,
        )
    )
    for i, spec in enumerate(plan.aggs):
        x = column(f"__spacesql_x{i}")
        if spec.kind in ("count", "sum", "avg"):
            dc = exp.Coalesce(
                this=exp.Sum(
                    this=exp.Case(
                        ifs=[exp.If(this=x.copy().is_(exp.null()).not_(), true=sign.copy())],
                        default=exp.Literal.number(0),
                    )
                ),
                expressions=[exp.Literal.number(0)],
            )
            d_items.append(exp.alias_(dc, f"__spacesql_d{i}column", quoted=True))
        if spec.kind in ("sum", "avg"):
            plus = exp.Coalesce(
                this=exp.Filter(this=exp.Sum(this=x.copy()), expression=exp.Where(this=pos.copy())),
                expressions=[exp.Literal.number(0)],
            )
            minus = exp.Coalesce(
                this=exp.Filter(this=exp.Sum(this=x.copy()), expression=exp.Where(this=neg.copy())),
                expressions=[exp.Literal.number(0)],
            )
            d_items.append(
                exp.alias_(exp.Sub(this=plus, expression=minus), f"__spacesql_d{i}_s", quoted=True)
            )
        if spec.kind in ("min", "max"):
            agg = exp.Min if spec.kind == "min" else exp.Max
            for part, cond in (("ins", pos), ("del", neg)):
                d_items.append(
                    exp.alias_(
                        exp.Filter(this=agg(this=x.copy()), expression=exp.Where(this=cond.copy())),
                        f"__spacesql_d{i}_{part}",
                        quoted=True,
                    )
                )
    d = exp.select(*d_items).from_(
        exp.Subquery(this=signed, alias=exp.TableAlias(this=exp.to_identifier("s")))
    )
    if plan.group_columns:
        d.set("group", exp.Group(expressions=[column(g) for g in plan.group_columns]))

    # merged state
    def cur(col: str) -> exp.Column:
        return column(col, "cur")

    def dd(col: str) -> exp.Column:
        return column(col, "d")

    n = exp.Add(
        this=exp.Coalesce(this=cur(N_COLUMN), expressions=[exp.Literal.number(0)]),
        expression=dd("__spacesql_dn"),
    )
    state: dict[str, exp.Expr] = {N_COLUMN: n}
    recompute: list[exp.Expr] = []
    for i, spec in enumerate(plan.aggs):
        cols = spec.columns
        if "c" in cols:
            state[cols["c"]] = exp.Add(
                this=exp.Coalesce(this=cur(cols["c"]), expressions=[exp.Literal.number(0)]),
                expression=dd(f"__spacesql_d{i}column"),
            )
        if "s" in cols:
            c_new = state[cols["c"]].copy()
            total = exp.Add(
                this=exp.Coalesce(this=cur(cols["s"]), expressions=[exp.Literal.number(0)]),
                expression=dd(f"__spacesql_d{i}_s"),
            )
            state[cols["s"]] = exp.Case(ifs=[exp.If(this=c_new > 0, true=total)])
        if "m" in cols:
            fn = exp.Least if spec.kind == "min" else exp.Greatest
            ins = dd(f"__spacesql_d{i}_ins")
            state[cols["m"]] = exp.Case(
                ifs=[
                    exp.If(this=cur(cols["m"]).is_(exp.null()), true=ins.copy()),
                    exp.If(this=ins.copy().is_(exp.null()), true=cur(cols["m"])),
                ],
                default=fn(this=cur(cols["m"]), expressions=[ins.copy()]),
            )
            deleted = dd(f"__spacesql_d{i}_del")
            reaches = (
                deleted.copy() <= cur(cols["m"])
                if spec.kind == "min"
                else deleted.copy() >= cur(cols["m"])
            )
            recompute.append(
                exp.and_(
                    deleted.is_(exp.null()).not_(), cur(cols["m"]).is_(exp.null()).not_(), reaches
                )
            )
        if spec.kind == "holistic":
            recompute.append(exp.true())
    m_items: list[exp.Expr] = [exp.alias_(dd(g), g, quoted=True) for g in plan.group_columns]
    m_items += [exp.alias_(e, col, quoted=True) for col, e in state.items()]
    m_items.append(
        exp.alias_(
            exp.or_(*recompute) if recompute else exp.false(), "__spacesql_recompute", quoted=True
        )
    )
    m_items += [
        exp.alias_(cur(FILE_COLUMN), FILE_COLUMN, quoted=True),
        exp.alias_(cur(POSITION_COLUMN), POSITION_COLUMN, quoted=True),
    ]
    on = (
        exp.and_(*[exp.NullSafeEQ(this=dd(g), expression=cur(g)) for g in plan.group_columns])
        if plan.group_columns
        else exp.true()
    )
    m = exp.select(*m_items).from_(
        exp.Subquery(this=d, alias=exp.TableAlias(this=exp.to_identifier("d")))
    )
    m.set(
        "joins",
        [
            exp.Join(
                this=exp.Table(
                    this=exp.to_identifier(positions_view, quoted=True),
                    alias=exp.TableAlias(this=exp.to_identifier("cur")),
                ),
                on=on,
                side="LEFT",
            )
        ],
    )
    # visible items over the merged state
    visible: dict[str, exp.Expr] = {}
    for i, spec in enumerate(plan.aggs):
        cols = spec.columns
        if spec.kind == "count_star":
            visible[f"__spacesql_agg{i}"] = column(N_COLUMN, "m")
        elif spec.kind == "count":
            visible[f"__spacesql_agg{i}"] = column(cols["c"], "m")
        elif spec.kind == "sum":
            visible[f"__spacesql_agg{i}"] = exp.Case(
                ifs=[exp.If(this=column(cols["c"], "m") > 0, true=column(cols["s"], "m"))]
            )
        elif spec.kind == "avg":
            visible[f"__spacesql_agg{i}"] = exp.Case(
                ifs=[
                    exp.If(
                        this=column(cols["c"], "m") > 0,
                        true=exp.Div(
                            this=exp.cast(column(cols["s"], "m"), "DOUBLE"),
                            expression=column(cols["c"], "m"),
                        ),
                    )
                ]
            )
        elif spec.kind in ("min", "max"):
            visible[f"__spacesql_agg{i}"] = column(cols["m"], "m")
        else:  # holistic: such groups are always recomputed, never merged
            visible[f"__spacesql_agg{i}"] = exp.null()
    for g in plan.group_columns:
        visible[g] = column(g, "m")

    def over(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.name in visible and not node.table:
            return visible[node.name].copy()
        return node

    out_items: list[exp.Expr] = [
        exp.alias_(expr.copy().transform(over), col, quoted=True) for col, expr in plan.items
    ]
    out_items += [exp.alias_(column(g, "m"), g, quoted=True) for g in plan.group_columns]
    out_items += [exp.alias_(column(col, "m"), col, quoted=True) for col in state]
    out_items += [exp.alias_(column(c, "m"), c, quoted=True) for c in MERGE_EXTRA]
    return exp.select(*out_items).from_(
        exp.Subquery(this=m, alias=exp.TableAlias(this=exp.to_identifier("m")))
    )


def restricted_full(plan: AggregatePlan, groups_rel: str) -> exp.Expr:
    """The full form restricted to some groups (NULL-safe), filtering before aggregating."""
    full = plan.query.copy()
    assert isinstance(full, exp.Select)
    cond = exp.and_(
        *[
            exp.NullSafeEQ(this=column(col, "__spacesql_gr"), expression=g.copy())
            for g, col in zip(plan.groups, plan.group_columns, strict=True)
        ]
    )
    exists = exp.Exists(
        this=exp.select(exp.Literal.number(1))
        .from_(
            exp.Table(
                this=exp.to_identifier(groups_rel, quoted=True),
                alias=exp.TableAlias(this=exp.to_identifier("__spacesql_gr", quoted=True)),
            )
        )
        .where(cond)
    )
    return full.where(exists, copy=False)
