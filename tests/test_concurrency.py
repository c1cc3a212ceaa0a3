"""Several processes writing one dataset at the same time.

Each test starts worker processes (``forkserver`` start method: no state is inherited from
the test process), lines them up on a barrier so their commits really overlap, and checks the
history they leave behind:

* every commit a worker was told about exists, with the snapshot id it was given;
* snapshot ids are dense, every parent chain is consistent, every snapshot reads back with as
  many rows as its summary says and with unique primary keys;
* replaying the committed operations serially, in snapshot-id order, reproduces every snapshot
  exactly (the history is serializable: no lost or half-applied change).
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spacesql import Dataset
from spacesql.errors import CommitConflictError, ConstraintError, SchemaError, SpaceSQLError

pytestmark = pytest.mark.slow

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("val", pa.string()),
        pa.field("n", pa.int64()),
    ]
)

#: Seconds a whole group of workers may take before the test fails (not hangs).
WORKER_TIMEOUT = 120


def _rows(ids: list[int], val: str, n: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "val": pa.array([val] * len(ids), pa.string()),
            "n": pa.array([n] * len(ids), pa.int64()),
        },
        schema=SCHEMA,
    )


def _as_dict(table: pa.Table) -> dict[int, tuple[str, int]]:
    d = table.to_pydict()
    return {i: (v, n) for i, v, n in zip(d["id"], d["val"], d["n"], strict=True)}


# --- running workers -------------------------------------------------------------------------


def _count_lost_races() -> list[int]:
    """Instrument this (worker) process: count commit attempts that lost the race for an id."""
    from spacesql.engine.log import SnapshotLog

    lost = [0]
    original = SnapshotLog.try_commit

    def try_commit(self: SnapshotLog, record: Any) -> bool:
        ok = original(self, record)
        if not ok:
            lost[0] += 1
        return ok

    SnapshotLog.try_commit = try_commit  # type: ignore[method-assign]
    return lost


def _worker_entry(
    fn: Callable[..., Any], barrier: Any, out: Any, idx: int, args: tuple[Any, ...]
) -> None:
    """Runs in the child: wait for every sibling, run ``fn``, report its result or traceback."""
    try:
        lost = _count_lost_races()
        barrier.wait(timeout=WORKER_TIMEOUT)
        result = fn(idx, *args)
        out.put((idx, "ok", (result, lost[0])))
    except BaseException:
        out.put((idx, "error", traceback.format_exc()))


def jitter(rng: random.Random) -> None:
    """Sleep 0-4 ms so the workers' commits interleave instead of running in bursts."""
    time.sleep(rng.random() * 0.004)


