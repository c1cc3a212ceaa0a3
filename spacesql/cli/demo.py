"""``spacesql demo``: a tour of the engine on a small labelled-images dataset."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table as RichTable

from spacesql.engine import Dataset

__all__ = ["run_demo"]


def _show(console: Console, title: str, table: pa.Table, limit: int = 12) -> None:
    out = RichTable(title=title, title_justify="left")
    for name in table.column_names:
        out.add_column(name)
    for row in table.slice(0, limit).to_pylist():
        out.add_row(*[_cell(v) for v in row.values()])
    if table.num_rows > limit:
        out.caption = f"{table.num_rows} rows, {limit} shown"
    console.print(out)


def _cell(value: object) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return "NULL" if value is None else str(value)


def _labels() -> pa.Table:
    base = dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.timezone.utc)
    n = 12
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "image": [f"img-{i:03d}".encode() * 8 for i in range(n)],
            "label": [["car", "human", "boat", "building"][i % 4] for i in range(n)],
            "annotator": [["ann1", "ann2", "bob"][i % 3] for i in range(n)],
            "created_at": pa.array(
                [base + dt.timedelta(minutes=7 * i) for i in range(n)],
                pa.timestamp("us", tz="UTC"),
            ),
            "boxes": [
                [{"x": 10.0 * i, "y": 5.0, "w": 20.0, "h": 15.0}] * (1 + i % 2) for i in range(n)
            ],
        }
    )


def run_demo(path: str, *, fresh: bool = True) -> None:
    console = Console()
    root = Path(path)
    if fresh and root.exists():
        shutil.rmtree(root)
    labels = _labels()
    ds = Dataset.create(
        root / "labels", labels.schema, primary_keys=["id"], record_fields=["image"]
    )
    runner = ds.local()
    runner.append(labels)
    ds.add_tag("after_append")
    runner.delete((pc.field("id") == 8) | (pc.field("id") == 9))
    ds.add_tag("after_delete")
    runner.update(pc.field("label") == "boat", {"label": "ship"})
    console.print(
        f"[bold]Dataset[/bold] {ds.location} keys={ds.primary_keys} "
        f"record fields={ds.record_fields}"
    )
    _show(
        console,
        "Current rows",
        runner.read_all(fields=["id", "label", "annotator", "created_at", "image"]),
    )
    _show(
        console,
        "Version 'after_append' (time travel)",
        runner.read_all(version="after_append", fields=["id", "label"]),
    )
    _show(
        console,
        "Changes since 'after_append'",
        runner.changes("after_append").select(["change_type", "snapshot_id", "id", "label"]),
    )
    _show(
        console,
        "Snapshots",
        ds.versions().select(
            ["snapshot_id", "operation", "added_rows", "deleted_rows", "total_rows", "tags"]
        ),
    )
    console.print(f"Demo catalog written to {root.absolute()}")
