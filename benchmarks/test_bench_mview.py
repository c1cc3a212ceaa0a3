"""Figure 9: incremental refresh of a materialized view vs a full recompute of the same view.

The source ``src`` has 10M rows (x scale): ``id`` int64 primary key, ``k`` int64 in 0..999,
``x`` double, ``s`` varchar, ``tags`` list<int32> of 0-3 values. It is appended with the Python
API in batches of 1M rows (10 data files), with durable=False. ``dim`` has 1,000 rows (``k``
primary key, ``name``, ``grp``). Both are built once per module. Each view shape then gets a
hard-link clone of that catalog (module-scoped fixture), a connection and its view:

* ``filter``: ``SELECT id, k, x * 2 AS x2 FROM src WHERE k < 500`` (rows; half the source);
* ``sum``: ``SELECT k, sum(x), count(*), avg(x) FROM src GROUP BY k`` (1,000 groups);
* ``minmax``: ``SELECT k, min(x), max(x) FROM src GROUP BY k`` (1,000 groups);
* ``join``: ``SELECT f.id, f.x, d.name, d.grp FROM src f JOIN dim d ON f.k = d.k`` (fact to
  dimension; the fact changes);
* ``unnest``: ``SELECT s.id, u.tag FROM src s, UNNEST(s.tags) AS u(tag)`` (1.5 rows per row).

A round changes a fraction of the source's rows (0.1%, 1%, 10% of the initial count): a third
new rows, a third deleted rows and a third updated rows (new ``k``, ``x``, ``s``, ``tags``),
with the engine API on the connection's dataset (``upsert`` of the new and updated rows, then
``delete`` of ``id IN (...)``: two source snapshots), not timed. Ours (timed) is
``con.materialized_view(v).refresh()``, which must report ``strategy == 'incremental'``; the
planner's switch to a full recompute is disabled (``manager(con).full_fraction = 1.0``) so the
incremental path is measured at every size, and ``extra_info['planner_default']`` says what the
default rule (``FULL_FRACTIONS``, ``FULL_MIN_ROWS``) would have picked. The baseline is then
timed on the same source state, in the teardown: ``refresh(full=True)`` (the same as
``REFRESH MATERIALIZED VIEW v FULL``). A refresh consumes the change, so the full recompute
always runs after the incremental one (it cannot be interleaved the other way); every round
applies a fresh change. Before each timed call, the connection's cached DuckDB views of the
sources are dropped (``con.forget``: otherwise the full recompute would reuse the source
snapshot view that the incremental refresh just registered) and ``os.sync()`` runs. The
source is never compacted: its deletion vectors and upserted files accumulate over the rounds
(0.1%, then 1%, then 10%), as they would between compactions.

Correctness, checked at every scale (also with ``--benchmark-disable``) after every
incremental refresh and every full recompute: the view's rows equal its query's over the
source (row views: row count and sum of ``hash(row)``, exactly; aggregate views: group by
group, floats to 1e-9). A wrong view fails the test after its figure is reported.

Target: at 0.1% changed rows, the incremental refresh costs at most 0.05 of the full
recompute. At 1% and 10% the target printed is 1.0 (incremental is still the cheaper path);
those figures locate the crossover for ``FULL_FRACTIONS``. ``extra_info`` holds, as in the other
modules, ``ratio`` (min/min), ``ratio_median`` and ``ratio_paired_median`` (median over rounds
of incremental / the full recompute of the same round), plus the seconds of both sides and the
row counts of the change.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from spacesql_bench import Paired, Ratios, Timing, count, scaled, settle

import spacesql
from spacesql import Dataset
from spacesql.sql.mview.refresh import FULL_MIN_ROWS, RefreshResult
from spacesql.sql.mview.sources import FULL_FRACTIONS
from spacesql.sql.mview.statements import manager

THREADS = 2
WARMUP = 1


def _changes() -> dict[str, tuple[float, int]]:
    """Change size label -> (fraction of the source's initial rows, timed rounds). Other
    sizes (3 rounds each) with e.g. ``SPACESQL_BENCH_MVIEW_CHANGES=2%,5%``."""
    raw = os.environ.get("SPACESQL_BENCH_MVIEW_CHANGES", "")
    if not raw.strip():
        return {"0.1%": (0.001, 5), "1%": (0.01, 3), "10%": (0.1, 3)}
    labels = [x.strip() for x in raw.split(",") if x.strip()]
    return {label: (float(label.rstrip("%")) / 100, 3) for label in labels}


CHANGES = _changes()
TARGET = 0.05  # at 0.1%
BATCH = 1_000_000
DIM_ROWS = 1_000
GROUPS = 1_000

SRC_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("k", pa.int64()),
        ("x", pa.float64()),
        ("s", pa.string()),
        ("tags", pa.list_(pa.int32())),
    ]
)
DIM_SCHEMA = pa.schema([("k", pa.int64()), ("name", pa.string()), ("grp", pa.int64())])


@dataclass(frozen=True)
class Shape:
    letter: str
    query: str
    groups: tuple[str, ...] = ()  # aggregate views: their group columns


SHAPES = {
    "filter": Shape("a", "SELECT id, k, x * 2 AS x2 FROM src WHERE k < 500"),
    "sum": Shape(
        "b",
        "SELECT k, sum(x) AS total, count(*) AS n, avg(x) AS mean FROM src GROUP BY k",
        ("k",),
    ),
    "minmax": Shape("c", "SELECT k, min(x) AS lo, max(x) AS hi FROM src GROUP BY k", ("k",)),
    "join": Shape("d", "SELECT f.id, f.x, d.name, d.grp FROM src f JOIN dim d ON f.k = d.k"),
    "unnest": Shape("e", "SELECT s.id, u.tag FROM src s, UNNEST(s.tags) AS u(tag)"),
}
VIEW = "v"


# --- data ----------------------------------------------------------------------------------


def src_rows(ids: np.ndarray, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(ids)
    lengths = rng.integers(0, 4, n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = rng.integers(0, 1000, int(offsets[-1]), dtype=np.int32)
    digits = pc.cast(pa.array(rng.integers(0, 1_000_000, n)), pa.string())
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "k": pa.array(rng.integers(0, GROUPS, n, dtype=np.int64)),
            "x": pa.array(rng.random(n)),
            "s": pc.binary_join_element_wise("s-", digits, ""),
            "tags": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
        },
        schema=SRC_SCHEMA,
    )


@dataclass(frozen=True)
class Base:
    path: Path
    rows: int


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    """Catalog with ``src`` (10M rows x scale, appended in 1M-row batches) and ``dim``."""
    path = tmp_path_factory.mktemp("mview_base")
    n = scaled(10_000_000, minimum=10_000)
    src = Dataset.create(path / "src", SRC_SCHEMA, primary_keys=["id"], durable=False)
    runner = src.local()
    for b, start in enumerate(range(0, n, BATCH)):
        runner.append(src_rows(np.arange(start, min(n, start + BATCH)), seed=b))
    dim = Dataset.create(path / "dim", DIM_SCHEMA, primary_keys=["k"], durable=False)
    keys = np.arange(DIM_ROWS, dtype=np.int64)
    dim.local().append(
        pa.table(
            {"k": keys, "name": [f"dim-{i}" for i in keys], "grp": keys % 7}, schema=DIM_SCHEMA
        )
    )
    settle()
    yield Base(path, n)
    shutil.rmtree(path, ignore_errors=True)


# --- one view over its own copy of the sources ---------------------------------------------


class Bench:
    """A connection to a hard-link copy of the base catalog, with the view of one shape, and
    the live keys of ``src`` (to draw deletes and updates from)."""

    def __init__(self, shape: str, path: Path, rows: int) -> None:
        self.name = shape
        self.shape = SHAPES[shape]
        self.path = path
        self.initial_rows = rows
        self.con = spacesql.connect(path, threads=THREADS)
        self.con.sql(f"CREATE MATERIALIZED VIEW {VIEW} AS {self.shape.query}")
        self.view = self.con.materialized_view(VIEW)
        manager(self.con).full_fraction = 1.0  # always measure the incremental path
        self.alive = np.ones(rows, dtype=bool)  # alive[id]
        self.rng = np.random.default_rng(1234)
        self.seed = 1_000

    def change(self, fraction: float) -> int:
        """Insert, delete and update ``fraction`` of the initial rows (a third each)."""
        n = max(3, round(fraction * self.initial_rows))
        n_delete = n_update = n // 3
        n_insert = n - n_delete - n_update
        live = np.flatnonzero(self.alive)
        picked = live[self.rng.choice(len(live), n_delete + n_update, replace=False)]
        deleted, updated = np.sort(picked[:n_delete]), picked[n_delete:]
        start = len(self.alive)
        new = np.arange(start, start + n_insert, dtype=np.int64)
        self.seed += 1
        runner = self.con.dataset("src").local()
        runner.upsert(src_rows(np.concatenate([new, updated]), seed=self.seed))
        runner.delete(pc.field("id").isin(pa.array(deleted, pa.int64())))
        self.alive = np.concatenate([self.alive, np.ones(n_insert, dtype=bool)])
        self.alive[deleted] = False
        return n

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        result = self.con.sql(sql)
        assert result is not None
        rows: list[tuple[Any, ...]] = result.fetchall()
        return rows

    def _one(self, sql: str) -> tuple[Any, ...]:
        rows = self._rows(sql)
        assert len(rows) == 1, rows
        return tuple(rows[0])

    def check(self) -> list[str]:
        """How the view's rows differ from its query's (empty: they are equal). Row views:
        row count and the sum of the rows' hashes (a multiset checksum), exactly. Aggregate
        views: group by group, floats to 1e-9 (the merge adds in another order)."""
        query = self.shape.query
        if not self.shape.groups:
            checksum = "SELECT count(*), sum(hash(q)) FROM {} q"
            got = self._one(checksum.format(VIEW))
            want = self._one(checksum.format(f"({query})"))
            return [] if got == want else [f"count, sum(hash(row)): view {got}, query {want}"]
        order = ", ".join(self.shape.groups)
        view_rows = self._rows(f"SELECT * FROM {VIEW} ORDER BY {order}")
        query_rows = self._rows(f"SELECT * FROM ({query}) q ORDER BY {order}")
        bad = [
            (a, b)
            for a, b in zip(view_rows, query_rows, strict=False)
            if a != pytest.approx(b, rel=1e-9)
        ]
        if not bad and len(view_rows) == len(query_rows):
            return []
        example = f", e.g. view {bad[0][0]} vs query {bad[0][1]}" if bad else ""
        return [
            f"{len(bad)} of {len(query_rows)} groups differ ({len(view_rows)} in the view)"
            + example
        ]

    def cold(self) -> None:
        """Drop the connection's cached DuckDB views of the sources, so that each timed
        refresh registers the snapshots it reads (as after a commit by another process)
        rather than reusing what the previous refresh of the same snapshot registered."""
        for name in ("src", "dim"):
            self.con.forget(name)

    def close(self) -> None:
        self.con.close()


@pytest.fixture(scope="module", params=list(SHAPES))
def bench(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, base: Base
) -> Iterator[Bench]:
    path = tmp_path_factory.mktemp(f"mview_{request.param}") / "catalog"
    shutil.copytree(base.path, path, copy_function=os.link)
    b = Bench(request.param, path, base.rows)
    settle()
    yield b
    b.close()
    shutil.rmtree(path, ignore_errors=True)


# --- rounds --------------------------------------------------------------------------------


class Rounds:
    """Setup: a fresh change of the source. Teardown: check the incremental result, then time
    a full recompute of the same state and check it."""

    def __init__(self, b: Bench, fraction: float, timer: Callable[[], float]) -> None:
        self.b = b
        self.fraction = fraction
        self.timer = timer
        self.full_times: list[float] = []
        self.results: list[RefreshResult] = []
        self.changed: list[int] = []
        self.problems: list[str] = []

    def setup(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        self.changed.append(self.b.change(self.fraction))
        self.b.cold()
        settle()
        return (), {}

    def incremental(self) -> RefreshResult:
        result = self.b.view.refresh()
        self.results.append(result)
        return result

    def teardown(self, *_: Any, **__: Any) -> None:
        result = self.results[-1]
        assert result.strategy == "incremental", result
        assert result.changed_rows > 0, result
        n = len(self.results)
        self.problems += [f"round {n}, incremental: {p}" for p in self.b.check()]
        self.b.cold()
        settle()
        t0 = self.timer()
        full = self.b.view.refresh(full=True)
        self.full_times.append(self.timer() - t0)
        assert full.strategy == "full", full
        self.problems += [f"round {n}, full: {p}" for p in self.b.check()]


@pytest.mark.parametrize("change", list(CHANGES))
def test_refresh(benchmark: BenchmarkFixture, ratios: Ratios, bench: Bench, change: str) -> None:
    fraction, rounds = CHANGES[change]
    timer: Callable[[], float] = getattr(benchmark, "_timer", time.perf_counter)
    r = Rounds(bench, fraction, timer)
    benchmark.pedantic(
        r.incremental, setup=r.setup, teardown=r.teardown, rounds=rounds, warmup_rounds=WARMUP
    )
    if benchmark.disabled:  # pedantic ran one round without its teardown
        r.teardown()
    last = r.results[-1]
    total = sum(bench.con.dataset(n).snapshot().summary.total_rows for n in last.sources)
    kind = {"sum": "aggregate", "minmax": "aggregate_rescans"}.get(bench.name, "rows")
    limit = max(FULL_FRACTIONS[kind] * total, FULL_MIN_ROWS)
    view_rows = bench.con.dataset(VIEW).snapshot().summary.total_rows
    benchmark.extra_info.update(
        {
            "shape": bench.name,
            "query": bench.shape.query,
            "change": change,
            "source_rows": bench.initial_rows,
            "changed_rows_per_round": r.changed[-1],
            "planner_changed_rows": last.changed_rows,  # updates count twice (delete + insert)
            "planner_fraction": round(last.changed_rows / total, 5),
            "planner_default": "full" if last.changed_rows > limit else "incremental",
            "view_rows": view_rows,
            "view_deleted_rows": last.deleted_rows,
            "view_added_rows": last.added_rows,
        }
    )
    if not benchmark.disabled:
        _report(benchmark, ratios, bench, change, r, total, last)
    assert not r.problems, f"{bench.name}, {change}: the view is wrong: {r.problems[:3]}"


def _report(
    benchmark: BenchmarkFixture,
    ratios: Ratios,
    bench: Bench,
    change: str,
    r: Rounds,
    total: int,
    last: RefreshResult,
) -> None:
    fraction = CHANGES[change][0]
    ours = list(benchmark.stats.stats.data)
    full = r.full_times[WARMUP : WARMUP + len(ours)]
    assert len(full) == len(ours), (len(full), len(ours))
    timing = Timing(min(full), statistics.median(full), len(full))
    baseline = f"full recompute ({bench.name}, {change})"
    ratios.baselines[baseline] = timing
    paired = Paired(lambda: None)
    paired.times = full
    pairs = [o / f for o, f in zip(ours, full, strict=True)]
    benchmark.extra_info.update(
        {
            "incremental_s": [round(t, 4) for t in ours],
            "full_s": [round(t, 4) for t in full],
            "incremental_median_s": round(statistics.median(ours), 4),
            "full_median_s": round(timing.median, 4),
            "ratio_paired_min": round(min(pairs), 4),
        }
    )
    ratios.report(
        benchmark,
        f"9{bench.shape.letter}. mview {bench.name}, {change} of {count(bench.initial_rows)}",
        baseline=baseline,
        target=TARGET if fraction <= 0.001 else 1.0,
        fallback=lambda: timing,
        paired=paired,
    )
    print(
        f"[9{bench.shape.letter}. {bench.name} {change}] incremental median "
        f"{statistics.median(ours):.3f}s, full median {timing.median:.3f}s; changed rows "
        f"{last.changed_rows} ({last.changed_rows / total:.2%} of {total}), default planner: "
        f"{benchmark.extra_info['planner_default']}"
    )
