"""Creating, refreshing and explaining materialized views on a session (a :class:`Host`).

Everything is computed by DuckDB at exact source snapshots; the engine commits the result to
the view's dataset in one snapshot, against the head the refresh started from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from spacesql.catalog.catalog import is_hidden
from spacesql.catalog.duckdb import FILE_COLUMN, POSITION_COLUMN, positions_of
from spacesql.engine import Dataset
from spacesql.engine.format import SnapshotRecord
from spacesql.engine.inputs import check_keys, conform
from spacesql.engine.rewrites import Overwrite, RewriteRows
from spacesql.errors import (
    CommitConflictError,
    SchemaError,
    SnapshotNotFoundError,
    SpaceSQLError,
    SqlError,
    TableNotFoundError,
)
from spacesql.sql.dialect import parse
from spacesql.sql.host import Host
from spacesql.sql.mview.analyze import (
    N_COLUMN,
    AggregatePlan,
    Branch,
    FullPlan,
    Plan,
    RowPlan,
    TableInfo,
    analyze,
    sql,
)
from spacesql.sql.mview.delta import (
    MERGE_EXTRA,
    anti,
    detection,
    merge_query,
    restricted_full,
    select_all,
    signed_input,
)
from spacesql.sql.mview.sources import (
    Change,
    changed_rows,
    columns_used,
    deleted_columns,
    diff,
    full_fraction,
    is_ancestor,
)
from spacesql.sql.routing import dataset_tables

__all__ = [
    "LINEAGE_PROPERTY",
    "MaterializedViewError",
    "RefreshResult",
    "SourceVersion",
    "ViewManager",
]

#: Snapshot property of a view: the source snapshots it reflects.
LINEAGE_PROPERTY = "spacesql.sources"
#: ... but never below this many changed rows (small changes are always cheap to merge).
FULL_MIN_ROWS = 10_000
_DEFINITION_FORMAT = 1


class MaterializedViewError(SqlError):
    """A materialized view cannot be created or refreshed as asked."""


@dataclass(frozen=True)
class SourceVersion:
    """One source snapshot a view reflects."""

    uuid: str
    snapshot: int


@dataclass
class RefreshResult:
    """What a refresh did (or, for EXPLAIN, will do)."""

    view: str
    strategy: str  # "incremental", "full" or "none"
    reason: str
    sources: dict[str, tuple[int | None, int]] = field(default_factory=dict)
    changed_rows: int = 0
    deleted_rows: int = 0
    added_rows: int = 0
    snapshot_id: int | None = None
    seconds: float = 0.0
    rule: str = ""

    def to_arrow(self) -> pa.Table:
        return pa.table(
            {
                "view": [self.view],
                "strategy": [self.strategy],
                "reason": [self.reason],
                "sources": [
                    ", ".join(
                        f"{n} {'-' if a is None else a} -> {b}"
                        for n, (a, b) in self.sources.items()
                    )
                ],
                "changed_source_rows": pa.array([self.changed_rows], pa.int64()),
                "deleted_rows": pa.array([self.deleted_rows], pa.int64()),
                "added_rows": pa.array([self.added_rows], pa.int64()),
                "snapshot_id": pa.array([self.snapshot_id], pa.int64()),
            }
        )


def lineage(record: SnapshotRecord) -> dict[str, SourceVersion]:
    """The source snapshots a view snapshot reflects."""
    raw = record.properties.get(LINEAGE_PROPERTY)
    if raw is None:
        return {}
    return {n: SourceVersion(v["uuid"], int(v["snapshot"])) for n, v in json.loads(raw).items()}


def _lineage_properties(targets: Mapping[str, SourceVersion]) -> dict[str, str]:
    obj = {n: {"uuid": v.uuid, "snapshot": v.snapshot} for n, v in sorted(targets.items())}
    return {LINEAGE_PROPERTY: json.dumps(obj, sort_keys=True)}


Progress = Callable[[str], None]


class ViewManager:
    """Materialized views of one session."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._names = 0
        self._functions: tuple[frozenset[str], frozenset[str]] | None = None
        #: Changed rows past this fraction of the sources' rows make a refresh recompute
        #: (None: per kind of plan, :data:`FULL_FRACTIONS`).
        self.full_fraction: float | None = None

    # --- helpers ---------------------------------------------------------------------

    @property
    def con(self) -> Any:
        return self.host.duckdb

    def _name(self, what: str) -> str:
        self._names += 1
        return f"__spacesql_mv_{what}_{self._names}"

    @contextmanager
    def _registered(self, table: pa.Table) -> Iterator[str]:
        name = self._name("rows")
        self.con.register(name, table)
        try:
            yield name
        finally:
            self.con.unregister(name)

    def _function_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """(aggregate, volatile) function names known to this DuckDB."""
        if self._functions is None:
            rows = self.con.sql(
                "SELECT DISTINCT function_name, function_type, stability FROM duckdb_functions()"
            ).fetchall()
            aggs = frozenset(str(n).lower() for n, t, _ in rows if t == "aggregate")
            volatile = frozenset(
                str(n).lower() for n, _, s in rows if s in ("VOLATILE", "CONSISTENT_WITHIN_QUERY")
            )
            self._functions = (aggs, volatile)
        return self._functions

    def _table_info(self, name: str) -> TableInfo:
        ds = self.host.dataset(name)
        fields = [f for f in ds.schema if not is_hidden(f.name)]
        logical = pa.schema(
            [pa.field(f.name, pa.binary()) if f.name in ds.record_fields else f for f in fields]
        )
        types = self.con.from_arrow(logical.empty_table()).types
        return TableInfo(
            {f.name: str(t) for f, t in zip(fields, types, strict=True)}, tuple(ds.primary_keys)
        )

    def _bound(
        self,
        query: exp.Expr,
        versions: Mapping[str, int],
        overrides: Mapping[str, exp.Expr] | None = None,
    ) -> exp.Expr:
        """A copy of ``query`` reading each dataset at ``versions`` and the tables aliased in
        ``overrides`` from the given relations; registered in the session."""
        query = query.copy()
        overrides = overrides or {}
        for table in dataset_tables(cast(exp.Expression, query), self.host.catalog.__contains__):
            alias = table.alias_or_name
            if alias in overrides:
                table.replace(
                    exp.Subquery(
                        this=overrides[alias].copy(),
                        alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True)),
                    )
                )
                continue
            if table.name in versions and table.args.get("when") is None:  # AT (...) stays
                table.set(
                    "when",
                    exp.HistoricalData(
                        this="AT",
                        kind="VERSION",
                        expression=exp.Literal.number(versions[table.name]),
                    ),
                )
        return self.host.register_read(cast(exp.Expression, query))

    def _arrow(self, stmt: exp.Expr, *, view: str) -> pa.Table:
        try:
            return self.host.query_arrow(cast(exp.Expression, stmt), None)
        except SpaceSQLError as exc:
            raise MaterializedViewError(
                f"Materialized view '{view}': its query failed against its sources: {exc}. "
                "The view keeps its data; fix the sources or re-create the view with CREATE OR "
                "REPLACE MATERIALIZED VIEW."
            ) from exc

    # --- create ------------------------------------------------------------------------

    def create(
        self,
        name: str,
        query: exp.Expr,
        *,
        primary_key: tuple[str, ...] = (),
        replace: bool = False,
        if_not_exists: bool = False,
    ) -> RefreshResult:
        catalog = self.host.catalog
        if name in catalog and if_not_exists:
            return RefreshResult(name, "none", f"'{name}' already exists")
        if name in catalog and not replace:
            raise SchemaError(
                f"'{name}' already exists in catalog '{catalog.path}'; use CREATE OR REPLACE "
                "MATERIALIZED VIEW, DROP it first, or pick another name."
            )
        if not isinstance(query, exp.Query):
            raise MaterializedViewError("CREATE MATERIALIZED VIEW needs AS SELECT ...")
        sources = self._sources(query, view=name)
        if name in sources:
            raise MaterializedViewError(f"Materialized view '{name}' cannot read itself.")
        targets = {
            s: SourceVersion(
                self.host.dataset(s).table.info.uuid, self.host.dataset(s).snapshot().snapshot_id
            )
            for s in sources
        }
        plan = self._plan(query, targets, view=name)
        started = time.perf_counter()
        versions = {n: v.snapshot for n, v in targets.items()}
        merge_sums = True
        try:
            data = self._arrow(self._bound(plan.query, versions), view=name)
        except MaterializedViewError:
            if not isinstance(plan, AggregatePlan) or not any(
                a.kind in ("sum", "avg") for a in plan.aggs
            ):
                raise
            # DuckDB cannot keep a running sum of the argument (AVG of a TIMESTAMP): those
            # groups are recomputed instead (if that fails too, its error is the one raised)
            merge_sums = False
            plan = self._plan(query, targets, view=name, merge_sums=False)
            data = self._arrow(self._bound(plan.query, versions), view=name)
        data = _nullable(data)
        missing = [k for k in primary_key if k not in data.column_names or is_hidden(k)]
        if missing:
            raise SchemaError(
                f"primary_key {list(primary_key)} of materialized view '{name}' names "
                f"{missing}, which the query does not return; its columns are "
                f"{[c for c in data.column_names if not is_hidden(c)]}."
            )
        check_keys(data, primary_key, dataset=name)
        definition = {
            "format": _DEFINITION_FORMAT,
            "query": sql(plan.visible if plan.visible is not None else query),
            "sources": sources,
            "primary_key": list(primary_key),
            "columns": [c for c in data.column_names if not is_hidden(c)],
            "merge_sums": merge_sums,
        }
        props = _lineage_properties(targets)

        def fill(ds: Dataset) -> None:
            ds.local().commit(Overwrite(data, properties=props))

        self.host.forget(name)
        catalog.create_view(
            name,
            data.schema,
            definition=definition,
            fill=fill,
            primary_keys=primary_key,
            replace=replace,
        )
        reason = plan.reason if isinstance(plan, FullPlan) else ""
        return RefreshResult(
            name,
            "full" if isinstance(plan, FullPlan) else "incremental",
            reason,
            {n: (None, v.snapshot) for n, v in targets.items()},
            added_rows=data.num_rows,
            snapshot_id=self.host.dataset(name).snapshot().snapshot_id,
            seconds=time.perf_counter() - started,
            rule=_rule(plan),
        )

    def _sources(self, query: exp.Expr, *, view: str) -> list[str]:
        from spacesql.sql.routing import table_refs

        plain, _ = table_refs(cast(exp.Expression, query))
        names = []
        for t in plain:
            if t.name not in self.host.catalog:
                raise MaterializedViewError(
                    f"Materialized view '{view}' reads '{t.name}', which is not a spacesql "
                    f"table of catalog '{self.host.catalog.path}'. Views read spacesql tables "
                    "(and table functions such as read_parquet)."
                )
            if t.name not in names:
                names.append(t.name)
        return names

    def _plan(
        self,
        query: exp.Expr,
        targets: Mapping[str, SourceVersion],
        *,
        view: str,
        columns: list[str] | None = None,
        merge_sums: bool = True,
    ) -> Plan:
        """Analyze a view's query. ``columns``: its output names when known (stored with the
        view), else DuckDB binds the query to name them."""
        if columns is None:
            bound = self._bound(query, {n: v.snapshot for n, v in targets.items()})
            try:
                columns = list(self.con.sql(sql(bound)).columns)
            except Exception as exc:  # duckdb.Error: binding failed
                raise MaterializedViewError(
                    f"Materialized view '{view}': its query does not run against its sources: "
                    f"{exc}. The view keeps its data; re-create it with CREATE OR REPLACE "
                    "MATERIALIZED VIEW."
                ) from exc
        hidden = [c for c in columns if is_hidden(c)]
        if hidden:  # only at creation: stored names never have them
            raise MaterializedViewError(
                f"Column names starting with '__spacesql_' are reserved: {hidden}."
            )
        aggs, volatile = self._function_names()
        tables = {n: self._table_info(n) for n in targets}
        return analyze(
            query,
            tables,
            output_names=columns,
            aggregates=aggs,
            volatile=volatile,
            merge_sums=merge_sums,
        )

    # --- refresh -----------------------------------------------------------------------

    def definition(self, name: str) -> dict[str, Any]:
        definition = self.host.catalog.view_definition(name)
        if definition is None:
            raise MaterializedViewError(
                f"'{name}' is a table, not a materialized view; REFRESH applies to views made "
                "with CREATE MATERIALIZED VIEW."
            )
        return dict(definition)

    def _targets(
        self, name: str, definition: Mapping[str, Any], to: Any, head: SnapshotRecord
    ) -> dict[str, SourceVersion]:
        targets = {}
        for source in definition["sources"]:
            try:
                ds = self.host.dataset(source)
            except TableNotFoundError:
                raise MaterializedViewError(
                    f"Cannot refresh materialized view '{name}': its source '{source}' no "
                    f"longer exists. The view keeps its data at snapshot {head.snapshot_id}; "
                    "DROP MATERIALIZED VIEW it or re-create the source."
                ) from None
            try:
                record = ds.snapshot(to)
            except SnapshotNotFoundError as exc:
                raise MaterializedViewError(
                    f"Cannot refresh materialized view '{name}' to version {to!r}: {exc}"
                ) from exc
            targets[source] = SourceVersion(ds.table.info.uuid, record.snapshot_id)
        return targets

    def explain(self, name: str, *, to: Any = None, full: bool = False) -> RefreshResult:
        return self.refresh(name, to=to, full=full, dry_run=True)

    def refresh(
        self,
        name: str,
        *,
        to: Any = None,
        full: bool = False,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> RefreshResult:
        """Bring view ``name`` to its sources' current snapshots (or version ``to``)."""
        step = progress or (lambda _msg: None)
        for _attempt in range(20):
            try:
                return self._refresh_once(name, to=to, full=full, dry_run=dry_run, step=step)
            except CommitConflictError:
                step("another refresh committed first; starting again from its result")
                continue
        raise MaterializedViewError(  # pragma: no cover - needs 20 lost races
            f"Materialized view '{name}' kept changing during the refresh; try again."
        )

    def _refresh_once(
        self, name: str, *, to: Any, full: bool, dry_run: bool, step: Progress
    ) -> RefreshResult:
        started = time.perf_counter()
        definition = self.definition(name)
        view = self.host.dataset(name)
        head = view.snapshot()
        reflected = lineage(head)
        targets = self._targets(name, definition, to, head)
        result = RefreshResult(
            name,
            "none",
            "",
            {
                n: (reflected[n].snapshot if n in reflected else None, v.snapshot)
                for n, v in targets.items()
            },
        )
        for n, target in targets.items():
            old = reflected.get(n)
            if (
                old is not None
                and old.uuid == target.uuid
                and target.snapshot < old.snapshot
                and is_ancestor(self.host.dataset(n), target.snapshot, old.snapshot)
            ):
                raise MaterializedViewError(
                    f"Cannot refresh materialized view '{name}' to snapshot {target.snapshot} of "
                    f"'{n}': the view already reflects the newer snapshot {old.snapshot}. "
                    "Create another view for older data, or read this one with AT (VERSION "
                    "=> ...) at a view snapshot that reflects it."
                )
        query = parse(str(definition["query"]))[0]
        stored = definition.get("columns")
        plan = self._plan(
            query,
            targets,
            view=name,
            columns=list(stored) if stored is not None else None,
            merge_sums=bool(definition.get("merge_sums", True)),
        )
        result.rule = _rule(plan)
        if targets == reflected and not full:
            result.reason = "the view already reflects these source snapshots"
            return result
        reason = ""
        if full:
            reason = "FULL was asked for"
        elif isinstance(plan, FullPlan):
            reason = plan.reason + (f": {plan.culprit}" if plan.culprit else "")
        else:
            for n, target in targets.items():
                old = reflected.get(n)
                if old is None or old.uuid != target.uuid:
                    reason = f"source '{n}' was dropped and created again since the last refresh"
                    break
        changes: dict[str, Change] = {}
        if not reason:
            try:
                estimate = sum(
                    changed_rows(self.host.dataset(n), reflected[n].snapshot, t.snapshot)
                    for n, t in targets.items()
                )
            except SnapshotNotFoundError as exc:
                reason = f"a reflected source snapshot is gone ({exc})"
            else:
                total = sum(
                    self.host.dataset(n).snapshot(t.snapshot).summary.total_rows
                    for n, t in targets.items()
                )
                fraction = full_fraction(plan) if self.full_fraction is None else self.full_fraction
                limit = max(fraction * total, FULL_MIN_ROWS)
                result.changed_rows = estimate
                if estimate > limit:
                    reason = (
                        f"about {estimate} changed source rows are more than "
                        f"{fraction:.1%} of {total}: recomputing is cheaper"
                    )
        if not reason:
            assert not isinstance(plan, FullPlan)
            needed = columns_used(plan)
            try:
                for n, target in targets.items():
                    if reflected[n].snapshot != target.snapshot:
                        step(f"reading changes of {n}")
                        changes[n] = diff(
                            self.host.dataset(n),
                            reflected[n].snapshot,
                            target.snapshot,
                            columns=needed.get(n),
                            # row views need only the keys of deleted root rows
                            deleted_columns=deleted_columns(plan, n),
                        )
            except SnapshotNotFoundError as exc:
                reason = f"a reflected source snapshot is gone ({exc})"
            result.changed_rows = sum(c.rows for c in changes.values())
        if not reason and isinstance(plan, AggregatePlan) and not plan.body.root_keys:
            others = [n for n in changes if n != plan.body.root_table]
            if others:
                reason = (
                    f"table '{plan.body.root_table}' has no primary key, so changes of "
                    f"{others} cannot be traced to its rows"
                )
        result.strategy = "full" if reason else "incremental"
        result.reason = reason
        if dry_run:
            return result
        versions = {n: v.snapshot for n, v in targets.items()}
        props = _lineage_properties(targets)
        if reason:
            step("recomputing the view")
            data = self._arrow(self._bound(plan.query, versions), view=name)
            data = conform(_match(data, view.schema), view.schema, dataset=name)
            op: Overwrite | RewriteRows = Overwrite(data, properties=props)
            result.deleted_rows = head.summary.total_rows
            result.added_rows = data.num_rows
        else:
            assert not isinstance(plan, FullPlan)
            old_versions = {n: v.snapshot for n, v in reflected.items()}
            step("computing the change of the view")
            positions, data = self._incremental(name, plan, head, changes, old_versions, versions)
            data = conform(_match(data, view.schema), view.schema, dataset=name)
            op = RewriteRows(
                positions=positions,
                data=data,
                operation="refresh",
                properties=props,
            )
            result.deleted_rows = int(sum(len(p) for p in positions.values()))
            result.added_rows = data.num_rows
        step("committing")
        commit = view.local().commit(op, expected_snapshot=head.snapshot_id)
        result.snapshot_id = commit.snapshot_id
        result.seconds = time.perf_counter() - started
        return result

    # --- incremental -------------------------------------------------------------------

    def _incremental(
        self,
        name: str,
        plan: RowPlan | AggregatePlan,
        head: SnapshotRecord,
        changes: Mapping[str, Change],
        old: Mapping[str, int],
        new: Mapping[str, int],
    ) -> tuple[dict[str, np.ndarray], pa.Table]:
        positions_view = self._name("positions")
        self.host.register_snapshot(positions_view, name, head.snapshot_id, positions=True)
        try:
            if isinstance(plan, RowPlan):
                return self._rows(name, plan, positions_view, changes, old, new)
            return self._aggregate(name, plan, positions_view, changes, old, new)
        finally:
            self.host.unregister(positions_view)

    def _affected_roots(
        self,
        branch: Branch,
        changes: Mapping[str, Change],
        old: Mapping[str, int],
        new: Mapping[str, int],
        stack: list[Any],
    ) -> tuple[pa.Table | None, pa.Table | None]:
        """(keys of changed root rows, keys of other roots a change of another table
        touches), each None when empty."""
        keys = list(branch.root_keys)
        root_change = changes.get(branch.root_table)
        own = None
        if root_change is not None and keys:
            own = pa.concat_tables(
                [
                    _nullable(root_change.deleted.select(keys)),
                    _nullable(root_change.inserted.select(keys)),
                ]
            )
            own = own.group_by(keys, use_threads=False).aggregate([])
        found: list[pa.Table] = []
        for alias, table in branch.tables.items():
            if alias == branch.root or table not in changes:
                continue
            change = changes[table]
            detect = detection(branch)
            for rows, versions in ((change.deleted, old), (change.inserted, new)):
                if rows.num_rows == 0:
                    continue
                rel = self._register(rows, stack)
                stmt = self._bound(detect, versions, {alias: select_all(rel)})
                found.append(_nullable(self.host.query_arrow(cast(exp.Expression, stmt), None)))
        other = None
        if found:
            other = pa.concat_tables(found).group_by(keys, use_threads=False).aggregate([])
            if own is not None and own.num_rows:
                other = anti(other, own, keys)
            if other.num_rows == 0:
                other = None
        if own is not None and own.num_rows == 0:
            own = None
        return own, other

    def _register(self, table: pa.Table, stack: list[Any]) -> str:
        name = self._name("rows")
        self.con.register(name, table)
        stack.append(name)
        return name

    def _root_rows(
        self,
        branch: Branch,
        changed: pa.Table | None,
        other_keys: pa.Table | None,
        version: int,
        stack: list[Any],
    ) -> exp.Expr | None:
        """A relation of root rows: changed rows (from the diff) plus the rows of other
        affected roots at ``version``."""
        parts: list[exp.Expr] = []
        if changed is not None and changed.num_rows:
            parts.append(select_all(self._register(changed, stack)))
        if other_keys is not None:
            keys_rel = self._register(other_keys, stack)
            root = exp.Table(
                this=exp.to_identifier(branch.root_table, quoted=True),
                when=exp.HistoricalData(
                    this="AT", kind="VERSION", expression=exp.Literal.number(version)
                ),
                alias=exp.TableAlias(this=exp.to_identifier("__spacesql_r", quoted=True)),
            )
            cond = exp.and_(
                *[
                    exp.column(k, table="__spacesql_r", quoted=True).eq(
                        exp.column(k, table="__spacesql_keys", quoted=True)
                    )
                    for k in branch.root_keys
                ]
            )
            semi = exp.Join(
                this=exp.Table(
                    this=exp.to_identifier(keys_rel, quoted=True),
                    alias=exp.TableAlias(this=exp.to_identifier("__spacesql_keys", quoted=True)),
                ),
                on=cond,
                kind="SEMI",
            )
            sel = exp.select(
                exp.Column(this=exp.Star(), table=exp.to_identifier("__spacesql_r", quoted=True))
            ).from_(root)
            sel.set("joins", [semi])
            parts.append(self.host.register_read(sel))
        if not parts:
            return None
        out = parts[0]
        for p in parts[1:]:
            out = exp.Union(this=out, expression=p, distinct=False, by_name=True)
        return out

    def _rows(
        self,
        name: str,
        plan: RowPlan,
        positions_view: str,
        changes: Mapping[str, Change],
        old: Mapping[str, int],
        new: Mapping[str, int],
    ) -> tuple[dict[str, np.ndarray], pa.Table]:
        stack: list[Any] = []
        dead: list[pa.Table] = []
        added: list[pa.Table] = []
        try:
            for branch in plan.branches:
                own, other = self._affected_roots(branch, changes, old, new, stack)
                if own is None and other is None:
                    continue
                keys = pa.concat_tables(
                    [t for t in (own, other) if t is not None], promote_options="permissive"
                )
                keys_rel = self._register(keys, stack)
                cond = exp.and_(
                    *[
                        exp.column(col, table="p", quoted=True).eq(
                            exp.column(k, table="k", quoted=True)
                        )
                        for col, k in zip(branch.key_columns, branch.root_keys, strict=True)
                    ]
                )
                find = exp.select(
                    exp.column(FILE_COLUMN, table="p", quoted=True),
                    exp.column(POSITION_COLUMN, table="p", quoted=True),
                ).from_(exp.to_table(positions_view, alias="p", quoted=True))
                find.set(
                    "joins",
                    [
                        exp.Join(
                            this=exp.Table(
                                this=exp.to_identifier(keys_rel, quoted=True),
                                alias=exp.TableAlias(this=exp.to_identifier("k")),
                            ),
                            on=cond,
                            kind="SEMI",
                        )
                    ],
                )
                dead.append(self.host.query_arrow(find, None))
                root_change = changes.get(branch.root_table)
                inserted = root_change.inserted if root_change is not None else None
                roots = self._root_rows(branch, inserted, other, new[branch.root_table], stack)
                if roots is None:
                    continue
                assert branch.full is not None
                stmt = self._bound(branch.full, new, {branch.root: roots})
                added.append(self._arrow(stmt, view=name))
        finally:
            for rel in stack:
                self.con.unregister(rel)
        return _positions(dead, self.host.dataset(name).location), _concat(added)

    def _aggregate(
        self,
        name: str,
        plan: AggregatePlan,
        positions_view: str,
        changes: Mapping[str, Change],
        old: Mapping[str, int],
        new: Mapping[str, int],
    ) -> tuple[dict[str, np.ndarray], pa.Table]:
        body = plan.body
        stack: list[Any] = []
        try:
            own_change = changes.get(body.root_table)
            other = None
            if body.root_keys:
                _own, other = self._affected_roots(body, changes, old, new, stack)
            signed: list[exp.Expr] = []
            for sign, versions, changed in (
                (-1, old, own_change.deleted if own_change else None),
                (1, new, own_change.inserted if own_change else None),
            ):
                roots = self._root_rows(body, changed, other, versions[body.root_table], stack)
                if roots is None:
                    continue
                signed.append(self._bound(signed_input(plan, sign), versions, {body.root: roots}))
            if not signed:
                return {}, pa.table({})
            union = signed[0]
            for s in signed[1:]:
                union = exp.union(union, s, distinct=False)
            merge = merge_query(plan, union, positions_view)
            merged = self._arrow(merge, view=name)
            return self._finish_groups(name, plan, merged, new, stack)
        finally:
            for rel in stack:
                self.con.unregister(rel)

    def _finish_groups(
        self,
        name: str,
        plan: AggregatePlan,
        merged: pa.Table,
        new: Mapping[str, int],
        stack: list[Any],
    ) -> tuple[dict[str, np.ndarray], pa.Table]:
        dead = merged.select([FILE_COLUMN, POSITION_COLUMN]).filter(
            merged.column(FILE_COLUMN).is_valid()
        )
        recompute = pc.fill_null(merged.column("__spacesql_recompute"), False)
        alive = merged.filter(
            pc.and_(
                pc.invert(recompute),
                pc.greater(merged.column(N_COLUMN), 0)
                if plan.groups
                else pc.is_valid(merged.column(N_COLUMN)),
            )
        )
        keep = [c for c in alive.column_names if c not in MERGE_EXTRA]
        parts = [alive.select(keep)]
        redo = merged.filter(recompute)
        if redo.num_rows:
            if plan.groups:
                groups = redo.select(plan.group_columns)
                rel = self._register(groups, stack)
                stmt = restricted_full(plan, rel)
            else:
                stmt = plan.query
            parts.append(self._arrow(self._bound(stmt, new), view=name))
        return _positions([dead], self.host.dataset(name).location), _concat(parts)


def _positions(tables: list[pa.Table], root: Any) -> dict[str, np.ndarray]:
    """Rows of positions-view results, as the engine addresses them."""
    found = [t.select([FILE_COLUMN, POSITION_COLUMN]) for t in tables if t.num_rows]
    return positions_of(root, pa.concat_tables(found)) if found else {}


def _concat(parts: list[pa.Table]) -> pa.Table:
    parts = [p for p in parts if p.num_columns]
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts, promote_options="permissive")


def _nullable(table: pa.Table) -> pa.Table:
    schema = pa.schema([f.with_nullable(True) for f in table.schema])
    return table.cast(schema)


def _match(data: pa.Table, schema: pa.Schema) -> pa.Table:
    if data.num_columns == 0:
        return schema.empty_table()
    return data


def _rule(plan: Plan) -> str:
    if isinstance(plan, FullPlan):
        return f"full recompute: {plan.reason}" + (f" ({plan.culprit})" if plan.culprit else "")
    if isinstance(plan, RowPlan):
        roots = ", ".join(b.root_table for b in plan.branches)
        return (
            f"rows per root row ({roots}): delete the view rows of changed roots, insert the "
            "query over those roots"
        )
    kinds = sorted({a.kind for a in plan.aggs})
    return (
        "groups: merge counts and sums of the changed rows"
        + (", recompute groups whose MIN/MAX lost its extreme" if plan.extremes else "")
        + (", recompute touched groups for holistic aggregates" if plan.holistic else "")
        + (f" [{', '.join(kinds)}]" if kinds else "")
    )
