"""Fixtures of the benchmarks (helpers are in spacesql_bench.py).

Run with ``pytest benchmarks --benchmark-enable -q -p no:cacheprovider -s``; sizes scale with
``SPACESQL_BENCH_SCALE`` (default 1.0).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spacesql_bench import RATIOS, SCALE, Big, Cloner, Ratios, make_rows, scaled, settle

import spacesql
from spacesql import Dataset


@pytest.fixture(scope="session")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Big]:
    """10M rows (x scale) appended at once (data files of 4M rows); built with durable=False."""
    table = make_rows(scaled(10_000_000))
    location = tmp_path_factory.mktemp("big") / "ds"
    ds = Dataset.create(location, table.schema, primary_keys=["id"], durable=False)
    ds.local().append(table)
    settle()
    yield Big(location, table)
    shutil.rmtree(location, ignore_errors=True)


@pytest.fixture
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloner]:
    """Hard-link copies of a dataset, removed after the test."""
    cloner = Cloner(tmp_path_factory.mktemp("clones"))
    yield cloner
    shutil.rmtree(cloner.root, ignore_errors=True)


@pytest.fixture(scope="session")
def ratios() -> Ratios:
    return RATIOS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RATIOS.figures:
        return
    terminalreporter.section(f"spacesql ratios (SPACESQL_BENCH_SCALE={SCALE})")
    terminalreporter.write_line(f"spacesql imported from {Path(spacesql.__file__).parent}")
    for f in RATIOS.figures:
        paired = f.get("ratio_paired_median")
        terminalreporter.write_line(
            f"{f['figure']:<46} {f['ratio']:>7.3f} (median {f['ratio_median']:>7.3f}, paired "
            f"{'-' if paired is None else f'{paired:.3f}':>6})  target {f['target']:<7} "
            f"{'met' if f['met'] else 'MISSED':<6}  load {f['loadavg_1m']}"
        )
