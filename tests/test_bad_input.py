"""Every bad input raises a clear error from one hierarchy and writes nothing."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import LABELS, labels

from spacesql import (
    ConstraintError,
    Dataset,
    NotFoundError,
    SchemaError,
    SnapshotNotFoundError,
    SpaceSQLError,
)


def files_of(ds: Dataset) -> set[str]:
    out = set()
    for dirpath, _dirs, names in os.walk(ds.location):
        out.update(os.path.join(dirpath, n) for n in names)
    return out


@pytest.fixture
def ds(make_dataset):
    return make_dataset(rows=labels(range(5)))


def assert_unchanged(ds: Dataset, before: set[str], snapshot: int) -> None:
    assert files_of(ds) == before
    assert ds.snapshot().snapshot_id == snapshot


BAD_WRITES = [
    ("append", lambda r: r.append(pa.table({"id": [1]})), SchemaError, "missing columns"),
    (
        "extra",
        lambda r: r.append(labels([7]).append_column("x", pa.array([1]))),
        SchemaError,
        r"unknown columns \['x'\]",
    ),
    (
        "type",
        lambda r: r.append({"id": ["a"], "label": ["x"], "score": [1.0]}),
        SchemaError,
        "Column 'id' has type string",
    ),
    (
        "null key",
        lambda r: r.append(pa.table({"id": [None], "label": ["x"], "score": [1.0]}, schema=LABELS)),
        ConstraintError,
        "null",
    ),
    ("dup key insert", lambda r: r.insert(labels([8, 8])), ConstraintError, "Duplicate"),
    (
        "existing key insert",
        lambda r: r.insert(labels([9, 3])),
        ConstraintError,
        r"already in dataset.*'id': 3",
    ),
    ("dup key upsert", lambda r: r.upsert(labels([8, 8])), ConstraintError, "Duplicate"),
    ("unknown filter column", lambda r: r.delete(pc.field("nope") == 1), SchemaError, "nope"),
    (
        "filter not expression",
        lambda r: r.delete("id = 1"),
        SchemaError,
        "pyarrow.compute expression",
    ),
    (
        "update unknown column",
        lambda r: r.update(pc.field("id") == 1, {"nope": 1}),
        SchemaError,
        "no column",
    ),
    (
        "update bad value",
        lambda r: r.update(pc.field("id") == 1, {"score": "high"}),
        SchemaError,
        "Cannot set column 'score'",
    ),
    (
        "update key clash",
        lambda r: r.update(pc.field("id") == 1, {"id": 2}),
        ConstraintError,
        "unique",
    ),
    ("not data", lambda r: r.append(42), SchemaError, "Cannot read data of type int"),
]


@pytest.mark.parametrize(
    "write, error, match", [b[1:] for b in BAD_WRITES], ids=[b[0] for b in BAD_WRITES]
)
def test_bad_writes_write_nothing(ds, write, error, match):
    before, snap = files_of(ds), ds.snapshot().snapshot_id
    with pytest.raises(error, match=match) as info:
        write(ds.local())
    assert isinstance(info.value, SpaceSQLError)
    assert_unchanged(ds, before, snap)


def test_unknown_versions(ds):
    with pytest.raises(SnapshotNotFoundError, match=r"no version 99 \(latest snapshot is 1"):
        ds.local().read_all(version=99)
    with pytest.raises(SnapshotNotFoundError, match="no version 'v9'"):
        ds.local().read_all(version="v9")
    with pytest.raises(LookupError):
        ds.local().read_all(version="v9")


def test_unknown_fields(ds):
    with pytest.raises(SchemaError, match=r"no field\(s\) \['nope'\]"):
        ds.local().read_all(fields=["nope"])


@pytest.mark.parametrize(
    "schema, keys, records, match",
    [
        (LABELS, ["nope"], [], "Primary key 'nope' is not a column"),
        (LABELS, ["id"], ["label"], "Record field 'label' has type string"),
        (LABELS, ["id"], ["nope"], "Record field 'nope' is not a column"),
        (LABELS, ["score"], [], "keys must be"),
        (pa.schema([("id", pa.int64()), ("id", pa.int64())]), ["id"], [], "duplicate"),
        (pa.schema([("id", pa.int64()), ("b", pa.binary())]), ["id"], ["b", "b"], "repeat"),
    ],
)
def test_bad_create(tmp_path, schema, keys, records, match):
    with pytest.raises(SchemaError, match=match):
        Dataset.create(tmp_path / "x", schema, primary_keys=keys, record_fields=records)
    assert not (tmp_path / "x").exists()
    assert os.listdir(tmp_path) == []


def test_create_twice_and_load_missing(tmp_path, ds):
    with pytest.raises(SchemaError, match="exists and is not an empty directory"):
        Dataset.create(ds.location, LABELS, primary_keys=["id"])
    with pytest.raises(NotFoundError, match="No dataset at"):
        Dataset.load(tmp_path / "missing")


def test_ref_names(ds):
    with pytest.raises(SchemaError, match="Invalid tag name '12'"):
        ds.add_tag("12")
    with pytest.raises(SchemaError, match="Invalid tag name"):
        ds.add_tag("a/b")
    with pytest.raises(SchemaError, match="has a branch 'main'"):
        ds.add_tag("main")
    ds.add_tag("t")
    with pytest.raises(SchemaError, match="has a tag 't'"):
        ds.add_branch("t")
    with pytest.raises(SchemaError, match="already has a tag 't'"):
        ds.add_tag("t")
    with pytest.raises(NotFoundError, match="no branch 'nope'"):
        ds.set_current_branch("nope")
    with pytest.raises(SchemaError, match="main branch cannot be removed"):
        ds.remove_branch("main")
    with pytest.raises(NotFoundError, match="no tag 'zz'"):
        ds.remove_tag("zz")


def test_upsert_needs_keys(make_dataset):
    ds = make_dataset(primary_keys=[])
    ds.local().append(labels([1, 1]))
    assert ds.local().read_all().num_rows == 2
    with pytest.raises(SchemaError, match="no primary key"):
        ds.local().upsert(labels([1]))