def _context() -> Any:
    """A forkserver context (fork-safe, and each worker skips re-importing pyarrow)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["pyarrow", "pyarrow.compute", "pyarrow.parquet", "spacesql"])
    return ctx


def run_workers(fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> tuple[list[Any], int]:
    """Run ``fn(idx, *args[idx])`` in one worker process per entry, all at once.

    Returns the results in worker order and how many commit attempts lost a race for a
    snapshot id (proof that the commits really overlapped). Fails the test with the child's
    traceback if any worker raised or died.
    """
    ctx = _context()
    barrier = ctx.Barrier(len(args))
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_entry, args=(fn, barrier, out, i, a), daemon=True)
        for i, a in enumerate(args)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    deadline = time.monotonic() + WORKER_TIMEOUT
    try:
        while len(results) + len(errors) < len(procs):
            try:
                idx, status, payload = out.get(timeout=0.5)
            except queue_mod.Empty:
                codes = [p.exitcode for p in procs]
                if time.monotonic() > deadline:
                    pytest.fail(f"workers did not finish in {WORKER_TIMEOUT}s (exit codes {codes})")
                if all(c is not None for c in codes):
                    # Everyone exited; give the queue's feeder a moment, then give up.
                    try:
                        idx, status, payload = out.get(timeout=5)
                    except queue_mod.Empty:
                        pytest.fail(f"workers died without reporting (exit codes {codes})")
                else:
                    continue
            if status == "ok":
                results[idx] = payload
            else:
                errors.append(f"worker {idx} failed:\n{payload}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        pytest.fail("\n".join(errors))
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    lost = sum(results[i][1] for i in range(len(procs)))
    return [results[i][0] for i in range(len(procs))], lost


# --- history checks ----------------------------------------------------------------------------


def check_history(ds: Dataset) -> dict[int, dict[int, tuple[str, int]]]:
    """Check every snapshot of a fresh handle on the dataset; return each one's rows by key."""
    ds = Dataset.load(ds.location)
    log = ds.table.log
    latest = log.latest().snapshot_id
    ids = log.list_ids()
    assert ids == list(range(latest + 1)), "snapshot ids must be dense 0..latest"
    versions = ds.versions()
    assert versions.column("snapshot_id").to_pylist() == ids
    contents: dict[int, dict[int, tuple[str, int]]] = {}
    r = ds.local()
    for sid in ids:
        rec = log.read(sid)
        assert rec.snapshot_id == sid
        if sid == 0:
            assert rec.parent_id is None
        else:
            assert rec.parent_id is not None and 0 <= rec.parent_id < sid
            parent = log.read(rec.parent_id)
            # A commit is based on the head of its own branch (or the branch's start point).
            assert parent.branch == rec.branch or parent.snapshot_id in {
                b.start_snapshot for b in log.branches().values() if b.name == rec.branch
            }
            assert rec.timestamp_ms >= parent.timestamp_ms
        table = r.read_all(version=sid)
        assert table.num_rows == rec.summary.total_rows, (
            f"snapshot {sid}: read {table.num_rows} rows, summary says {rec.summary.total_rows}"
        )
        keys = table.column("id").to_pylist()
        dup = [k for k, c in Counter(keys).items() if c > 1]
        assert not dup, f"snapshot {sid} has duplicate keys {dup[:10]}"
        contents[sid] = _as_dict(table)
    return contents


# --- 1. parallel appends ---------------------------------------------------------------------

N_PROCS = 4
N_BATCHES = 15
BATCH = 20


def _append_worker(idx: int, location: str) -> list[tuple[int, list[int]]]:
    ds = Dataset.load(location)
    runner = ds.local()
    rng = random.Random(idx)
    committed = []
    for b in range(N_BATCHES):
        jitter(rng)
        ids = [idx * 1_000_000 + b * 1000 + j for j in range(BATCH)]
        res = runner.append(_rows(ids, f"w{idx}-b{b}"))
        assert res.committed and res.snapshot_id is not None
        assert res.added_rows == BATCH
        committed.append((res.snapshot_id, ids))
    return committed


def test_parallel_appends_commit_every_batch_exactly_once(tmp_path: Path) -> None:
    ds = Dataset.create(tmp_path / "ds", SCHEMA, primary_keys=["id"])
    results, lost = run_workers(_append_worker, [(str(ds.location),)] * N_PROCS)
    assert lost > 0, "the writers never raced; the test did not exercise the commit conflict"

    by_snapshot: dict[int, list[int]] = {}
    for committed in results:
        sids = [sid for sid, _ in committed]
        assert sids == sorted(sids), "one process's commits must get increasing snapshot ids"
        for sid, ids in committed:
            assert sid not in by_snapshot, f"snapshot {sid} reported by two writers"
            by_snapshot[sid] = ids
    total = N_PROCS * N_BATCHES
    assert sorted(by_snapshot) == list(range(1, total + 1))

    contents = check_history(ds)
    assert max(contents) == total
    log = ds.table.log
    for sid in range(1, total + 1):
        rec = log.read(sid)
        # All commits are on main, so the chain is linear.
        assert rec.parent_id == sid - 1
        assert rec.operation == "append"
        assert rec.summary.added_rows == BATCH
        assert rec.summary.total_rows == BATCH * sid
        # Snapshot sid is exactly snapshot sid-1 plus the batch reported for sid.
        worker, batch = divmod(by_snapshot[sid][0], 1_000_000)
        expected = dict(contents[sid - 1])
        expected.update({k: (f"w{worker}-b{batch // 1000}", 0) for k in by_snapshot[sid]})
        assert contents[sid] == expected

    final = Dataset.load(ds.location).local().read_all()
    keys = final.column("id").to_pylist()
    assert len(keys) == len(set(keys)) == total * BATCH
    assert set(keys) == {k for ids in by_snapshot.values() for k in ids}


