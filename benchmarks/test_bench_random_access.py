"""Figure 5: random reads of record-field values vs raw ArrayRecord reads.

A dataset of 200k rows (x scale) with a record field ``blob`` (random, incompressible 1-4 KB
values, like encoded images), appended in 4 batches (4 data files and 4 ArrayRecord files;
group size 1, the default). Each round reads 10,000 random rows (a new draw per round, the same
draws for both sides):

* ours: ``ra.take(indices)`` with one ``ra = ds.local().random_access(fields=['blob'])`` reused
  across rounds (it keeps each file's references, as a data loader would);
* raw: ``ArrayRecordReader(path).read(positions)`` on the same files and record positions,
  readers opened once; mapping rows to (file, position) is done outside the timing.

Target: our throughput is at least 0.8x raw (ratio = min(raw) / min(ours)).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from array_record.python import array_record_module
from pytest_benchmark.fixture import BenchmarkFixture
from spacesql_bench import Paired, Ratios, count, measure, scaled, settle

from spacesql import Dataset

TAKE = 10_000
FILES = 4
ROUNDS = 50
WARMUP = 2
SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])


@dataclass(frozen=True)
class Blobs:
    location: Path
    rows: int
    refs: pa.StructArray  # reference (file, row) of every row, in random-access order


def _blobs(n: int, rng: np.random.Generator) -> pa.Array:
    lengths = rng.integers(1024, 4097, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = rng.bytes(int(offsets[-1]))
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    return pa.Array.from_buffers(pa.large_binary(), n, buffers).cast(pa.binary())


@pytest.fixture(scope="session")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Blobs]:
    rows = scaled(200_000, minimum=FILES * 1_000)
    per_file = rows // FILES
    location = tmp_path_factory.mktemp("blobs") / "ds"
    ds = Dataset.create(
        location, SCHEMA, primary_keys=["id"], record_fields=["blob"], durable=False
    )
    rng = np.random.default_rng(5)
    for f in range(FILES):
        ids = np.arange(f * per_file, (f + 1) * per_file, dtype=np.int64)
        labels = pa.array(["a", "b"]).take(pa.array(rng.integers(0, 2, per_file)))
        ds.local().append(pa.table([ids, labels, _blobs(per_file, rng)], schema=SCHEMA))
    # References in manifest order = the order of random-access row numbers.
    paths = ds.manifest().column("path").to_pylist()
    refs = pa.concat_arrays(
        [
            pq.read_table(location / p, columns=["blob"]).column("blob").combine_chunks()
            for p in paths
        ]
    )
    settle()
    yield Blobs(location, per_file * FILES, refs)
    shutil.rmtree(location, ignore_errors=True)


def _draws(rows: int) -> Iterator[np.ndarray]:
    """The same sequence of index batches for both sides."""
    rng = np.random.default_rng(7)
    while True:
        yield rng.choice(rows, TAKE, replace=rows < TAKE)


class Raw:
    """ArrayRecord readers opened once; per round, positions grouped by file (untimed)."""

    def __init__(self, blobs: Blobs) -> None:
        files = pc.unique(blobs.refs.field("file")).to_pylist()
        self.readers = {
            f: array_record_module.ArrayRecordReader(str(blobs.location / f)) for f in files
        }
        self.blobs = blobs

    def setup(self) -> Callable[[], Any]:
        draws = _draws(self.blobs.rows)

        def setup() -> tuple[tuple[list[tuple[Any, list[int]]]], dict[str, Any]]:
            sel = self.blobs.refs.take(pa.array(next(draws)))
            files = np.asarray(sel.field("file").to_pylist())
            rows = sel.field("row").to_numpy()
            groups = [
                (self.readers[f], rows[files == f].tolist()) for f in np.unique(files).tolist()
            ]
            return (groups,), {}

        return setup

    @staticmethod
    def read(groups: list[tuple[Any, list[int]]]) -> list[list[bytes]]:
        return [reader.read(positions) for reader, positions in groups]

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


@pytest.fixture
def raw(blobs: Blobs) -> Iterator[Raw]:
    r = Raw(blobs)
    yield r
    r.close()


def test_arrayrecord_baseline(benchmark: BenchmarkFixture, ratios: Ratios, raw: Raw) -> None:
    out = benchmark.pedantic(raw.read, setup=raw.setup(), rounds=ROUNDS, warmup_rounds=WARMUP)
    assert sum(len(values) for values in out) == TAKE
    ratios.baseline(benchmark, "ArrayRecordReader.read")


def test_random_access_take(
    benchmark: BenchmarkFixture, ratios: Ratios, blobs: Blobs, raw: Raw
) -> None:
    runner = Dataset.load(blobs.location).local()
    # For information: one take on a new object, which first loads every file's references.
    with runner.random_access(fields=["blob"]) as cold:
        first = next(_draws(blobs.rows))
        start = time.perf_counter()
        cold.take(first)
        benchmark.extra_info["first_take_s"] = round(time.perf_counter() - start, 4)

    ra = runner.random_access(fields=["blob"])
    draws = _draws(blobs.rows)

    def setup() -> tuple[tuple[np.ndarray], dict[str, Any]]:
        return (next(draws),), {}

    paired = Paired(raw.read, raw.setup(), benchmark=benchmark)
    table = benchmark.pedantic(
        ra.take, setup=paired.setup(setup), rounds=ROUNDS, warmup_rounds=WARMUP
    )
    ra.close()
    assert table.num_rows == TAKE
    # Same values as the raw reader, in the requested order.
    check = next(_draws(blobs.rows))[:100]
    refs = blobs.refs.take(pa.array(check))
    expected = [
        raw.readers[f].read([r])[0]
        for f, r in zip(refs.field("file").to_pylist(), refs.field("row").to_pylist(), strict=True)
    ]
    with runner.random_access(fields=["blob"]) as again:
        assert again.take(check).column("blob").to_pylist() == expected
    benchmark.extra_info["rows"] = blobs.rows
    if not benchmark.disabled:
        benchmark.extra_info["records_per_s"] = round(TAKE / benchmark.stats.stats.min)
    ratios.report(
        benchmark,
        f"5. random take {TAKE:,} of {count(blobs.rows)} blobs (throughput)",
        baseline="ArrayRecordReader.read",
        target=0.8,
        throughput=True,
        fallback=lambda: measure(raw.read, raw.setup(), rounds=ROUNDS),
        paired=paired,
    )
