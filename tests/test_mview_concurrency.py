"""Materialized views refreshed concurrently, killed mid-refresh, and refreshed against sources
that changed under them.

A refresh reads the view's head and its lineage (the source snapshots it reflects), computes
the new rows in DuckDB at exact source snapshots, and commits one snapshot of the view with
``expected_snapshot`` = the head it read (``docs/design.md``, "Materialized views"). The tests
check what that promises:

* two processes refreshing the same view at once: one commits, the other finds nothing to do
  (directly, or after losing the commit race and starting again); the change is never applied
  twice;
* a refresh killed (SIGKILL) or failing (injected faults) at any moment leaves the view at its
  previous snapshot, rows and lineage, and the next refresh is correct;
* a refresh racing writers of its sources reflects exactly the snapshots its lineage names;
* a view whose source is gone or whose query no longer binds, or a refresh to older source
  versions, is a clear error that leaves the view as it was.

The invariant checked everywhere: every snapshot of a view holds exactly (as a multiset) the
view's query evaluated on the sources ``AT (VERSION => ...)`` the snapshots its lineage names.
Worker processes follow ``tests/test_concurrency.py`` (forkserver, barriers) and
``tests/test_crash.py`` (subprocesses killed with SIGKILL, monkeypatched store faults).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import multiprocessing as mp
import os
import queue as queue_mod
import random
import select
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import spacesql
import spacesql.engine.files as files_mod
from spacesql.engine.store import LocalStore
from spacesql.errors import SqlError
from spacesql.sql.mview.refresh import LINEAGE_PROPERTY, ViewManager

#: Seconds a group of workers may take before the test fails (instead of hanging).
WORKER_TIMEOUT = 120

SRC = "CREATE TABLE src (id BIGINT PRIMARY KEY, grp VARCHAR, val BIGINT)"
DIM = "CREATE TABLE dim (grp VARCHAR PRIMARY KEY, label VARCHAR)"

#: The views under test; ``{src}`` and ``{dim}`` stand for the sources (plain names to create
#: the view, ``AT (VERSION => n)`` to recompute what a snapshot of the view must hold).
QUERIES = {
    # aggregate view: merged counts and sums
    "v": "SELECT grp, count(*) AS n, sum(val) AS s FROM {src} GROUP BY grp",
    # row view: rows per root key
    "r": "SELECT id, grp, val * 2 AS v2 FROM {src} WHERE val % 3 <> 0",
    # row view over a join: changes of dim are traced to the src rows they join
    "j": "SELECT s.id, s.val, d.label FROM {src} AS s JOIN {dim} AS d ON s.grp = d.grp",
    # aggregate over a join: merged MIN/MAX (groups that lose their extreme are recomputed)
    # and a holistic aggregate (touched groups are recomputed)
    "ja": (
        "SELECT d.label, count(*) AS n, sum(s.val) AS total, min(s.val) AS lo, "
        "max(s.val) AS hi, count(DISTINCT s.grp) AS grps "
        "FROM {src} AS s JOIN {dim} AS d ON s.grp = d.grp GROUP BY d.label"
    ),
}


# --- the invariant -----------------------------------------------------------------------------


def _norm(rows: list[tuple[Any, ...]]) -> Counter[tuple[Any, ...]]:
    """Rows as a multiset; the view stores SUM(BIGINT) as DECIMAL(38,0), DuckDB computes a
    HUGEINT: compare them as Python ints."""
    return Counter(tuple(int(x) if isinstance(x, Decimal) else x for x in row) for row in rows)


def _assert_same(actual: Counter[Any], expected: Counter[Any], what: str) -> None:
    missing = expected - actual
    extra = actual - expected
    assert not missing and not extra, (
        f"{what}: {sum(missing.values())} rows missing (e.g. {sorted(missing, key=repr)[:5]}), "
        f"{sum(extra.values())} rows extra (e.g. {sorted(extra, key=repr)[:5]})"
    )


def _create_view(con: Any, name: str) -> None:
    con.sql(f"CREATE MATERIALIZED VIEW {name} AS " + QUERIES[name].format(src="src", dim="dim"))


def expected_rows(con: Any, view: str, sources: dict[str, int]) -> Counter[tuple[Any, ...]]:
    """The view's query evaluated on the sources at exactly ``sources``."""
    at = {n: f"{n} AT (VERSION => {sid})" for n, sid in sources.items()}
    return _norm(con.sql(QUERIES[view].format(**at)).fetchall())