# --- 2. racing deletes of the same rows --------------------------------------------------------

ALLOWED = (CommitConflictError,)


def _delete_worker(idx: int, location: str, chunks: list[list[int]]) -> list[Any]:
    ds = Dataset.load(location)
    runner = ds.local()
    order = list(range(len(chunks)))
    rng = random.Random(idx)
    rng.shuffle(order)
    log = []
    for c in order:
        jitter(rng)
        try:
            res = runner.delete(pc.field("id").isin(chunks[c]))
            log.append((c, res.snapshot_id, res.deleted_rows, None))
        except ALLOWED as exc:
            log.append((c, None, 0, type(exc).__name__))
    return log


def test_racing_deletes_of_the_same_rows_delete_each_row_once(tmp_path: Path) -> None:
    ds = Dataset.create(tmp_path / "ds", SCHEMA, primary_keys=["id"])
    ds.local().append(_rows(list(range(200)), "seed"))
    chunks = [list(range(c, c + 10)) for c in range(0, 100, 10)]
    results, _lost = run_workers(_delete_worker, [(str(ds.location), chunks)] * 3)

    commits = [e for log in results for e in log if e[1] is not None]
    sids = [e[1] for e in commits]
    assert len(sids) == len(set(sids))
    # Each chunk's rows are deleted by exactly one committed delete; the others were no-ops.
    assert sum(e[2] for e in commits) == 100
    assert sorted(e[0] for e in commits) == list(range(10))
    assert all(e[2] == 10 for e in commits)

    contents = check_history(ds)
    latest = max(contents)
    assert latest == 1 + 10
    assert set(contents[latest]) == set(range(100, 200))
    for sid, (c, rec_deleted) in {e[1]: (e[0], e[2]) for e in commits}.items():
        rec = ds.table.log.read(sid)
        assert rec.operation == "delete" and rec.summary.deleted_rows == rec_deleted
        assert set(contents[rec.parent_id]) - set(contents[sid]) == set(chunks[c])


# --- 3. upserts, deletes, updates and compactions racing, with a reader --------------------

KEYS = list(range(60))
ROUNDS = 20


def _mixed_worker(idx: int, location: str, role: str) -> list[Any]:
    ds = Dataset.load(location)
    runner = ds.local()
    rng = random.Random(1000 + idx)
    log = []
    for r in range(ROUNDS):
        jitter(rng)
        keys = sorted(rng.sample(KEYS, 12))
        try:
            if role == "upsert":
                val = f"w{idx}-r{r}"
                res = runner.upsert(_rows(keys, val, n=100 * idx + r))
                log.append(("upsert", keys, val, 100 * idx + r, res.snapshot_id, None))
            elif role == "delete":
                res = runner.delete(pc.field("id").isin(keys))
                log.append(("delete", keys, None, None, res.snapshot_id, None))
            elif role == "update":
                res = runner.update(pc.field("id").isin(keys), {"n": pc.field("n") + 1})
                log.append(("update", keys, None, None, res.snapshot_id, None))
            elif role == "compact":
                res = ds.compact()
                log.append(("compact", [], None, None, res.snapshot_id, None))
            else:
                # Reader: a pinned version, and the head as it moves under the read.
                rec = ds.snapshot()
                pinned = _as_dict(runner.read_all(version=rec.snapshot_id))
                before = ds.snapshot().snapshot_id
                head = runner.read_all()
                after = ds.snapshot().snapshot_id
                log.append(
                    (
                        "read",
                        rec.snapshot_id,
                        pinned,
                        (before, after),
                        _as_dict(head),
                        head.num_rows,
                    )
                )
        except ALLOWED as exc:
            log.append((role, keys, None, None, None, type(exc).__name__))
    return log


