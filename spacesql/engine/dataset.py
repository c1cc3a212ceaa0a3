"""The public Python API of a dataset: ``Dataset`` and its runner ``ds.local()``."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from spacesql.engine.format import (
    DATASET_FILE,
    MAIN_BRANCH,
    DatasetInfo,
    Head,
    SnapshotRecord,
    Summary,
    dumps,
    encode_schema,
    now_ms,
    schema_path,
    snapshot_path,
)
from spacesql.engine.inputs import check_new_schema
from spacesql.engine.log import Version
from spacesql.engine.maintenance import (
    CompactOptions,
    compact,
    expire_snapshots,
    remove_orphan_files,
)
from spacesql.engine.manifest import entries_to_table, stats_columns
from spacesql.engine.table import Table
from spacesql.errors import SchemaError, SnapshotNotFoundError

if TYPE_CHECKING:
    from spacesql.engine.runner import LocalRunner

__all__ = ["CommitResult", "Dataset"]


@dataclass(frozen=True)
class CommitResult:
    """What a write did: the new snapshot, or nothing if it changed no row."""

    snapshot_id: int | None
    operation: str
    added_rows: int = 0
    deleted_rows: int = 0

    @property
    def committed(self) -> bool:
        return self.snapshot_id is not None


class Dataset:
    """A versioned Space dataset.

    Use :meth:`create` or :meth:`load`; writes and reads go through :meth:`local`.
    """

    def __init__(self, table: Table, *, branch: str = MAIN_BRANCH) -> None:
        self._table = table
        self._branch = branch

    # --- lifecycle ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        location: str | os.PathLike[str],
        schema: pa.Schema,
        *,
        primary_keys: Sequence[str],
        record_fields: Sequence[str] = (),
        array_record_group_size: int = 1,
        durable: bool = True,
    ) -> Dataset:
        """Create an empty dataset (snapshot 0) at ``location``.

        Args:
            location: A directory that does not exist yet, or is empty.
            schema: The Arrow schema of the rows.
            primary_keys: Columns that identify a row (may be empty for keyless data).
            record_fields: Binary columns stored in ArrayRecord files.
            array_record_group_size: Records per ArrayRecord chunk (1 is best for random
                access, larger values compress better for sequential reads).
            durable: fsync files before each commit point.
        """
        keys = tuple([primary_keys] if isinstance(primary_keys, str) else primary_keys)
        records = tuple([record_fields] if isinstance(record_fields, str) else record_fields)
        check_new_schema(schema, keys, records)
        if array_record_group_size < 1:
            raise SchemaError(
                f"array_record_group_size must be at least 1, got {array_record_group_size}."
            )
        target = Path(location).absolute()
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise SchemaError(
                f"Cannot create a dataset at {str(location)!r}: it exists and is not an empty "
                "directory. Use Dataset.load() to open an existing dataset."
            )
        # Build everything in a sibling directory, then rename it into place: a crash leaves
        # either no dataset or a complete one.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.creating"
        try:
            (tmp / "metadata" / "snapshots").mkdir(parents=True)
            (tmp / schema_path(1)).parent.mkdir(parents=True)
            (tmp / schema_path(1)).write_bytes(dumps(encode_schema(schema)))
            record = SnapshotRecord(
                snapshot_id=0,
                parent_id=None,
                branch=MAIN_BRANCH,
                timestamp_ms=now_ms(),
                operation="create",
                schema_id=1,
                summary=Summary(),
                changes=None,
                checkpoint=None,
                depth=0,
                heads={MAIN_BRANCH: Head("main", 0)},
            )
            (tmp / snapshot_path(0)).write_bytes(record.to_json())
            info = DatasetInfo(
                keys, records, group_size=array_record_group_size, uuid=uuid.uuid4().hex
            )
            (tmp / DATASET_FILE).write_bytes(info.to_json())
            for sub in ("data", "deletes", "refs/tags", "refs/branches"):
                (tmp / sub).mkdir(parents=True)
            if target.exists():
                target.rmdir()
            os.rename(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SchemaError(
                f"Cannot create a dataset at {str(location)!r}: {exc}. Another process may "
                "have created it first."
            ) from exc
        return cls(Table(target, durable=durable))

    @classmethod
    def load(cls, location: str | os.PathLike[str], *, durable: bool = True) -> Dataset:
        """Open an existing dataset."""
        return cls(Table(location, durable=durable))

    # --- properties --------------------------------------------------------------------

    @property
    def location(self) -> Path:
        return self._table.location

    @property
    def name(self) -> str:
        return self._table.name

    @property
    def schema(self) -> pa.Schema:
        """The schema at the head of the current branch."""
        return self._table.schema(self._table.resolve(None, branch=self._branch).schema_id)

    @property
    def primary_keys(self) -> list[str]:
        return list(self._table.info.primary_keys)

    @property
    def record_fields(self) -> list[str]:
        return list(self._table.info.record_fields)

    @property
    def current_branch(self) -> str:
        return self._branch

    @property
    def table(self) -> Table:
        """The engine handle (for the catalog and SQL layers)."""
        return self._table

    def local(self) -> LocalRunner:
        """A runner executing reads and writes in this process."""
        from spacesql.engine.runner import LocalRunner

        return LocalRunner(self)

    # --- versions ----------------------------------------------------------------------

    def snapshot(self, version: Version | None = None) -> SnapshotRecord:
        """The snapshot a version names (None: the head of the current branch)."""
        return self._table.resolve(version, branch=self._branch)

    def versions(self) -> pa.Table:
        """All snapshots, oldest first, with their tags and the branches they head."""
        t = self._table
        latest = t.log.latest()
        tags: dict[int, list[str]] = {}
        for name, sid in t.log.tags().items():
            tags.setdefault(sid, []).append(name)
        heads: dict[int, list[str]] = {}
        for name, br in t.log.branches().items():
            heads.setdefault(t.log.head(br, latest), []).append(name)
        rows = []
        for sid in t.log.list_ids():
            if sid > latest.snapshot_id:
                continue
            try:
                r = t.log.read(sid)
            except SnapshotNotFoundError:
                continue  # expired
            rows.append(
                {
                    "snapshot_id": r.snapshot_id,
                    "timestamp": r.timestamp_ms,
                    "parent_id": r.parent_id,
                    "branch": r.branch,
                    "operation": r.operation,
                    "added_rows": r.summary.added_rows,
                    "deleted_rows": r.summary.deleted_rows,
                    "total_rows": r.summary.total_rows,
                    "total_files": r.summary.total_files,
                    "tags": sorted(tags.get(sid, [])),
                    "branches": sorted(heads.get(sid, [])),
                    "properties": sorted(r.properties.items()),
                }
            )
        return pa.Table.from_pylist(rows, schema=VERSIONS_SCHEMA)

    def add_tag(self, tag: str, version: Version | None = None) -> None:
        """Name a snapshot (default: the head of the current branch)."""
        self._table.log.add_tag(tag, self.snapshot(version).snapshot_id)

    def remove_tag(self, tag: str) -> None:
        self._table.log.remove_tag(tag)

    def add_branch(self, branch: str, version: Version | None = None) -> None:
        """Start a branch at a snapshot (default: the head of the current branch)."""
        self._table.log.add_branch(branch, self.snapshot(version).snapshot_id)

    def set_current_branch(self, branch: str) -> None:
        """Make reads and writes of this object use ``branch``."""
        self._table.log.branch(branch)
        self._branch = branch

    def remove_branch(self, branch: str) -> None:
        if branch == self._branch and branch != MAIN_BRANCH:
            raise SchemaError(
                f"Branch {branch!r} is the current branch; set_current_branch('main') first."
            )
        self._table.log.remove_branch(branch)

    # --- maintenance -------------------------------------------------------------------

    def compact(self, options: CompactOptions | None = None) -> CommitResult:
        """Merge small files (and drop deleted rows physically) on the current branch."""
        rec = compact(self._table, branch=self._branch, options=options or CompactOptions())
        return CommitResult(None if rec is None else rec.snapshot_id, "compact")

    def expire_snapshots(
        self, *, older_than: dt.datetime | None = None, keep_last: int = 1
    ) -> list[int]:
        """Forget snapshots older than ``older_than`` (default: all) but the newest
        ``keep_last``, tagged ones and branch heads. Returns the expired snapshot ids."""
        return expire_snapshots(self._table, older_than=older_than, keep_last=keep_last)

    def remove_orphan_files(self, *, older_than: dt.timedelta = dt.timedelta(hours=1)) -> list[str]:
        """Delete files that no remaining snapshot references and that are older than
        ``older_than`` (a grace period protecting commits in progress)."""
        return remove_orphan_files(self._table, older_than=older_than)

    def manifest(self, version: Version | None = None) -> pa.Table:
        """The live files of a version: path, rows, bytes, deletes and column statistics."""
        rec = self.snapshot(version)
        schema = self._table.schema(rec.schema_id)
        columns = stats_columns(schema, self._table.info.record_fields)
        entries = list(self._table.state(rec).files.values())
        table = entries_to_table(entries, columns, with_action=False)
        live = pc.subtract(table.column("num_rows"), table.column("deleted_rows"))
        return table.add_column(2, "live_rows", live)


VERSIONS_SCHEMA = pa.schema(
    [
        ("snapshot_id", pa.int64()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("parent_id", pa.int64()),
        ("branch", pa.string()),
        ("operation", pa.string()),
        ("added_rows", pa.int64()),
        ("deleted_rows", pa.int64()),
        ("total_rows", pa.int64()),
        ("total_files", pa.int64()),
        ("tags", pa.list_(pa.string())),
        ("branches", pa.list_(pa.string())),
        ("properties", pa.map_(pa.string(), pa.string())),
    ]
)
