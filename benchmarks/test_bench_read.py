"""Figure 1: read all columns of a 10M-row Parquet-only dataset vs pyarrow.parquet.read_table.

Target: ``read_all()`` takes at most 1.2x ``pq.read_table`` over the same data files.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from spacesql_bench import Big, Paired, Ratios, count, measure

from spacesql import Dataset

ROUNDS = 8


@pytest.fixture(scope="module")
def data_files(big: Big) -> list[str]:
    ds = Dataset.load(big.location)
    return [str(ds.location / p) for p in ds.manifest().column("path").to_pylist()]


def test_read_parquet_baseline(
    benchmark: BenchmarkFixture, ratios: Ratios, big: Big, data_files: list[str]
) -> None:
    table = benchmark.pedantic(pq.read_table, args=(data_files,), rounds=ROUNDS, warmup_rounds=1)
    assert table.num_rows == big.table.num_rows
    ratios.baseline(benchmark, "pq.read_table")


def test_read_all(
    benchmark: BenchmarkFixture, ratios: Ratios, big: Big, data_files: list[str]
) -> None:
    runner = Dataset.load(big.location).local()
    paired = Paired(pq.read_table, lambda: ((data_files,), {}), benchmark=benchmark)
    table = benchmark.pedantic(
        runner.read_all, setup=paired.setup(), rounds=ROUNDS, warmup_rounds=1
    )
    assert table.num_rows == big.table.num_rows
    assert table.schema.equals(big.table.schema)
    benchmark.extra_info["rows"] = table.num_rows
    ratios.report(
        benchmark,
        f"1. read_all, {count(table.num_rows)} rows",
        baseline="pq.read_table",
        target=1.2,
        fallback=lambda: measure(pq.read_table, lambda: ((data_files,), {}), rounds=ROUNDS),
        paired=paired,
    )