def _apply(state: dict[int, tuple[str, int]], op: tuple[Any, ...]) -> dict[int, tuple[str, int]]:
    kind, keys, val, n, _sid, _err = op
    out = dict(state)
    if kind == "upsert":
        for k in keys:
            out[k] = (val, n)
    elif kind == "delete":
        for k in keys:
            out.pop(k, None)
    else:
        for k in keys:
            if k in out:
                out[k] = (out[k][0], out[k][1] + 1)
    return out


def test_racing_upserts_deletes_updates_and_compactions_are_serializable(tmp_path: Path) -> None:
    ds = Dataset.create(tmp_path / "ds", SCHEMA, primary_keys=["id"])
    ds.local().append(_rows(KEYS, "seed"))
    roles = ["upsert", "upsert", "delete", "update", "compact", "read"]
    results, lost = run_workers(_mixed_worker, [(str(ds.location), role) for role in roles])
    assert lost > 0, "the writers never raced; the test did not exercise the commit conflict"

    reads = [op for op in results.pop() if op[0] == "read"]
    assert len(reads) == ROUNDS
    ops = [op for log in results for op in log]
    # Only commit conflicts may fail an operation; with the retry loop none should.
    errors = Counter(op[5] for op in ops if op[5] is not None)
    assert set(errors) <= {"CommitConflictError"}
    committed = sorted((op for op in ops if op[4] is not None), key=lambda op: op[4])
    sids = [op[4] for op in committed]
    assert len(sids) == len(set(sids))
    # An upsert always changes something, so unless it failed it committed.
    assert all(op[4] is not None for op in ops if op[0] == "upsert" and op[5] is None)

    contents = check_history(ds)
    latest = max(contents)
    assert sids == list(range(2, latest + 1)), "every snapshot after the seed is a reported op"
    # Serial replay in snapshot order reproduces every snapshot exactly.
    state = contents[1]
    assert state == {k: ("seed", 0) for k in KEYS}
    for op in committed:
        sid = op[4]
        assert ds.table.log.read(sid).operation == op[0]
        if op[0] != "compact":  # compaction rewrites files, never rows
            state = _apply(state, op)
        assert contents[sid] == state, f"snapshot {sid} ({op[0]} {op[1]}) differs from replay"
    # What the reader saw while the writers ran is exactly what those snapshots hold now.
    for _kind, sid, pinned, (before, after), head, _n in reads:
        assert pinned == contents[sid]
        assert any(head == contents[s] for s in range(before, after + 1)), (
            f"a read of the head between snapshots {before} and {after} matches none of them"
        )
    # In particular every surviving row carries an upserted or seed value: nothing half-done.
    for _k, (val, _n) in contents[latest].items():
        assert val == "seed" or val.startswith("w")


def _increment_worker(idx: int, location: str, times: int) -> list[int | None]:
    runner = Dataset.load(location).local()
    rng = random.Random(idx)
    out = []
    for _ in range(times):
        jitter(rng)
        res = runner.update(pc.field("id") == 0, {"n": pc.field("n") + 1})
        out.append(res.snapshot_id)
    return out


def test_concurrent_increments_lose_no_update(tmp_path: Path) -> None:
    ds = Dataset.create(tmp_path / "ds", SCHEMA, primary_keys=["id"])
    ds.local().append(_rows([0, 1], "seed"))
    results, lost = run_workers(_increment_worker, [(str(ds.location), 8)] * 4)
    assert lost > 0, "the writers never raced; the test did not exercise the commit conflict"
    sids = [s for r in results for s in r]
    assert None not in sids and len(set(sids)) == 32
    final = _as_dict(Dataset.load(ds.location).local().read_all())
    assert final == {0: ("seed", 32), 1: ("seed", 0)}
    contents = check_history(ds)
    for sid in sorted(sids):
        assert contents[sid][0][1] == sid - 1  # snapshot k holds the k-th increment


