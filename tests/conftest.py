"""Shared factories: small datasets on temporary directories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from spacesql import Dataset

LABELS = pa.schema(
    [
        ("id", pa.int64()),
        ("label", pa.string()),
        ("score", pa.float64()),
    ]
)


def labels(ids: Sequence[int], label: str = "car") -> pa.Table:
    return pa.table(
        {"id": list(ids), "label": [label] * len(ids), "score": [i / 10 for i in ids]},
        schema=LABELS,
    )


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Dataset]:
    """make_dataset(schema=LABELS, rows=None, primary_keys=("id",), **create_options)."""
    counter = iter(range(1_000_000))

    def make(
        schema: pa.Schema = LABELS,
        rows: Any = None,
        *,
        primary_keys: Sequence[str] = ("id",),
        name: str | None = None,
        **options: Any,
    ) -> Dataset:
        ds = Dataset.create(
            tmp_path / (name or f"ds{next(counter)}"),
            schema,
            primary_keys=primary_keys,
            **options,
        )
        if rows is not None:
            ds.local().append(rows)
        return ds

    return make
