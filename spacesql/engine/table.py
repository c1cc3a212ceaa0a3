"""The engine's handle on one dataset: schemas, version resolution, states and commits."""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from spacesql.engine.files import DataWriter
from spacesql.engine.format import (
    CHECKPOINT_DIR,
    CHECKPOINT_INTERVAL,
    DATASET_FILE,
    MAIN_BRANCH,
    MANIFEST_DIR,
    DatasetInfo,
    SnapshotRecord,
    Summary,
    decode_schema,
    encode_schema,
    loads,
    now_ms,
    schema_path,
    snapshot_path,
)
from spacesql.engine.log import SnapshotLog, Version
from spacesql.engine.manifest import (
    FileEntry,
    TableState,
    decode_table,
    encode_table,
    entries_to_table,
    stats_columns,
    table_to_entries,
)
from spacesql.engine.store import LocalStore
from spacesql.errors import CommitConflictError, FormatError, NotFoundError, SnapshotNotFoundError

__all__ = ["Plan", "Table"]


@dataclass
class Plan:
    """What one operation changes, computed against a given head snapshot."""

    operation: str
    adds: list[FileEntry] = field(default_factory=list)
    removes: list[FileEntry] = field(default_factory=list)
    added_rows: int = 0
    deleted_rows: int = 0
    properties: dict[str, str] = field(default_factory=dict)
    schema_id: int | None = None

    @property
    def is_noop(self) -> bool:
        # properties alone make a commit: a refresh that changes no rows still records the
        # source snapshots it now reflects
        return not self.adds and not self.removes and self.schema_id is None and not self.properties


#: Computes a plan against (table, head record, head state, writer); None means nothing to do.
Planner = Callable[["Table", SnapshotRecord, TableState, DataWriter], "Plan | None"]