# --- 3b. racing inserts of the same keys ------------------------------------------------------


def _insert_worker(idx: int, location: str, ignore_existing: bool) -> list[Any]:
    runner = Dataset.load(location).local()
    rng = random.Random(idx)
    log = []
    for b in range(12):
        jitter(rng)
        if ignore_existing:
            keys = sorted(rng.sample(range(40), 8))  # overlapping random key sets
        else:
            keys = [b * 10 + j for j in range(5)]  # every worker inserts the same keys
        val = f"w{idx}-b{b}"
        try:
            res = runner.insert(_rows(keys, val), ignore_existing=ignore_existing)
            log.append((keys, val, res.snapshot_id, res.added_rows, None))
        except ConstraintError as exc:
            log.append((keys, val, None, 0, str(exc)))
    return log


def test_racing_inserts_of_the_same_keys_exactly_one_wins(tmp_path: Path) -> None:
    ds = Dataset.create(tmp_path / "ds", SCHEMA, primary_keys=["id"])
    results, _lost = run_workers(_insert_worker, [(str(ds.location), False)] * 4)
    contents = check_history(ds)
    final = contents[max(contents)]
    for b in range(12):
        keys = [b * 10 + j for j in range(5)]
        outcomes = [op for log in results for op in log if op[0] == keys]
        winners = [op for op in outcomes if op[2] is not None]
        assert len(winners) == 1, f"batch {b}: {len(winners)} inserts committed"
        assert {final[k] for k in keys} == {(winners[0][1], 0)}
        for op in outcomes:
            if op[2] is None:
                assert "already in dataset" in op[4]
    assert sorted(final) == sorted(b * 10 + j for b in range(12) for j in range(5))
    assert max(contents) == 12


def test_racing_inserts_ignoring_existing_keys_are_serializable(tmp_path: Path) -> None:
    ds = Dataset.create(tmp_path / "ds", SCHEMA, primary_keys=["id"])
    results, _lost = run_workers(_insert_worker, [(str(ds.location), True)] * 4)
    ops = [op for log in results for op in log]
    assert all(op[4] is None for op in ops), "ignore_existing must not raise"
    committed = sorted((op for op in ops if op[2] is not None), key=lambda op: op[2])
    contents = check_history(ds)
    assert [op[2] for op in committed] == list(range(1, max(contents) + 1))
    state: dict[int, tuple[str, int]] = {}
    for keys, val, sid, added, _err in committed:
        new = {k: (val, 0) for k in keys if k not in state}
        assert added == len(new), f"snapshot {sid}: added {added}, expected {len(new)}"
        state.update(new)
        assert contents[sid] == state
    assert set(state) == {k for op in ops for k in op[0]}


# --- 4. tags -----------------------------------------------------------------------------------


def _tag_worker(idx: int, location: str, count: int) -> list[tuple[str, int]]:
    ds = Dataset.load(location)
    runner = ds.local()
    rng = random.Random(idx)
    out = []
    for i in range(count):
        jitter(rng)
        res = runner.append(_rows([idx * 1000 + i], f"w{idx}"))
        assert res.snapshot_id is not None
        name = f"w{idx}-t{i}"
        ds.add_tag(name, res.snapshot_id)
        out.append((name, res.snapshot_id))
    return out


def test_concurrently_added_tags_all_survive(tmp_path: Path) -> None:
    ds = Dataset.create(tmp_path / "ds", SCHEMA, primary_keys=["id"])
    results, _lost = run_workers(_tag_worker, [(str(ds.location), 10)] * 4)
    expected = dict(t for r in results for t in r)
    assert len(expected) == 40
    fresh = Dataset.load(ds.location)
    assert fresh.table.log.tags() == expected
    for name, sid in expected.items():
        assert fresh.snapshot(name).snapshot_id == sid
    versions = fresh.versions().to_pydict()
    listed = [
        (t, sid)
        for sid, ts in zip(versions["snapshot_id"], versions["tags"], strict=True)
        for t in ts
    ]
    assert sorted(listed) == sorted(expected.items())
    check_history(fresh)