def view_rows(con: Any, view: str, sid: int | None = None) -> Counter[tuple[Any, ...]]:
    at = "" if sid is None else f" AT (VERSION => {sid})"
    return _norm(con.sql(f"SELECT * FROM {view}{at}").fetchall())


def check_view_snapshot(con: Any, view: str, sid: int) -> dict[str, int]:
    """Snapshot ``sid`` of the view equals its query at the source snapshots of its lineage;
    returns that lineage."""
    sources = con.materialized_view(view).sources(sid)
    names = {"v": {"src"}, "r": {"src"}, "j": {"src", "dim"}, "ja": {"src", "dim"}}[view]
    assert set(sources) == names, f"view {view} snapshot {sid}: lineage {sources}"
    _assert_same(
        view_rows(con, view, sid),
        expected_rows(con, view, sources),
        f"view {view} snapshot {sid} (reflects {sources})",
    )
    return sources


def check_view_history(con: Any, view: str) -> list[dict[str, int]]:
    """Every snapshot of the view is correct, and each refresh moved the lineage forward (no
    two consecutive snapshots reflect the same source snapshots: nothing applied twice)."""
    ids = con.dataset(view).versions().column("snapshot_id").to_pylist()
    assert ids == list(range(len(ids))), f"view {view}: snapshot ids {ids} are not dense"
    lineages = [check_view_snapshot(con, view, sid) for sid in ids[1:]]
    for sid, (a, b) in enumerate(itertools.pairwise(lineages), start=2):
        assert a != b, f"view {view}: snapshots {sid - 1} and {sid} both reflect {a}"
        assert all(b[n] >= a[n] for n in a), f"view {view} went back: {a} -> {b} at {sid}"
    return lineages


def heads(con: Any, names: tuple[str, ...] = ("src", "dim")) -> dict[str, int]:
    return {n: con.dataset(n).snapshot().snapshot_id for n in names}


def view_state(con: Any, view: str) -> dict[str, Any]:
    """Everything a failed refresh must leave as it was."""
    ds = con.dataset(view)
    rec = ds.snapshot()
    return {
        "snapshot": rec.snapshot_id,
        "lineage": rec.properties.get(LINEAGE_PROPERTY),
        "rows": view_rows(con, view),
        "versions": ds.versions().drop_columns(["timestamp"]).to_pylist(),
    }


def _setup(path: Path, views: tuple[str, ...], *, n: int = 400) -> Any:
    con = spacesql.connect(path)
    con.sql(SRC)
    con.sql(DIM)
    con.sql(f"INSERT INTO src SELECT i, 'g' || (i % 8), (i * 7919) % 1000 FROM range({n}) t(i)")
    con.sql("INSERT INTO dim SELECT 'g' || i, 'L' || (i % 3) FROM range(8) t(i)")
    for name in views:
        _create_view(con, name)
    return con


# --- worker processes (as in tests/test_concurrency.py) ---------------------------------------


def _context() -> Any:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["pyarrow", "duckdb", "sqlglot", "spacesql"])
    return ctx


def _entry(fn: Callable[..., Any], out: Any, idx: int, args: tuple[Any, ...]) -> None:
    """Runs in the child: ``fn`` reports through ``out`` itself; a failure is reported too."""
    try:
        fn(idx, out, *args)
    except BaseException:
        out.put((idx, "error", traceback.format_exc()))


