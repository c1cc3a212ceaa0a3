"""Figures 6-8: the SQL layer (``spacesql.connect``) against plain DuckDB.

* 6a/6b. Queries through the connection over a 10M-row dataset (x scale; ``id`` int64 key,
  ``k`` int64 in 0..999, ``x`` double, ``s`` varchar), appended with the Python API in 10
  batches (10 data files), built with durable=False: ``SELECT k, sum(x) FROM t GROUP BY k``
  (6a) and the same with ``WHERE id BETWEEN a AND a + 10000`` (6b). Baseline: the same SQL in a
  plain ``duckdb.connect()`` where ``t`` is a view over ``read_parquet`` of the same files
  (listed from ``ds.manifest()``), with the same thread count (2). Target: at most 1.1x.
  Both connections are opened and warmed once; a round is ``sql(...).fetchall()``.
* 7. ``spacesql.connect(catalog)`` plus a first query touching one table
  (``SELECT count(*) FROM t17``), on catalog B (100 datasets of 1,000 snapshots each) vs
  catalog A (100 datasets of 1 snapshot each). The datasets of a catalog are hard-link copies
  (``shutil.copytree(..., copy_function=os.link)``) of one source dataset built with
  durable=False. A's source is one append of 10,000 rows. Two B sources:
  ``appends``: 1,000 appends of 10 rows (the same 10,000 rows, so 1,000 data files);
  ``append_delete``: one append of 9,999 rows, then 998 commits alternately appending a row
  and deleting it, then an append of the 10,000th row (2 live data files, the same rows).
  Target: at most 1.5x. Closing the connection is not timed.
* 8. ``INSERT INTO t SELECT ...`` of 1M rows (x scale) computed by DuckDB
  (``range``/``random()``/string concatenation) into an empty keyed table created by
  ``CREATE TABLE`` (so durable=True, the SQL default), vs DuckDB's own
  ``COPY (same SELECT) TO 'x.parquet'`` (no fsync). Target: at most 1.3x. Every round inserts
  into a fresh table, created (and the previous one dropped) in the untimed setup.

Interleaved rounds: the machine is shared, so each figure is measured in one test. Next to
every round of ours (``benchmark.pedantic``), outside its timing, one round of the baseline is
timed: in the setup (before ours) on even rounds, in the teardown (after ours) on odd rounds,
so both sides see the same load and neither always goes first. ``extra_info`` holds, as in the
other modules, ``ratio`` (min/min) and ``ratio_median`` (median/median), plus
``ratio_paired_median``: the median over rounds of ours / the baseline round next to it (the
figure to read on a loaded machine).
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

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from spacesql_bench import Paired, Ratios, Timing, count, scaled, settle

import spacesql
from spacesql import Dataset

THREADS = 2
QUERY_ROUNDS = {"group_by": 31, "filtered": 61}
CONNECT_ROUNDS = 41
INSERT_ROUNDS = 11
WARMUP = 1

SNAPSHOTS = 1_000
DATASETS = 100
QUERIED = "t17"
CATALOG_ROWS = 10_000  # rows of every dataset of both catalogs

SCHEMA = pa.schema([("id", pa.int64()), ("k", pa.int64()), ("x", pa.float64()), ("s", pa.string())])


# --- interleaving ------------------------------------------------------------------------


class Interleaved:
    """One baseline round timed next to each round of ours, outside ours' timing.

    Pass ``setup`` and ``teardown`` to ``benchmark.pedantic``: even rounds time the baseline in
    the setup (just before ours), odd rounds in the teardown (just after ours), so neither side
    always runs first. ``prepare`` runs first in each setup (untimed, e.g. a fresh table); its
    result goes to ``baseline`` and to ``arguments``, which gives ours its ``(args, kwargs)``.
    ``quiesce`` runs (untimed) before each timed call of either side; ``after`` runs in each
    teardown before an odd round's baseline (e.g. closing what ours opened).
    """

    def __init__(
        self,
        baseline: Callable[[Any], Any],
        *,
        prepare: Callable[[], Any] = lambda: None,
        arguments: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]] = lambda _: ((), {}),
        quiesce: Callable[[], Any] = lambda: None,
        after: Callable[[], Any] = lambda: None,
    ) -> None:
        self.baseline = baseline
        self.prepare = prepare
        self.arguments = arguments
        self.quiesce = quiesce
        self.after = after
        self.times: list[float] = []
        self._round = 0
        self._state: Any = None

    def _time_baseline(self) -> None:
        self.quiesce()
        t0 = time.perf_counter()
        self.baseline(self._state)
        self.times.append(time.perf_counter() - t0)

    def setup(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        self._state = self.prepare()
        if self._round % 2 == 0:
            self._time_baseline()
        args = self.arguments(self._state)
        self.quiesce()
        return args

    def teardown(self, *_: Any, **__: Any) -> None:
        self.after()
        if self._round % 2 == 1:
            self._time_baseline()
        self._round += 1

    def report(
        self,
        benchmark: BenchmarkFixture,
        ratios: Ratios,
        figure: str,
        *,
        baseline: str,
        target: float,
        warmup_rounds: int = WARMUP,
    ) -> None:
        """Report the figure with ``ratios.report``, with this test's baseline rounds as the
        baseline timing and as the pairs of ``ratio_paired_median``."""
        if benchmark.disabled:
            return
        ours = list(benchmark.stats.stats.data)
        base = self.times[warmup_rounds : warmup_rounds + len(ours)]
        assert len(base) == len(ours), (len(base), len(ours))
        timing = Timing(min(base), statistics.median(base), len(base))
        ratios.baselines[baseline] = timing
        pairs = Paired(self.baseline)  # ratios.report pairs ours' rounds with these times
        pairs.times = base
        benchmark.extra_info["baseline_median_s"] = round(timing.median, 6)
        benchmark.extra_info["ours_median_s"] = round(statistics.median(ours), 6)
        ratios.report(
            benchmark,
            figure,
            baseline=baseline,
            target=target,
            fallback=lambda: timing,
            paired=pairs,
        )
        print(
            f"[{figure}] {len(ours)} interleaved rounds: ours median "
            f"{statistics.median(ours):.4f}s, {baseline} median {timing.median:.4f}s"
        )


def _fetch(con: Any, query: str) -> list[tuple[Any, ...]]:
    result = con.sql(query)
    assert result is not None
    rows: list[tuple[Any, ...]] = result.fetchall()
    return rows


def _plain_duckdb() -> duckdb.DuckDBPyConnection:
    return duckdb.connect(config={"threads": THREADS})


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


# --- 6. queries ---------------------------------------------------------------------------


def _rows(n: int, start: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    digits = pc.cast(pa.array(rng.integers(0, 1_000_000, n)), pa.string())
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "k": pa.array(rng.integers(0, 1000, n, dtype=np.int64)),
            "x": pa.array(rng.random(n)),
            "s": pc.binary_join_element_wise("s-", digits, ""),
        },
        schema=SCHEMA,
    )


@dataclass(frozen=True)
class QueryCatalog:
    path: Path
    rows: int
    files: list[str]


@pytest.fixture(scope="module")
def query_catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryCatalog]:
    """Catalog with one dataset ``t`` of 10M rows (x scale) appended in 10 batches."""
    path = tmp_path_factory.mktemp("sql_query")
    n = scaled(10_000_000, minimum=10_000)
    batch = n // 10
    ds = Dataset.create(path / "t", SCHEMA, primary_keys=["id"], durable=False)
    runner = ds.local()
    for b in range(10):
        runner.append(_rows(batch if b < 9 else n - 9 * batch, b * batch, seed=b))
    settle()
    files = [str(ds.location / p) for p in ds.manifest().column("path").to_pylist()]
    yield QueryCatalog(path, n, files)
    shutil.rmtree(path, ignore_errors=True)


QUERIES = {
    "group_by": "SELECT k, sum(x) FROM t GROUP BY k",
    "filtered": "SELECT k, sum(x) FROM t WHERE id BETWEEN {a} AND {a} + 10000 GROUP BY k",
}


@pytest.mark.parametrize("query", list(QUERIES))
def test_query(
    benchmark: BenchmarkFixture, ratios: Ratios, query_catalog: QueryCatalog, query: str
) -> None:
    sql = QUERIES[query].format(a=query_catalog.rows // 2 - 5_000)
    plain = _plain_duckdb()
    plain.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet({_sql_list(query_catalog.files)})")
    con = spacesql.connect(query_catalog.path, threads=THREADS)
    try:
        expected = sorted(_fetch(plain, sql))  # also warms both connections
        got = sorted(_fetch(con, sql))
        assert [r[0] for r in got] == [r[0] for r in expected]
        assert [r[1] for r in got] == pytest.approx([r[1] for r in expected])

        paired = Interleaved(lambda _: _fetch(plain, sql), arguments=lambda _: ((con, sql), {}))
        rows = benchmark.pedantic(
            _fetch,
            setup=paired.setup,
            teardown=paired.teardown,
            rounds=QUERY_ROUNDS[query],
            warmup_rounds=WARMUP,
        )
        assert [r[0] for r in sorted(rows)] == [r[0] for r in got]
        assert [r[1] for r in sorted(rows)] == pytest.approx([r[1] for r in got])
        benchmark.extra_info["rows"] = query_catalog.rows
        benchmark.extra_info["files"] = len(query_catalog.files)
        paired.report(
            benchmark,
            ratios,
            f"6{'a' if query == 'group_by' else 'b'}. SQL {query} over "
            f"{count(query_catalog.rows)} rows vs DuckDB read_parquet",
            baseline=f"duckdb read_parquet {query}",
            target=1.1,
        )
    finally:
        con.close()
        plain.close()


# --- 7. connect on a catalog with long histories ------------------------------------------


def _catalog_rows(ids: np.ndarray) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "k": pa.array(ids % 1000, pa.int64()),
            "x": pa.array(np.ones(n)),
            "s": pa.array(["row"] * n, pa.string()),
        },
        schema=SCHEMA,
    )


def _source_one(location: Path) -> None:
    ds = Dataset.create(location, SCHEMA, primary_keys=["id"], durable=False)
    assert ds.local().append(_catalog_rows(np.arange(CATALOG_ROWS))).snapshot_id == 1


def _source_appends(location: Path) -> None:
    ds = Dataset.create(location, SCHEMA, primary_keys=["id"], durable=False)
    runner = ds.local()
    per = CATALOG_ROWS // SNAPSHOTS
    for i in range(SNAPSHOTS):
        runner.append(_catalog_rows(np.arange(i * per, (i + 1) * per)))
    assert ds.snapshot().snapshot_id == SNAPSHOTS


def _source_append_delete(location: Path) -> None:
    ds = Dataset.create(location, SCHEMA, primary_keys=["id"], durable=False)
    runner = ds.local()
    runner.append(_catalog_rows(np.arange(CATALOG_ROWS - 1)))
    scratch = 10**9
    for i in range(2, SNAPSHOTS):
        if i % 2 == 0:
            runner.append(_catalog_rows(np.array([scratch + i])))
        else:
            runner.delete(pc.field("id") == scratch + i - 1)
    runner.append(_catalog_rows(np.array([CATALOG_ROWS - 1])))
    assert ds.snapshot().snapshot_id == SNAPSHOTS


SOURCES: dict[str, Callable[[Path], None]] = {
    "one": _source_one,
    "appends": _source_appends,
    "append_delete": _source_append_delete,
}


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A catalog of DATASETS hard-link copies of each source dataset."""
    root = tmp_path_factory.mktemp("sql_catalogs")
    out = {}
    for name, build in SOURCES.items():
        source = root / "sources" / name
        build(source)
        catalog = root / name
        catalog.mkdir()
        for i in range(DATASETS):
            shutil.copytree(source, catalog / f"t{i}", copy_function=os.link)
        out[name] = catalog
    settle()
    yield out
    shutil.rmtree(root, ignore_errors=True)


