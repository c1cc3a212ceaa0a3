"""Applying Label Studio webhook events to a tasks table, idempotently, in one commit.

A batch of events becomes one commit of the tasks table: the rows of the tasks the events
touch are read, merged in memory and written back (rows that come out identical are not
written). The rules make replays and reordering harmless:

* an annotation is replaced only by a version whose ``updated_at`` is not older (last writer
  wins); task-level fields likewise by the task's ``updated_at``;
* deletions leave tombstones (table ``<tasks>_deleted``: kind, id, project, time), so an
  older event arriving after the delete does not bring the annotation or task back; a task id
  re-used by Label Studio for a task created after the delete is a new task.

Webhook tasks carry no predictions or drafts: those of an existing row are kept.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from spacesql.catalog.duckdb import FILE_COLUMN, POSITION_COLUMN, file_positions
from spacesql.engine.rewrites import RewriteRows
from spacesql.errors import CommitConflictError, SchemaError
from spacesql.integrations.labelstudio.load import read_export
from spacesql.integrations.labelstudio.normalize import parse_timestamp
from spacesql.integrations.labelstudio.receiver import Event
from spacesql.integrations.labelstudio.schema import SCHEMA
from spacesql.session.connection import Connection

__all__ = ["TOMBSTONES", "SyncSummary", "apply_events", "ensure_tables", "tombstone_table"]

#: Schema of the tombstone table.
TOMBSTONES = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # "task", "annotation" or "project"
        pa.field("id", pa.int64(), nullable=False),
        ("project", pa.int64()),
        ("deleted_at", pa.timestamp("us", tz="UTC")),
    ]
)
#: Keys of webhook task payloads that exports do not have (dropped, so a webhook row equals
#: the exported one).
_WEBHOOK_ONLY = ("is_labeled", "overlap", "precomputed_agreement", "comment_authors")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def tombstone_table(table: str) -> str:
    return f"{table}_deleted"


def ensure_tables(con: Connection, table: str) -> None:
    """Create the tasks table (key ``project, id``) and its tombstones if missing."""
    if table not in con.catalog:
        con.catalog.create(table, SCHEMA, primary_keys=["project", "id"])
    else:
        schema = con.dataset(table).schema
        missing = [f.name for f in SCHEMA if f.name not in schema.names]
        if missing:
            raise SchemaError(
                f"Table '{table}' is not a Label Studio tasks table (no columns {missing}); "
                "pick another --table."
            )
    name = tombstone_table(table)
    if name not in con.catalog:
        con.catalog.create(name, TOMBSTONES, primary_keys=["kind", "id"])


@dataclass
class SyncSummary:
    """What one batch changed."""

    events: int = 0
    upserted: int = 0
    deleted: int = 0
    unchanged: int = 0
    ignored: int = 0
    snapshot_id: int | None = None


@dataclass
class _Pending:
    task: dict[str, Any] | None = None
    annotations: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Annotations of this batch deleted later in the same batch.
    dropped: set[int] = field(default_factory=set)


def _ts(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    parsed = parse_timestamp(value) if value is not None else None
    return parsed if parsed is not None else _EPOCH


def _when(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


def _task_key(task: Mapping[str, Any], project: int | None) -> tuple[int, int]:
    p = task.get("project", project)
    if isinstance(p, dict):
        p = p.get("id")
    return (int(p) if isinstance(p, int) else int(project or 0), int(task["id"]))


def _newer(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    """Whether ``b`` may replace ``a`` (last writer wins by updated_at; ties: the later)."""
    return a is None or _ts(b.get("updated_at")) >= _ts(a.get("updated_at"))


def apply_events(con: Connection, table: str, events: Sequence[Event]) -> SyncSummary:
    """Apply a batch of webhook events to ``table`` as one commit (idempotent)."""
    ensure_tables(con, table)
    summary = SyncSummary(events=len(events))
    pending: dict[tuple[int, int], _Pending] = {}
    ann_deleted: dict[int, dt.datetime] = {}
    task_deleted: dict[int, tuple[int | None, dt.datetime]] = {}
    project_deleted: dict[int, dt.datetime] = {}
    for event in sorted(events, key=lambda e: e.seq):
        when = _when(event.received_at)
        body = event.body
        if event.action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"):
            anns = (
                body["annotation"] if isinstance(body["annotation"], list) else [body["annotation"]]
            )
            tasks = body["task"] if isinstance(body["task"], list) else [body["task"]]
            by_id = {int(t["id"]): t for t in tasks}
            for ann in anns:
                tid = ann.get("task")
                task = by_id.get(tid if isinstance(tid, int) else -1) or (
                    tasks[0] if len(tasks) == 1 else None
                )
                if task is None:
                    summary.ignored += 1
                    continue
                key = _task_key(task, event.project)
                slot = pending.setdefault(key, _Pending())
                if _newer(slot.task, task):
                    slot.task = task
                aid = int(ann["id"])
                if aid in ann_deleted and ann_deleted[aid] >= _ts(ann.get("updated_at")):
                    summary.ignored += 1
                    continue
                if _newer(slot.annotations.get(aid), ann):
                    slot.annotations[aid] = ann
        elif event.action == "TASKS_CREATED":
            for task in body["tasks"]:
                key = _task_key(task, event.project)
                slot = pending.setdefault(key, _Pending())
                if _newer(slot.task, task):
                    slot.task = task
        elif event.action == "ANNOTATIONS_DELETED":
            for ann in body["annotations"]:
                aid = int(ann["id"])
                ann_deleted[aid] = when
                for slot in pending.values():
                    if slot.annotations.pop(aid, None) is not None:
                        slot.dropped.add(aid)
        elif event.action == "TASKS_DELETED":
            for task in body["tasks"]:
                tid = int(task["id"])
                task_deleted[tid] = (event.project, when)
                for key in [k for k in pending if k[1] == tid]:
                    if event.project is None or key[0] == event.project:
                        del pending[key]
        elif event.action == "PROJECT_DELETED":
            assert event.project is not None
            project_deleted[event.project] = when
            for key in [k for k in pending if k[0] == event.project]:
                del pending[key]
    _write_tombstones(con, table, ann_deleted, task_deleted, project_deleted)
    stones = _read_tombstones(con, table, pending)
    for key in list(pending):
        slot = pending[key]
        task_stone = stones.get(("task", key[1]))
        # a task tombstone counts in its own project (ids are per instance, but a table may
        # hold several instances' projects); one without a project (delete-all) everywhere
        gone = task_stone[0] if task_stone is not None and task_stone[1] in (None, key[0]) else None
        project_stone = stones.get(("project", key[0]))
        gone_project = project_stone[0] if project_stone is not None else None
        created = _ts(slot.task.get("created_at")) if slot.task else None
        for stone_at in (gone, gone_project):
            if stone_at is not None and (created is None or created <= stone_at):
                del pending[key]
                summary.ignored += 1
                break
        else:
            for aid in list(slot.annotations):
                found = stones.get(("annotation", aid))
                stone = found[0] if found is not None else None
                if stone is not None and stone >= _ts(slot.annotations[aid].get("updated_at")):
                    del slot.annotations[aid]
                    summary.ignored += 1
    for _attempt in range(20):
        try:
            _commit(con, table, pending, ann_deleted, task_deleted, project_deleted, summary)
            return summary
        except CommitConflictError:
            continue
    raise CommitConflictError(  # pragma: no cover - 20 lost races in a row
        f"Table '{table}' kept changing while webhook events were applied; they will be retried."
    )


def _write_tombstones(
    con: Connection,
    table: str,
    ann_deleted: Mapping[int, dt.datetime],
    task_deleted: Mapping[int, tuple[int | None, dt.datetime]],
    project_deleted: Mapping[int, dt.datetime],
) -> None:
    rows = (
        [("annotation", aid, None, when) for aid, when in ann_deleted.items()]
        + [("task", tid, p, when) for tid, (p, when) in task_deleted.items()]
        + [("project", pid, pid, when) for pid, when in project_deleted.items()]
    )
    if not rows:
        return
    name = tombstone_table(table)
    existing = _query(
        con,
        f'SELECT kind, id, deleted_at FROM "{name}"',
        {},
    )
    known = {
        (k, i): w
        for k, i, w in zip(
            existing.column("kind").to_pylist(),
            existing.column("id").to_pylist(),
            existing.column("deleted_at").to_pylist(),
            strict=True,
        )
    }
    # a replayed delete is not news: only new tombstones or later deletions are written
    rows = [r for r in rows if (r[0], r[1]) not in known or known[(r[0], r[1])] < r[3]]
    if not rows:
        return
    data = pa.table(
        {
            "kind": [r[0] for r in rows],
            "id": pa.array([r[1] for r in rows], pa.int64()),
            "project": pa.array([r[2] for r in rows], pa.int64()),
            "deleted_at": pa.array([r[3] for r in rows], pa.timestamp("us", tz="UTC")),
        },
        schema=TOMBSTONES,
    )
    con.dataset(name).local().upsert(data)


def _read_tombstones(
    con: Connection, table: str, pending: Mapping[tuple[int, int], _Pending]
) -> dict[tuple[str, int], tuple[dt.datetime, int | None]]:
    if not pending:
        return {}
    wanted = pa.table(
        {
            "kind": ["task"] * len(pending)
            + ["project"] * len(pending)
            + ["annotation"] * sum(len(s.annotations) for s in pending.values()),
            "id": pa.array(
                [k[1] for k in pending]
                + [k[0] for k in pending]
                + [a for s in pending.values() for a in s.annotations],
                pa.int64(),
            ),
        }
    )
    found = _query(
        con,
        f'SELECT t.kind, t.id, t.deleted_at, t.project FROM "{tombstone_table(table)}" AS t '
        "SEMI JOIN __spacesql_wanted AS w ON t.kind = w.kind AND t.id = w.id",
        {"__spacesql_wanted": wanted},
    )
    return {
        (k, i): (w, p)
        for k, i, w, p in zip(
            found.column("kind").to_pylist(),
            found.column("id").to_pylist(),
            found.column("deleted_at").to_pylist(),
            found.column("project").to_pylist(),
            strict=True,
        )
    }


def _query(
    con: Connection, sql: str, tables: Mapping[str, pa.Table], params: list[Any] | None = None
) -> pa.Table:
    duck = con.duckdb
    for name, t in tables.items():
        duck.register(name, t)
    try:
        rel = con.sql(sql, params=params)
        assert rel is not None
        table: pa.Table = rel.to_arrow_table()
        return table
    finally:
        for name in tables:
            duck.unregister(name)


def _commit(
    con: Connection,
    table: str,
    pending: Mapping[tuple[int, int], _Pending],
    ann_deleted: Mapping[int, dt.datetime],
    task_deleted: Mapping[int, tuple[int | None, dt.datetime]],
    project_deleted: Mapping[int, dt.datetime],
    summary: SyncSummary,
) -> None:
    ds = con.dataset(table)
    head = ds.snapshot()
    view = f"__spacesql_ls_{table}"
    con.register_snapshot(view, table, head.snapshot_id, positions=True)
    try:
        # tasks holding deleted annotations: from the index where it knows them; the rest
        # are searched in every row's annotations
        index = _annotation_index(con, table, ds.table.info.uuid) if ann_deleted else {}
        owners = {index[a] for a in ann_deleted if a in index}
        unknown = [a for a in ann_deleted if a not in index]
        fetch = list(dict.fromkeys([*pending, *owners]))
        keys = pa.table(
            {
                "project": pa.array([k[0] for k in fetch], pa.int64()),
                "id": pa.array([k[1] for k in fetch], pa.int64()),
            }
        )
        dead_tasks = pa.table(
            {
                "project": pa.array([p for p, _ in task_deleted.values()], pa.int64()),
                "id": pa.array(list(task_deleted), pa.int64()),
            }
        )
        params = {
            "__spacesql_keys": keys,
            "__spacesql_dead": dead_tasks,
            "__spacesql_ann": pa.table({"id": pa.array(unknown, pa.int64())}),
            "__spacesql_projects": pa.table({"id": pa.array(list(project_deleted), pa.int64())}),
        }
        # only the conditions this batch needs (fixed SQL, data in registered tables): the
        # annotation-id test reads every row's annotations, so it runs only for deletions
        conditions = []
        if fetch:
            conditions.append(
                "EXISTS (SELECT 1 FROM __spacesql_keys AS k "
                "WHERE k.project = t.project AND k.id = t.id)"
            )
        if task_deleted:
            conditions.append(
                "EXISTS (SELECT 1 FROM __spacesql_dead AS d WHERE d.id = t.id AND "
                "(d.project IS NULL OR d.project = t.project))"
            )
        if project_deleted:
            conditions.append("t.project IN (SELECT id FROM __spacesql_projects)")
        if unknown:
            conditions.append(
                "list_has_any(list_transform(t.annotations, lambda a: a.id),"
                " (SELECT list(id) FROM __spacesql_ann))"
            )
        if fetch and len(conditions) == 1:
            text = (
                f'SELECT t.* FROM "{view}" AS t SEMI JOIN __spacesql_keys AS k '
                "ON k.project = t.project AND k.id = t.id"
            )
        else:
            text = f'SELECT * FROM "{view}" AS t WHERE ' + " OR ".join(conditions or ["false"])
        found = _query(con, text, params)
    finally:
        con.unregister(view)
    current = {
        (r["project"], r["id"]): r
        for r in found.drop_columns([FILE_COLUMN, POSITION_COLUMN]).to_pylist()
    }
    where = {
        (p, i): (f, pos)
        for p, i, f, pos in zip(
            found.column("project").to_pylist(),
            found.column("id").to_pylist(),
            found.column(FILE_COLUMN).to_pylist(),
            found.column(POSITION_COLUMN).to_pylist(),
            strict=True,
        )
    }
    fresh = _normalize(pending)
    out: list[dict[str, Any]] = []
    remove: list[tuple[int, int]] = []
    upserted = deleted = unchanged = 0
    for key, row in current.items():
        project, tid = key
        dead = task_deleted.get(tid)
        if project in project_deleted or (
            dead is not None and (dead[0] is None or dead[0] == project)
        ):
            remove.append(key)
            if key in fresh:  # deleted, then a new task re-used its id (in this batch)
                out.append(_merge(None, pending[key], fresh[key], ann_deleted))
                upserted += 1
            else:
                deleted += 1
            continue
        merged = _merge(row, pending.get(key), fresh.get(key), ann_deleted)
        if merged == row:
            unchanged += 1
            continue
        remove.append(key)
        out.append(merged)
        upserted += 1
    for key, row in fresh.items():
        if key not in current:
            out.append(_merge(None, pending[key], row, ann_deleted))
            upserted += 1
    positions = file_positions(ds.location, (where[key] for key in remove))
    data = pa.Table.from_pylist(out, schema=SCHEMA) if out else None
    if positions or data is not None:
        op = RewriteRows(
            positions=positions,
            data=data,
            operation="labelstudio",
            properties={
                "labelstudio.events": str(summary.events),
                "labelstudio.written": str(upserted),
                "labelstudio.deleted": str(deleted),
            },
        )
        result = ds.local().commit(op, expected_snapshot=head.snapshot_id)
        summary.snapshot_id = result.snapshot_id
        known = _INDEX.get((str(ds.location), ds.table.info.uuid))
        if known is not None:
            for aid in ann_deleted:
                known.pop(aid, None)
            for row in out:
                for ann in row["annotations"] or []:
                    known[ann["id"]] = (row["project"], row["id"])
    summary.upserted, summary.deleted, summary.unchanged = upserted, deleted, unchanged


#: Per tasks table (location, uuid): annotation id -> (project, task id), so that deleting an
#: annotation (whose event carries only its id) does not read every row's annotations. Built
#: on first need, kept up to date by this process's commits; ids it does not know (written by
#: another process) are searched in the table.
_INDEX: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}


def _annotation_index(con: Connection, table: str, uuid: str) -> dict[int, tuple[int, int]]:
    key = (str(con.dataset(table).location), uuid)
    index = _INDEX.get(key)
    if index is None:
        found = _query(
            con,
            "SELECT project, id, list_transform(annotations, lambda a: a.id) AS ids "
            f'FROM "{table}"',
            {},
        )
        index = {}
        for project, tid, ids in zip(
            found.column("project").to_pylist(),
            found.column("id").to_pylist(),
            found.column("ids").to_pylist(),
            strict=True,
        ):
            for aid in ids or []:
                index[aid] = (project, tid)
        _INDEX[key] = index
    return index


def _normalize(
    pending: Mapping[tuple[int, int], _Pending],
) -> dict[tuple[int, int], dict[str, Any]]:
    """Pending task payloads and annotations as rows of the schema (through the export
    reader, so webhook rows are typed exactly as imported ones)."""
    raw = []
    for (project, tid), slot in pending.items():
        task = dict(slot.task) if slot.task else {"id": tid, "data": {}}
        for k in _WEBHOOK_ONLY:
            task.pop(k, None)
        task["id"] = tid
        task["project"] = project
        task["annotations"] = list(slot.annotations.values())
        task.setdefault("predictions", [])
        task.setdefault("drafts", [])
        raw.append(task)
    if not raw:
        return {}
    table = read_export(json.dumps(raw).encode())
    return {(r["project"], r["id"]): r for r in table.to_pylist()}


def _merge(
    row: dict[str, Any] | None,
    slot: _Pending | None,
    fresh: dict[str, Any] | None,
    ann_deleted: Mapping[int, dt.datetime],
) -> dict[str, Any]:
    """The task's new row: stored row + strictly newer task fields + strictly newer
    annotations - deleted ones (a replayed event changes nothing)."""
    relation = "new" if row is None else _relation(row, slot, fresh)
    if relation == "older":  # a late event about an earlier task that had this id
        assert row is not None
        return row
    if row is None or relation == "other":
        # a new task, or Label Studio re-used the id of a task deleted unseen (delete-all,
        # or while the receiver was down): nothing of the stored row belongs to it
        assert fresh is not None
        out = dict(fresh)
        out["source_format"] = "WEBHOOK"
        if slot is not None and slot.dropped:
            _count(out)
        return out
    out = dict(row)
    task_is_newer = fresh is not None and _ts(fresh.get("updated_at")) > _ts(row.get("updated_at"))
    if slot is not None and slot.task is not None and fresh is not None and task_is_newer:
        for k, v in fresh.items():
            if k not in _KEPT:
                out[k] = v
    stored = row.get("annotations") or []
    anns = {a["id"]: a for a in stored if a["id"] not in ann_deleted}
    for ann in (fresh or {}).get("annotations") or []:
        old = anns.get(ann["id"])
        if old is None or _ts(ann.get("updated_at")) > _ts(old.get("updated_at")):
            anns[ann["id"]] = ann
    out["annotations"] = [anns[k] for k in sorted(anns)]
    if len(anns) < len(stored) or (slot is not None and slot.dropped):
        _count(out)  # deletions carry only ids: keep the counters true to what remains
    return row if out == row else out


#: Row columns a webhook task does not carry: kept from the stored row.
_KEPT = frozenset(
    {"annotations", "predictions", "prediction_ids", "drafts", "draft_ids", "source_format"}
)


def _count(row: dict[str, Any]) -> None:
    cancelled = sum(1 for a in row["annotations"] or [] if a.get("was_cancelled"))
    row["cancelled_annotations"] = cancelled
    row["total_annotations"] = len(row["annotations"] or []) - cancelled


def _relation(
    row: Mapping[str, Any], slot: _Pending | None, fresh: Mapping[str, Any] | None
) -> str:
    """How an event's task relates to the stored row with its id: ``same`` task, an
    ``other`` (newer) task that re-uses the id, or an ``older`` one (a late event)."""
    if slot is None or slot.task is None or fresh is None:
        return "same"
    stored, incoming = row.get("created_at"), fresh.get("created_at")
    if stored is None or incoming is None or stored == incoming:
        return "same"
    return "other" if _ts(incoming) > _ts(stored) else "older"


def reconcile(con: Connection, table: str, export: pa.Table, *, project: int) -> SyncSummary:
    """Make the rows of ``project`` equal an export of it: what webhooks never send (inline
    imported annotations, drafts, predictions, delete-all, deliveries lost while the receiver
    was down) is caught here. Tasks the export lacks are deleted (the export must hold every
    task: Label Studio's ``download_all_tasks=true``); rows that are equal are not written."""
    ensure_tables(con, table)
    others = [p for p in set(export.column("project").to_pylist()) if p != project]
    if others:
        raise SchemaError(
            f"The export holds tasks of project(s) {sorted(map(str, others))}, not only of "
            f"project {project}; export that one project."
        )
    summary = SyncSummary(events=export.num_rows)
    wanted = {(r["project"], r["id"]): r for r in export.to_pylist()}
    for _attempt in range(20):
        ds = con.dataset(table)
        head = ds.snapshot()
        view = f"__spacesql_ls_{table}"
        con.register_snapshot(view, table, head.snapshot_id, positions=True)
        try:
            found = _query(
                con,
                f'SELECT * FROM "{view}" WHERE project = ?',
                {},
                [project],
            )
        finally:
            con.unregister(view)
            rows = found.drop_columns([FILE_COLUMN, POSITION_COLUMN]).to_pylist()
        files = found.column(FILE_COLUMN).to_pylist()
        positions = found.column(POSITION_COLUMN).to_pylist()
        remove: list[tuple[str, int]] = []
        out = []
        seen = set()
        counts = {"upserted": 0, "deleted": 0, "unchanged": 0}

        for row, f, pos in zip(rows, files, positions, strict=True):
            key = (row["project"], row["id"])
            seen.add(key)
            new = wanted.get(key)
            if new is not None and _same(new, row):
                counts["unchanged"] += 1
                continue
            remove.append((f, pos))
            if new is None:
                counts["deleted"] += 1
            else:
                out.append(new)
                counts["upserted"] += 1
        for key, new in wanted.items():
            if key not in seen:
                out.append(new)
                counts["upserted"] += 1
        if not remove and not out:
            summary.unchanged = counts["unchanged"]
            return summary
        op = RewriteRows(
            positions=file_positions(ds.location, remove),
            data=pa.Table.from_pylist(out, schema=SCHEMA) if out else None,
            operation="labelstudio_reconcile",
        )
        try:
            result = ds.local().commit(op, expected_snapshot=head.snapshot_id)
        except CommitConflictError:
            continue
        summary.snapshot_id = result.snapshot_id
        summary.upserted, summary.deleted = counts["upserted"], counts["deleted"]
        summary.unchanged = counts["unchanged"]
        return summary
    raise CommitConflictError(  # pragma: no cover
        f"Table '{table}' kept changing during the reconcile; run it again."
    )


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Rows equal but for where they came from."""
    return {k: v for k, v in a.items() if k != "source_format"} == {
        k: v for k, v in b.items() if k != "source_format"
    }