class Workers:
    """Long-lived worker processes that report ``(idx, kind, payload)`` messages."""

    def __init__(self, ctx: Any, fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> None:
        self.out = ctx.Queue()
        self.procs = [
            ctx.Process(target=_entry, args=(fn, self.out, i, a), daemon=True)
            for i, a in enumerate(args)
        ]
        for p in self.procs:
            p.start()

    def poll(self, timeout: float) -> tuple[int, str, Any] | None:
        try:
            msg: tuple[int, str, Any] = self.out.get(timeout=timeout)
        except queue_mod.Empty:
            codes = [p.exitcode for p in self.procs]
            if any(c not in (None, 0) for c in codes):
                pytest.fail(f"a worker died without reporting (exit codes {codes})")
            return None
        if msg[1] == "error":
            pytest.fail(f"worker {msg[0]} failed:\n{msg[2]}")
        return msg

    def get(self, n: int) -> list[tuple[int, str, Any]]:
        """The next ``n`` messages (fails the test on a worker error, death or timeout)."""
        got: list[tuple[int, str, Any]] = []
        deadline = time.monotonic() + WORKER_TIMEOUT
        while len(got) < n:
            if time.monotonic() > deadline:
                pytest.fail(f"workers did not report in {WORKER_TIMEOUT}s")
            msg = self.poll(0.5)
            if msg is not None:
                got.append(msg)
        return got

    def close(self) -> None:
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
        self.out.close()
        self.out.join_thread()


# --- 1. two processes refreshing the same view ------------------------------------------------

RACE_VIEWS = ("v", "r")


def _race_statements(r: int) -> list[str]:
    """Round ``r``'s change of src (each one really changes it)."""
    new = 10_000 + 100 * r
    return [
        # new rows in new groups
        [f"INSERT INTO src SELECT i, 'n' || (i % 5), i % 100 FROM range({new}, {new + 60}) t(i)"],
        # values change in place
        ["UPDATE src SET val = val + 1 WHERE id % 5 = 1"],
        # rows move between groups
        ["UPDATE src SET grp = 'g' || ((id + 3) % 8) WHERE id % 11 = 2"],
        # a whole group disappears (its count reaches zero)
        ["DELETE FROM src WHERE grp = 'g3'"],
        # upsert: existing keys change, new keys appear
        [
            f"INSERT OR REPLACE INTO src SELECT i * 7, 'u' || (i % 3), i FROM range({new}, "
            f"{new + 40}) t(i) UNION ALL SELECT id, 'g1', val + 2 FROM src WHERE id % 13 = 0"
        ],
        ["DELETE FROM src WHERE id % 9 = 4"],
        # more changed rows than FULL_MIN_ROWS and 20% of the table: a full recompute
        [
            f"INSERT INTO src SELECT i, 'b' || (i % 17), i % 1000 FROM range({1 << 20}, "
            f"{(1 << 20) + 12_000}) t(i)"
        ],
        # rows leave the row view (val % 3 becomes 0) and sums change
        ["UPDATE src SET val = val * 3 WHERE id % 3 = 0"],
    ][r % 8]


FULL_ROUND = 6
RACE_ROUNDS = 8


def _race_worker(idx: int, out: Any, catalog: str, rounds: int, start: Any, collide: Any) -> None:
    """Refresh both views once per round. Worker 0 uses SQL, worker 1 the Python API.

    In even rounds both workers stop right before committing until the other one got there too
    (``collide``), so both commit against the same head and one must lose; in odd rounds they
    just start together, with a little jitter."""
    con = spacesql.connect(catalog)
    rng = random.Random(idx)
    conflicts = [0]
    hold = [False]

    def progress(step: str) -> None:
        if step.startswith("another refresh committed first"):
            conflicts[0] += 1
        elif step == "committing" and hold[0]:
            hold[0] = False
            collide.wait(timeout=30)

    con.progress = progress  # the SQL statement reports its steps here
    for r in range(rounds):
        start.wait(timeout=WORKER_TIMEOUT)
        forced = r % 2 == 0
        order = list(RACE_VIEWS) if forced else rng.sample(RACE_VIEWS, len(RACE_VIEWS))
        results = {}
        for view in order:
            conflicts[0] = 0
            hold[0] = forced
            if not forced:
                time.sleep(rng.random() * 0.01)
            if idx == 0:
                row = con.execute(f"REFRESH MATERIALIZED VIEW {view}").fetchone()
                assert row is not None and row[0] == view
                strategy, snapshot_id = row[1], row[7]
            else:
                res = con.materialized_view(view).refresh(progress=progress)
                strategy, snapshot_id = res.strategy, res.snapshot_id
            results[view] = (strategy, snapshot_id, conflicts[0])
        out.put((idx, "round", (r, results)))


@pytest.mark.slow
def test_racing_refreshes_of_one_view_apply_each_change_once(tmp_path: Path) -> None:
    catalog = tmp_path / "cat"
    con = _setup(catalog, RACE_VIEWS)
    ctx = _context()
    start = ctx.Barrier(3)  # two workers and this process
    collide = ctx.Barrier(2)
    workers = Workers(ctx, _race_worker, [(str(catalog), RACE_ROUNDS, start, collide)] * 2)
    total_conflicts = 0
    try:
        for r in range(RACE_ROUNDS):
            for stmt in _race_statements(r):
                con.sql(stmt)
            src = heads(con, ("src",))
            before = {v: con.dataset(v).snapshot().snapshot_id for v in RACE_VIEWS}
            start.wait(timeout=WORKER_TIMEOUT)
            reports = {idx: payload for idx, _kind, payload in workers.get(2)}
            assert all(reports[i][0] == r for i in (0, 1)), reports
            for view in RACE_VIEWS:
                outcomes = [reports[i][1][view] for i in (0, 1)]
                committed = [o for o in outcomes if o[1] is not None]
                idle = [o for o in outcomes if o[1] is None]
                assert len(committed) == 1, (
                    f"round {r}, view {view}: expected one refresh to commit, got {outcomes}"
                )
                assert idle[0][0] == "none", f"round {r}, view {view}: {outcomes}"
                strategy, sid, _ = committed[0]
                assert strategy == ("full" if r == FULL_ROUND else "incremental"), outcomes
                assert sid == before[view] + 1
                assert con.dataset(view).snapshot().snapshot_id == sid
                conflicts = sum(o[2] for o in outcomes)
                if r % 2 == 0:
                    # Both committed against the same head: the loser started again once,
                    # and then found nothing to do.
                    assert conflicts == 1, f"round {r}, view {view}: {outcomes}"
                assert conflicts <= 1, f"round {r}, view {view}: {outcomes}"
                total_conflicts += conflicts
                assert check_view_snapshot(con, view, sid) == src
    finally:
        start.abort()  # a worker still waiting (the test failed) stops at once
        collide.abort()
        workers.close()
    assert total_conflicts >= RACE_ROUNDS // 2 * len(RACE_VIEWS)
    for view in RACE_VIEWS:
        lineages = check_view_history(con, view)
        assert len(lineages) == 1 + RACE_ROUNDS  # the creation, then one per round


# --- 2. a refresh killed mid-way ----------------------------------------------------------------

CHILD = r"""
import sys

import spacesql

catalog, views = sys.argv[1], sys.argv[2].split(",")
con = spacesql.connect(catalog)
print("READY", flush=True)
if sys.stdin.readline().strip() != "GO":
    sys.exit(0)
for view in views:
    res = con.materialized_view(view).refresh(
        progress=lambda step, view=view: print("STEP", view, step, flush=True)
    )
    print("DONE", view, res.strategy, res.snapshot_id, flush=True)
"""

KILL_VIEWS = ("v", "r")


class Child:
    """A refresh in a subprocess whose output lines are read as they come (raw fd reads, so
    nothing sits in a Python buffer that ``select`` cannot see)."""

    def __init__(self, catalog: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(catalog), ",".join(KILL_VIEWS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buf = b""
        self.lines: list[str] = []
        self.eof = False

    def read(self, timeout: float) -> list[str]:
        """Lines that arrive within ``timeout`` seconds (returns at the first one)."""
        assert self.proc.stdout is not None
        if self.eof:
            return []
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, timeout))
        if not ready:
            return []
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            self.eof = True
            return []
        self._buf += chunk
        *done, self._buf = self._buf.split(b"\n")
        new = [line.decode() for line in done]
        self.lines += new
        return new

    def go(self) -> None:
        deadline = time.monotonic() + 60
        while "READY" not in self.lines:
            if self.eof or time.monotonic() > deadline:
                self.proc.kill()
                _out, err = self.proc.communicate()
                pytest.fail(f"refresh process did not start:\n{err.decode()}")
            self.read(deadline - time.monotonic())
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"GO\n")
        self.proc.stdin.flush()

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        out, err = self.proc.communicate(timeout=60)
        self._buf += out
        self.lines += [line.decode() for line in self._buf.split(b"\n") if line]
        self._buf = b""
        if self.proc.returncode not in (0, -signal.SIGKILL):
            pytest.fail(f"refresh process failed ({self.proc.returncode}):\n{err.decode()}")
        return self.proc.returncode


