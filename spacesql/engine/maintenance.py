"""Maintenance: compaction, snapshot expiry and removal of unreferenced files.

* ``compact`` rewrites small files (and files with many deleted rows) into fewer files in one
  commit. Record fields keep pointing at their ArrayRecord files, so records are not copied.
  Rows are unchanged, so diffs across a compaction are empty.
* ``expire_snapshots`` forgets old snapshots that no tag or branch needs. A kept snapshot
  whose delta chain runs through an expired one first gets a checkpoint of its own.
* ``remove_orphan_files`` deletes files no remaining snapshot references (data of expired
  snapshots, leftovers of failed or killed commits), only when older than a grace period so
  an in-flight commit's files are never touched.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.dataset as pads

from spacesql.engine.files import DataWriter, read_deletes
from spacesql.engine.format import (
    CHECKPOINT_DIR,
    DATA_DIR,
    DELETE_DIR,
    MANIFEST_DIR,
    SnapshotRecord,
    snapshot_path,
)
from spacesql.engine.manifest import (
    FileEntry,
    TableState,
    encode_table,
    entries_to_table,
    stats_columns,
    table_to_entries,
)
from spacesql.engine.table import Plan, Table
from spacesql.errors import SchemaError, SnapshotNotFoundError

__all__ = ["CompactOptions", "compact", "expire_snapshots", "remove_orphan_files"]


@dataclass(frozen=True)
class CompactOptions:
    """How compaction picks and sizes files.

    Attributes:
        target_rows: Rows per output file.
        small_fraction: A file with fewer live rows than this fraction of ``target_rows`` is
            small and gets merged.
        deleted_fraction: A file with at least this fraction of rows deleted is rewritten.
    """

    target_rows: int = 1024 * 1024
    small_fraction: float = 0.5
    deleted_fraction: float = 0.2


def _candidates(state: TableState, options: CompactOptions) -> list[list[FileEntry]]:
    groups: list[list[FileEntry]] = []
    current: list[FileEntry] = []
    rows = 0
    for e in state.files.values():
        small = e.live_rows < options.target_rows * options.small_fraction
        holey = e.num_rows and e.deleted_rows / e.num_rows >= options.deleted_fraction
        if not (small or holey):
            continue
        if current and rows + e.live_rows > options.target_rows:
            groups.append(current)
            current, rows = [], 0
        current.append(e)
        rows += e.live_rows
    if current:
        groups.append(current)
    return [g for g in groups if len(g) > 1 or g[0].deleted_rows > 0]


def compact(table: Table, *, branch: str, options: CompactOptions) -> SnapshotRecord | None:
    """Rewrite small and hole-ridden files of the branch head in one commit."""

    def planner(t: Table, head: SnapshotRecord, state: TableState, writer: DataWriter) -> Plan:
        plan = Plan("compact")
        schema = t.schema(head.schema_id)
        for group in _candidates(state, options):
            parts = []
            for e in group:
                data = pads.dataset(
                    t.store.abs(e.path), schema=writer.physical, format="parquet"
                ).to_table()
                if e.deletion_file is not None:
                    mask = read_deletes(t.store, e).live_mask(e.num_rows)
                    data = data.filter(pa.array(mask))
                parts.append(data)
            merged = pa.concat_tables(parts)
            plan.removes.extend(group)
            if merged.num_rows == 0:
                continue  # every row was deleted: the files just leave the state
            stats_source = merged.drop_columns(list(t.info.record_fields))
            records = tuple(sorted({r for e in group for r in e.record_files}))
            entry = writer.write_physical(merged, record_files=records, stats_source=stats_source)
            plan.adds.append(entry)
        del schema
        return plan

    return table.commit(planner, branch=branch)


def _alive(table: Table, snapshot_id: int) -> bool:
    try:
        table.log.read(snapshot_id)
    except SnapshotNotFoundError:
        return False
    return True


def _needs_chain(table: Table, rec: SnapshotRecord, expired: set[int]) -> bool:
    r = rec
    while r.checkpoint is None and r.parent_id is not None:
        if r.parent_id in expired:
            return True
        r = table.log.read(r.parent_id)
    return False


def expire_snapshots(table: Table, *, older_than: dt.datetime | None, keep_last: int) -> list[int]:
    """Forget snapshots older than ``older_than`` except the newest ``keep_last`` ones, tagged
    snapshots and branch heads. Returns the expired ids."""
    if keep_last < 1:
        raise SchemaError(f"keep_last must be at least 1, got {keep_last}.")
    latest = table.log.latest()
    ids = [i for i in table.log.list_ids() if i <= latest.snapshot_id and _alive(table, i)]
    cutoff = None if older_than is None else int(older_than.timestamp() * 1000)
    keep = set(ids[-keep_last:]) | set(table.log.tags().values())
    keep |= {table.log.head(b, latest) for b in table.log.branches().values()}
    records = {i: table.log.read(i) for i in ids}
    if cutoff is not None:
        keep |= {i for i, r in records.items() if r.timestamp_ms >= cutoff}
    expired = {i for i in ids if i not in keep}
    if not expired:
        return []
    for i in sorted(keep):
        rec = records.get(i)
        if rec is not None and _needs_chain(table, rec, expired):
            _checkpoint_in_place(table, rec)
    for i in sorted(expired):
        table.log.expire(i)
    return sorted(expired)


def _checkpoint_in_place(table: Table, rec: SnapshotRecord) -> None:
    """Give a snapshot its own checkpoint so it no longer needs its ancestors."""
    state = table.state(rec)
    columns = stats_columns(table.schema(rec.schema_id), table.info.record_fields)
    rel = f"{CHECKPOINT_DIR}/{rec.snapshot_id}-expire-{int(time.time() * 1e6)}.parquet"
    table.store.write_new(
        rel, encode_table(entries_to_table(list(state.files.values()), columns, with_action=False))
    )
    table.store.sync_file(rel)
    table.store.replace(
        snapshot_path(rec.snapshot_id), replace(rec, checkpoint=rel, depth=0).to_json()
    )


def referenced_files(table: Table) -> set[str]:
    """Every file some remaining snapshot needs (conservative: all deltas' entries)."""
    refs: set[str] = set()
    for i in table.log.list_ids():
        try:
            rec = table.log.read(i)
        except SnapshotNotFoundError:
            continue
        for rel in (rec.changes, rec.checkpoint):
            if rel is None:
                continue
            refs.add(rel)
            for _action, e in table_to_entries(table._read_manifest(rel)):
                refs.add(e.path)
                refs.update(e.record_files)
                if e.deletion_file:
                    refs.add(e.deletion_file)
    return refs


def remove_orphan_files(table: Table, *, older_than: dt.timedelta) -> list[str]:
    """Delete unreferenced files older than the grace period; returns their paths."""
    refs = referenced_files(table)
    cutoff = time.time() - older_than.total_seconds()
    removed = []
    candidates = [
        *(
            (rel, m)
            for top in (DATA_DIR, DELETE_DIR, MANIFEST_DIR, CHECKPOINT_DIR)
            for rel, m in table.store.walk_files(top)
            if rel not in refs
        ),
        # temporary files of interrupted atomic writes
        *(
            (rel, m)
            for top in ("metadata", "refs")
            for rel, m in table.store.walk_files(top)
            if rel.endswith(".tmp")
        ),
    ]
    for rel, mtime in candidates:
        if mtime <= cutoff:
            table.store.delete(rel)
            removed.append(rel)
    return sorted(removed)
