"""Writes, reads, versions, tags and branches of the engine."""

from __future__ import annotations

import datetime as dt
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import LABELS, labels

from spacesql import ConstraintError, Dataset, SnapshotNotFoundError


def ids(table: pa.Table) -> list[int]:
    return sorted(table.column("id").to_pylist())


def test_guide_example_runs_as_written(tmp_path):
    labels_table = labels(range(12))
    location = str(tmp_path / "labels")
    label_ds = Dataset.create(location, labels_table.schema, primary_keys=["id"], record_fields=[])
    label_ds.local().append(labels_table)
    label_ds.add_tag("after_append")
    assert ids(label_ds.local().read_all(fields=["id"])) == list(range(12))
    label_ds.local().delete((pc.field("id") == 8) | (pc.field("id") == 9))
    label_ds.add_tag("after_delete")
    old = label_ds.local().read_all(version="after_append", fields=["id"])
    assert old.column_names == ["id"]
    assert ids(old) == list(range(12))
    assert ids(label_ds.local().read_all()) == [i for i in range(12) if i not in (8, 9)]


def test_load_reads_what_create_wrote(make_dataset):
    ds = make_dataset(rows=labels(range(5)))
    again = Dataset.load(ds.location)
    assert again.schema == LABELS
    assert again.primary_keys == ["id"]
    assert again.record_fields == []
    assert ids(again.local().read_all()) == list(range(5))


@pytest.mark.parametrize(
    "data",
    [
        labels([1, 2]),
        labels([1, 2]).to_batches()[0],
        pa.RecordBatchReader.from_batches(LABELS, labels([1, 2]).to_batches()),
        {"id": [1, 2], "label": ["car", "car"], "score": [0.1, 0.2]},
    ],
    ids=["table", "batch", "reader", "dict"],
)
def test_accepts_arrow_like_inputs(make_dataset, data):
    ds = make_dataset()
    assert ds.local().append(data).added_rows == 2
    assert ids(ds.local().read_all()) == [1, 2]


def test_accepts_pandas_and_c_stream(make_dataset):
    pd = pytest.importorskip("pandas")
    ds = make_dataset()
    ds.local().append(pd.DataFrame({"id": [1], "label": ["a"], "score": [1.0]}))

    class Stream:
        def __arrow_c_stream__(self, requested_schema=None):
            return labels([2]).__arrow_c_stream__(requested_schema)

    ds.local().append(Stream())
    assert ids(ds.local().read_all()) == [1, 2]


def test_columns_in_any_order_and_castable_types(make_dataset):
    ds = make_dataset()
    ds.local().append(pa.table({"score": [1], "label": ["x"], "id": pa.array([3], pa.int32())}))
    row = ds.local().read_all().to_pylist()[0]
    assert row == {"id": 3, "label": "x", "score": 1.0}


def test_insert_upsert_update(make_dataset):
    ds = make_dataset(rows=labels(range(5)))
    r = ds.local()
    r.insert(labels([10, 11], "boat"))
    r.upsert(labels([1, 12], "human"))
    r.update(pc.field("id") == 2, {"label": "ship", "score": pc.field("score") * 10})
    rows = {row["id"]: row for row in r.read_all().to_pylist()}
    assert sorted(rows) == [0, 1, 2, 3, 4, 10, 11, 12]
    assert rows[1]["label"] == "human"
    assert rows[2] == {"id": 2, "label": "ship", "score": 2.0}
    assert rows[10]["label"] == "boat"


def test_delete_with_null_filter_keeps_row(make_dataset):
    ds = make_dataset(
        rows=pa.table(
            {"id": [1, 2, 3], "label": ["a", None, "b"], "score": [1.0, None, 3.0]}, schema=LABELS
        )
    )
    result = ds.local().delete(pc.field("score") > 2.0)
    assert result.deleted_rows == 1
    assert ids(ds.local().read_all()) == [1, 2]


def test_noop_writes_make_no_snapshot(make_dataset):
    ds = make_dataset(rows=labels(range(3)))
    before = ds.snapshot().snapshot_id
    assert not ds.local().delete(pc.field("id") == 99).committed
    assert not ds.local().append(labels([])).committed
    assert not ds.local().update(pc.field("id") == 99, {"label": "x"}).committed
    assert ds.snapshot().snapshot_id == before


def test_snapshot_ids_increase_and_versions_table(make_dataset):
    ds = make_dataset()
    for i in range(3):
        assert ds.local().append(labels([i])).snapshot_id == i + 1
    ds.add_tag("v3")
    v = ds.versions()
    assert v.column("snapshot_id").to_pylist() == [0, 1, 2, 3]
    assert v.column("parent_id").to_pylist() == [None, 0, 1, 2]
    assert v.column("operation").to_pylist() == ["create", "append", "append", "append"]
    assert v.column("total_rows").to_pylist() == [0, 1, 2, 3]
    assert v.column("tags").to_pylist()[3] == ["v3"]
    assert v.column("branches").to_pylist()[3] == ["main"]
    assert pa.types.is_timestamp(v.schema.field("timestamp").type)


def test_read_by_int_tag_branch_and_timestamp(make_dataset):
    ds = make_dataset()
    ds.local().append(labels([1]))
    time.sleep(0.02)
    middle = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.02)
    ds.local().append(labels([2]))
    ds.add_tag("two")
    assert ids(ds.local().read_all(version=1)) == [1]
    assert ids(ds.local().read_all(version="two")) == [1, 2]
    assert ids(ds.local().read_all(version="main")) == [1, 2]
    assert ids(ds.local().read_all(version=middle)) == [1]
    with pytest.raises(SnapshotNotFoundError, match="created later"):
        ds.local().read_all(version=dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))