def _kill_when(child: Child, trigger: tuple[str, Any, str], delay: float) -> None:
    """Wait for the trigger (a step of a view's refresh, or a time after GO), then SIGKILL."""
    kind, view, step = trigger
    started = time.monotonic()
    deadline = started + 30
    while not child.eof and time.monotonic() < deadline:
        if kind == "time" and time.monotonic() - started >= delay:
            break
        wait = delay - (time.monotonic() - started) if kind == "time" else 0.5
        new = child.read(max(0.0, wait))
        if kind == "step" and any(
            line.startswith(f"STEP {view} ") and step in line for line in new
        ):
            time.sleep(delay)
            break
    child.kill()


#: Where to kill: after a step of a view's refresh (plus a random delay), or at a random time.
TRIGGERS = [
    ("step", "v", "comput"),
    ("step", "v", "committing"),
    ("time", None, ""),
    ("step", "r", "reading changes"),
    ("step", "r", "committing"),
    ("step", "r", "comput"),
    ("time", None, ""),
]


@pytest.mark.slow
def test_a_refresh_killed_at_any_moment_leaves_the_previous_snapshot(tmp_path: Path) -> None:
    catalog = tmp_path / "cat"
    con = _setup(catalog, KILL_VIEWS, n=20_000)
    rng = random.Random(20261130)
    kept_mid_refresh = committed_by_child = killed = 0
    upcoming: Child | None = Child(catalog)
    try:
        for r, trigger in enumerate(TRIGGERS):
            child, upcoming = upcoming, None
            assert child is not None
            # Even rounds: an incremental refresh (8,000 changed rows); odd: a full one (16,000).
            changed = 4000 if r % 2 == 0 else 8000
            lo = rng.randrange(0, 20_000 - changed)
            con.sql(
                f"UPDATE src SET val = val + {r + 1}, grp = 'k' || ((id + {r}) % 11) "
                f"WHERE id >= {lo} AND id < {lo + changed}"
            )
            src = heads(con, ("src",))
            before = {v: view_state(con, v) for v in KILL_VIEWS}
            child.go()
            delay = rng.uniform(0, 0.7) if trigger[0] == "time" else rng.uniform(0, 0.03)
            _kill_when(child, trigger, delay)
            killed += child.proc.returncode == -signal.SIGKILL
            if r + 1 < len(TRIGGERS):
                upcoming = Child(catalog)  # it imports while this round is checked

            done = {
                parts[1]: int(parts[3])
                for parts in (line.split() for line in child.lines)
                if parts and parts[0] == "DONE" and parts[3] != "None"
            }
            started = {line.split()[1] for line in child.lines if line.startswith("STEP ")}
            for view in KILL_VIEWS:
                head = con.dataset(view).snapshot().snapshot_id
                if view in done:
                    assert head == done[view] == before[view]["snapshot"] + 1
                if head == before[view]["snapshot"]:
                    # Killed before the commit point: nothing changed.
                    assert view_state(con, view) == before[view], f"round {r}, view {view}"
                    kept_mid_refresh += view in started
                else:
                    # Killed after the commit point: the snapshot is complete and right.
                    assert head == before[view]["snapshot"] + 1, f"round {r}, view {view}"
                    assert check_view_snapshot(con, view, head) == src
                    committed_by_child += 1
                # The next refresh (here, in-process) works from whatever the kill left.
                res = con.materialized_view(view).refresh()
                if head == before[view]["snapshot"]:
                    assert res.strategy == ("incremental" if r % 2 == 0 else "full"), res
                    assert res.snapshot_id == head + 1
                else:
                    assert res.strategy == "none", res
                now = con.dataset(view).snapshot().snapshot_id
                assert check_view_snapshot(con, view, now) == src
            # A fresh connection sees the same.
            fresh = spacesql.connect(catalog)
            for view in KILL_VIEWS:
                assert view_rows(fresh, view) == view_rows(con, view)
            fresh.close()
    finally:
        if upcoming is not None:  # the test failed before using it
            upcoming.kill()

    print(
        f"{len(TRIGGERS)} rounds: {killed} refresh processes killed, {kept_mid_refresh} view "
        f"refreshes killed mid-way left the view unchanged, {committed_by_child} committed"
    )
    assert killed > 0 and kept_mid_refresh > 0, "no refresh was killed mid-way"
    # Killed refreshes leave orphan files only; removing them keeps every snapshot right.
    for view in KILL_VIEWS:
        con.dataset(view).remove_orphan_files(older_than=dt.timedelta(0))
    fresh = spacesql.connect(catalog)
    for view in KILL_VIEWS:
        check_view_history(fresh, view)
    fresh.sql("DELETE FROM src WHERE id % 97 = 0")
    for view in KILL_VIEWS:
        res = fresh.materialized_view(view).refresh()
        assert res.strategy == "incremental"
        assert check_view_snapshot(fresh, view, res.snapshot_id or -1) == heads(fresh, ("src",))


