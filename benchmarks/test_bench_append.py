"""Figure 2: append 1M rows (ints, floats, strings, list<struct>) vs pyarrow.parquet.write_table.

Target: ``append()`` with durable=True (the default) takes at most 1.3x ``pq.write_table`` of
the same table to a new file (no fsync). durable=False is reported against the same target.
Every round appends the same rows to the same dataset (append does not check keys).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from spacesql_bench import Paired, Ratios, count, make_rows, measure, scaled, settle

from spacesql import Dataset

ROUNDS = 6


def with_boxes(table: pa.Table, seed: int = 0) -> pa.Table:
    """Add ``boxes: list<struct<x, y, w, h: float32, cls: string>>``, 0-4 boxes per row."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 5, table.num_rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    m = int(offsets[-1])
    coords = [pa.array(rng.random(m, dtype=np.float32)) for _ in range(4)]
    cls = pa.array(["car", "boat", "human"]).take(pa.array(rng.integers(0, 3, m)))
    items = pa.StructArray.from_arrays([*coords, cls], names=["x", "y", "w", "h", "cls"])
    return table.append_column("boxes", pa.ListArray.from_arrays(pa.array(offsets), items))


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    return with_boxes(make_rows(scaled(1_000_000)))


@pytest.fixture
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("append")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _write_setup(table: pa.Table, scratch: Path) -> Callable[[], Any]:
    """Arguments of each baseline round: the table and a new file name."""
    directory = scratch / "baseline"
    directory.mkdir(exist_ok=True)
    counter = iter(range(1_000_000))

    def setup() -> tuple[tuple[pa.Table, str], dict[str, Any]]:
        for old in directory.iterdir():  # keep one copy on disk at a time
            old.unlink()
        settle()
        return (table, str(directory / f"{next(counter)}.parquet")), {}

    return setup


def test_write_parquet_baseline(
    benchmark: BenchmarkFixture, ratios: Ratios, rows: pa.Table, scratch: Path
) -> None:
    benchmark.pedantic(
        pq.write_table, setup=_write_setup(rows, scratch), rounds=ROUNDS, warmup_rounds=1
    )
    ratios.baseline(benchmark, "pq.write_table")


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "not_durable"])
def test_append(
    benchmark: BenchmarkFixture, ratios: Ratios, rows: pa.Table, scratch: Path, durable: bool
) -> None:
    ds = Dataset.create(scratch / "ds", rows.schema, primary_keys=["id"], durable=durable)
    runner = ds.local()

    def setup() -> tuple[tuple[pa.Table], dict[str, Any]]:
        settle()
        return (rows,), {}

    paired = Paired(pq.write_table, _write_setup(rows, scratch), benchmark=benchmark)
    result = benchmark.pedantic(
        runner.append, setup=paired.setup(setup), rounds=ROUNDS, warmup_rounds=1
    )
    assert result.added_rows == rows.num_rows
    benchmark.extra_info["rows"] = rows.num_rows
    benchmark.extra_info["durable"] = durable
    ratios.report(
        benchmark,
        f"2. append {count(rows.num_rows)} rows, durable={durable}",
        baseline="pq.write_table",
        target=1.3,
        fallback=lambda: measure(pq.write_table, _write_setup(rows, scratch), rounds=ROUNDS),
        paired=paired,
    )
