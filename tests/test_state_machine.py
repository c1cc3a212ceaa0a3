"""Stateful property tests: random write/version histories against an in-memory model.

Each machine drives one dataset through random sequences of append / insert / upsert /
delete / update / tag / branch operations and mirrors them in a model:

* per branch: the live rows (a list of row dicts; keyed datasets keep keys unique);
* per snapshot id: the full multiset of rows, its parent and its branch.

After every step the head of the current branch must read back exactly like the model
(sorted by id). Failed writes (existing or repeated keys, stale ``expected_snapshot``, NOT NULL
key, int64 overflow) must raise the documented error and change nothing: same snapshot, same
files. A periodic rule and the teardown (through a fresh handle, so every state is rebuilt
from checkpoints and manifests) check that every recorded snapshot, tag and branch reads back
exactly, that ``versions()`` and time travel by timestamp describe the history, and that
``changes(a, b)`` is the multiset difference of the two snapshots' rows, for pairs on one
lineage and across branches. Filters are random three-valued expressions (null is not true).

The configurations:

* ``KeyedMachine``: key ``id`` (0..15, so keys collide), nullable int64 / string /
  timestamp[us, UTC] / list<struct<a: int64>> columns, so filters meet nulls;
* ``KeylessMachine``: no primary key, so duplicate rows are appended and deleted as multisets;
* ``RecordMachine``: a binary record field ``blob`` stored in ArrayRecord files;
* ``MaintenanceMachine``: the keyed machine plus compaction, snapshot expiry and removal of
  orphan files.

Bugs the machines found are pinned by the regression tests at the end of the file.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import shutil
import tempfile
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from spacesql.engine.dataset import Dataset
from spacesql.engine.maintenance import CompactOptions
from spacesql.errors import (
    CommitConflictError,
    ConstraintError,
    NotFoundError,
    SchemaError,
    SnapshotNotFoundError,
)

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
MAX_KEY = 15
BRANCH_NAMES = ("b1", "b2", "b3")

# --- row values -------------------------------------------------------------------------

ids = st.integers(0, MAX_KEY)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
small_ints = st.none() | st.integers(-5, 10) | st.sampled_from([INT64_MIN, INT64_MAX])
texts = st.none() | st.text(alphabet="ab\u00e9\x00Z\U0001f600", max_size=3)
timestamps = (
    st.none()
    | st.datetimes(
        min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC)
    )
    | st.sampled_from([dt.datetime.min.replace(tzinfo=UTC), dt.datetime.max.replace(tzinfo=UTC)])
)
struct_lists = st.none() | st.lists(
    st.none() | st.fixed_dictionaries({"a": st.none() | st.integers(-3, 3)}), max_size=3
)
blobs = st.none() | st.binary(max_size=40)

KEYED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("v", pa.int64()),
        pa.field("s", pa.string()),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("l", pa.list_(pa.struct([("a", pa.int64())]))),
    ]
)
RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("v", pa.int64()),
        pa.field("blob", pa.binary()),
    ]
)
COLUMN_VALUES = {
    "id": ids,
    "v": small_ints,
    "s": texts,
    "ts": timestamps,
    "l": struct_lists,
    "blob": blobs,
}
#: Columns that can be compared with < = > in a filter.
ORDERED = ("id", "v", "s", "ts")


def plus_one(v: int | None) -> int | None:
    """``pc.field('v') + 1`` (Arrow's add_checked: overflow is an error, see do_update)."""
    return None if v is None else v + 1


def row_strategy(schema: pa.Schema) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({f.name: COLUMN_VALUES[f.name] for f in schema})


# --- hashable, orderable rows -----------------------------------------------------------


def freeze(x: Any) -> Any:
    """Rows as hashable values: dicts and lists become tuples, datetimes normalised to UTC."""
    if isinstance(x, dict):
        return tuple((k, freeze(v)) for k, v in sorted(x.items()))
    if isinstance(x, list | tuple):
        return tuple(freeze(v) for v in x)
    if isinstance(x, dt.datetime):
        return x.astimezone(UTC)
    return x


def okey(x: Any) -> Any:
    """A total order on frozen values (None first)."""
    if x is None:
        return (0,)
    if isinstance(x, tuple):
        return (1, tuple(okey(v) for v in x))
    if isinstance(x, dt.datetime):
        return (2, (x - EPOCH) // dt.timedelta(microseconds=1))
    if isinstance(x, bool):
        return (3, int(x))
    if isinstance(x, int):
        return (4, x)
    if isinstance(x, str):
        return (5, x)
    if isinstance(x, bytes):
        return (6, x)
    raise TypeError(type(x))


def as_sorted(rows: Any) -> list[Any]:
    return sorted((freeze(r) for r in rows), key=okey)


def table_rows(table: pa.Table) -> list[Any]:
    return as_sorted(table.to_pylist())


# --- filters: a small AST evaluated both as a pyarrow expression and in Kleene logic ----

CMP_OPS = ("==", "!=", "<", "<=", ">", ">=")


def filter_strategy(schema: pa.Schema, record_fields: tuple[str, ...]) -> st.SearchStrategy[Any]:
    names = [f.name for f in schema]
    ordered = [c for c in ORDERED if c in names]
    nullable = [f.name for f in schema if f.nullable and f.name not in record_fields]
    cmp = st.one_of(
        *[
            st.tuples(
                st.just("cmp"),
                st.just(c),
                st.sampled_from(CMP_OPS),
                COLUMN_VALUES[c].filter(lambda x: x is not None),
            )
            for c in ordered
        ]
    )
    leaves = st.one_of(
        cmp,
        st.tuples(st.sampled_from(["isnull", "isvalid"]), st.sampled_from(nullable)),
        st.tuples(
            st.just("isin"),
            st.sampled_from([c for c in ("id", "v") if c in names]),
            st.lists(st.integers(-5, MAX_KEY), max_size=4).map(tuple),
        ),
        st.just(("true",)),
    )
    return st.recursive(
        leaves,
        lambda sub: st.one_of(
            st.tuples(st.just("not"), sub),
            st.tuples(st.sampled_from(["and", "or"]), sub, sub),
        ),
        max_leaves=3,
    )


def to_expr(f: Any, schema: pa.Schema) -> pc.Expression:
    kind = f[0]
    if kind == "true":
        return pc.scalar(True)
    if kind == "cmp":
        _, col, op, value = f
        field = pc.field(col)
        scalar = pc.scalar(pa.scalar(value, type=schema.field(col).type))
        return {
            "==": field == scalar,
            "!=": field != scalar,
            "<": field < scalar,
            "<=": field <= scalar,
            ">": field > scalar,
            ">=": field >= scalar,
        }[op]
    if kind == "isnull":
        return pc.field(f[1]).is_null()
    if kind == "isvalid":
        return pc.field(f[1]).is_valid()
    if kind == "isin":
        return pc.field(f[1]).isin(pa.array(f[2], type=pa.int64()))
    if kind == "not":
        return ~to_expr(f[1], schema)
    if kind == "and":
        return to_expr(f[1], schema) & to_expr(f[2], schema)
    if kind == "or":
        return to_expr(f[1], schema) | to_expr(f[2], schema)
    raise AssertionError(f)


def evaluate(f: Any, row: dict[str, Any]) -> bool | None:
    """Kleene (SQL) three-valued logic, as Arrow evaluates the expression."""
    kind = f[0]
    if kind == "true":
        return True
    if kind == "cmp":
        _, col, op, value = f
        x = row[col]
        if x is None:
            return None
        return {
            "==": x == value,
            "!=": x != value,
            "<": x < value,
            "<=": x <= value,
            ">": x > value,
            ">=": x >= value,
        }[op]
    if kind == "isnull":
        return row[f[1]] is None
    if kind == "isvalid":
        return row[f[1]] is not None
    if kind == "isin":
        return row[f[1]] is not None and row[f[1]] in f[2]  # null is never in the set
    if kind == "not":
        x = evaluate(f[1], row)
        return None if x is None else not x
    a, b = evaluate(f[1], row), evaluate(f[2], row)
    if kind == "and":
        if a is False or b is False:
            return False
        return None if a is None or b is None else True
    if kind == "or":
        if a is True or b is True:
            return True
        return None if a is None or b is None else False
    raise AssertionError(f)


# --- the machine ------------------------------------------------------------------------


def tracked(method: Any) -> Any:
    """Mark the machine dirty while a step runs, so teardown skips its checks after a failure."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.clean = False
        result = method(self, *args, **kwargs)
        self.clean = True
        return result

    return wrapper


def one_in(data: st.DataObject, n: int, label: str) -> bool:
    return data.draw(st.integers(0, n - 1), label=label) == 0


class _Machine(RuleBasedStateMachine):
    SCHEMA: pa.Schema = KEYED_SCHEMA
    KEYS: tuple[str, ...] = ("id",)
    RECORDS: tuple[str, ...] = ()
    GROUP_SIZE = 1
    MAX_ROWS = 5
    #: insert(ignore_existing=True) fails on list columns: see test_insert_ignore_existing_*.
    IGNORE_EXISTING = False

    def __init__(self) -> None:
        super().__init__()
        self.clean = True
        self.tmp = tempfile.mkdtemp(prefix="spacesql-sm-")
        self.location = os.path.join(self.tmp, "ds")
        self.ds = Dataset.create(
            self.location,
            self.SCHEMA,
            primary_keys=list(self.KEYS),
            record_fields=list(self.RECORDS),
            array_record_group_size=self.GROUP_SIZE,
            durable=False,  # no fsync: much faster, and crashes are not tested here
        )
        self.spare: Dataset | None = None  # a second handle on the same dataset
        self.rows_st = row_strategy(self.SCHEMA)
        self.filter_st = filter_strategy(self.SCHEMA, self.RECORDS)
        # The model.
        self.current = "main"
        self.rows: dict[str, list[dict[str, Any]]] = {"main": []}  # live rows per branch
        self.heads: dict[str, int] = {"main": 0}
        self.last_sid = 0
        self.expired: set[int] = set()  # snapshots forgotten by expire_snapshots()
        self.snaps: dict[int, list[Any]] = {0: []}  # frozen rows per live snapshot, sorted
        self.snap_rows: dict[int, list[dict[str, Any]]] = {0: []}  # the same rows as dicts
        self.parent: dict[int, int | None] = {0: None}
        self.snap_branch: dict[int, str] = {0: "main"}
        self.tags: dict[str, int] = {}
        self.tag_counter = 0

    @property
    def runner(self) -> Any:
        return self.ds.local()

    @property
    def keyed(self) -> bool:
        return bool(self.KEYS)

    # --- helpers -----------------------------------------------------------------------

    def _table(self, rows: list[dict[str, Any]], data: st.DataObject) -> pa.Table:
        table = pa.Table.from_pylist(rows, schema=self.SCHEMA)
        if one_in(data, 4, "shuffle columns"):
            # Columns in any order: the engine conforms them to the schema.
            order = data.draw(st.permutations(self.SCHEMA.names), label="column order")
            table = table.select(list(order))
        return table

    def _draw_rows(self, data: st.DataObject) -> list[dict[str, Any]]:
        if one_in(data, 10, "empty data"):
            return []
        return data.draw(st.lists(self.rows_st, min_size=1, max_size=self.MAX_ROWS), label="rows")

    def _files(self) -> set[str]:
        out = set()
        for dirpath, _dirs, files in os.walk(self.location):
            out.update(os.path.join(dirpath, f) for f in files)
        return out

    def _latest(self) -> int:
        return self.last_sid

    def _expect_failure(self, exc_type: type[Exception], fn: Any) -> None:
        """``fn`` must raise ``exc_type`` and leave files, heads and the log untouched."""
        before = self._files()
        latest = self.ds.table.log.latest().snapshot_id
        with pytest.raises(exc_type):
            fn()
        assert self.ds.table.log.latest().snapshot_id == latest == self._latest()
        assert self.ds.snapshot().snapshot_id == self.heads[self.current]
        assert self._files() == before, "a failed write left files behind"

    def _commit(
        self, result: Any, new_rows: list[dict[str, Any]] | None, added: int = 0, deleted: int = 0
    ) -> None:
        """Check a write's result and record its snapshot in the model."""
        if new_rows is None:
            assert result.snapshot_id is None, result
            assert not result.committed
            assert self.ds.snapshot().snapshot_id == self.heads[self.current]
            assert self.ds.table.log.latest().snapshot_id == self._latest()
            return
        sid = self._latest() + 1  # ids are global across branches and dense
        assert result.snapshot_id == sid, (result, sid)
        assert result.committed
        assert (result.added_rows, result.deleted_rows) == (added, deleted), result
        self.parent[sid] = self.heads[self.current]
        self.snap_branch[sid] = self.current
        self.heads[self.current] = sid
        self.rows[self.current] = new_rows
        self.snaps[sid] = as_sorted(new_rows)
        self.snap_rows[sid] = list(new_rows)
        self.last_sid = sid

    def _version(self, data: st.DataObject) -> tuple[Any, int]:
        """A version (None, id, tag or branch name) and the snapshot it names."""
        choices: list[tuple[Any, int]] = [(None, self.heads[self.current])]
        choices += [(sid, sid) for sid in sorted(self.snaps)]
        choices += [(name, sid) for name, sid in sorted(self.tags.items())]
        choices += [(name, sid) for name, sid in sorted(self.heads.items())]
        return data.draw(st.sampled_from(choices), label="version")

    # --- write operations (model + engine) ----------------------------------------------

    def do_append(self, data: st.DataObject) -> None:
        rows = self._draw_rows(data)
        current = self.rows[self.current]
        if self.keyed:
            # append() does not check keys; keep the model keyed by appending new keys only.
            seen = {r["id"] for r in current}
            fresh = []
            for r in rows:
                if r["id"] not in seen:
                    seen.add(r["id"])
                    fresh.append(r)
            rows = fresh
        elif current and one_in(data, 3, "append copies"):
            # Keyless: exact duplicates of live rows are fine, and must be kept as such.
            rows = rows + data.draw(
                st.lists(st.sampled_from(current), min_size=1, max_size=3), label="copies"
            )
        result = self.runner.append(self._table(rows, data))
        self._commit(result, current + rows if rows else None, added=len(rows))

    def do_insert(self, data: st.DataObject) -> None:
        rows = self._draw_rows(data)
        current = self.rows[self.current]
        if self.keyed and not one_in(data, 3, "insert colliding keys"):
            existing = {r["id"] for r in current}
            rows = list({r["id"]: r for r in rows if r["id"] not in existing}.values())
        table = self._table(rows, data)
        ignore = self.IGNORE_EXISTING and data.draw(st.booleans(), label="ignore_existing")
        if self.keyed:
            new_ids = [r["id"] for r in rows]
            existing = {r["id"] for r in current}
            if len(set(new_ids)) != len(new_ids) or (existing & set(new_ids) and not ignore):
                self._expect_failure(
                    ConstraintError, lambda: self.runner.insert(table, ignore_existing=ignore)
                )
                return
            rows = [r for r in rows if r["id"] not in existing]  # ignore_existing skips these
        result = self.runner.insert(table, ignore_existing=ignore)
        self._commit(result, current + rows if rows else None, added=len(rows))

    def do_upsert(self, data: st.DataObject, rows: list[dict[str, Any]] | None = None) -> None:
        if rows is None:
            rows = self._draw_rows(data)
            if self.keyed and not one_in(data, 5, "upsert duplicate keys"):
                rows = list({r["id"]: r for r in rows}.values())
        table = self._table(rows, data)
        if not self.keyed:
            self._expect_failure(SchemaError, lambda: self.runner.upsert(table))
            return
        new_ids = [r["id"] for r in rows]
        if len(set(new_ids)) != len(new_ids):
            self._expect_failure(ConstraintError, lambda: self.runner.upsert(table))
            return
        current = self.rows[self.current]
        kept = [r for r in current if r["id"] not in set(new_ids)]
        result = self.runner.upsert(table)
        self._commit(
            result, kept + rows if rows else None, added=len(rows), deleted=len(current) - len(kept)
        )

    def do_rewrite_existing(self, data: st.DataObject) -> None:
        """Write back some live rows, most of them unchanged (diffs must cancel them)."""
        current = self.rows[self.current]
        if not current:
            return
        picked = data.draw(
            st.lists(st.sampled_from(range(len(current))), min_size=1, max_size=4, unique=True),
            label="rows to rewrite",
        )
        rows = []
        for i in picked:
            row = dict(current[i])
            if one_in(data, 3, "modify row"):
                col = data.draw(
                    st.sampled_from([c for c in self.SCHEMA.names if c not in self.KEYS]),
                    label="column",
                )
                row[col] = data.draw(COLUMN_VALUES[col], label="new value")
            rows.append(row)
        if self.keyed:
            self.do_upsert(data, rows)
            return
        # Keyless: delete the picked rows' exact duplicates, then append them back.
        self.do_delete(data, ("isin", "id", tuple(r["id"] for r in rows)))
        result = self.runner.append(self._table(rows, data))
        self._commit(result, self.rows[self.current] + rows, added=len(rows))

    def do_delete(self, data: st.DataObject, f: Any = None) -> None:
        if f is None:
            f = data.draw(self.filter_st, label="filter")
        current = self.rows[self.current]
        kept = [r for r in current if evaluate(f, r) is not True]
        result = self.runner.delete(to_expr(f, self.SCHEMA))
        n = len(current) - len(kept)
        self._commit(result, kept if n else None, deleted=n)

    def do_delete_v_greater(self, data: st.DataObject) -> None:
        """Rows whose ``v`` is null must survive ``delete(v > k)``."""
        k = data.draw(st.integers(-1, 8), label="k")
        current = self.rows[self.current]
        nulls = as_sorted(r for r in current if r["v"] is None)
        self.do_delete(data, ("cmp", "v", ">", k))
        got_nulls = self.runner.read_all(filter_=pc.field("v").is_null())
        assert table_rows(got_nulls) == nulls

    def do_update(self, data: st.DataObject) -> None:
        f = None if one_in(data, 6, "no filter") else data.draw(self.filter_st, label="filter")
        settable = [c for c in self.SCHEMA.names if c not in self.KEYS]
        if self.keyed and one_in(data, 5, "set the key"):
            settable.append("id")
        cols = data.draw(
            st.lists(st.sampled_from(settable), min_size=1, max_size=3, unique=True),
            label="columns",
        )
        values: dict[str, Any] = {}
        for c in cols:
            if c == "v" and data.draw(st.booleans(), label="v as expression"):
                values[c] = ("v+1",)
            else:
                values[c] = data.draw(COLUMN_VALUES[c], label=f"value of {c}")
        api_values = {
            c: (pc.field("v") + 1 if isinstance(x, tuple) else x) for c, x in values.items()
        }

        def apply(row: dict[str, Any]) -> dict[str, Any]:
            out = dict(row)
            for c, x in values.items():
                if isinstance(x, tuple):
                    out[c] = plus_one(row["v"])
                else:
                    out[c] = x
            return out

        current = self.rows[self.current]
        hit = [f is None or evaluate(f, r) is True for r in current]
        expr = None if f is None else to_expr(f, self.SCHEMA)
        n = sum(hit)
        overflow = isinstance(values.get("v"), tuple) and any(
            h and r["v"] == INT64_MAX for r, h in zip(current, hit, strict=True)
        )
        if overflow:
            # `pc.field('v') + 1` is add_checked: the update is rejected, nothing is written.
            self._expect_failure(SchemaError, lambda: self.runner.update(expr, api_values))
            return
        if n and "id" in values and values["id"] is None:
            # The key column is NOT NULL.
            self._expect_failure(SchemaError, lambda: self.runner.update(expr, api_values))
            return
        if n and self.keyed and "id" in values:
            others = {r["id"] for r, h in zip(current, hit, strict=True) if not h}
            if n > 1 or values["id"] in others:
                self._expect_failure(ConstraintError, lambda: self.runner.update(expr, api_values))
                return
        new_rows = [apply(r) if h else r for r, h in zip(current, hit, strict=True)]
        result = self.runner.update(expr, api_values)
        self._commit(result, new_rows if n else None, added=n, deleted=n)

    def do_stale_write(self, data: st.DataObject) -> None:
        """A write expecting another head snapshot is rejected and writes nothing."""
        head = self.heads[self.current]
        stale = data.draw(
            st.sampled_from(sorted({*self.snaps, self._latest() + 1})), label="expected snapshot"
        )
        rows = data.draw(st.lists(self.rows_st, min_size=1, max_size=2), label="rows")
        if self.keyed:
            rows = list({r["id"]: r for r in rows}.values())
        table = self._table(rows, data)
        if stale != head:
            self._expect_failure(
                CommitConflictError,
                lambda: (
                    self.runner.upsert(table, expected_snapshot=stale)
                    if self.keyed
                    else self.runner.append(table, expected_snapshot=stale)
                ),
            )
            return
        current = self.rows[self.current]
        if self.keyed:
            kept = [r for r in current if r["id"] not in {r["id"] for r in rows}]
            result = self.runner.upsert(table, expected_snapshot=head)
            self._commit(result, kept + rows, added=len(rows), deleted=len(current) - len(kept))
        else:
            result = self.runner.append(table, expected_snapshot=head)
            self._commit(result, current + rows, added=len(rows))

    def do_small_write(self, data: st.DataObject) -> None:
        """A one-row write: cheap, so bursts build long chains (and checkpoints)."""
        kind = data.draw(st.sampled_from(["upsert", "delete", "update"]), label="small write")
        key = data.draw(ids, label="key")
        if kind == "upsert" and self.keyed:
            row = data.draw(self.rows_st, label="row")
            row["id"] = key
            self.do_upsert(data, [row])
        elif kind == "upsert":
            self.do_append(data)
        elif kind == "delete":
            self.do_delete(data, ("cmp", "id", "==", key))
        else:
            current = self.rows[self.current]
            v = data.draw(small_ints, label="v")
            n = sum(r["id"] == key for r in current)
            new_rows = [dict(r, v=v) if r["id"] == key else r for r in current]
            result = self.runner.update(pc.field("id") == key, {"v": v})
            self._commit(result, new_rows if n else None, added=n, deleted=n)

    WRITES = (
        "append",
        "insert",
        "upsert",
        "rewrite_existing",
        "delete",
        "delete_v_greater",
        "update",
        "small_write",
        "stale_write",
    )

    def do_any_write(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(self.WRITES), label="write")
        getattr(self, f"do_{kind}")(data)

    # --- write rules ---------------------------------------------------------------------

    @rule(data=st.data())
    @tracked
    def append(self, data: st.DataObject) -> None:
        self.do_append(data)

    @rule(data=st.data())
    @tracked
    def insert(self, data: st.DataObject) -> None:
        self.do_insert(data)

    @rule(data=st.data())
    @tracked
    def upsert(self, data: st.DataObject) -> None:
        self.do_upsert(data)

    @rule(data=st.data())
    @tracked
    def rewrite_existing(self, data: st.DataObject) -> None:
        self.do_rewrite_existing(data)

    @rule(data=st.data())
    @tracked
    def delete(self, data: st.DataObject) -> None:
        if one_in(data, 3, "delete v > k"):
            self.do_delete_v_greater(data)
        else:
            self.do_delete(data)

    @rule(data=st.data())
    @tracked
    def update(self, data: st.DataObject) -> None:
        self.do_update(data)

    @rule(data=st.data())
    @tracked
    def stale_write(self, data: st.DataObject) -> None:
        self.do_stale_write(data)

    @rule(data=st.data(), n=st.integers(2, 5))
    @tracked
    def burst(self, data: st.DataObject, n: int) -> None:
        for _ in range(n):
            self.do_small_write(data)
        self.head_matches_model()

    # --- versions ------------------------------------------------------------------------

    @rule(data=st.data())
    @tracked
    def tag(self, data: st.DataObject) -> None:
        if self.tags and one_in(data, 4, "remove a tag"):
            name = data.draw(st.sampled_from(sorted(self.tags)), label="tag")
            self.ds.remove_tag(name)
            del self.tags[name]
            with pytest.raises(NotFoundError):
                self.ds.remove_tag(name)
            return
        version, sid = self._version(data)
        if self.tags and one_in(data, 6, "reuse a tag name"):
            name = data.draw(st.sampled_from(sorted(self.tags)), label="tag")
            self._expect_failure(SchemaError, lambda: self.ds.add_tag(name, version))
            return
        self.tag_counter += 1
        name = f"t{self.tag_counter}"
        self.ds.add_tag(name, version)
        self.tags[name] = sid
        assert table_rows(self.runner.read_all(version=name)) == self.snaps[sid]

    @rule(data=st.data())
    @tracked
    def add_branch(self, data: st.DataObject) -> None:
        free = [b for b in BRANCH_NAMES if b not in self.heads]
        if not free or one_in(data, 8, "existing branch name"):
            name = data.draw(st.sampled_from(sorted(self.heads)), label="taken branch")
            self._expect_failure(SchemaError, lambda: self.ds.add_branch(name))
            return
        name = data.draw(st.sampled_from(free), label="branch")
        version, sid = self._version(data)
        self.ds.add_branch(name, version)
        self.heads[name] = sid
        self.rows[name] = list(self.snap_rows[sid])
        assert table_rows(self.runner.read_all(version=name)) == self.snaps[sid]

    @rule(data=st.data())
    @tracked
    def branch_session(self, data: st.DataObject) -> None:
        """Switch to another branch (maybe a new one), write on it, and (usually) switch back."""
        others = [b for b in sorted(self.heads) if b != self.current]
        free = [b for b in BRANCH_NAMES if b not in self.heads]
        if free and (not others or one_in(data, 3, "new branch")):
            name = data.draw(st.sampled_from(free), label="new branch")
            version, sid = self._version(data)
            self.ds.add_branch(name, version)
            self.heads[name] = sid
            self.rows[name] = list(self.snap_rows[sid])
            others.append(name)
        home = self.current
        name = data.draw(st.sampled_from(others), label="branch")
        self.ds.set_current_branch(name)
        self.current = name
        self.head_matches_model()
        for _ in range(data.draw(st.integers(1, 3), label="writes")):
            self.do_any_write(data)
        self.head_matches_model()
        if not one_in(data, 4, "stay on the branch"):
            self.ds.set_current_branch(home)
            self.current = home

    @rule(name=st.sampled_from(("main", *BRANCH_NAMES)))
    @tracked
    def switch_branch(self, name: str) -> None:
        if name not in self.heads:
            with pytest.raises(NotFoundError):
                self.ds.set_current_branch(name)
            assert self.ds.current_branch == self.current
            return
        self.ds.set_current_branch(name)
        self.current = name

    @rule(data=st.data())
    @tracked
    def remove_branch(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(("main", *BRANCH_NAMES)), label="branch")
        if name == "main" or name == self.current:
            self._expect_failure(SchemaError, lambda: self.ds.remove_branch(name))
            return
        if name not in self.heads:
            with pytest.raises(NotFoundError):
                self.ds.remove_branch(name)
            return
        self.ds.remove_branch(name)
        del self.heads[name]
        del self.rows[name]
        with pytest.raises(NotFoundError):
            self.runner.read_all(version=name)

    @rule(fresh=st.booleans())
    @tracked
    def switch_handle(self, fresh: bool) -> None:
        """Go on through a fresh handle (no caches), or through the spare handle, whose
        caches predate the writes made through this one."""
        if fresh:
            self.ds = Dataset.load(self.location, durable=False)
        else:
            if self.spare is None:
                self.spare = Dataset.load(self.location, durable=False)
            self.ds, self.spare = self.spare, self.ds
        self.ds.set_current_branch(self.current)

    # --- reads ---------------------------------------------------------------------------

    @rule(data=st.data())
    @tracked
    def read_filtered(self, data: st.DataObject) -> None:
        version, sid = self._version(data)
        f = data.draw(self.filter_st, label="filter")
        fields = data.draw(
            st.none() | st.lists(st.sampled_from(self.SCHEMA.names), min_size=1, unique=True),
            label="fields",
        )
        expr = to_expr(f, self.SCHEMA)
        got = self.runner.read_all(filter_=expr, fields=fields, version=version)
        names = fields or self.SCHEMA.names
        want = [{c: r[c] for c in names} for r in self.snap_rows[sid] if evaluate(f, r) is True]
        assert got.column_names == list(names)
        assert got.schema == pa.schema([self.SCHEMA.field(c) for c in names])
        assert table_rows(got) == as_sorted(want)
        # The streaming reader returns the same rows.
        streamed = [
            r
            for b in self.runner.read(filter_=expr, fields=fields, version=version, batch_size=2)
            for r in b.to_pylist()
        ]
        assert as_sorted(streamed) == as_sorted(want)

    @rule(data=st.data())
    @tracked
    def random_access(self, data: st.DataObject) -> None:
        """take(indices) returns the rows at those positions of read_all()'s order."""
        version, sid = self._version(data)
        full = self.runner.read_all(version=version)
        n = full.num_rows
        assert table_rows(full) == self.snaps[sid]
        fields = data.draw(
            st.none() | st.lists(st.sampled_from(self.SCHEMA.names), min_size=1, unique=True),
            label="fields",
        )
        if n == 0:
            with pytest.raises(IndexError):
                self.runner.take([0], fields=fields, version=version)
            return
        idx = data.draw(st.lists(st.integers(0, n - 1), max_size=6), label="indices")
        got = self.runner.take(idx, fields=fields, version=version)
        want = full.take(pa.array(idx, type=pa.int64())).select(fields or self.SCHEMA.names)
        assert got.schema == want.schema
        assert [freeze(r) for r in got.to_pylist()] == [freeze(r) for r in want.to_pylist()]
        with self.runner.random_access(version=version) as ra:
            assert len(ra) == n
            assert freeze(ra[-1]) == freeze(full.slice(n - 1).to_pylist()[0])

    @rule(data=st.data())
    @tracked
    def check_history_sample(self, data: st.DataObject) -> None:
        sids = sorted(self.snaps)
        for _ in range(3):
            (va, a), (vb, b) = self._version(data), self._version(data)
            self.check_changes(a, b, va, vb)
        sid = data.draw(st.sampled_from(sids), label="snapshot")
        assert table_rows(self.runner.read_all(version=sid)) == self.snaps[sid]

    @invariant()
    @tracked
    def head_matches_model(self) -> None:
        assert self.ds.current_branch == self.current
        assert self.ds.snapshot().snapshot_id == self.heads[self.current]
        got = self.runner.read_all()
        assert got.schema == self.SCHEMA
        want = self.rows[self.current]
        if self.keyed:
            got_rows = sorted(got.to_pylist(), key=lambda r: r["id"])
            want = sorted(want, key=lambda r: r["id"])
            assert [freeze(r) for r in got_rows] == [freeze(r) for r in want]
        else:
            assert table_rows(got) == as_sorted(want)

    # --- history checks ------------------------------------------------------------------

    def _ancestors(self, sid: int, *, live: bool = False) -> list[int]:
        """sid and its ancestors, newest first (``live``: stop at an expired one)."""
        out = []
        cur: int | None = sid
        while cur is not None and not (live and cur in self.expired):
            out.append(cur)
            cur = self.parent[cur]
        return out

    def check_changes(self, a: int, b: int, va: Any = None, vb: Any = None) -> None:
        """changes(a, b) is the multiset difference of the two snapshots' rows (``va`` and
        ``vb``: other names of the versions, None for the ids themselves)."""
        got = self.runner.changes(a if va is None else va, b if vb is None else vb)
        assert got.column_names == ["change_type", "snapshot_id", *self.SCHEMA.names]
        rows = got.to_pylist()
        assert {r["change_type"] for r in rows} <= {"insert", "delete"}
        cols = self.SCHEMA.names
        deleted = as_sorted({c: r[c] for c in cols} for r in rows if r["change_type"] == "delete")
        inserted = as_sorted({c: r[c] for c in cols} for r in rows if r["change_type"] == "insert")
        ma, mb = Counter(self.snaps[a]), Counter(self.snaps[b])
        want_deleted = sorted((ma - mb).elements(), key=okey)
        want_inserted = sorted((mb - ma).elements(), key=okey)
        assert deleted == want_deleted, ("deleted", a, b)
        assert inserted == want_inserted, ("inserted", a, b)
        path = self._ancestors(b)
        if a in path:
            # Forward on one lineage, every change is attributed to a snapshot after a.
            after_a = set(path[: path.index(a)])
            assert {r["snapshot_id"] for r in rows} <= after_a, (a, b, rows)

    def check_time_travel(self) -> None:
        """A point in time names the newest snapshot at or before it on the current branch."""
        stamps = {v["snapshot_id"]: v["timestamp"] for v in self.ds.versions().to_pylist()}
        lineage = self._ancestors(self.heads[self.current], live=True)  # newest first
        for i, sid in enumerate(lineage):
            when = stamps[sid]
            want = next(s for s in lineage if stamps[s] <= when)
            assert self.ds.snapshot(when).snapshot_id == want, (sid, when)
            if i % 8 == 0:  # reading every one would repeat the snapshot checks
                assert table_rows(self.runner.read_all(version=when)) == self.snaps[want]
        if lineage:
            before = stamps[lineage[-1]] - dt.timedelta(milliseconds=1)
            with pytest.raises(SnapshotNotFoundError):
                self.ds.snapshot(before)

    def check_everything(self) -> None:
        # A fresh handle: every state is rebuilt from checkpoints and manifests on disk.
        self.ds = Dataset.load(self.location, durable=False)
        self.ds.set_current_branch(self.current)
        runner = self.runner
        for sid, want in self.snaps.items():
            assert table_rows(runner.read_all(version=sid)) == want, sid
        for name, sid in self.tags.items():
            assert table_rows(runner.read_all(version=name)) == self.snaps[sid], name
        for name, sid in self.heads.items():
            assert table_rows(runner.read_all(version=name)) == self.snaps[sid], name
        for sid in sorted(self.expired):
            with pytest.raises(SnapshotNotFoundError):
                runner.read_all(version=sid)
        versions = self.ds.versions().to_pylist()
        assert [v["snapshot_id"] for v in versions] == sorted(self.snaps)
        for v in versions:
            sid = v["snapshot_id"]
            assert v["parent_id"] == self.parent[sid], sid  # may name an expired snapshot
            assert v["branch"] == self.snap_branch[sid], sid
            assert v["total_rows"] == len(self.snaps[sid]), sid
            assert v["tags"] == sorted(t for t, s in self.tags.items() if s == sid), sid
            assert v["branches"] == sorted(b for b, s in self.heads.items() if s == sid), sid
        self.check_time_travel()
        sids = sorted(self.snaps)
        heads = sorted(set(self.heads.values()))
        pairs = {(sids[0], sids[-1]), (sids[-1], sids[0])}
        pairs.update((x, y) for x in heads for y in heads if x != y)  # between branch heads
        # Single steps on a lineage and consecutive ids (often across branches); a spread of
        # them on long histories, to bound the run time.
        for sid in sids[1:][:: max(1, len(sids) // 15)]:
            pairs.add((self.parent[sid], sid))
            pairs.add((sid - 1, sid))
        for a, b in sorted(pairs):
            if a in self.snaps and b in self.snaps:
                self.check_changes(a, b)

    def teardown(self) -> None:
        try:
            if self.clean:
                self.check_everything()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


class KeyedMachine(_Machine):
    """Keyed dataset: int64 key, nullable scalars, timestamps and list<struct> values."""


class KeylessMachine(_Machine):
    """No primary key: duplicate rows are appended, inserted and deleted as multisets."""

    KEYS = ()
    IGNORE_EXISTING = True  # without keys there is nothing to match (and no join)


class RecordMachine(_Machine):
    """A record field: ``blob`` values live in ArrayRecord files, referenced from Parquet."""

    SCHEMA = RECORD_SCHEMA
    RECORDS = ("blob",)
    GROUP_SIZE = 3  # several records per ArrayRecord chunk
    IGNORE_EXISTING = True  # no list columns

    @rule(data=st.data())
    @tracked
    def read_blobs(self, data: st.DataObject) -> None:
        version, sid = self._version(data)
        got = self.runner.read_all(fields=["blob", "id"], version=version)
        want = [{"blob": r["blob"], "id": r["id"]} for r in self.snap_rows[sid]]
        assert table_rows(got) == as_sorted(want)
        with pytest.raises(SchemaError):
            self.runner.read_all(filter_=pc.field("blob").is_null(), version=version)


class MaintenanceMachine(KeyedMachine):
    """Compaction, snapshot expiry and orphan-file removal interleaved with the writes."""

    @rule(data=st.data())
    @tracked
    def compact(self, data: st.DataObject) -> None:
        target = data.draw(st.none() | st.integers(1, 6), label="target rows")
        options = None if target is None else CompactOptions(target_rows=target)
        before = self.heads[self.current]
        result = self.ds.compact(options)
        # Rows are unchanged: a new snapshot (or none) with the same rows.
        self._commit(result, list(self.rows[self.current]) if result.committed else None)
        if result.committed:
            assert self.runner.changes(before, result.snapshot_id).num_rows == 0
        if target is None:
            # Every file is small: at most one file remains, without deleted rows.
            files = self.ds.manifest().to_pylist()
            assert len(files) <= 1, files
            assert all(f["deleted_rows"] == 0 for f in files), files

    @rule(keep_last=st.integers(1, 4))
    @tracked
    def expire(self, keep_last: int) -> None:
        alive = sorted(self.snaps)
        keep = {*alive[-keep_last:], *self.tags.values(), *self.heads.values()}
        want = sorted(set(alive) - keep)
        got = self.ds.expire_snapshots(keep_last=keep_last)
        # Exactly the newly expired ids, even through a handle whose cached records predate
        # an earlier expiry (test_expire_through_another_handle_reports_only_new_ids).
        assert got == want, (got, want)
        for sid in want:
            self.expired.add(sid)
            del self.snaps[sid]
            del self.snap_rows[sid]
            with pytest.raises(SnapshotNotFoundError):
                self.runner.read_all(version=sid)

    @rule()
    @tracked
    def remove_orphans(self) -> None:
        self.ds.remove_orphan_files(older_than=dt.timedelta(0))
        for sid in sorted(self.snaps)[-3:]:
            assert table_rows(self.runner.read_all(version=sid)) == self.snaps[sid], sid


COMMON: dict[str, Any] = dict(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)

TestKeyed = KeyedMachine.TestCase
TestKeyed.settings = settings(max_examples=30, stateful_step_count=25, **COMMON)
TestKeyless = KeylessMachine.TestCase
TestKeyless.settings = settings(max_examples=10, stateful_step_count=20, **COMMON)
TestRecords = RecordMachine.TestCase
TestRecords.settings = settings(max_examples=10, stateful_step_count=20, **COMMON)
TestMaintenance = MaintenanceMachine.TestCase
TestMaintenance.settings = settings(max_examples=12, stateful_step_count=20, **COMMON)


# --- bugs found by the machines, as minimal tests --------------------------------------


# Regression (was a bug found by these machines, fixed 2026-11-30).
def test_record_field_filter_in_writes(tmp_path: Any) -> None:
    ds = Dataset.create(tmp_path / "ds", RECORD_SCHEMA, primary_keys=["id"], record_fields=["blob"])
    runner = ds.local()
    runner.append(pa.table({"id": [1, 2], "v": [1, 2], "blob": [b"x", None]}, schema=RECORD_SCHEMA))
    with pytest.raises(SchemaError):
        runner.read_all(filter_=pc.field("blob") == b"x")  # passes
    with pytest.raises(SchemaError):
        runner.delete(pc.field("blob") == b"x")  # ArrowInvalid: No match for FieldRef.Name(blob)
    with pytest.raises(SchemaError):
        runner.update(pc.field("blob").is_null(), {"v": 0})


# Regression (was a bug found by these machines, fixed 2026-11-30).
def test_insert_ignore_existing_with_list_column(tmp_path: Any) -> None:
    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("l", pa.list_(pa.struct([("a", pa.int64())]))),
        ]
    )
    ds = Dataset.create(tmp_path / "ds", schema, primary_keys=["id"])
    runner = ds.local()
    runner.append(pa.table({"id": [1], "l": [[{"a": 1}]]}, schema=schema))
    result = runner.insert(
        pa.table({"id": [1, 2], "l": [[{"a": 9}], [{"a": 2}]]}, schema=schema), ignore_existing=True
    )
    assert result.added_rows == 1
    assert runner.read_all().to_pylist() == [{"id": 1, "l": [{"a": 1}]}, {"id": 2, "l": [{"a": 2}]}]


def test_expire_then_read_kept_snapshot_through_another_handle(tmp_path: Any) -> None:
    """Regression: expiry rewrites kept records (checkpoint in place) and orphan removal
    deletes the manifests a second handle's cached records led to (was FormatError)."""
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.int64())])
    a = Dataset.create(tmp_path / "ds", schema, primary_keys=["id"], durable=False)
    for i in range(6):
        a.local().upsert(pa.table({"id": [i], "v": [i]}, schema=schema))  # snapshots 1..6
    a.add_tag("keep", 4)
    b = Dataset.load(tmp_path / "ds")  # another reader, e.g. in another process
    assert b.local().read_all(version=5).num_rows == 5  # caches the records of 5..0
    assert a.expire_snapshots(keep_last=1) == [0, 1, 2, 3, 5]
    a.remove_orphan_files(older_than=dt.timedelta(0))
    want = a.local().read_all(version="keep").to_pylist()
    assert len(want) == 4
    assert b.local().read_all(version="keep").to_pylist() == want