# --- 2b. faults injected in-process around the commit point ---------------------------------


class Injected(OSError):
    """The failure a test injects."""


def _fail_snapshot_record(m: pytest.MonkeyPatch, exc: BaseException) -> None:
    original = LocalStore.put_if_absent

    def put_if_absent(self: LocalStore, rel: str, data: bytes) -> bool:
        if rel.startswith("metadata/snapshots/"):
            raise exc
        return original(self, rel, data)

    m.setattr(LocalStore, "put_if_absent", put_if_absent)


def _fail_manifest_write(m: pytest.MonkeyPatch, exc: BaseException) -> None:
    original = LocalStore.write_new

    def write_new(self: LocalStore, rel: str, data: bytes) -> None:
        if rel.startswith(("metadata/manifests/", "metadata/checkpoints/")):
            raise exc
        original(self, rel, data)

    m.setattr(LocalStore, "write_new", write_new)


def _fail_after_data_write(m: pytest.MonkeyPatch, exc: BaseException) -> None:
    for name in ("write", "write_physical", "write_deletes"):
        original = getattr(files_mod.DataWriter, name)

        def failing(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            _original(self, *args, **kwargs)
            raise exc

        m.setattr(files_mod.DataWriter, name, failing)


def _fail_while_computing(m: pytest.MonkeyPatch, exc: BaseException) -> None:
    def arrow(self: ViewManager, *args: Any, **kwargs: Any) -> Any:
        raise exc

    m.setattr(ViewManager, "_arrow", arrow)


def _fail_hint(m: pytest.MonkeyPatch, exc: BaseException) -> None:
    original = LocalStore.replace

    def replace(self: LocalStore, rel: str, data: bytes) -> None:
        if rel == "metadata/latest.json":
            raise exc
        original(self, rel, data)

    m.setattr(LocalStore, "replace", replace)


def _fail_dir_fsync_after_link(m: pytest.MonkeyPatch, exc: BaseException) -> None:
    original = LocalStore._sync_dir

    def sync_dir(self: LocalStore, rel: str) -> None:
        if rel.startswith("metadata/snapshots/"):
            raise exc
        original(self, rel)

    m.setattr(LocalStore, "_sync_dir", sync_dir)


BEFORE_COMMIT_POINT = {
    "computing": _fail_while_computing,
    "data_write": _fail_after_data_write,
    "manifest_write": _fail_manifest_write,
    "snapshot_record": _fail_snapshot_record,
}
AFTER_COMMIT_POINT = {
    "hint_replace": _fail_hint,
    "dir_fsync_after_link": _fail_dir_fsync_after_link,
}
FAULT_VIEWS = ("v", "r", "j")


def _data_files(con: Any, view: str) -> set[str]:
    root = con.dataset(view).location
    return {
        str(p.relative_to(root))
        for sub in ("data", "deletes")
        for p in (root / sub).rglob("*")
        if p.is_file()
    }


def _faulty_catalog(path: Path) -> Any:
    con = _setup(path, FAULT_VIEWS, n=300)
    con.sql("UPDATE src SET val = val + 1, grp = 'g' || ((id + 1) % 8) WHERE id % 4 = 0")
    con.sql("DELETE FROM src WHERE id % 10 = 3")
    con.sql("INSERT INTO src SELECT i, 'x', i FROM range(1000, 1020) t(i)")
    con.sql("UPDATE dim SET label = 'L9' WHERE grp = 'g2'")
    return con


@pytest.mark.parametrize("exc_type", [Injected, KeyboardInterrupt])
@pytest.mark.parametrize("where", sorted(BEFORE_COMMIT_POINT))
def test_failure_before_the_commit_point_leaves_the_view_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, exc_type: type[BaseException]
) -> None:
    con = _faulty_catalog(tmp_path / "cat")
    src = heads(con)
    for view in FAULT_VIEWS:
        before = view_state(con, view)
        files = _data_files(con, view)
        # An incremental refresh, then a full one, each failing at the same place.
        for full in (False, True):
            with monkeypatch.context() as m:
                BEFORE_COMMIT_POINT[where](m, exc_type("injected"))
                with pytest.raises(exc_type, match="injected"):
                    con.materialized_view(view).refresh(full=full)
            assert view_state(con, view) == before, f"view {view}, full={full}"
            fresh = spacesql.connect(tmp_path / "cat")
            assert view_state(fresh, view) == before, f"view {view} (fresh connection)"
            fresh.close()
            leaked = _data_files(con, view) - files
            assert not leaked, f"view {view}: the failed refresh left {sorted(leaked)}"

        full = view == "r"
        res = con.materialized_view(view).refresh(full=full)
        assert res.strategy == ("full" if full else "incremental"), res
        assert res.snapshot_id == before["snapshot"] + 1
        lineage = check_view_snapshot(con, view, res.snapshot_id)
        assert lineage == {n: src[n] for n in lineage}