def _same_name_worker(
    idx: int, location: str, kind: str, names: list[str], barrier: Any
) -> list[Any]:
    ds = Dataset.load(location)
    add = ds.add_tag if kind == "tag" else ds.add_branch
    out = []
    for name in names:
        barrier.wait(timeout=WORKER_TIMEOUT)
        try:
            add(name, idx + 1)  # each process names a different snapshot
            out.append((name, "ok", None))
        except SchemaError as exc:
            out.append((name, "SchemaError", str(exc)))
    return out


@pytest.mark.parametrize("kind", ["tag", "branch"])
def test_same_ref_name_added_by_several_processes_exactly_one_wins(
    tmp_path: Path, kind: str
) -> None:
    ds = Dataset.create(tmp_path / "ds", SCHEMA, primary_keys=["id"])
    for i in range(4):
        ds.local().append(_rows([i], "seed"))
    names = [f"release-{i}" for i in range(15)]
    barrier = _context().Barrier(4)
    results, _lost = run_workers(_same_name_worker, [(str(ds.location), kind, names, barrier)] * 4)

    fresh = Dataset.load(ds.location)
    log = fresh.table.log
    if kind == "tag":
        targets = log.tags()
    else:
        targets = {n: log.head(b, log.latest()) for n, b in log.branches().items() if n != "main"}
    assert set(targets) == set(names)
    for name in names:
        outcomes = [(idx, r) for idx, res in enumerate(results) for r in res if r[0] == name]
        winners = [idx for idx, r in outcomes if r[1] == "ok"]
        assert len(winners) == 1, f"{kind} {name}: winners {winners}"
        # The ref points where the winner said, never a mix of two writers.
        assert targets[name] == winners[0] + 1
        assert fresh.snapshot(name).snapshot_id == winners[0] + 1
        for _idx, r in outcomes:
            if r[1] != "ok":
                assert r[1] == "SchemaError"
                assert name in r[2] and f"already has a {kind}" in r[2]


# --- 4b. optimistic read-modify-write with expected_snapshot --------------------------------


def _cas_worker(idx: int, location: str, times: int) -> tuple[int, int]:
    ds = Dataset.load(location)
    runner = ds.local()
    rng = random.Random(idx)
    done = conflicts = 0
    while done < times:
        jitter(rng)
        head = ds.snapshot().snapshot_id
        n = runner.read_all(version=head, filter_=pc.field("id") == 0).column("n")[0].as_py()
        try:
            runner.upsert(_rows([0], f"w{idx}", n=n + 1), expected_snapshot=head)
            done += 1
        except CommitConflictError as exc:
            assert exc.expected == head and exc.found is not None and exc.found > head
            conflicts += 1
            assert conflicts < 500
    return done, conflicts


def test_expected_snapshot_makes_read_modify_write_safe(tmp_path: Path) -> None:
    ds = Dataset.create(tmp_path / "ds", SCHEMA, primary_keys=["id"])
    ds.local().append(_rows([0], "seed"))
    results, _lost = run_workers(_cas_worker, [(str(ds.location), 6)] * 4)
    assert sum(c for _d, c in results) > 0, "no conflict happened; the test exercised nothing"
    final = Dataset.load(ds.location).local().read_all().to_pylist()
    assert len(final) == 1 and final[0]["n"] == 24
    contents = check_history(ds)
    assert max(contents) == 1 + 24
    assert [contents[s][0][1] for s in range(1, 26)] == list(range(25))


# --- 5. branches -------------------------------------------------------------------------------


