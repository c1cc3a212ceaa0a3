"""The sources' side of a refresh: what changed between two snapshots, and how much."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from spacesql.engine import Dataset
from spacesql.sql.mview.analyze import AggregatePlan, Plan, RowPlan

__all__ = [
    "Change",
    "changed_rows",
    "columns_used",
    "deleted_columns",
    "diff",
    "full_fraction",
    "is_ancestor",
]

#: A refresh recomputes in full when the changed rows exceed a fraction of the sources' rows,
#: by kind of plan (measured in benchmarks/test_bench_mview.py on 10M rows: row views are
#: still 2-3x cheaper incrementally at 3% changed; merged aggregates break even near 3%;
#: MIN/MAX and holistic aggregates rescan the groups they touch, which costs about a full
#: recompute as soon as a deleted value was an extreme).
FULL_FRACTIONS = {"rows": 0.08, "aggregate": 0.02, "aggregate_rescans": 0.005}
#: The default when a plan kind is not listed.
FULL_FRACTION = 0.02


@dataclass
class Change:
    """Rows of one source that changed between the reflected and the target snapshot."""

    deleted: pa.Table
    inserted: pa.Table

    @property
    def rows(self) -> int:
        return int(self.deleted.num_rows + self.inserted.num_rows)


def is_ancestor(ds: Dataset, older: int, newer: int) -> bool:
    """Whether snapshot ``older`` is on the history of ``newer`` (same line of commits);
    snapshots of other branches are neither older nor newer."""
    record = ds.snapshot(newer)
    while record.snapshot_id > older and record.parent_id is not None:
        record = ds.snapshot(record.parent_id)
    return record.snapshot_id == older


def full_fraction(plan: Plan) -> float:
    if isinstance(plan, AggregatePlan):
        kind = "aggregate_rescans" if plan.extremes or plan.holistic else "aggregate"
        return FULL_FRACTIONS[kind]
    return FULL_FRACTIONS.get(plan.kind, FULL_FRACTION)


def changed_rows(ds: Dataset, start: int, end: int) -> int:
    """Rows added plus rows deleted by the commits after ``start`` up to ``end`` (from the
    snapshot records alone: an upper bound of the diff's size, known before reading it)."""
    total = 0
    record = ds.snapshot(end)
    while record.snapshot_id > start and record.parent_id is not None:
        total += record.summary.added_rows + record.summary.deleted_rows
        record = ds.snapshot(record.parent_id)
    if record.snapshot_id != start:  # not an ancestor (another branch): count both states
        return ds.snapshot(start).summary.total_rows + ds.snapshot(end).summary.total_rows
    return total


def columns_used(plan: RowPlan | AggregatePlan) -> dict[str, list[str]]:
    """Per source table: the columns the query reads from it, and its key."""
    branches = plan.branches if isinstance(plan, RowPlan) else [plan.body]
    out: dict[str, set[str]] = {}
    for branch in branches:
        out.setdefault(branch.root_table, set()).update(branch.root_keys)
        query = branch.full if branch.full is not None else branch.select
        nodes = [query, plan.query] if isinstance(plan, AggregatePlan) else [query]
        for node in nodes:
            for column in node.find_all(exp.Column):
                table = branch.tables.get(column.table)
                if table is not None:
                    out.setdefault(table, set()).add(column.name)
    return {t: sorted(c) for t, c in out.items()}


def deleted_columns(plan: RowPlan | AggregatePlan, table: str) -> list[str] | None:
    """Columns of deleted rows a refresh needs: for a row view whose only use of ``table``
    is as a root, its key (the view rows of those roots are deleted); else all used ones."""
    if not isinstance(plan, RowPlan):
        return None
    keys: set[str] = set()
    for branch in plan.branches:
        others = [a for a, t in branch.tables.items() if t == table and a != branch.root]
        if others or (branch.root_table == table and not branch.root_keys):
            return None
        if branch.root_table == table:
            keys.update(branch.root_keys)
    return sorted(keys) if keys else None


def diff(
    ds: Dataset,
    start: int,
    end: int,
    *,
    columns: list[str] | None = None,
    deleted_columns: list[str] | None = None,
) -> Change:
    """The rows of ``ds`` changed between two snapshots. Pairs of identical deleted and
    inserted rows are kept (no comparison): applying both gives the same view."""
    deleted: list[pa.Table] = []
    inserted: list[pa.Table] = []
    full = ds.local().scanner(end).schema
    schema = full if columns is None else pa.schema([full.field(c) for c in columns])
    del_schema = (
        schema if deleted_columns is None else pa.schema([full.field(c) for c in deleted_columns])
    )
    for cs in ds.local().diff(
        start, end, columns=columns, deleted_columns=deleted_columns, cancel=False
    ):
        (deleted if cs.change_type == "delete" else inserted).append(cs.data)
    return Change(
        pa.concat_tables(deleted) if deleted else del_schema.empty_table(),
        pa.concat_tables(inserted) if inserted else schema.empty_table(),
    )