@pytest.mark.parametrize("exc_type", [Injected, KeyboardInterrupt])
@pytest.mark.parametrize("where", sorted(AFTER_COMMIT_POINT))
def test_failure_after_the_commit_point_keeps_the_refreshed_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, exc_type: type[BaseException]
) -> None:
    con = _faulty_catalog(tmp_path / "cat")
    src = heads(con)
    for view in FAULT_VIEWS:
        before = con.dataset(view).snapshot().snapshot_id
        with monkeypatch.context() as m:
            AFTER_COMMIT_POINT[where](m, exc_type("injected"))
            # Reporting the failure is acceptable; a half-applied view is not.
            with contextlib.suppress(exc_type):
                con.materialized_view(view).refresh()
        for c in (con, spacesql.connect(tmp_path / "cat")):
            assert c.dataset(view).snapshot().snapshot_id == before + 1
            lineage = check_view_snapshot(c, view, before + 1)
            assert lineage == {n: src[n] for n in lineage}
        # The landed snapshot is recognised: the next refresh has nothing to do.
        res = con.materialized_view(view).refresh()
        assert res.strategy == "none" and res.snapshot_id is None, res


# --- 3. sources written by another process during refreshes ---------------------------------

LIVE_VIEWS = ("v", "r", "j", "ja")
WRITER_COMMITS = 45


