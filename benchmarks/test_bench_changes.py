"""Figure 3: small changes to a 10M-row dataset vs rewriting the whole dataset.

Targets: deleting 1,000 scattered rows by primary key (``pc.field('id').isin(keys)``) and
upserting 10,000 rows (all replacing existing, scattered keys) each take under 10% of
``pq.write_table`` of the full 10M-row table. Every round works on a fresh hard-link clone of
the same dataset (the single append that built it), through a handle opened with durable=True
and warmed by ``manifest()``; each round uses other random keys. Only the delete/upsert call
is timed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from spacesql_bench import Big, Cloner, Paired, Ratios, count, make_rows, measure, settle

from spacesql import CommitResult, Dataset

ROUNDS = 3
DELETE_KEYS = 1_000
UPSERT_ROWS = 10_000
BASELINE = "pq.write_table (full)"


@pytest.fixture
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("rewrite")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _rewrite_setup(table: pa.Table, scratch: Path) -> Callable[[], Any]:
    """Arguments of each baseline round: the full table and a new file name."""
    directory = scratch / "baseline"
    directory.mkdir(exist_ok=True)
    counter = iter(range(1_000_000))

    def setup() -> tuple[tuple[pa.Table, str], dict[str, Any]]:
        for old in directory.iterdir():  # one full copy on disk at a time
            old.unlink()
        settle()
        return (table, str(directory / f"{next(counter)}.parquet")), {}

    return setup


def _fallback(big: Big, scratch: Path) -> Callable[[], Any]:
    return lambda: measure(pq.write_table, _rewrite_setup(big.table, scratch), rounds=ROUNDS)


def _fresh(big: Big, clone: Cloner) -> Dataset:
    """The dataset as built, on a new clone, through a warm durable handle."""
    ds = Dataset.load(clone(big.location))
    ds.manifest()
    settle()
    return ds


def test_rewrite_baseline(
    benchmark: BenchmarkFixture, ratios: Ratios, big: Big, scratch: Path
) -> None:
    benchmark.pedantic(
        pq.write_table, setup=_rewrite_setup(big.table, scratch), rounds=ROUNDS, warmup_rounds=1
    )
    benchmark.extra_info["rows"] = big.table.num_rows
    ratios.baseline(benchmark, BASELINE)


def _delete(ds: Dataset, expr: pc.Expression) -> CommitResult:
    return ds.local().delete(expr)


def test_delete_scattered_keys(
    benchmark: BenchmarkFixture, ratios: Ratios, big: Big, clone: Cloner, scratch: Path
) -> None:
    rng = np.random.default_rng(1)

    def setup() -> tuple[tuple[Dataset, pc.Expression], dict[str, Any]]:
        keys = pa.array(rng.choice(big.table.num_rows, DELETE_KEYS, replace=False))
        return (_fresh(big, clone), pc.field("id").isin(keys)), {}

    paired = Paired(pq.write_table, _rewrite_setup(big.table, scratch), benchmark=benchmark)
    result = benchmark.pedantic(_delete, setup=paired.setup(setup), rounds=ROUNDS, warmup_rounds=1)
    assert result.deleted_rows == DELETE_KEYS
    benchmark.extra_info["rows"] = big.table.num_rows
    ratios.report(
        benchmark,
        f"3a. delete {DELETE_KEYS:,} keys of {count(big.table.num_rows)} rows",
        baseline=BASELINE,
        target=0.10,
        fallback=_fallback(big, scratch),
        paired=paired,
    )


def _upsert(ds: Dataset, rows: pa.Table) -> CommitResult:
    return ds.local().upsert(rows)


def test_upsert_scattered_keys(
    benchmark: BenchmarkFixture, ratios: Ratios, big: Big, clone: Cloner, scratch: Path
) -> None:
    rng = np.random.default_rng(2)
    seeds = iter(range(100, 1_000_000))

    def setup() -> tuple[tuple[Dataset, pa.Table], dict[str, Any]]:
        keys = np.sort(rng.choice(big.table.num_rows, UPSERT_ROWS, replace=False))
        rows = make_rows(UPSERT_ROWS, seed=next(seeds)).set_column(0, "id", pa.array(keys))
        return (_fresh(big, clone), rows), {}

    paired = Paired(pq.write_table, _rewrite_setup(big.table, scratch), benchmark=benchmark)
    result = benchmark.pedantic(_upsert, setup=paired.setup(setup), rounds=ROUNDS, warmup_rounds=1)
    assert (result.added_rows, result.deleted_rows) == (UPSERT_ROWS, UPSERT_ROWS)
    benchmark.extra_info["rows"] = big.table.num_rows
    ratios.report(
        benchmark,
        f"3b. upsert {UPSERT_ROWS:,} rows into {count(big.table.num_rows)}",
        baseline=BASELINE,
        target=0.10,
        fallback=_fallback(big, scratch),
        paired=paired,
    )