def _connect_and_query(catalog: Path) -> Any:
    con = spacesql.connect(catalog, threads=THREADS)
    rows = _fetch(con, f"SELECT count(*) FROM {QUERIED}")
    return con, rows


def _live_files(location: Path) -> list[str]:
    manifest = Dataset.load(location).manifest()
    live = manifest.filter(pc.field("live_rows") > 0)
    return [str(location / p) for p in live.column("path").to_pylist()]


def _median_time(fn: Callable[[], Any], rounds: int = 7) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@pytest.mark.parametrize("history", ["appends", "append_delete"])
def test_connect(
    benchmark: BenchmarkFixture, ratios: Ratios, catalogs: dict[str, Path], history: str
) -> None:
    a, b = catalogs["one"], catalogs[history]
    opened: list[Any] = []

    def baseline(_: Any) -> None:
        con, rows = _connect_and_query(a)
        con.close()
        assert rows == [(CATALOG_ROWS,)]

    paired = Interleaved(
        baseline, arguments=lambda _: ((b,), {}), after=lambda: opened.pop().close()
    )

    def run(catalog: Path) -> Any:
        con, rows = _connect_and_query(catalog)
        opened.append(con)
        return rows

    rows = benchmark.pedantic(
        run,
        setup=paired.setup,
        teardown=paired.teardown,
        rounds=CONNECT_ROUNDS,
        warmup_rounds=WARMUP,
    )
    for con in opened:  # left open only when benchmarks are disabled (no teardown then)
        con.close()
    assert rows == [(CATALOG_ROWS,)]
    ds = Dataset.load(b / QUERIED)
    assert ds.snapshot().snapshot_id == SNAPSHOTS
    live_a, live_b = _live_files(a / QUERIED), _live_files(b / QUERIED)
    benchmark.extra_info["datasets"] = DATASETS
    benchmark.extra_info["snapshots"] = SNAPSHOTS
    benchmark.extra_info["files_in_state"] = ds.manifest().num_rows
    benchmark.extra_info["live_files"] = len(live_b)
    if not benchmark.disabled:
        # where the time goes: plain DuckDB over the same live files, on a fresh connection
        def plain(files: list[str]) -> Callable[[], Any]:
            def go() -> Any:
                con = _plain_duckdb()
                try:
                    return con.sql(
                        f"SELECT count(*) FROM read_parquet({_sql_list(files)})"
                    ).fetchall()
                finally:
                    con.close()

            return go

        benchmark.extra_info["plain_duckdb_a_median_s"] = round(_median_time(plain(live_a)), 6)
        benchmark.extra_info["plain_duckdb_b_median_s"] = round(_median_time(plain(live_b)), 6)
        print(
            f"\n[7. {history}] plain DuckDB count(*) over the live files: "
            f"A ({len(live_a)} files) {benchmark.extra_info['plain_duckdb_a_median_s']:.4f}s, "
            f"B ({len(live_b)} files) {benchmark.extra_info['plain_duckdb_b_median_s']:.4f}s"
        )
    paired.report(
        benchmark,
        ratios,
        f"7. connect + count(*), {DATASETS}x{SNAPSHOTS} vs {DATASETS}x1 snapshots ({history})",
        baseline="connect + count(*), 1 snapshot",
        target=1.5,
    )