def _source_writer(idx: int, out: Any, catalog: str, start: Any, commits: int) -> None:
    """Commit ``commits`` changes to src and dim, as fast as possible with some jitter."""
    con = spacesql.connect(catalog)
    rng = random.Random(idx)
    start.wait(timeout=WORKER_TIMEOUT)
    next_id = 100_000
    for i in range(commits):
        k = rng.randrange(8)
        op = rng.choice(["insert", "update", "move", "delete", "upsert", "label", "dim"])
        if op == "insert":
            rows = ", ".join(
                f"({next_id + j}, 'g{rng.randrange(9)}', {rng.randrange(1000)})" for j in range(5)
            )
            next_id += 5
            con.sql(f"INSERT INTO src VALUES {rows}")
        elif op == "update":
            con.sql(f"UPDATE src SET val = val + {i + 1} WHERE id % 13 = {k}")
        elif op == "move":
            con.sql(f"UPDATE src SET grp = 'g{(k + i) % 9}' WHERE id % 17 = {k}")
        elif op == "delete":
            ids = ", ".join(str(rng.randrange(400)) for _ in range(6))
            con.sql(f"DELETE FROM src WHERE id IN ({ids})")
        elif op == "upsert":
            con.sql(
                f"INSERT OR REPLACE INTO src SELECT id, grp, val + 1000 FROM src "
                f"WHERE id % 19 = {k} UNION ALL SELECT {next_id}, 'g{k}', {i}"
            )
            next_id += 1
        elif op == "label":
            con.sql(f"UPDATE dim SET label = 'L{rng.randrange(4)}' WHERE grp = 'g{k}'")
        elif rng.random() < 0.5:
            con.sql(f"DELETE FROM dim WHERE grp = 'g{k}'")
        else:
            con.sql(f"INSERT OR REPLACE INTO dim VALUES ('g{k}', 'L{rng.randrange(4)}')")
        time.sleep(rng.random() * 0.02)
    out.put((idx, "done", heads(con)))


@pytest.mark.slow
def test_a_refresh_reflects_exactly_the_source_snapshots_of_its_lineage(tmp_path: Path) -> None:
    catalog = tmp_path / "cat"
    con = _setup(catalog, LIVE_VIEWS)
    ctx = _context()
    start = ctx.Barrier(2)
    workers = Workers(ctx, _source_writer, [(str(catalog), start, WRITER_COMMITS)])
    rng = random.Random(7)

    def slow_down(step: str) -> None:
        # Give the writer time to commit while the refresh computes.
        if "comput" in step or step.startswith("reading changes"):
            time.sleep(0.02)

    refreshes: list[tuple[str, int, dict[str, int], dict[str, int]]] = []
    try:
        start.wait(timeout=WORKER_TIMEOUT)
        final = None
        while final is None:
            for view in rng.sample(LIVE_VIEWS, len(LIVE_VIEWS)):
                seen = heads(con)
                res = con.materialized_view(view).refresh(progress=slow_down)
                after = heads(con)
                if res.snapshot_id is not None:
                    refreshes.append((view, res.snapshot_id, seen, after))
            msg = workers.poll(0)
            if msg is not None:
                final = msg[2]
    finally:
        workers.close()
    assert heads(con) == final

    overlapped = 0
    for view, sid, seen, after in refreshes:
        lineage = check_view_snapshot(con, view, sid)
        for n, snap in lineage.items():
            assert seen[n] <= snap <= after[n], (view, sid, lineage, seen, after)
        overlapped += any(after[n] > lineage[n] for n in lineage)
    print(f"{len(refreshes)} refreshes committed, {overlapped} while their sources moved")
    assert overlapped > 0, "no source commit landed during a refresh; nothing was exercised"
    # Once the writer stopped, a refresh brings every view to the sources' heads.
    for view in LIVE_VIEWS:
        con.materialized_view(view).refresh()
        lineage = check_view_snapshot(con, view, con.dataset(view).snapshot().snapshot_id)
        assert lineage == {n: final[n] for n in lineage}
        check_view_history(con, view)


