"""The on-disk layout and the metadata records of a dataset (see ``catalog/SPEC.md``).

::

    <dataset>/
      metadata/dataset.json                 identity: keys, record fields, options (written once)
      metadata/schemas/<id>.json            Arrow schemas, immutable
      metadata/snapshots/<id:020d>.json     one commit record per snapshot (the commit point)
      metadata/latest.json                  hint: a recent snapshot id (may be stale)
      metadata/manifests/<id>-<uuid>.parquet    files added/removed by one snapshot
      metadata/checkpoints/<id>-<uuid>.parquet  all live files of one snapshot
      refs/tags/<name>.json                 one file per tag
      refs/branches/<name>.json             one file per branch (main is implicit)
      data/<uuid>.parquet                   index files (columns; record fields as references)
      data/<uuid>.r<i>.array_record         record-field values (i: position in record_fields)
      deletes/<uuid>.parquet                deletion vectors (row positions per data file)

Every path stored in metadata is relative to the dataset root.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from spacesql.errors import FormatError

__all__ = [
    "CHECKPOINT_INTERVAL",
    "FORMAT_VERSION",
    "MAIN_BRANCH",
    "DatasetInfo",
    "Head",
    "SnapshotRecord",
    "Summary",
    "decode_schema",
    "encode_schema",
    "snapshot_path",
]

FORMAT_VERSION = 1
MAIN_BRANCH = "main"
#: A snapshot writes a checkpoint (all live files) once its delta chain reaches this length.
CHECKPOINT_INTERVAL = 16

DATASET_FILE = "metadata/dataset.json"
LATEST_HINT = "metadata/latest.json"
SNAPSHOT_DIR = "metadata/snapshots"
SCHEMA_DIR = "metadata/schemas"
MANIFEST_DIR = "metadata/manifests"
CHECKPOINT_DIR = "metadata/checkpoints"
TAG_DIR = "refs/tags"
BRANCH_DIR = "refs/branches"
DATA_DIR = "data"
DELETE_DIR = "deletes"


def snapshot_path(snapshot_id: int) -> str:
    """Relative path of a snapshot's commit record.

    >>> snapshot_path(7)
    'metadata/snapshots/00000000000000000007.json'
    """
    return f"{SNAPSHOT_DIR}/{snapshot_id:020d}.json"


def schema_path(schema_id: int) -> str:
    """Relative path of a schema file.

    >>> schema_path(1)
    'metadata/schemas/000001.json'
    """
    return f"{SCHEMA_DIR}/{schema_id:06d}.json"


def encode_schema(schema: pa.Schema) -> dict[str, Any]:
    """A schema as JSON: Arrow IPC bytes (exact) plus a readable field list."""
    return {
        "arrow_ipc": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
    }


def decode_schema(obj: dict[str, Any]) -> pa.Schema:
    try:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(obj["arrow_ipc"])))
    except (KeyError, ValueError, pa.ArrowInvalid) as exc:
        raise FormatError(f"Cannot decode the stored Arrow schema: {exc}") from exc


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode("utf-8")


def loads(data: bytes, what: str) -> Any:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise FormatError(f"{what} is not valid JSON ({exc}); the file is damaged.") from exc
    if not isinstance(obj, dict):
        raise FormatError(f"{what} holds JSON that is not an object; the file is damaged.")
    return obj


@dataclass(frozen=True)
class DatasetInfo:
    """What never changes about a dataset (``metadata/dataset.json``)."""

    primary_keys: tuple[str, ...]
    record_fields: tuple[str, ...]
    group_size: int = 1
    format_version: int = FORMAT_VERSION
    #: Unique per created dataset: a table dropped and created again is another dataset.
    uuid: str = ""

    def to_json(self) -> bytes:
        return dumps(
            {
                "format_version": self.format_version,
                "uuid": self.uuid,
                "primary_keys": list(self.primary_keys),
                "record_fields": list(self.record_fields),
                "options": {"array_record_group_size": self.group_size},
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> DatasetInfo:
        obj = loads(data, DATASET_FILE)
        version = obj.get("format_version")
        if version != FORMAT_VERSION:
            raise FormatError(
                f"Dataset format version {version!r} is not supported (this spacesql reads "
                f"version {FORMAT_VERSION}); upgrade spacesql."
            )
        return cls(
            primary_keys=tuple(obj["primary_keys"]),
            record_fields=tuple(obj["record_fields"]),
            group_size=int(obj.get("options", {}).get("array_record_group_size", 1)),
            uuid=str(obj.get("uuid", "")),
        )


@dataclass(frozen=True)
class Head:
    """The head snapshot of a branch, tied to the branch's unique id."""

    uid: str
    snapshot_id: int


@dataclass(frozen=True)
class Summary:
    """Row and file counts of one snapshot."""

    added_rows: int = 0
    deleted_rows: int = 0
    added_files: int = 0
    removed_files: int = 0
    total_rows: int = 0
    total_files: int = 0


@dataclass(frozen=True)
class SnapshotRecord:
    """One commit: written once with put-if-absent; its existence is the commit."""

    snapshot_id: int
    parent_id: int | None
    branch: str
    timestamp_ms: int
    operation: str
    schema_id: int
    summary: Summary
    changes: str | None
    checkpoint: str | None
    depth: int
    heads: dict[str, Head]
    properties: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        obj = asdict(self)
        obj["format_version"] = FORMAT_VERSION
        return dumps(obj)

    @classmethod
    def from_json(cls, data: bytes, what: str) -> SnapshotRecord:
        obj = loads(data, what)
        try:
            return cls(
                snapshot_id=int(obj["snapshot_id"]),
                parent_id=None if obj["parent_id"] is None else int(obj["parent_id"]),
                branch=str(obj["branch"]),
                timestamp_ms=int(obj["timestamp_ms"]),
                operation=str(obj["operation"]),
                schema_id=int(obj["schema_id"]),
                summary=Summary(**obj["summary"]),
                changes=obj["changes"],
                checkpoint=obj["checkpoint"],
                depth=int(obj["depth"]),
                heads={k: Head(**v) for k, v in obj["heads"].items()},
                properties=dict(obj.get("properties", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{what} is not a valid snapshot record: {exc!r}") from exc


def now_ms() -> int:
    return int(time.time() * 1000)
