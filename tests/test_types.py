"""Every Arrow type Parquet can hold round-trips, including through diffs."""

from __future__ import annotations

import datetime as dt
import decimal

import pyarrow as pa
import pyarrow.compute as pc

ALL_TYPES = pa.schema(
    [
        ("id", pa.int64()),
        ("ts_tz", pa.timestamp("us", tz="Europe/Paris")),
        ("ts_ns", pa.timestamp("ns")),
        ("day", pa.date32()),
        ("t", pa.time64("us")),
        ("price", pa.decimal128(12, 3)),
        ("tags", pa.list_(pa.string())),
        ("nested", pa.list_(pa.list_(pa.int32()))),
        ("box", pa.struct([("x", pa.float32()), ("label", pa.string())])),
        ("attrs", pa.map_(pa.string(), pa.int64())),
        ("big_text", pa.large_string()),
        ("big_bin", pa.large_binary()),
        ("flag", pa.bool_()),
        ("u8", pa.uint8()),
        ("f16", pa.float64()),
    ]
)


def rows(n: int, offset: int = 0) -> pa.Table:
    base = dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.timezone.utc)
    data = {
        "id": [offset + i for i in range(n)],
        "ts_tz": [base + dt.timedelta(hours=i) for i in range(n)],
        "ts_ns": [dt.datetime(2026, 1, 1) + dt.timedelta(microseconds=i) for i in range(n)],
        "day": [dt.date(2026, 1, 1 + i % 28) for i in range(n)],
        "t": [dt.time(10, i % 60) for i in range(n)],
        "price": [decimal.Decimal(f"{i}.125") for i in range(n)],
        "tags": [["a", "b"][: i % 3] for i in range(n)],
        "nested": [[[i], [], [1, 2]] for i in range(n)],
        "box": [{"x": float(i), "label": None if i % 2 else "car"} for i in range(n)],
        "attrs": [[("k", i)] for i in range(n)],
        "big_text": ["é" * i for i in range(n)],
        "big_bin": [bytes([i % 256]) * i for i in range(n)],
        "flag": [i % 2 == 0 for i in range(n)],
        "u8": [i % 256 for i in range(n)],
        "f16": [float("nan") if i == 1 else i / 3 for i in range(n)],
    }
    return pa.table(data, schema=ALL_TYPES)


def test_all_types_round_trip(make_dataset):
    ds = make_dataset(ALL_TYPES, rows(6))
    back = ds.local().read_all().sort_by("id")
    assert back.schema == ALL_TYPES
    # NaN != NaN, so compare the textual form of the values
    assert repr(back.to_pylist()) == repr(rows(6).to_pylist())


def test_all_types_through_upsert_diff_and_filters(make_dataset):
    ds = make_dataset(ALL_TYPES, rows(6))
    ds.local().upsert(rows(2, offset=5))
    ts = pa.scalar(
        dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc), pa.timestamp("us", tz="UTC")
    )
    # ids 2, 3, 4 (10:00 + 2..4 h); the upserted 5 and 6 restart at 10:00
    assert ds.local().read_all(filter_=pc.field("ts_tz") >= ts).column("id").to_pylist() == [
        2,
        3,
        4,
    ]
    assert ds.local().read_all(filter_=pc.field("price") > decimal.Decimal("3")).num_rows == 2
    changes = ds.local().changes(1, 2)
    assert changes.schema.remove(0).remove(0) == ALL_TYPES
    assert sorted(changes.column("id").to_pylist()) == [5, 5, 6]
    assert changes.filter(pc.field("change_type") == "delete").column("id").to_pylist() == [5]


def test_nan_column_is_not_pruned_wrongly(make_dataset):
    ds = make_dataset(ALL_TYPES, rows(6))
    assert ds.local().read_all(filter_=pc.is_nan(pc.field("f16"))).column("id").to_pylist() == [1]