# --- 8. INSERT ... SELECT -----------------------------------------------------------------


@pytest.fixture
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("sql_insert")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_insert_select(benchmark: BenchmarkFixture, ratios: Ratios, scratch: Path) -> None:
    n = scaled(1_000_000)
    select = f"SELECT i AS id, i % 1000 AS k, random() AS x, 'row' || i AS s FROM range({n}) r(i)"
    con = spacesql.connect(scratch / "catalog", threads=THREADS)
    plain = _plain_duckdb()
    copies = scratch / "copies"
    copies.mkdir()
    counter = iter(range(1_000_000))
    current: list[str] = []

    def prepare() -> tuple[str, Path]:
        for name in current:  # keep one table and one baseline file on disk at a time
            con.sql(f"DROP TABLE {name}")
        current.clear()
        for old in copies.iterdir():
            old.unlink()
        i = next(counter)
        name = f"t{i}"
        con.sql(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, k BIGINT, x DOUBLE, s VARCHAR)")
        current.append(name)
        return name, copies / f"{i}.parquet"

    def baseline(state: tuple[str, Path]) -> None:
        target = str(state[1]).replace("'", "''")
        plain.execute(f"COPY ({select}) TO '{target}' (FORMAT parquet)")

    def arguments(state: tuple[str, Path]) -> tuple[tuple[str], dict[str, Any]]:
        return (f"INSERT INTO {state[0]} {select}",), {}

    # settle(): neither side's timing includes writeback of the other's (or earlier) files
    paired = Interleaved(baseline, prepare=prepare, arguments=arguments, quiesce=settle)
    try:
        benchmark.pedantic(
            con.sql,
            setup=paired.setup,
            teardown=paired.teardown,
            rounds=INSERT_ROUNDS,
            warmup_rounds=WARMUP,
        )
        name = current[0]
        assert _fetch(con, f"SELECT count(*), count(DISTINCT id) FROM {name}") == [(n, n)]
        assert con.dataset(name).snapshot().snapshot_id == 1
        benchmark.extra_info["rows"] = n
        paired.report(
            benchmark,
            ratios,
            f"8. INSERT INTO t SELECT {count(n)} rows vs DuckDB COPY TO parquet",
            baseline="duckdb COPY TO parquet",
            target=1.3,
        )
    finally:
        con.close()
        plain.close()
