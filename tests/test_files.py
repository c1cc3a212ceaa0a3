"""Record fields, relative paths, random access, maintenance and metadata growth."""

from __future__ import annotations

import datetime as dt
import os
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import labels

from spacesql import Dataset

IMAGES = pa.schema([("id", pa.int64()), ("image", pa.binary()), ("label", pa.string())])


def images(ids, tag="v1"):
    return pa.table(
        {
            "id": list(ids),
            "image": [None if i % 5 == 4 else f"{tag}-{i}".encode() * 3 for i in ids],
            "label": [f"l{i % 3}" for i in ids],
        },
        schema=IMAGES,
    )


@pytest.fixture
def img(make_dataset):
    ds = make_dataset(IMAGES, images(range(10)), record_fields=["image"], array_record_group_size=2)
    ds.local().upsert(images([3, 10, 11], tag="v2"))
    ds.local().delete(pc.field("id") == 0)
    return ds


def expected_images():
    rows = {r["id"]: r for r in images(range(10)).to_pylist()}
    rows.update({r["id"]: r for r in images([3, 10, 11], tag="v2").to_pylist()})
    del rows[0]
    return rows


def test_record_fields_live_in_array_record_files(img):
    data_files = os.listdir(img.location / "data")
    assert any(f.endswith(".r0.array_record") for f in data_files)
    index = pq.read_table(img.location / img.manifest().column("path")[0].as_py())
    assert index.schema.field("image").type == pa.struct(
        [("file", pa.string()), ("row", pa.int64())]
    )
    refs = index.column("image").to_pylist()
    assert all(r is None or not r["file"].startswith("/") for r in refs)


def test_record_fields_read_back_across_versions(img):
    got = {r["id"]: r for r in img.local().read_all().to_pylist()}
    assert got == expected_images()
    v1 = {r["id"]: r for r in img.local().read_all(version=1).to_pylist()}
    assert v1 == {r["id"]: r for r in images(range(10)).to_pylist()}
    batches = list(img.local().read(fields=["image"], batch_size=4))
    assert sum(b.num_rows for b in batches) == 11


def test_random_access_matches_read_all(img):
    table = img.local().read_all()
    ra = img.local().random_access()
    assert len(ra) == table.num_rows == 11
    order = [10, 0, 5, 5, 3]
    assert ra.take(order).to_pylist() == table.take(order).to_pylist()
    assert ra[-1] == table.to_pylist()[-1]
    only = img.local().take([1, 2], fields=["image"])
    assert only.column_names == ["image"]
    with pytest.raises(IndexError, match="out of range"):
        ra.take([11])


def test_dataset_moved_and_copied_reads_every_version(img, tmp_path):
    versions = {v: img.local().read_all(version=v).to_pylist() for v in range(4)}
    img.add_tag("keep")
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(img.location, copy)
    moved = tmp_path / "moved"
    os.rename(img.location, moved)
    for location in (copy, moved):
        ds = Dataset.load(location)
        for v, rows in versions.items():
            assert ds.local().read_all(version=v).to_pylist() == rows
        assert ds.local().read_all(version="keep").to_pylist() == versions[3]
        ds.local().append(images([50]))
    assert Dataset.load(copy).local().read_all().num_rows == 12


def test_compaction_keeps_rows_and_empty_diff(make_dataset):
    ds = make_dataset(IMAGES, record_fields=["image"])
    for k in range(6):
        ds.local().append(images(range(k * 5, k * 5 + 5)))
    ds.local().delete(pc.field("id") < 3)
    before = ds.local().read_all().sort_by("id")
    files_before = ds.manifest().num_rows
    result = ds.compact()
    assert result.committed
    assert ds.manifest().num_rows < files_before
    assert ds.manifest().column("deleted_rows").to_pylist() == [0]
    assert ds.local().read_all().sort_by("id").equals(before)
    assert ds.local().changes(result.snapshot_id - 1, result.snapshot_id).num_rows == 0
    assert not ds.compact().committed


def test_expire_and_remove_orphans_keep_what_is_needed(make_dataset):
    ds = make_dataset(rows=labels(range(3)))
    for i in range(3, 40):
        ds.local().upsert(labels([i, 0], label=f"x{i}"))
    ds.add_tag("mid", version=20)
    ds.compact()
    head = ds.local().read_all().sort_by("id")
    mid = ds.local().read_all(version="mid").sort_by("id")
    # leftovers of a killed writer
    (ds.location / "data" / "orphan.parquet").write_bytes(b"junk")
    expired = ds.expire_snapshots(keep_last=2)
    assert 20 not in expired and 1 in expired
    removed = ds.remove_orphan_files(older_than=dt.timedelta(0))
    assert "data/orphan.parquet" in removed
    assert len(removed) > 10
    again = Dataset.load(ds.location)
    assert again.local().read_all().sort_by("id").equals(head)
    assert again.local().read_all(version="mid").sort_by("id").equals(mid)
    assert sorted(again.versions().column("snapshot_id").to_pylist()) == sorted(
        {20, *range(ds.snapshot().snapshot_id - 1, ds.snapshot().snapshot_id + 1)}
    )
    again.local().append(labels([100]))