# --- 4. refreshes that cannot work --------------------------------------------------------------


def _raises(con: Any, view: str, to: Any = None) -> list[str]:
    """Refresh ``view`` through SQL and Python; both must fail with a SqlError and leave the
    view as it was. Returns the two messages."""
    before = view_state(con, view)
    messages = []
    at = "" if to is None else f" TO VERSION {to!r}" if isinstance(to, str) else f" TO VERSION {to}"
    with pytest.raises(SqlError) as info:
        con.sql(f"REFRESH MATERIALIZED VIEW {view}{at}")
    messages.append(str(info.value))
    with pytest.raises(SqlError) as info:
        con.materialized_view(view).refresh(to=to)
    messages.append(str(info.value))
    assert view_state(con, view) == before
    return messages


def test_refreshes_that_cannot_work_are_clear_errors_and_keep_the_view(tmp_path: Path) -> None:
    catalog = tmp_path / "cat"
    con = _setup(catalog, ("v", "j"))  # src@1, dim@1
    con.sql("UPDATE src SET val = val + 1 WHERE id % 2 = 0")  # src@2
    con.sql("DELETE FROM src WHERE id % 5 = 0")  # src@3
    con.sql("UPDATE dim SET label = 'L7' WHERE grp = 'g1'")  # dim@2

    # To an intermediate version, then back to an older one.
    res = con.materialized_view("v").refresh(to=2)
    assert res.strategy == "incremental" and check_view_snapshot(con, "v", 2) == {"src": 2}
    for message in _raises(con, "v", to=1):
        assert "'v'" in message and "snapshot 1" in message and "newer snapshot 2" in message
    res = con.materialized_view("v").refresh(to=2)
    assert res.strategy == "none"
    res = con.materialized_view("v").refresh()
    assert res.snapshot_id == 3 and check_view_snapshot(con, "v", 3) == {"src": 3}
    con.sql("CALL spacesql_tag('src', 'old', 1)")
    for message in _raises(con, "v", to="old"):
        assert "'v'" in message and "newer snapshot 3" in message
    # A version no source has.
    for message in _raises(con, "v", to=99):
        assert "'v'" in message and "99" in message
    con.materialized_view("j").refresh()
    assert check_view_snapshot(con, "j", 2) == {"src": 3, "dim": 2}
    j_rows, v_rows = view_rows(con, "j"), view_rows(con, "v")

    # A dropped source: the view keeps its data, snapshot and lineage (checked by _raises).
    con.sql("DROP TABLE dim")
    for message in _raises(con, "j"):
        assert "'j'" in message and "'dim'" in message and "no longer exists" in message
        assert "keeps its data" in message
    assert view_rows(con, "j") == j_rows
    assert con.materialized_view("v").refresh().strategy == "none"  # other views unaffected
    con.sql("DROP TABLE src")
    for message in _raises(con, "v"):
        assert "'v'" in message and "'src'" in message and "keeps its data" in message
    assert view_rows(con, "v") == v_rows

    # A query that no longer binds: src comes back without the column 'val'.
    con.sql("CREATE TABLE src (id BIGINT PRIMARY KEY, grp VARCHAR)")
    con.sql("INSERT INTO src VALUES (1, 'a'), (2, 'b')")
    for message in _raises(con, "v"):
        assert "'v'" in message and '"val"' in message and "keeps its data" in message
    assert con.dataset("v").snapshot().snapshot_id == 3

    # With the column back, the view is recomputed from the new table.
    con.sql("DROP TABLE src")
    con.sql(SRC)
    con.sql("INSERT INTO src VALUES (1, 'a', 10), (2, 'a', 5), (3, 'b', 1)")
    res = con.materialized_view("v").refresh()
    assert res.strategy == "full" and "dropped and created again" in res.reason
    assert check_view_snapshot(con, "v", 4) == {"src": 1}
    assert view_rows(con, "v") == Counter({("a", 2, 15): 1, ("b", 1, 1): 1})
