"""Helpers of the benchmarks: sizes, row generators, dataset clones and ratio reporting.

Sizes scale with ``SPACESQL_BENCH_SCALE`` (default 1.0, the sizes in README.md). Each figure is
a ratio against a baseline benchmarked in the same module and run: ``min(ours) /
min(baseline)``, or for the random-access throughput figure ``min(baseline) / min(ours)``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pytest_benchmark.fixture import BenchmarkFixture

SCALE = float(os.environ.get("SPACESQL_BENCH_SCALE", "1.0"))
_LABELS = pa.array(["car", "boat", "human", "tree", "cat"])


def scaled(n: int, minimum: int = 1_000) -> int:
    """``n`` times the benchmark scale, at least ``minimum``."""
    return max(minimum, int(n * SCALE))


def settle() -> None:
    """Flush dirty pages, so that writeback of earlier rounds (or of a fixture) does not run
    during the next timed call. Called when a dataset is built and before write rounds."""
    os.sync()


def count(n: int) -> str:
    """A row count for figure names: 10M, 500k, 1,234."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return f"{n:,}"


def make_rows(n: int, *, start: int = 0, seed: int = 0) -> pa.Table:
    """Rows with ids ``start, start+1, ...``: two ints, two floats, two strings."""
    rng = np.random.default_rng(seed)
    digits = pc.cast(pa.array(rng.integers(0, 1_000_000, n)), pa.string())
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "count": pa.array(rng.integers(0, 1000, n, dtype=np.int32)),
            "score": pa.array(rng.random(n)),
            "weight": pa.array(rng.random(n, dtype=np.float32)),
            "name": pc.binary_join_element_wise("item-", digits, ""),
            "label": _LABELS.take(pa.array(rng.integers(0, len(_LABELS), n))),
        }
    )


@dataclass(frozen=True)
class Big:
    """The shared 10M-row dataset (fixture ``big``) and the table it holds."""

    location: Path
    table: pa.Table


class Cloner:
    """Independent copies of a dataset directory made of hard links (instant, no data copied).

    Safe because the engine never modifies a file in place: data, manifests and snapshot
    records get fresh names, and ``metadata/latest.json`` is replaced by rename. So every
    benchmark round can start from exactly the same state, on the main branch.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._n = 0

    def __call__(self, source: Path) -> Path:
        self._n += 1
        target = self.root / f"clone{self._n}"
        shutil.copytree(source, target, copy_function=os.link)
        return target


# --- ratios ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    min: float
    median: float
    rounds: int


def measure(
    target: Callable[..., Any], setup: Callable[[], Any] | None = None, *, rounds: int = 5
) -> Timing:
    """Time ``target`` with perf_counter like ``benchmark.pedantic`` does, after one warm-up
    round (used when a baseline benchmark did not run, e.g. under ``-k``)."""
    times = []
    for _ in range(rounds + 1):
        args, kwargs = setup() if setup else ((), {})
        t0 = time.perf_counter()
        target(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return Timing(min(times[1:]), statistics.median(times[1:]), rounds)


class Paired:
    """One baseline round, timed like the benchmark, run by the setup of each round of ours
    (warm-ups included), so that each round of ours has a baseline round next to it under the
    same machine load. ``Ratios.report(..., paired=p)`` then adds ``ratio_paired_median``, the
    median over rounds of ours / its baseline round: a check of ``ratio`` that is robust to
    other work on the machine."""

    def __init__(
        self,
        target: Callable[..., Any],
        setup: Callable[[], Any] | None = None,
        *,
        benchmark: BenchmarkFixture | None = None,
    ) -> None:
        # Time with the benchmark's own timer (--benchmark-timer) when given, so that pairs
        # compare like with like; perf_counter otherwise.
        self.timer: Callable[[], float] = getattr(benchmark, "_timer", time.perf_counter)
        self.target = target
        self.baseline_setup = setup
        self.times: list[float] = []

    def setup(self, ours: Callable[[], Any] | None = None) -> Callable[[], Any]:
        def run() -> Any:
            args, kwargs = self.baseline_setup() if self.baseline_setup else ((), {})
            t0 = self.timer()
            self.target(*args, **kwargs)
            self.times.append(self.timer() - t0)
            del args, kwargs
            return ours() if ours else None

        return run


class Ratios:
    """Baseline timings of this run, and the figures computed against them."""

    def __init__(self) -> None:
        self.baselines: dict[str, Timing] = {}
        self.figures: list[dict[str, Any]] = []

    def baseline(self, benchmark: BenchmarkFixture, name: str) -> None:
        if benchmark.disabled:
            return
        s = benchmark.stats.stats
        self.baselines[name] = Timing(s.min, s.median, s.rounds)

    def report(
        self,
        benchmark: BenchmarkFixture,
        figure: str,
        *,
        baseline: str,
        target: float,
        fallback: Callable[[], Timing],
        throughput: bool = False,
        paired: Paired | None = None,
    ) -> None:
        """Record the ratio (and its target) in ``benchmark.extra_info`` and print it.

        Time ratios must be at most ``target``; throughput ratios at least ``target``. A
        missed target is reported, not failed: the figure is the result.
        """
        if benchmark.disabled:
            return
        base = self.baselines.get(baseline) or fallback()
        ours = benchmark.stats.stats
        if throughput:
            ratio, ratio_median = base.min / ours.min, base.median / ours.median
            met = ratio >= target
        else:
            ratio, ratio_median = ours.min / base.min, ours.median / base.median
            met = ratio <= target
        info = {
            "figure": figure,
            "ratio": round(ratio, 3),
            "ratio_median": round(ratio_median, 3),
            "target": f"{'>=' if throughput else '<='} {target}",
            "met": met,
            "baseline": baseline,
            "baseline_min_s": round(base.min, 6),
            "ours_min_s": round(ours.min, 6),
            "scale": SCALE,
            "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine
        }
        if paired is not None:
            rounds = ours.data  # round durations, warm-ups excluded
            base_rounds = paired.times[-len(rounds) :]
            pairs = [
                b / o if throughput else o / b for o, b in zip(rounds, base_rounds, strict=True)
            ]
            info["ratio_paired_median"] = round(statistics.median(pairs), 3)
        benchmark.extra_info.update(info)
        self.figures.append(info)
        print(
            f"\n[{figure}] ratio {ratio:.3f} (median {ratio_median:.3f}), target "
            f"{info['target']}: {'met' if met else 'MISSED'} (ours {ours.min:.4f}s, "
            f"{baseline} {base.min:.4f}s; load average {info['loadavg_1m']})"
            + (
                f"; paired median ratio {info['ratio_paired_median']:.3f}"
                if "ratio_paired_median" in info
                else ""
            )
        )


RATIOS = Ratios()
