"""Figure 4: cost of history: commits and reads after 1,000 snapshots.

The history dataset has 1M rows (x scale) and 1,000 snapshots: snapshot 1 appends the rows,
snapshots 2..1000 each upsert the same 100 keys (new values), so every snapshot has the same
rows. It is built with durable=False to save time; all measured writes use durable=True.

Targets:
* the 1,001st commit (a 10-row append on top of the 1,000 snapshots) costs at most 1.5x the
  2nd (a 10-row append on a dataset whose only commit is another 10-row append);
* reading snapshot 1 (all rows) costs at most 1.2x reading the latest snapshot (same rows).

Commit number n makes snapshot n (snapshot 0 is the empty dataset ``create`` writes). Every
commit round works on a fresh dataset (2nd) or a fresh hard-link clone of the history (1001st),
so each round starts from the same state, on the main branch. Two handles are measured:
``warm``, a handle whose state is loaded (``manifest()`` was called: a writer that keeps its
dataset open), and ``cold``, a handle just opened with ``Dataset.load`` (a one-shot writer or
reader: the timed call also resolves the head and rebuilds its file list from the nearest
checkpoint and deltas). Cold reads use a fresh clone per round, so no cache of the process
(deletion vectors are cached by path) helps.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from spacesql_bench import Cloner, Paired, Ratios, count, make_rows, measure, scaled, settle

from spacesql import CommitResult, Dataset

SNAPSHOTS = 1_000
UPSERT_KEYS = 100
COMMIT_ROUNDS = 25
READ_ROUNDS = 15
SMALL = make_rows(10, start=10**12)
HANDLES = ["warm", "cold"]


@dataclass(frozen=True)
class History:
    location: Path
    rows: int


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    table = make_rows(scaled(1_000_000))
    location = tmp_path_factory.mktemp("history") / "ds"
    ds = Dataset.create(location, table.schema, primary_keys=["id"], durable=False)
    runner = ds.local()
    runner.append(table)
    keys = np.sort(np.random.default_rng(3).choice(table.num_rows, UPSERT_KEYS, replace=False))
    changed = table.take(pa.array(keys))
    score = changed.schema.get_field_index("score")
    for i in range(2, SNAPSHOTS + 1):
        result = runner.upsert(
            changed.set_column(score, "score", pa.array(np.full(len(keys), float(i))))
        )
        assert result.snapshot_id == i
    settle()
    yield History(location, table.num_rows)
    shutil.rmtree(location, ignore_errors=True)


@pytest.fixture
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("commits")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _open(location: Path, handle: str) -> Dataset:
    ds = Dataset.load(location)  # durable=True
    if handle == "warm":
        ds.manifest()
    settle()
    return ds


def _append(ds: Dataset) -> CommitResult:
    return ds.local().append(SMALL)


# --- commits ---------------------------------------------------------------------------------


def _second_setup(scratch: Path, handle: str) -> Callable[[], Any]:
    """Each round: a new dataset with one commit; the timed append is commit 2."""
    counter = iter(range(1_000_000))

    def setup() -> tuple[tuple[Dataset], dict[str, Any]]:
        location = scratch / f"{handle}{next(counter)}"
        Dataset.create(location, SMALL.schema, primary_keys=["id"]).local().append(SMALL)
        return (_open(location, handle),), {}

    return setup


@pytest.mark.parametrize("handle", HANDLES)
def test_commit_2nd_baseline(
    benchmark: BenchmarkFixture, ratios: Ratios, scratch: Path, handle: str
) -> None:
    result = benchmark.pedantic(
        _append,
        setup=_second_setup(scratch, handle),
        rounds=COMMIT_ROUNDS,
        warmup_rounds=1,
    )
    assert result.snapshot_id == 2
    ratios.baseline(benchmark, f"commit 2 ({handle})")


@pytest.mark.parametrize("handle", HANDLES)
def test_commit_1001st(
    benchmark: BenchmarkFixture,
    ratios: Ratios,
    history: History,
    clone: Cloner,
    scratch: Path,
    handle: str,
) -> None:
    def setup() -> tuple[tuple[Dataset], dict[str, Any]]:
        return (_open(clone(history.location), handle),), {}

    paired = Paired(_append, _second_setup(scratch, handle), benchmark=benchmark)
    result = benchmark.pedantic(
        _append, setup=paired.setup(setup), rounds=COMMIT_ROUNDS, warmup_rounds=1
    )
    assert result.snapshot_id == SNAPSHOTS + 1
    ratios.report(
        benchmark,
        f"4a. commit {SNAPSHOTS + 1} vs commit 2 ({handle} handle)",
        baseline=f"commit 2 ({handle})",
        target=1.5,
        fallback=lambda: measure(_append, _second_setup(scratch, handle), rounds=COMMIT_ROUNDS),
        paired=paired,
    )


# --- time travel -----------------------------------------------------------------------------


def _read_setup(history: History, clone: Cloner, handle: str, version: int | None) -> Any:
    warm = Dataset.load(history.location)

    def setup() -> tuple[tuple[Dataset, int | None], dict[str, Any]]:
        if handle == "warm":
            return (warm, version), {}
        return (Dataset.load(clone(history.location)), version), {}

    return setup


def _read(ds: Dataset, version: int | None) -> pa.Table:
    return ds.local().read_all(version=version)


@pytest.mark.parametrize("handle", HANDLES)
def test_read_latest_baseline(
    benchmark: BenchmarkFixture, ratios: Ratios, history: History, clone: Cloner, handle: str
) -> None:
    table = benchmark.pedantic(
        _read,
        setup=_read_setup(history, clone, handle, None),
        rounds=READ_ROUNDS,
        warmup_rounds=1,
    )
    assert table.num_rows == history.rows
    ds = Dataset.load(history.location)
    assert ds.snapshot().snapshot_id == SNAPSHOTS
    benchmark.extra_info["files_in_state"] = ds.manifest().num_rows
    ratios.baseline(benchmark, f"read latest ({handle})")


@pytest.mark.parametrize("handle", HANDLES)
def test_read_snapshot_1(
    benchmark: BenchmarkFixture, ratios: Ratios, history: History, clone: Cloner, handle: str
) -> None:
    paired = Paired(_read, _read_setup(history, clone, handle, None), benchmark=benchmark)
    table = benchmark.pedantic(
        _read,
        setup=paired.setup(_read_setup(history, clone, handle, 1)),
        rounds=READ_ROUNDS,
        warmup_rounds=1,
    )
    assert table.num_rows == history.rows
    ratios.report(
        benchmark,
        f"4b. read snapshot 1 vs {SNAPSHOTS}, {count(history.rows)} rows ({handle})",
        baseline=f"read latest ({handle})",
        target=1.2,
        fallback=lambda: measure(
            _read, _read_setup(history, clone, handle, None), rounds=READ_ROUNDS
        ),
        paired=paired,
    )