def test_orphan_grace_period_protects_recent_files(make_dataset):
    ds = make_dataset(rows=labels(range(3)))
    (ds.location / "data" / "inflight.parquet").write_bytes(b"x")
    assert ds.remove_orphan_files() == []


def test_metadata_per_commit_does_not_grow_with_history(make_dataset):
    ds = make_dataset(durable=False)
    sizes = []
    for i in range(60):
        ds.local().append(labels([i]))
        rec = ds.snapshot()
        size = os.path.getsize(ds.location / "metadata/snapshots" / f"{rec.snapshot_id:020d}.json")
        size += os.path.getsize(ds.location / rec.changes)
        sizes.append(size)
    # the record and delta of commit 60 are as small as those of commit 2
    assert sizes[-1] <= sizes[1] * 1.1
    # checkpoints bound the chain replayed to read a state
    assert ds.snapshot().depth < 16
    total = sum(f.stat().st_size for f in (ds.location / "metadata").rglob("*") if f.is_file())
    assert total < 60 * 12_000


def test_latest_snapshot_found_without_listing_history(make_dataset, monkeypatch):
    ds = make_dataset(rows=labels([1]))
    for i in range(2, 6):
        ds.local().append(labels([i]))
    from spacesql.engine.log import SnapshotLog

    def no_listing(self):
        raise AssertionError("listed the snapshot directory")

    monkeypatch.setattr(SnapshotLog, "list_ids", no_listing)
    fresh = Dataset.load(ds.location)
    assert fresh.snapshot().snapshot_id == 5
    # a stale hint still finds the newest snapshot by probing forward
    (ds.location / "metadata/latest.json").write_text('{"snapshot_id": 2}')
    assert Dataset.load(ds.location).snapshot().snapshot_id == 5


def test_expiry_keeps_ids_dense_for_a_stale_hint(make_dataset):
    ds = make_dataset()
    ds.add_tag("zero", version=0)
    for i in range(5):
        ds.local().append(labels([i]))
    ds.expire_snapshots()
    (ds.location / "metadata/latest.json").write_text('{"snapshot_id": 0}')
    again = Dataset.load(ds.location)
    assert again.local().append(labels([9])).snapshot_id == 6
    assert sorted(again.local().read_all().column("id").to_pylist()) == [0, 1, 2, 3, 4, 9]
    with pytest.raises(LookupError, match="was expired"):
        again.local().read_all(version=2)


def test_dataset_without_statistics_columns(make_dataset):
    schema = pa.schema([("key", pa.binary()), ("blob", pa.binary()), ("h", pa.float16())])
    ds = make_dataset(schema, primary_keys=["key"], record_fields=["blob"])
    import numpy as np

    ds.local().insert(
        {
            "key": [b"a", b"b"],
            "blob": [b"1", b"2"],
            "h": pa.array(np.array([1, 2], dtype=np.float16)),
        }
    )
    ds.local().upsert(
        {"key": [b"a"], "blob": [b"3"], "h": pa.array(np.array([3], dtype=np.float16))}
    )
    got = {r["key"]: r["blob"] for r in ds.local().read_all().to_pylist()}
    assert got == {b"a": b"3", b"b": b"2"}


def test_compaction_drops_fully_deleted_files(make_dataset):
    ds = make_dataset(rows=labels(range(3)))
    ds.local().append(labels(range(3, 6)))
    ds.local().delete(pc.field("id") < 3)
    ds.compact()
    assert ds.manifest().column("live_rows").to_pylist() == [3]
    assert ds.manifest().column("num_rows").to_pylist() == [3]


def test_large_binary_record_field_with_nulls_and_empty_values(make_dataset):
    schema = pa.schema([("id", pa.int64()), ("audio", pa.large_binary())])
    values = [b"", None, b"x" * 5000, None, b"abc"]
    ds = make_dataset(
        schema, pa.table({"id": range(5), "audio": values}, schema=schema), record_fields=["audio"]
    )
    assert ds.local().read_all().sort_by("id").column("audio").to_pylist() == values
    got = ds.local().take([4, 1, 2, 0], fields=["audio"]).column("audio")
    assert got.type == pa.large_binary()
    assert got.to_pylist() == [b"abc", None, b"x" * 5000, b""]