def test_branches_isolate_writes(make_dataset):
    ds = make_dataset(rows=labels([1]))
    ds.add_branch("exp")
    ds.set_current_branch("exp")
    ds.local().append(labels([2]))
    ds.local().delete(pc.field("id") == 1)
    assert ids(ds.local().read_all()) == [2]
    ds.set_current_branch("main")
    assert ids(ds.local().read_all()) == [1]
    ds.local().append(labels([3]))
    assert ids(ds.local().read_all(version="exp")) == [2]
    assert ids(ds.local().read_all()) == [1, 3]
    assert ds.versions().column("branch").to_pylist() == ["main", "main", "exp", "exp", "main"]
    ds.remove_branch("exp")
    with pytest.raises(SnapshotNotFoundError):
        ds.local().read_all(version="exp")


def test_branch_recreated_under_same_name_starts_fresh(make_dataset):
    ds = make_dataset(rows=labels([1]))
    ds.add_branch("b")
    ds.set_current_branch("b")
    ds.local().append(labels([2]))
    ds.set_current_branch("main")
    ds.remove_branch("b")
    ds.add_branch("b")
    assert ids(ds.local().read_all(version="b")) == [1]


def test_tags(make_dataset):
    ds = make_dataset(rows=labels([1]))
    ds.add_tag("first")
    ds.local().append(labels([2]))
    ds.add_tag("old", version=1)
    assert ids(ds.local().read_all(version="old")) == [1]
    ds.remove_tag("old")
    with pytest.raises(SnapshotNotFoundError, match="no version 'old'"):
        ds.local().read_all(version="old")


def test_diff_lists_full_rows_with_snapshot_ids(make_dataset):
    ds = make_dataset(rows=labels(range(4)))
    ds.local().delete(pc.field("id") == 0)
    ds.local().upsert(labels([1], "boat"))
    ds.local().insert(labels([9]))
    changes = ds.local().changes(1, 4)
    rows = sorted(
        zip(
            changes.column("change_type").to_pylist(),
            changes.column("snapshot_id").to_pylist(),
            changes.column("id").to_pylist(),
            changes.column("label").to_pylist(),
            strict=False,
        )
    )
    assert rows == [
        ("delete", 2, 0, "car"),
        ("delete", 3, 1, "car"),
        ("insert", 3, 1, "boat"),
        ("insert", 4, 9, "car"),
    ]
    back = ds.local().changes(4, 1)
    assert sorted(back.filter(pc.field("change_type") == "insert").column("id").to_pylist()) == [
        0,
        1,
    ]


def test_diff_cancels_identical_rewrites(make_dataset):
    ds = make_dataset(rows=labels(range(3)))
    ds.local().upsert(labels([1]))
    assert ds.local().changes(1, 2).num_rows == 0


def test_read_stream_and_batch_size(make_dataset):
    ds = make_dataset(rows=labels(range(100)))
    ds.local().append(labels(range(100, 150)))
    batches = list(ds.local().read(batch_size=30, filter_=pc.field("id") >= 20))
    assert all(b.num_rows <= 30 for b in batches)
    assert sum(b.num_rows for b in batches) == 130


def test_filter_prunes_files_by_statistics(make_dataset, monkeypatch):
    ds = make_dataset()
    for k in range(5):
        ds.local().append(labels(range(k * 10, k * 10 + 10)))
    sc = ds.local().scanner()
    assert len(sc.files(pc.field("id") == 23)) == 1
    assert len(sc.files(pc.field("score") > 4.5)) == 1
    assert len(sc.files(pc.field("id").isin([1, 45]))) == 2
    assert len(sc.files(pc.field("label") == "nope")) == 0


def test_manifest_has_stats(make_dataset):
    ds = make_dataset(rows=labels(range(10)))
    ds.local().delete(pc.field("id") < 3)
    m = ds.manifest().to_pylist()
    assert len(m) == 1
    assert m[0]["num_rows"] == 10 and m[0]["live_rows"] == 7 and m[0]["deleted_rows"] == 3
    assert m[0]["stats"]["id"] == {"min": 0, "max": 9, "null_count": 0}
    assert not m[0]["path"].startswith("/")


def test_key_lookup_on_sorted_and_unsorted_files(make_dataset):
    ds = make_dataset(rows=labels(range(0, 100, 2)))  # sorted keys: binary search path
    ds.local().append(labels([99, 1, 51, 7]))  # unsorted keys: hash probe path
    ds.local().delete(pc.field("id").isin([10, 51]))
    ds.local().upsert(labels([10, 12, 51, 99, 1000], "new"))  # 10 and 51 were deleted
    rows = {r["id"]: r["label"] for r in ds.local().read_all().to_pylist()}
    assert len(rows) == 50 - 1 + 4 - 1 + 5 - 2
    assert all(rows[k] == "new" for k in (10, 12, 51, 99, 1000))
    assert rows[14] == "car" and rows[7] == "car"
    with pytest.raises(ConstraintError):
        ds.local().insert(labels([12]))
    ds.local().insert(labels([13]))


def test_delete_reads_only_filtered_columns(make_dataset, monkeypatch):
    import pyarrow.parquet as pq

    ds = make_dataset(rows=labels(range(10)))
    seen = []
    original = pq.read_table

    def spy(path, *args, **kwargs):
        seen.append(kwargs.get("columns"))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy)
    assert ds.local().delete(pc.field("score") > 0.75).deleted_rows == 2
    assert ["score"] in seen