# Regression (was a bug found by these machines, fixed 2026-11-30).
def test_expired_snapshot_through_another_handle(tmp_path: Any) -> None:
    from spacesql.engine import files

    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.int64())])
    a = Dataset.create(tmp_path / "ds", schema, primary_keys=["id"], durable=False)
    runner = a.local()
    runner.append(pa.table({"id": [0, 1, 2], "v": [0, 1, 2]}, schema=schema))  # 1
    runner.delete(pc.field("id") == 0)  # 2: a deletion vector
    runner.delete(pc.field("id") == 1)  # 3: its delta still names snapshot 2's vector
    b = Dataset.load(tmp_path / "ds")  # another reader, e.g. in another process
    b.manifest(2)  # caches snapshot 2's record and state
    assert a.expire_snapshots(keep_last=1) == [0, 1, 2]
    runner.delete(pc.field("id") == 2)  # 4
    assert a.expire_snapshots(keep_last=1) == [3]
    a.remove_orphan_files(older_than=dt.timedelta(0))  # removes snapshot 2's vector
    with pytest.raises(SnapshotNotFoundError):
        a.local().read_all(version=2)  # passes
    files._read_dv.cache_clear()  # as in another process: vectors are cached per process
    with pytest.raises(SnapshotNotFoundError):
        b.local().read_all(version=2)  # FileNotFoundError (without the cache: stale rows)


# Regression (was a bug found by these machines, fixed 2026-11-30).
def test_expire_through_another_handle_reports_only_new_ids(tmp_path: Any) -> None:
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.int64())])
    a = Dataset.create(tmp_path / "ds", schema, primary_keys=["id"], durable=False)
    for i in range(3):
        a.local().upsert(pa.table({"id": [i], "v": [i]}, schema=schema))  # snapshots 1..3
    b = Dataset.load(tmp_path / "ds", durable=False)
    assert b.versions().column("snapshot_id").to_pylist() == [0, 1, 2, 3]  # caches records
    assert a.expire_snapshots(keep_last=1) == [0, 1, 2]
    assert b.versions().column("snapshot_id").to_pylist() == [3]  # [0, 1, 2, 3]
    assert b.expire_snapshots(keep_last=1) == []  # [0, 1, 2]