def _branch_worker(idx: int, location: str, branch: str, tag: str) -> list[tuple[int, list[int]]]:
    ds = Dataset.load(location)
    ds.set_current_branch(branch)
    runner = ds.local()
    base = {"main": 1, "a": 2, "b": 3}[branch] * 1_000_000 + idx * 10_000
    rng = random.Random(idx)
    out = []
    for b in range(10):
        jitter(rng)
        ids = [base + b * 100 + j for j in range(5)]
        res = runner.append(_rows(ids, f"{branch}-{tag}"))
        assert res.snapshot_id is not None
        out.append((res.snapshot_id, ids))
    # Change a seed row on this branch only.
    res = runner.upsert(_rows([idx], f"{branch}-{tag}-upsert", n=idx))
    assert res.snapshot_id is not None
    out.append((res.snapshot_id, [idx]))
    return out


def test_writers_on_two_branches_see_only_their_own_writes(tmp_path: Path) -> None:
    ds = Dataset.create(tmp_path / "ds", SCHEMA, primary_keys=["id"])
    ds.local().append(_rows(list(range(10)), "seed"))  # snapshot 1
    ds.add_branch("a")
    ds.add_branch("b")
    plan = [("a", "x"), ("a", "y"), ("b", "x"), ("main", "x")]
    results, _lost = run_workers(
        _branch_worker, [(str(ds.location), branch, tag) for branch, tag in plan]
    )

    fresh = Dataset.load(ds.location)
    log = fresh.table.log
    seed = {k: ("seed", 0) for k in range(10)}
    for branch in ("a", "b", "main"):
        expected = dict(seed)
        mine: set[int] = set()
        for idx, (br, tag) in enumerate(plan):
            if br != branch:
                continue
            for sid, ids in results[idx]:
                mine.add(sid)
                rec = log.read(sid)
                assert rec.branch == branch
                for k in ids:
                    expected[k] = (f"{branch}-{tag}", 0)
            expected[idx] = (f"{branch}-{tag}-upsert", idx)
        fresh.set_current_branch(branch)
        head = fresh.snapshot()
        assert _as_dict(fresh.local().read_all()) == expected, f"branch {branch}"
        # Walking the head's parents visits exactly this branch's commits, then the start.
        chain = []
        rec = head
        while rec.snapshot_id != 1:
            chain.append(rec.snapshot_id)
            assert rec.branch == branch
            assert rec.parent_id is not None
            rec = log.read(rec.parent_id)
        assert set(chain) == mine
        assert fresh.versions().filter(pc.field("snapshot_id") == head.snapshot_id).column(
            "branches"
        ).to_pylist() == [[branch]]
    fresh.set_current_branch("main")
    check_history(fresh)


# --- 6. maintenance in another process -----------------------------------------------------------


def _expiry_worker(idx: int, location: str, barrier: Any) -> Any:
    ds = Dataset.load(location)
    if idx == 0:
        # A long-lived writer: it has looked at the dataset before the maintenance job runs.
        seen = ds.snapshot().snapshot_id
        barrier.wait(timeout=WORKER_TIMEOUT)  # 1: opened
        barrier.wait(timeout=WORKER_TIMEOUT)  # 2: expiry done
        try:
            res = ds.local().append(_rows([1000], "after-expiry"))
            rows = ds.local().read_all().num_rows
            return ("ok", seen, res.snapshot_id, rows)
        except SpaceSQLError as exc:
            return ("error", seen, type(exc).__name__, str(exc))
    barrier.wait(timeout=WORKER_TIMEOUT)
    expired = ds.expire_snapshots(keep_last=1)
    barrier.wait(timeout=WORKER_TIMEOUT)
    return expired


# Regression: handles that cached records from before an expiry used to fail for good.
def test_a_writer_opened_before_snapshot_expiry_keeps_working(tmp_path: Path) -> None:
    ds = Dataset.create(tmp_path / "ds", SCHEMA, primary_keys=["id"])
    for i in range(5):
        ds.local().append(_rows([i], "seed"))
    barrier = _context().Barrier(2)
    results, _lost = run_workers(_expiry_worker, [(str(ds.location), barrier)] * 2)
    writer, expired = results
    assert expired == [0, 1, 2, 3, 4]
    assert writer == ("ok", 5, 6, 6)