class Table:
    """Engine-level access to one dataset directory."""

    def __init__(self, location: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.location = Path(location)
        self.store = LocalStore(location, durable=durable)
        try:
            self.info = DatasetInfo.from_json(self.store.read_bytes(DATASET_FILE))
        except FileNotFoundError:
            raise NotFoundError(
                f"No dataset at {str(location)!r} ({DATASET_FILE} is missing). "
                "Create one with Dataset.create()."
            ) from None
        self.name = self.location.name
        self.log = SnapshotLog(self.store, name=self.name)
        self._schemas: dict[int, pa.Schema] = {}
        self._states: OrderedDict[int, TableState] = OrderedDict()
        #: The delta manifest of the commit in flight (to tell whether an interrupted
        #: commit landed).
        self._pending_changes: str | None = None

    # --- schemas -----------------------------------------------------------------------

    def schema(self, schema_id: int) -> pa.Schema:
        s = self._schemas.get(schema_id)
        if s is None:
            rel = schema_path(schema_id)
            try:
                s = decode_schema(loads(self.store.read_bytes(rel), rel))
            except FileNotFoundError:
                raise FormatError(
                    f"Schema file {rel} is missing; the dataset is damaged."
                ) from None
            self._schemas[schema_id] = s
        return s

    def write_schema(self, schema_id: int, schema: pa.Schema) -> bool:
        return self.store.put_if_absent(schema_path(schema_id), _schema_json(schema))

    def writer(self, schema: pa.Schema) -> DataWriter:
        return DataWriter(
            self.store,
            schema,
            self.info.record_fields,
            group_size=self.info.group_size,
            primary_keys=self.info.primary_keys,
        )

    # --- versions ----------------------------------------------------------------------

    def resolve(self, version: Version | None, *, branch: str = MAIN_BRANCH) -> SnapshotRecord:
        """The snapshot a version names (None: the head of ``branch``)."""
        if version is None:
            return self.log.read(self.log.head(self.log.branch(branch), self.log.latest()))
        if isinstance(version, bool):
            raise SnapshotNotFoundError(self.log._unknown_message(version))
        if isinstance(version, int):
            return self.log.read(version)
        if isinstance(version, dt.datetime):
            return self._at_time(version, branch)
        if isinstance(version, str):
            tag = self.log.tag(version)
            if tag is not None:
                return self.log.read(tag)
            if version in self.log.branches():
                return self.resolve(None, branch=version)
            if version.isdigit():
                return self.log.read(int(version))
        raise SnapshotNotFoundError(self.log._unknown_message(version))

    def _at_time(self, when: dt.datetime, branch: str) -> SnapshotRecord:
        if when.tzinfo is None:
            when = when.astimezone()  # naive means local time, as in DuckDB's TIMESTAMP
        target = int(when.timestamp() * 1000)
        rec: SnapshotRecord | None = self.resolve(None, branch=branch)
        while rec is not None:
            if rec.timestamp_ms <= target:
                return rec
            try:
                rec = None if rec.parent_id is None else self.log.read(rec.parent_id)
            except SnapshotNotFoundError:
                rec = None  # older history was expired
        raise SnapshotNotFoundError(
            f"Dataset '{self.name}' has no snapshot at or before {when.isoformat()} on "
            f"branch {branch!r}; it was created later."
        )

    # --- states ------------------------------------------------------------------------

    def state(self, record: SnapshotRecord) -> TableState:
        """Live files of a snapshot: nearest checkpoint plus the deltas after it."""
        try:
            return self._state(record)
        except (SnapshotNotFoundError, FormatError):
            # Snapshot expiry (maybe by another process) gave this snapshot a checkpoint and
            # removed the ancestors our cached records lead to: re-read from disk once.
            self.log.clear_cache()
            self._states.clear()
            return self._state(self.log.read(record.snapshot_id))

    def _state(self, record: SnapshotRecord) -> TableState:
        cached = self._states.get(record.snapshot_id)
        if cached is not None:
            self._states.move_to_end(record.snapshot_id)
            return cached
        chain: list[SnapshotRecord] = []
        rec = record
        base = TableState({})
        while True:
            hit = self._states.get(rec.snapshot_id)
            if hit is not None:
                base = hit
                break
            if rec.checkpoint is not None:
                base = self._read_manifest_state(rec.checkpoint)
                break
            chain.append(rec)
            if rec.parent_id is None:
                break
            rec = self.log.read(rec.parent_id)
        state = base
        for r in reversed(chain):
            if r.changes is not None:
                state = state.apply(table_to_entries(self._read_manifest(r.changes)))
        self._states[record.snapshot_id] = state
        while len(self._states) > 64:
            self._states.popitem(last=False)
        return state

    def removals(
        self, start: SnapshotRecord, end: SnapshotRecord, paths: set[str]
    ) -> dict[str, tuple[int, FileEntry]]:
        """For files live at ``start`` but not at ``end``: the snapshot that removed each and
        its entry just before, found by walking ``end``'s ancestors back to ``start``."""
        out: dict[str, tuple[int, FileEntry]] = {}
        rec: SnapshotRecord | None = end
        while rec is not None and rec.snapshot_id != start.snapshot_id and len(out) < len(paths):
            if rec.changes is not None:
                entries = table_to_entries(self._read_manifest(rec.changes))
                added = {e.path for a, e in entries if a == "add"}
                for action, entry in entries:
                    if action == "remove" and entry.path in paths and entry.path not in added:
                        out.setdefault(entry.path, (rec.snapshot_id, entry))
            try:
                rec = None if rec.parent_id is None else self.log.read(rec.parent_id)
            except SnapshotNotFoundError:
                rec = None
        return out

    def _read_manifest(self, rel: str) -> pa.Table:
        try:
            return decode_table(self.store.read_bytes(rel))
        except FileNotFoundError:
            raise FormatError(f"Manifest {rel} is missing; the dataset is damaged.") from None

    def _read_manifest_state(self, rel: str) -> TableState:
        return TableState({e.path: e for _a, e in table_to_entries(self._read_manifest(rel))})

    # --- commits -----------------------------------------------------------------------

    def commit(
        self,
        planner: Planner,
        *,
        branch: str = MAIN_BRANCH,
        expected_snapshot: int | None = None,
        replan: bool = True,
        max_attempts: int = 100,
        needs_state: bool = True,
    ) -> SnapshotRecord | None:
        """Plan and commit one operation with optimistic concurrency.

        Args:
            planner: Computes the change against a head snapshot.
            branch: The branch to commit to.
            expected_snapshot: Fail with CommitConflictError unless the branch head is this.
            replan: Re-run the planner when another commit moved the branch head (the
                operation is then applied to the new head, as if issued after it). When
                False, a moved head is a CommitConflictError.
            max_attempts: Give up with CommitConflictError after this many lost races.
            needs_state: Whether the planner looks at the head's files (an append does not,
                so it commits without reading any manifest).

        Returns:
            The new snapshot record, or None if the operation changed nothing.
        """
        plan: Plan | None = None
        planned_on: int | None = None
        writer: DataWriter | None = None
        for attempt in range(max_attempts):
            latest = self.log.latest()
            br = self.log.branch(branch)
            head = self.log.read(self.log.head(br, latest))
            if expected_snapshot is not None and head.snapshot_id != expected_snapshot:
                self._abandon(writer)
                raise CommitConflictError(
                    f"Dataset '{self.name}' branch {branch!r} moved to snapshot "
                    f"{head.snapshot_id} while this change expected {expected_snapshot}; "
                    "re-read and try again.",
                    expected=expected_snapshot,
                    found=head.snapshot_id,
                )
            if plan is None or planned_on != head.snapshot_id:
                if plan is not None and not replan:
                    self._abandon(writer)
                    raise CommitConflictError(
                        f"Dataset '{self.name}' branch {branch!r} moved from snapshot "
                        f"{planned_on} to {head.snapshot_id} during this change.",
                        expected=planned_on,
                        found=head.snapshot_id,
                    )
                self._abandon(writer)
                writer = self.writer(self.schema(head.schema_id))
                try:
                    state = self.state(head) if needs_state else _UNREAD
                    plan = planner(self, head, state, writer)
                except BaseException:
                    self._abandon(writer)
                    raise
                planned_on = head.snapshot_id
                if plan is None or plan.is_noop:
                    self._abandon(writer)
                    return None
            assert plan is not None and writer is not None
            try:
                record = self._try_commit(plan, latest, head, br, writer)
            except BaseException:
                # Interrupted (Ctrl-C, I/O error). If our record landed, its files are part of
                # the dataset now and must stay; otherwise they are garbage.
                if not self._landed(latest.snapshot_id + 1, writer):
                    self._abandon(writer)
                raise
            if record is not None:
                return record
            time.sleep(min(0.2, 0.002 * (2 ** min(attempt, 7))) * random.random())
        self._abandon(writer)
        raise CommitConflictError(
            f"Dataset '{self.name}': gave up after {max_attempts} attempts to commit while "
            "other writers kept committing; try again later.",
        )

    def _landed(self, snapshot_id: int, writer: DataWriter) -> bool:
        """Whether the record at ``snapshot_id`` is ours (it references our files)."""
        try:
            data = self.store.read_bytes(snapshot_path(snapshot_id))
        except OSError:
            return False
        record = SnapshotRecord.from_json(data, snapshot_path(snapshot_id))
        return record.changes is not None and record.changes == self._pending_changes

    @staticmethod
    def _abandon(writer: DataWriter | None) -> None:
        if writer is not None:
            writer.abandon()

    def _try_commit(
        self,
        plan: Plan,
        latest: SnapshotRecord,
        head: SnapshotRecord,
        branch: object,
        writer: DataWriter,
    ) -> SnapshotRecord | None:
        from spacesql.engine.log import Branch

        assert isinstance(branch, Branch)
        new_id = latest.snapshot_id + 1
        schema_id = plan.schema_id if plan.schema_id is not None else head.schema_id
        schema = self.schema(schema_id)
        columns = stats_columns(schema, self.info.record_fields)
        adds = [e.stamped(new_id) for e in plan.adds]
        changes = [("remove", e) for e in plan.removes] + [("add", e) for e in adds]
        added_paths = {e.path for e in adds}
        removed_paths = {e.path for e in plan.removes}
        # The head's state is only needed for a checkpoint (or if already in memory): a plain
        # append by a fresh handle reads no manifest at all.
        depth = head.depth + 1
        new_state: TableState | None = None
        if depth >= CHECKPOINT_INTERVAL or head.snapshot_id in self._states:
            new_state = self.state(head).apply(changes)  # type: ignore[arg-type]
        stem = f"{new_id}-{_uid()}"
        changes_rel = f"{MANIFEST_DIR}/{stem}.parquet"
        self._pending_changes = changes_rel
        self.store.write_new(
            changes_rel, encode_table(entries_to_table(changes, columns, with_action=True))
        )
        written = [changes_rel]
        checkpoint_rel = None
        if depth >= CHECKPOINT_INTERVAL:
            assert new_state is not None
            checkpoint_rel = f"{CHECKPOINT_DIR}/{stem}.parquet"
            self.store.write_new(
                checkpoint_rel,
                encode_table(
                    entries_to_table(list(new_state.files.values()), columns, with_action=False)
                ),
            )
            written.append(checkpoint_rel)
            depth = 0
        for rel in written:
            self.store.sync_file(rel)
        record = SnapshotRecord(
            snapshot_id=new_id,
            parent_id=head.snapshot_id,
            branch=branch.name,
            timestamp_ms=max(now_ms(), latest.timestamp_ms),
            operation=plan.operation,
            schema_id=schema_id,
            summary=Summary(
                added_rows=plan.added_rows,
                deleted_rows=plan.deleted_rows,
                added_files=len(added_paths - removed_paths),
                removed_files=len(removed_paths - added_paths),
                total_rows=head.summary.total_rows + plan.added_rows - plan.deleted_rows,
                total_files=head.summary.total_files
                + len(added_paths - removed_paths)
                - len(removed_paths - added_paths),
            ),
            changes=changes_rel,
            checkpoint=checkpoint_rel,
            depth=depth,
            heads=self.log.next_heads(latest, branch, new_id),
            properties=dict(plan.properties),
        )
        if self.log.try_commit(record):
            if new_state is not None:
                self._states[new_id] = new_state
            writer.written.clear()
            return record
        for rel in written:
            self.store.delete(rel)
        return None


#: Given to planners that declared they do not need the head's state.
_UNREAD = TableState({})


def _uid() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


def _schema_json(schema: pa.Schema) -> bytes:
    from spacesql.engine.format import dumps

    return dumps(encode_schema(schema))
