"""Label Studio live sync: webhook payloads, applying events (idempotent, tombstones), the
HTTP receiver (auth, limits, batching, journal and crash recovery), reconcile from an export,
rows back to import JSON, and the ``spacesql labelstudio`` CLI.

Fixtures are real Label Studio 1.23.2 output in ../shared/labelstudio (``webhooks/scenario``:
49 deliveries of one scripted session to three receivers). No Label Studio server is needed:
the only network traffic is loopback HTTP to the receiver.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

import spacesql
from spacesql.errors import SchemaError
from spacesql.integrations.labelstudio.load import read_export
from spacesql.integrations.labelstudio.receiver import (
    Event,
    PayloadError,
    Receiver,
    parse_payload,
)
from spacesql.integrations.labelstudio.sync import (
    apply_events,
    ensure_tables,
    reconcile,
    tombstone_table,
)
from spacesql.integrations.labelstudio.tasks import to_tasks
from spacesql.session.connection import Connection

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "labelstudio"
WEBHOOKS = FIXTURES / "webhooks"
if not (WEBHOOKS / "index.json").is_file():
    raise RuntimeError(
        f"Label Studio fixtures are missing: expected {WEBHOOKS / 'index.json'} (the shared "
        "fixtures are cloned next to the repository, as ../shared/labelstudio)."
    )

INDEX = json.loads((WEBHOOKS / "index.json").read_text(encoding="utf-8"))
#: Every scenario delivery in the order Label Studio sent them (index.json's ``seq``).
SCENARIO: list[dict[str, Any]] = sorted(
    (d for d in INDEX["deliveries"] if d["file"].startswith("scenario/")),
    key=lambda d: d["seq"],
)
BY_PROJECT_TYPE = sorted((WEBHOOKS / "by_project_type").glob("*.json"))
#: The JSON exports (every task with its annotations in Label Studio's own JSON).
JSON_EXPORTS = (
    "image_od/export_JSON.json",
    "image_od/snapshot_full.json",
    "text_cls/export_JSON.json",
    "text_cls/export_JSON_annotated_only.json",
    "text_cls/snapshot_full.json",
    "text_cls/cli_export_JSON.json",
    "ner/export_JSON.json",
    "target_storage_localfiles/task_61.json__FUTURE_SAVE_TASK_TO_STORAGE.json",
)
SECRET = "s3cret"
TABLE = "tasks"
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")


# --- helpers ---------------------------------------------------------------------------


def hook(delivery: dict[str, Any]) -> str:
    found = re.search(r"_(scope-org|hook-main|hook-nopayload)(?:__|\.json$)", delivery["file"])
    assert found, delivery["file"]
    return found.group(1)


def body(delivery: dict[str, Any]) -> bytes:
    return (WEBHOOKS / delivery["file"]).read_bytes()


def payload(delivery: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(body(delivery))
    return obj


def event(delivery: dict[str, Any]) -> Event | None:
    """The delivery as the receiver would have parsed it (at its real arrival time)."""
    return parse_payload(body(delivery), received_at=delivery["received_at_unix"])


def deliveries(*hooks: str, upto: int | None = None) -> list[dict[str, Any]]:
    return [d for d in SCENARIO if hook(d) in hooks and (upto is None or d["seq"] <= upto)]


def events(ds: Iterable[dict[str, Any]]) -> list[Event]:
    """Applicable events (payload-less and ignored actions dropped, as the receiver does)."""
    out = []
    for d in ds:
        e = event(d)
        if e is not None and (e.body or e.action == "PROJECT_DELETED"):
            out.append(e)
    return out


def listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def project_of(obj: dict[str, Any]) -> int | None:
    p = obj.get("project")
    return p.get("id") if isinstance(p, dict) else p


def expected_state(ds: Iterable[dict[str, Any]]) -> dict[tuple[int, int], Any]:
    """What the payloads themselves say is alive: {(project, task): (data, {annotation id:
    (updated_at, result, was_cancelled)})}, built with Label Studio's meaning of each action
    and newest ``updated_at`` per annotation."""
    tasks: dict[tuple[int, int], Any] = {}
    for d in ds:
        obj = payload(d)
        action = obj["action"]
        if len(obj) == 1:  # send_payload=false
            continue
        project = project_of(obj)
        if action == "TASKS_CREATED":
            for t in obj["tasks"]:
                tasks.setdefault((t["project"], t["id"]), (canon(t["data"]), {}))
        elif action in ANNOTATION_ACTIONS:
            for ann in listify(obj["annotation"]):
                key = (ann["project"], ann["task"])
                task = next(t for t in listify(obj["task"]) if t["id"] == ann["task"])
                _, anns = tasks.setdefault(key, (canon(task["data"]), {}))
                old = anns.get(ann["id"])
                if old is None or ts(ann["updated_at"]) >= old[0]:
                    anns[ann["id"]] = (
                        ts(ann["updated_at"]),
                        canon(ann["result"]),
                        ann["was_cancelled"],
                    )
        elif action == "ANNOTATIONS_DELETED":
            gone = {a["id"] for a in obj["annotations"]}
            for _, anns in tasks.values():
                for aid in gone:
                    anns.pop(aid, None)
        elif action == "TASKS_DELETED":
            gone = {t["id"] for t in obj["tasks"]}
            for key in [k for k in tasks if k[1] in gone and project in (None, k[0])]:
                del tasks[key]
        elif action == "PROJECT_DELETED":
            for key in [k for k in tasks if k[0] == project]:
                del tasks[key]
    return tasks


def rows(con: Connection, table: str = TABLE, where: str = "") -> list[dict[str, Any]]:
    rel = con.sql(f'SELECT * FROM "{table}" {where} ORDER BY project, id')
    assert rel is not None
    out: list[dict[str, Any]] = rel.to_arrow_table().to_pylist()
    return out


def state(con: Connection, table_rows: list[dict[str, Any]] | None = None) -> dict[Any, Any]:
    """The table (or rows of it) in the shape of :func:`expected_state`."""
    out = {}
    for r in rows(con) if table_rows is None else table_rows:
        anns = {
            a["id"]: (
                a["updated_at"],
                canon([json.loads(item["raw_json"]) for item in a["result"]]),
                a["was_cancelled"],
            )
            for a in r["annotations"] or []
        }
        out[(r["project"], r["id"])] = (canon(json.loads(r["data_json"])), anns)
    return out


def snapshot_id(con: Connection, table: str = TABLE) -> int:
    return int(con.dataset(table).snapshot().snapshot_id)


def new_catalog(path: Path) -> Connection:
    con = spacesql.connect(path)
    ensure_tables(con, TABLE)
    return con


def apply_each(con: Connection, evs: Iterable[Event]) -> None:
    for e in evs:
        apply_events(con, TABLE, [e])


def tasks_created(*tasks: dict[str, Any], project: int = 6, at: float) -> Event:
    return Event("TASKS_CREATED", project, {"tasks": list(tasks)}, at)


def task(tid: int, created_at: str, *, project: int = 6, text: str = "x") -> dict[str, Any]:
    return {
        "id": tid,
        "data": {"text": text},
        "meta": {},
        "project": project,
        "created_at": created_at,
        "updated_at": created_at,
    }


def epoch(text: str) -> float:
    return ts(text).timestamp()


# --- 1. parse_payload --------------------------------------------------------------------


def test_the_scenario_fixture_is_complete():
    assert len(SCENARIO) == 49
    assert [d["seq"] for d in SCENARIO] == list(range(1, 50))
    assert {hook(d) for d in SCENARIO} == {"scope-org", "hook-main", "hook-nopayload"}
    assert sorted(p.name for p in (WEBHOOKS / "scenario").glob("*.json")) == sorted(
        Path(d["file"]).name for d in SCENARIO
    )
    for d in SCENARIO:
        assert payload(d)["action"] == d["action"]


@pytest.mark.parametrize(
    "path",
    [d["file"] for d in SCENARIO] + [f"by_project_type/{p.name}" for p in BY_PROJECT_TYPE],
)
def test_every_fixture_webhook_parses(path):
    raw = (WEBHOOKS / path).read_bytes()
    obj = json.loads(raw)
    e = parse_payload(raw, received_at=123.0)
    if obj["action"] in ("PROJECT_CREATED", "PROJECT_UPDATED"):
        assert e is None
        return
    assert e is not None
    assert (e.action, e.received_at, e.seq) == (obj["action"], 123.0, 0)
    if len(obj) == 1:  # hook-nopayload: send_payload=false
        assert e.body == {}
        assert e.project is None
        return
    assert e.project == project_of(obj)
    assert "project" not in e.body
    assert set(e.body) == set(obj) - {"action", "project"}
    for key, value in e.body.items():
        assert value == obj[key]
    # the event survives the journal's JSON round trip
    assert Event.from_json(e.to_json()) == e


def test_payload_less_bodies_give_an_event_with_an_empty_body():
    for action in ("ANNOTATION_CREATED", "TASKS_DELETED", "ANNOTATIONS_DELETED"):
        e = parse_payload(json.dumps({"action": action}).encode())
        assert e is not None
        assert (e.action, e.body, e.project) == (action, {}, None)
    # unknown or project-only actions are acknowledged and ignored
    assert parse_payload(b'{"action": "LABEL_LINK_CREATED", "whatever": 1}') is None
    assert parse_payload(b'{"action": "PROJECT_UPDATED"}') is None


def _annotation_created() -> dict[str, Any]:
    return payload(next(d for d in SCENARIO if d["seq"] == 12))


def _without(key: str) -> bytes:
    obj = _annotation_created()
    del obj[key]
    return json.dumps(obj).encode()


def _with(path: Sequence[str], value: Any, *, action: str | None = None) -> bytes:
    obj = _annotation_created() if action is None else {"action": action, "project": {"id": 6}}
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(obj).encode()


MALFORMED: dict[str, tuple[bytes, str]] = {
    "not json": (b"<html>nope</html>", "not JSON"),
    "empty body": (b"", "not JSON"),
    "not utf-8": (b'{"action": "\xff\xfe"}', "UTF-8"),
    "json array": (b'[{"action": "ANNOTATION_CREATED"}]', "list"),
    "json string": (b'"ANNOTATION_CREATED"', "str"),
    "missing action": (b'{"annotation": {"id": 1}, "task": {"id": 1}}', "action"),
    "action not a string": (b'{"action": 5, "tasks": []}', "action"),
    "empty action": (b'{"action": "", "tasks": []}', "action"),
    "annotation missing": (_without("annotation"), "annotation"),
    "task missing": (_without("task"), "task"),
    "annotation not an object": (_with(["annotation"], [1, 2]), "annotation"),
    "annotation without id": (_with(["annotation"], {"result": []}), "annotation"),
    "task without id": (_with(["task"], {"data": {}}), "task"),
    "tasks not a list": (_with(["tasks"], {"id": 1}, action="TASKS_CREATED"), "tasks"),
    "tasks of non-objects": (_with(["tasks"], [1, 2], action="TASKS_CREATED"), "tasks"),
    "a task without id": (_with(["tasks"], [{"id": 1}, {}], action="TASKS_DELETED"), "tasks[1]"),
    "annotations not a list": (
        _with(["annotations"], "149", action="ANNOTATIONS_DELETED"),
        "annotations",
    ),
    "plural annotation not a list": (
        _with(["annotation"], {"id": 1}, action="ANNOTATIONS_CREATED"),
        "annotation",
    ),
    "project deleted without project id": (
        b'{"action": "PROJECT_DELETED", "project": {"title": "x"}}',
        "project",
    ),
    "project deleted with project not an object": (
        b'{"action": "PROJECT_DELETED", "project": 6, "x": 1}',
        "project",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_bodies_raise_payload_error_naming_the_field(case):
    raw, words = MALFORMED[case]
    with pytest.raises(PayloadError, match=re.escape(words)):
        parse_payload(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"action": "TASKS_DELETED", "tasks": [{"id": null}]}',
        b'{"action": "TASKS_DELETED", "tasks": [{"id": "abc"}]}',
        b'{"action": "ANNOTATIONS_DELETED", "annotations": [{"id": [1]}]}',
        b'{"action": "TASKS_CREATED", "tasks": [{"id": {"x": 1}}]}',
    ],
    ids=["null", "text", "list", "object"],
)
def test_ids_that_are_not_integers_are_rejected(raw):
    """An id Label Studio never sends must be a 400, not an accepted event that every commit
    then fails on (see test_a_poison_event_does_not_block_the_committer)."""
    with pytest.raises(PayloadError, match="id"):
        parse_payload(raw)


# --- 2. apply_events on the scenario ---------------------------------------------------


@pytest.fixture(scope="module")
def scope_org_run(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Any]:
    """The scope-org deliveries applied one by one: (rows, state, snapshot id) of the table
    after each delivery of the scenario (keyed by its seq; other hooks' seqs repeat the
    previous value)."""
    con = new_catalog(tmp_path_factory.mktemp("scope_org") / "catalog")
    after: dict[int, Any] = {}
    try:
        current = (rows(con), {}, snapshot_id(con))
        for d in SCENARIO:
            e = event(d) if hook(d) == "scope-org" else None
            if e is not None:
                summary = apply_events(con, TABLE, [e])
                assert summary.events == 1
                now = rows(con)
                current = (now, state(con, now), snapshot_id(con))
            after[d["seq"]] = current
    finally:
        con.close()
    return after


def test_scenario_event_by_event_matches_the_payloads(scope_org_run):
    """After every scope-org delivery the table holds exactly the tasks, data and annotations
    (newest version of each) the payloads so far describe."""
    for d in SCENARIO:
        assert scope_org_run[d["seq"]][1] == _alive(d["seq"]), d["file"]
    # every delivery that changes something made exactly one snapshot; the others none
    heads = [scope_org_run[d["seq"]][2] for d in SCENARIO]
    assert heads == sorted(heads)
    assert heads[-1] == len({s for s in heads if s > 0})


def _alive(seq: int) -> dict[tuple[int, int], Any]:
    return expected_state(deliveries("scope-org", upto=seq))


def test_scenario_checkpoints(scope_org_run):
    """Named moments of the scripted session, each checked against what the payloads say."""

    def tasks_at(seq: int) -> dict[int, list[int]]:
        return {r["id"]: sorted(a["id"] for a in r["annotations"]) for r in scope_org_run[seq][0]}

    created = [
        t["id"]
        for d in deliveries("scope-org")
        if d["action"] == "TASKS_CREATED"
        for t in payload(d)["tasks"]
    ]
    last_import = max(d["seq"] for d in deliveries("scope-org") if d["action"] == "TASKS_CREATED")
    assert sorted(tasks_at(last_import)) == sorted(created)
    assert all(not anns for anns in tasks_at(last_import).values())  # imports send no annots

    # PATCH then PUT of one annotation: one annotation, the PUT's result
    updates = [d for d in deliveries("scope-org") if d["action"] == "ANNOTATION_UPDATED"]
    final = payload(updates[-1])["annotation"]
    row = next(r for r in scope_org_run[updates[-1]["seq"]][0] if r["id"] == final["task"])
    assert [a["id"] for a in row["annotations"]] == [final["id"]]
    ann = row["annotations"][0]
    assert [json.loads(i["raw_json"]) for i in ann["result"]] == final["result"]
    assert ann["updated_at"] == ts(final["updated_at"])
    assert ann["lead_time"] == final["lead_time"]

    # the skip is stored as a cancelled annotation
    skip = next(
        d
        for d in deliveries("scope-org")
        if payload(d).get("annotation", {})
        and isinstance(payload(d)["annotation"], dict)
        and payload(d)["annotation"]["was_cancelled"]
    )
    skipped = payload(skip)["annotation"]
    assert tasks_at(skip["seq"])[skipped["task"]] == [skipped["id"]]

    # every ANNOTATIONS_DELETED removes exactly the listed ids, nothing else
    for d in deliveries("scope-org"):
        if d["action"] != "ANNOTATIONS_DELETED":
            continue
        gone = {a["id"] for a in payload(d)["annotations"]}
        before = {a for anns in tasks_at(d["seq"] - 1).values() for a in anns}
        after = {a for anns in tasks_at(d["seq"]).values() for a in anns}
        assert gone <= before
        assert after == before - gone

    # ANNOTATIONS_CREATED (predictions -> annotations): singular key holding lists
    bulk = next(d for d in deliveries("scope-org") if d["action"] == "ANNOTATIONS_CREATED")
    for a in payload(bulk)["annotation"]:
        assert a["id"] in tasks_at(bulk["seq"])[a["task"]]

    # TASKS_DELETED: the listed tasks and their annotations are gone; "delete all" (no
    # project in the payload) leaves no task of the project
    for d in deliveries("scope-org"):
        if d["action"] != "TASKS_DELETED":
            continue
        gone = {t["id"] for t in payload(d)["tasks"]}
        assert gone <= set(tasks_at(d["seq"] - 1))
        assert set(tasks_at(d["seq"])) == set(tasks_at(d["seq"] - 1)) - gone
    delete_all = next(
        d
        for d in deliveries("scope-org")
        if d["action"] == "TASKS_DELETED" and "project" not in payload(d)
    )
    assert tasks_at(delete_all["seq"]) == {}
    # the project is gone at the end: nothing of it is left
    assert scope_org_run[49][0] == [] and _alive(49) == {}
    # and the peak was real (the checks above were not vacuous)
    assert max(len(_alive(d["seq"])) for d in deliveries("scope-org")) == len(set(created))


CUTS = (
    33,  # before any task is deleted (bulk annotation delete done)
    46,  # before "delete all tasks"
    49,  # everything, ending with PROJECT_DELETED
)


def test_both_hooks_with_duplicates_give_the_same_rows(scope_org_run, tmp_path):
    """hook-main repeats every scope-org event (plus the 500 and slow deliveries); applying
    both, one delivery at a time, changes nothing compared with scope-org alone."""
    con = new_catalog(tmp_path / "catalog")
    try:
        for d in SCENARIO:
            apply_each(con, events([d]))
            if d["seq"] in CUTS:
                assert rows(con) == scope_org_run[d["seq"]][0], d["seq"]
                assert state(con) == _alive(d["seq"])
    finally:
        con.close()


@pytest.mark.parametrize("cut", CUTS)
def test_one_batch_equals_event_by_event(scope_org_run, tmp_path, cut):
    con = new_catalog(tmp_path / "catalog")
    try:
        evs = events(deliveries("scope-org", upto=cut))
        summary = apply_events(con, TABLE, evs)
        assert summary.events == len(evs)
        assert rows(con) == scope_org_run[cut][0]
        # with the duplicates of hook-main in the same batch: still the same
        con2 = new_catalog(tmp_path / "catalog2")
        try:
            apply_events(con2, TABLE, events(deliveries("scope-org", "hook-main", upto=cut)))
            assert rows(con2) == scope_org_run[cut][0]
        finally:
            con2.close()
    finally:
        con.close()


@pytest.mark.parametrize("cut", [46, 49])
def test_applying_the_sequence_twice_changes_nothing_the_second_time(tmp_path, cut):
    con = new_catalog(tmp_path / "catalog")
    try:
        evs = events(deliveries("scope-org", "hook-main", upto=cut))
        apply_events(con, TABLE, evs)
        before, head = rows(con), snapshot_id(con)
        for e in events(deliveries("scope-org", upto=cut)):  # replayed one by one
            summary = apply_events(con, TABLE, [e])
            assert summary.snapshot_id is None, e
            assert summary.upserted == summary.deleted == 0
        summary = apply_events(con, TABLE, evs)  # replayed as one batch
        assert (summary.snapshot_id, summary.upserted, summary.deleted) == (None, 0, 0)
        assert (rows(con), snapshot_id(con)) == (before, head)
    finally:
        con.close()


def test_replayed_deletes_write_no_tombstone_snapshot(tmp_path):
    """Replaying a delivery must write nothing at all: the tombstone table is a versioned
    dataset too, and an identical tombstone must not make a new snapshot of it."""
    con = new_catalog(tmp_path / "catalog")
    try:
        evs = events(deliveries("scope-org", upto=46))
        apply_events(con, TABLE, evs)
        stones = tombstone_table(TABLE)
        head = snapshot_id(con, stones)
        before = con.sql(f'SELECT * FROM "{stones}"').fetchall()
        deletes = [e for e in evs if e.action.endswith("_DELETED")]
        assert deletes
        apply_each(con, deletes)
        assert sorted(con.sql(f'SELECT * FROM "{stones}"').fetchall()) == sorted(before)
        assert snapshot_id(con, stones) == head
    finally:
        con.close()


def _annotation_versions() -> tuple[Event, list[Event]]:
    """The import of the annotated task and every version of its one annotation (created,
    PATCHed, PUT), all from scope-org."""
    updates = [d for d in deliveries("scope-org") if d["action"] == "ANNOTATION_UPDATED"]
    aid = payload(updates[0])["annotation"]["id"]
    versions = [
        d
        for d in deliveries("scope-org")
        if d["action"] in ANNOTATION_ACTIONS
        and isinstance(payload(d)["annotation"], dict)
        and payload(d)["annotation"]["id"] == aid
    ]
    assert len(versions) == 3  # created, PATCH, PUT
    assert len({canon(payload(d)["annotation"]["result"]) for d in versions}) == 3
    tid = payload(versions[0])["annotation"]["task"]
    imported = next(
        d
        for d in deliveries("scope-org")
        if d["action"] == "TASKS_CREATED" and tid in {t["id"] for t in payload(d)["tasks"]}
    )
    return events([imported])[0], events(versions)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)])
def test_shuffled_annotation_updates_last_writer_by_updated_at_wins(tmp_path, order):
    imported, versions = _annotation_versions()
    newest = max(versions, key=lambda e: ts(e.body["annotation"]["updated_at"]))
    newest_task = max((e.body["task"] for e in versions), key=lambda t: ts(t["updated_at"]))
    shuffled = [versions[i] for i in order]
    for mode in ("each", "batch"):
        con = new_catalog(tmp_path / mode)
        try:
            if mode == "each":
                apply_each(con, [imported, *shuffled])
            else:
                apply_events(con, TABLE, [imported, *shuffled])
            want = newest.body["annotation"]
            (row,) = [r for r in rows(con) if r["id"] == want["task"]]
            (ann,) = row["annotations"]
            assert ann["id"] == want["id"]
            assert ann["updated_at"] == ts(want["updated_at"])
            assert [json.loads(i["raw_json"]) for i in ann["result"]] == want["result"], mode
            assert row["updated_at"] == ts(newest_task["updated_at"])
            assert row["total_annotations"] == newest_task["total_annotations"]
        finally:
            con.close()


def test_replayed_annotation_created_after_delete_does_not_resurrect(tmp_path):
    scope = deliveries("scope-org")
    delete = next(d for d in scope if d["action"] == "ANNOTATIONS_DELETED")
    (gone,) = [a["id"] for a in payload(delete)["annotations"]]
    created = next(
        d
        for d in scope
        if d["action"] == "ANNOTATION_CREATED" and payload(d)["annotation"]["id"] == gone
    )
    imports = events(d for d in scope if d["action"] == "TASKS_CREATED")
    for mode in ("each", "batch"):
        con = new_catalog(tmp_path / mode)
        try:
            sequence = [*imports, *events([created, delete, created])]
            # and the late duplicate from the other hook, arriving after the delete
            sequence += events(
                d
                for d in deliveries("hook-main")
                if d["triggered_by_step"] == created["triggered_by_step"]
            )
            if mode == "each":
                apply_each(con, sequence)
                apply_events(con, TABLE, events([created]))  # much later, on its own
            else:
                apply_events(con, TABLE, sequence)
            alive = {a["id"] for r in rows(con) for a in r["annotations"]}
            assert gone not in alive, mode
            assert len(rows(con)) == len({t["id"] for e in imports for t in e.body["tasks"]})
        finally:
            con.close()


def test_tasks_deleted_removes_the_task_and_a_replayed_creation_does_not_bring_it_back(tmp_path):
    scope = deliveries("scope-org")
    delete = next(d for d in scope if d["action"] == "TASKS_DELETED")
    (tid,) = [t["id"] for t in payload(delete)["tasks"]]
    creation = next(
        d
        for d in scope
        if d["action"] == "TASKS_CREATED" and tid in {t["id"] for t in payload(d)["tasks"]}
    )
    annotation = next(
        d
        for d in scope
        if d["action"] == "ANNOTATION_CREATED" and payload(d)["annotation"]["task"] == tid
    )
    con = new_catalog(tmp_path / "catalog")
    try:
        apply_each(con, events([creation, annotation]))
        assert tid in {r["id"] for r in rows(con)}
        others = [r for r in rows(con) if r["id"] != tid]
        apply_each(con, events([delete]))
        assert [r["id"] for r in rows(con)] == [r["id"] for r in others]
        assert rows(con) == others
        # replays of the creation and of its annotation (older than the delete)
        apply_each(con, events([creation, annotation]))
        apply_events(con, TABLE, events([creation, annotation]))
        assert rows(con) == others
        # Label Studio re-uses the id for a task created after the delete: a new task
        reborn = task(tid, "2026-11-24T07:00:00Z", text="reborn")
        apply_events(con, TABLE, [tasks_created(reborn, at=epoch("2026-11-24T07:00:01Z"))])
        (row,) = [r for r in rows(con) if r["id"] == tid]
        assert json.loads(row["data_json"]) == {"text": "reborn"}
        assert row["annotations"] == []  # the old task's annotations stay dead
    finally:
        con.close()


def test_delete_then_newer_creation_of_the_same_id_in_one_batch(tmp_path):
    """One batch must equal event by event: a stored task deleted and then re-created (a
    newer task re-using the id) in the same batch must exist afterwards."""
    old = task(500, "2026-01-01T00:00:00Z", text="old")
    new = task(500, "2026-01-01T00:02:00Z", text="new")
    sequence = [
        Event("TASKS_DELETED", 6, {"tasks": [{"id": 500}]}, epoch("2026-01-01T00:01:00Z")),
        tasks_created(new, at=epoch("2026-01-01T00:02:01Z")),
    ]
    results = {}
    for mode in ("each", "batch"):
        con = new_catalog(tmp_path / mode)
        try:
            apply_events(con, TABLE, [tasks_created(old, at=epoch("2026-01-01T00:00:01Z"))])
            if mode == "each":
                apply_each(con, sequence)
            else:
                apply_events(con, TABLE, sequence)
            results[mode] = [json.loads(r["data_json"]) for r in rows(con)]
        finally:
            con.close()
    assert results["each"] == [{"text": "new"}]
    assert results["batch"] == results["each"]


def test_a_late_event_about_an_older_task_does_not_replace_a_newer_task_with_its_id(tmp_path):
    """Label Studio re-uses ids after deletes (SQLite). When the delete was never seen
    (delete-all goes to org-level webhooks only; the receiver was down), a late delivery
    about the old task (journal replay, RQ workers out of order) must not replace the newer
    task: the newer ``created_at`` is the task that exists now."""
    old = task(500, "2026-01-01T00:00:00Z", text="old")
    new = task(500, "2026-01-01T00:02:00Z", text="new")
    con = new_catalog(tmp_path / "catalog")
    try:
        apply_events(con, TABLE, [tasks_created(new, at=epoch("2026-01-01T00:02:01Z"))])
        apply_events(con, TABLE, [tasks_created(old, at=epoch("2026-01-01T00:03:00Z"))])
        assert [json.loads(r["data_json"]) for r in rows(con)] == [{"text": "new"}]
    finally:
        con.close()


def test_counters_of_an_annotation_created_and_deleted_in_one_batch(tmp_path):
    """Minimal form of test_one_batch_equals_event_by_event[33]: an annotation created and
    deleted within one batch must leave the same task counters as event by event."""
    scope = deliveries("scope-org")
    delete = next(d for d in scope if d["action"] == "ANNOTATIONS_DELETED")
    (gone,) = [a["id"] for a in payload(delete)["annotations"]]
    created = next(
        d
        for d in scope
        if d["action"] == "ANNOTATION_CREATED" and payload(d)["annotation"]["id"] == gone
    )
    imports = events(d for d in scope if d["action"] == "TASKS_CREATED")
    results = {}
    for mode in ("each", "batch"):
        con = new_catalog(tmp_path / mode)
        try:
            apply_events(con, TABLE, imports)
            if mode == "each":
                apply_each(con, events([created, delete]))
            else:
                apply_events(con, TABLE, events([created, delete]))
            results[mode] = {
                r["id"]: (r["total_annotations"], r["cancelled_annotations"], r["annotations"])
                for r in rows(con)
            }
        finally:
            con.close()
    tid = payload(created)["annotation"]["task"]
    assert results["each"][tid] == (0, 0, [])
    assert results["batch"] == results["each"]


def _other_projects() -> list[Event]:
    """Webhooks of projects 1-3 (image_od, text_cls, ner)."""
    return [
        e
        for p in BY_PROJECT_TYPE
        if (e := parse_payload(p.read_bytes(), received_at=epoch("2026-11-24T06:09:10Z")))
    ]


def test_project_deleted_removes_that_projects_tasks_only(tmp_path):
    con = new_catalog(tmp_path / "catalog")
    try:
        apply_events(con, TABLE, _other_projects())
        others = rows(con)
        assert {r["project"] for r in others} == {1, 2, 3}
        apply_events(con, TABLE, events(deliveries("scope-org", upto=33)))
        assert {r["project"] for r in rows(con)} == {1, 2, 3, 6}
        project_deleted = events(d for d in SCENARIO if d["action"] == "PROJECT_DELETED")
        assert [e.project for e in project_deleted] == [6]
        summary = apply_events(con, TABLE, project_deleted)
        assert summary.deleted == len(_alive(33))
        assert rows(con) == others
        # replayed deliveries of the deleted project do not bring anything back
        apply_events(con, TABLE, events(deliveries("scope-org", upto=33)))
        assert rows(con) == others
    finally:
        con.close()


def _secrets(ds: Iterable[Any]) -> set[str]:
    found = set()
    for obj in ds:
        p = obj.get("project")
        if isinstance(p, dict):
            for key in ("token", "task_data_password", "task_data_login"):
                if isinstance(p.get(key), str) and p[key]:
                    found.add(p[key])
    return found


def _with_password(obj: dict[str, Any], n: int) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    if isinstance(obj.get("project"), dict) and "token" in obj["project"]:
        obj["project"]["task_data_login"] = f"login-canary-{obj['project']['id']}"
        obj["project"]["task_data_password"] = f"pw-canary-{obj['project']['id']}-q8Zr{n}"
    return obj


def _files_containing(root: Path, needles: Iterable[str]) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                if needle.encode() in data:
                    hits.setdefault(needle, []).append(str(path.relative_to(root)))
    return hits


def test_no_project_secret_reaches_the_journal_or_the_catalog(tmp_path):
    """Every payload embeds the whole project, with its share token and the task-data
    credentials. Run every fixture webhook through the receiver (its journal kept while
    commits fail, then committed) and look for them in every file written."""
    bodies = [_with_password(payload(d), i) for i, d in enumerate(SCENARIO)]
    bodies += [
        _with_password(json.loads(p.read_bytes()), 100 + i) for i, p in enumerate(BY_PROJECT_TYPE)
    ]
    secrets = _secrets(bodies)
    tokens = _secrets(payload(d) for d in SCENARIO)
    assert len(tokens) == 1 and len(secrets) > 10  # the token plus the injected credentials
    catalog, journal = tmp_path / "catalog", tmp_path / "journal"
    new_catalog(catalog).close()

    failing = Receiver(_fail_always, journal_dir=journal, port=0, secret=SECRET).start()
    try:
        for b in bodies:
            status, _ = post(failing.url, json.dumps(b).encode())
            assert status in (200, 202)
    finally:
        failing.stop(drain=False, timeout=10)
    journal_text = "".join(p.read_text() for p in journal.rglob("*") if p.is_file())
    assert '"unique_id"' in journal_text  # the journal does hold the events
    assert _files_containing(journal, secrets) == {}

    applier = Applier(catalog)
    receiver = Receiver(applier, journal_dir=journal, port=0, secret=SECRET).start()
    try:
        assert receiver.wait_idle(timeout=20)
    finally:
        receiver.stop()
        applier.close()
    # also the direct path: apply_events on parsed payloads
    with spacesql.connect(catalog) as con:
        apply_events(
            con,
            "direct",
            [e for b in bodies if (e := parse_payload(json.dumps(b).encode())) and e.body],
        )
        stored = json.dumps([rows(con), rows(con, "direct")], default=str)
    assert "images/img_0000.jpg" in stored  # the rows do hold payload data
    assert [s for s in secrets if s in stored] == []
    assert _files_containing(catalog, secrets) == {}
    assert _files_containing(journal, secrets) == {}


# --- 3. the receiver over HTTP ---------------------------------------------------------


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(
    url: str,
    data: bytes,
    *,
    auth: str | None = SECRET,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if auth is not None:
        request.add_header("Authorization", auth)
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with _NO_PROXY.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        status, reply = exc.code, exc.read()
        exc.close()
        return status, json.loads(reply)


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with _NO_PROXY.open(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        status, reply = exc.code, exc.read()
        exc.close()
        return status, json.loads(reply)


def _fail_always(events: Sequence[Event]) -> None:
    raise RuntimeError("injected: the table cannot be written")


class Applier:
    """An ``apply`` for the receiver: its own connection (opened in the committer thread, as
    the CLI does), optional failures of the first calls, optional gate to hold commits."""

    def __init__(self, catalog: Path, *, fail_first: int = 0) -> None:
        self.catalog = catalog
        self.fail_first = fail_first
        self.calls = 0
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.con: Connection | None = None

    def __call__(self, events: Sequence[Event]) -> None:
        self.calls += 1
        self.gate.wait(30)
        if self.calls <= self.fail_first:
            raise RuntimeError(f"injected failure {self.calls}")
        if self.con is None:
            self.con = spacesql.connect(self.catalog)
        apply_events(self.con, TABLE, list(events))
        self.batches.append(len(events))

    def close(self) -> None:
        if self.con is not None:
            self.con.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """serve(applier=None, **receiver options) -> (receiver, applier); stopped at the end."""
    started: list[tuple[Receiver, Applier | None]] = []
    catalog = tmp_path / "catalog"
    new_catalog(catalog).close()

    def make(applier: Any = None, **options: Any) -> tuple[Receiver, Any]:
        applier = Applier(catalog) if applier is None else applier
        options.setdefault("journal_dir", tmp_path / "journal")
        options.setdefault("secret", SECRET)
        receiver = Receiver(applier, port=0, **options).start()
        started.append((receiver, applier))
        return receiver, applier

    make.catalog = catalog  # type: ignore[attr-defined]
    make.journal = tmp_path / "journal"  # type: ignore[attr-defined]
    yield make
    for receiver, applier in reversed(started):
        if isinstance(applier, Applier):
            applier.gate.set()
        receiver.stop(drain=False, timeout=10)
        if isinstance(applier, Applier):
            applier.close()


def catalog_rows(catalog: Path) -> list[dict[str, Any]]:
    with spacesql.connect(catalog) as con:
        return rows(con)


def catalog_snapshot(catalog: Path) -> int:
    with spacesql.connect(catalog) as con:
        return snapshot_id(con)


def journal_bytes(journal: Path) -> int:
    return sum(p.stat().st_size for p in journal.rglob("*") if p.is_file())


SAMPLE = body(next(d for d in SCENARIO if d["seq"] == 4))  # TASKS_CREATED, 3 tasks


WRONG_AUTH = (
    None,
    "",
    "wrong",
    "Bearer wrong",
    "Bearer",
    "bearer wrong",
    SECRET + "x",
    "Token " + SECRET,
    f"Bearer  {SECRET}",
)


def test_missing_or_wrong_secret_is_401_and_writes_nothing(serve):
    receiver, applier = serve()
    for auth in WRONG_AUTH:
        status, reply = post(receiver.url, SAMPLE, auth=auth)
        assert status == 401, auth
        assert "Authorization" in reply["error"]
    assert receiver.wait_idle(timeout=2)
    assert journal_bytes(serve.journal) == 0
    assert applier.calls == 0
    assert (receiver.stats.accepted, receiver.stats.rejected) == (0, len(WRONG_AUTH))
    assert catalog_snapshot(serve.catalog) == 0


def test_bearer_and_bare_secret_are_both_accepted(serve):
    receiver, _ = serve()
    first, second = [d for d in deliveries("scope-org") if d["action"] == "TASKS_CREATED"][:2]
    assert post(receiver.url, body(first), auth=f"Bearer {SECRET}") == (
        200,
        {"status": "accepted", "seq": 1},
    )
    assert post(receiver.url, body(second), auth=SECRET) == (200, {"status": "accepted", "seq": 2})
    assert receiver.wait_idle(timeout=10)
    assert state_of(serve.catalog) == expected_state([first, second])


def test_another_secret_header(serve):
    receiver, _ = serve(secret_header="X-Custom")
    assert post(receiver.url, SAMPLE, auth=None, headers={"X-Custom": "abc"})[0] == 401
    assert post(receiver.url, SAMPLE, auth=f"Bearer {SECRET}")[0] == 401
    assert post(receiver.url, SAMPLE, auth=None, headers={"X-Custom": SECRET})[0] == 200


def test_a_secret_is_required_unless_explicitly_waived(tmp_path):
    with pytest.raises(ValueError, match="secret is required"):
        Receiver(_fail_always, journal_dir=tmp_path / "j", port=0, secret=None)


def raw_request(address: tuple[str, int], head: str, data: bytes) -> tuple[int, bytes]:
    """Send a whole request in one write (the server may answer and close before reading a
    body it refuses) and read the answer: (status, body)."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            header, sep, rest = answer.partition(b"\r\n\r\n")
            length = re.search(rb"Content-Length: (\d+)", header)
            if sep and length and len(rest) >= int(length.group(1)):
                break
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def test_body_over_max_body_is_413_and_writes_nothing(serve):
    receiver, applier = serve(max_body=len(SAMPLE) - 1)
    head = f"POST / HTTP/1.1\nHost: x\nAuthorization: {SECRET}\nContent-Length: {len(SAMPLE)}\n"
    status, reply = raw_request(receiver.address, head, SAMPLE)
    assert status == 413
    assert str(len(SAMPLE)) in json.loads(reply)["error"]
    assert journal_bytes(serve.journal) == 0
    assert applier.calls == 0
    # exactly at the limit is fine
    receiver2, _ = serve(max_body=len(SAMPLE), journal_dir=serve.journal / "2")
    assert post(receiver2.url, SAMPLE)[0] == 200


def test_malformed_body_is_400_and_writes_nothing(serve):
    receiver, applier = serve()
    for case, (raw, words) in sorted(MALFORMED.items()):
        status, reply = post(receiver.url, raw)
        assert status == 400, case
        assert words in reply["error"], case
    assert receiver.stats.rejected == len(MALFORMED)
    # no Content-Length (a chunked body): 411
    head = f"POST / HTTP/1.1\nHost: x\nAuthorization: {SECRET}\nTransfer-Encoding: chunked\n"
    chunked = f"{len(SAMPLE):x}\r\n".encode() + SAMPLE + b"\r\n0\r\n\r\n"
    assert raw_request(receiver.address, head, chunked)[0] == 411
    assert journal_bytes(serve.journal) == 0
    assert applier.calls == 0


def test_ignored_and_payload_less_deliveries_are_acknowledged_and_not_journaled(serve):
    receiver, applier = serve()
    for d in SCENARIO:
        if d["action"] in ("PROJECT_CREATED", "PROJECT_UPDATED") or hook(d) == "hook-nopayload":
            status, reply = post(receiver.url, body(d))
            assert 200 <= status < 300, d["file"]
            assert reply["status"] == "ignored"
    assert journal_bytes(serve.journal) == 0
    assert applier.calls == 0
    assert receiver.stats.accepted == 0


def test_good_payloads_are_acknowledged_fast_and_committed_in_the_background(serve):
    receiver, applier = serve()
    applier.gate.clear()  # the committer is stuck (a slow table)
    evs = deliveries("scope-org", upto=12)
    for d in evs:
        started = time.perf_counter()
        status, _ = post(receiver.url, body(d))
        assert 200 <= status < 300
        assert time.perf_counter() - started < 0.5  # Label Studio waits 1 s at most
    assert receiver.stats.accepted == len(events(evs))
    assert catalog_snapshot(serve.catalog) == 0  # nothing committed yet
    assert not receiver.wait_idle(timeout=0.3)
    applier.gate.set()
    assert receiver.wait_idle(timeout=20)
    assert state_of(serve.catalog) == expected_state(evs)


def state_of(catalog: Path) -> dict[tuple[int, int], Any]:
    with spacesql.connect(catalog) as con:
        return state(con)


def test_a_burst_becomes_few_commits(serve):
    receiver, applier = serve(batch_seconds=0.5)
    burst = deliveries("scope-org", "hook-main", "hook-nopayload", upto=46)
    for d in burst:
        assert post(receiver.url, body(d))[0] in (200, 202)
    n = receiver.stats.accepted
    assert n == len(events(burst)) > 30
    assert receiver.wait_idle(timeout=30)
    assert receiver.stats.committed == n
    assert receiver.stats.commits == len(applier.batches) < n / 4
    with spacesql.connect(serve.catalog) as con:
        assert con.dataset(TABLE).versions().num_rows - 1 <= receiver.stats.commits
        assert state(con) == _alive(46)
    assert (serve.journal / "events.jsonl").stat().st_size == 0  # all applied: truncated


def test_concurrent_deliveries_are_all_acknowledged_and_committed(serve):
    """Many annotators submit at once (or Label Studio runs webhooks from several RQ
    workers): simultaneous deliveries must all be answered, since Label Studio never
    retries one that failed."""
    receiver, _ = serve(batch_seconds=0.1)
    copies = 4
    burst = events(deliveries("scope-org", upto=33))
    bodies = [body(d) for d in deliveries("scope-org", upto=33)] * copies
    results: list[Any] = []
    start = threading.Barrier(len(bodies))

    def send(b: bytes) -> None:
        start.wait(10)
        try:
            results.append(post(receiver.url, b)[0])
        except OSError as exc:  # connection refused or reset
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    failed = [r for r in results if not (isinstance(r, int) and 200 <= r < 300)]
    assert (len(results), failed) == (len(bodies), [])
    assert receiver.stats.accepted == copies * len(burst)
    assert receiver.wait_idle(timeout=30)
    # arrival order is arbitrary here, yet the result is the same: annotation versions are
    # ordered by updated_at, and a delete (dated by the receiver clock, after Label Studio
    # wrote any of these) wins over a creation that arrives after it
    assert state_of(serve.catalog) == _alive(33)


def test_health(serve):
    receiver, _ = serve()
    post(receiver.url, SAMPLE)
    post(receiver.url, b"nope")
    assert receiver.wait_idle(timeout=10)
    status, reply = get(receiver.url + "health")
    assert status == 200
    assert reply["status"] == "ok"
    assert (reply["accepted"], reply["rejected"], reply["committed"]) == (1, 1, 1)
    assert reply["commits"] == 1 and reply["pending"] == 0
    assert get(receiver.url)[0] == 200
    assert get(receiver.url + "nothing-here")[0] == 404


def test_failing_commits_are_retried_until_they_succeed(serve):
    catalog = serve.catalog
    receiver, applier = serve(Applier(catalog, fail_first=3))
    evs = deliveries("scope-org", upto=25)
    for d in evs:
        assert post(receiver.url, body(d))[0] in (200, 202)
    assert receiver.wait_idle(timeout=20)
    assert applier.calls > 3
    assert receiver.stats.last_error is not None and "injected failure" in receiver.stats.last_error
    assert receiver.stats.committed == receiver.stats.accepted == len(events(evs))
    assert state_of(catalog) == expected_state(evs)


def test_journaled_events_survive_a_crash_and_are_committed_on_restart(serve):
    evs = deliveries("scope-org", "hook-main", upto=46)
    crashed, _ = serve(_fail_always)
    for d in evs:
        assert post(crashed.url, body(d))[0] == 200
    crashed.stop(drain=False, timeout=10)
    crashed_at = dt.datetime.now(dt.timezone.utc)
    assert catalog_snapshot(serve.catalog) == 0
    assert journal_bytes(serve.journal) > 0

    receiver, applier = serve()
    assert receiver.wait_idle(timeout=30)
    assert sum(applier.batches) == len(events(evs))
    assert state_of(serve.catalog) == _alive(46)
    # the events kept their arrival time: tombstones are dated by the first receiver
    with spacesql.connect(serve.catalog) as con:
        (deleted_at,) = con.sql(
            f"SELECT max(deleted_at) FROM \"{tombstone_table(TABLE)}\" WHERE kind = 'annotation'"
        ).fetchone()
    assert deleted_at < crashed_at
    # a third start finds nothing left to do
    receiver.stop()
    again, applier3 = serve()
    assert again.wait_idle(timeout=5)
    assert applier3.calls == 0


def test_a_torn_last_journal_line_is_ignored(serve):
    crashed, _ = serve(_fail_always)
    assert post(crashed.url, SAMPLE)[0] == 200
    crashed.stop(drain=False, timeout=10)
    with open(serve.journal / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"seq": 2, "action": "TASKS_DEL')  # a crash in the middle of a write
    receiver, _ = serve()
    assert receiver.wait_idle(timeout=10)
    assert len(catalog_rows(serve.catalog)) == len(json.loads(SAMPLE)["tasks"])


def test_an_event_accepted_after_a_torn_journal_line_survives_the_next_crash(serve):
    """After a crash that tore the journal's last line, the next accepted event must be
    journaled on a line of its own (not glued to the torn one, then skipped as torn)."""
    crashed, _ = serve(_fail_always)
    assert post(crashed.url, SAMPLE)[0] == 200
    crashed.stop(drain=False, timeout=10)
    with open(serve.journal / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"seq": 2, "action": "TASKS_DEL')
    again, _ = serve(_fail_always)
    more = next(
        d for d in deliveries("scope-org") if d["action"] == "TASKS_CREATED" and body(d) != SAMPLE
    )
    assert post(again.url, body(more))[0] == 200  # acknowledged: must survive a crash
    again.stop(drain=False, timeout=10)
    receiver, _ = serve()
    assert receiver.wait_idle(timeout=10)
    ids = {r["id"] for r in catalog_rows(serve.catalog)}
    assert ids == {t["id"] for b in (SAMPLE, body(more)) for t in json.loads(b)["tasks"]}


@pytest.mark.parametrize(
    "poison",
    [
        b'{"action": "PROJECT_DELETED"}',  # an org webhook with send_payload=false
        b'{"action": "TASKS_DELETED", "tasks": [{"id": null}]}',
    ],
    ids=["payload-less PROJECT_DELETED", "null task id"],
)
def test_a_poison_event_does_not_block_the_committer(serve, poison):
    """A delivery the receiver accepts (2xx) must be committable; otherwise it is retried
    forever, from the journal even after restarts, and every later event waits behind it."""
    receiver, _ = serve(batch_seconds=0.05)
    status, _ = post(receiver.url, poison)
    post(receiver.url, SAMPLE)
    assert status < 500
    assert receiver.wait_idle(timeout=1.5), receiver.stats.last_error
    assert len(catalog_rows(serve.catalog)) == len(json.loads(SAMPLE)["tasks"])


# --- 4. reconcile ----------------------------------------------------------------------


def comparable(table_rows: Iterable[dict[str, Any]]) -> dict[tuple[int, int], Any]:
    return {
        (r["project"], r["id"]): {k: v for k, v in r.items() if k != "source_format"}
        for r in table_rows
    }


@pytest.fixture
def webhook_table(tmp_path: Path) -> Iterator[Connection]:
    """A tasks table filled from webhooks only: projects 1-3 (by_project_type), project 6
    (the scenario before its tasks were deleted) and a project-2 task the export lacks."""
    con = new_catalog(tmp_path / "catalog")
    apply_events(con, TABLE, _other_projects())
    apply_events(con, TABLE, events(deliveries("scope-org", upto=33)))
    stray = task(
        9999, "2026-11-24T06:09:30Z", project=2, text="deleted while the receiver was down"
    )
    apply_events(con, TABLE, [tasks_created(stray, project=2, at=epoch("2026-11-24T06:09:31Z"))])
    yield con
    con.close()


EXPORT = FIXTURES / "text_cls" / "export_JSON.json"


def test_reconcile_makes_the_project_equal_the_export(webhook_table):
    con = webhook_table
    export = read_export(EXPORT.read_bytes())
    assert set(export.column("project").to_pylist()) == {2}
    others = rows(con, where="WHERE project <> 2")
    before = comparable(rows(con, where="WHERE project = 2"))
    wanted = comparable(export.to_pylist())
    assert before != wanted and (2, 9999) in before
    head = snapshot_id(con)

    summary = reconcile(con, TABLE, export, project=2)
    assert summary.snapshot_id == snapshot_id(con) == head + 1
    assert comparable(rows(con, where="WHERE project = 2")) == wanted
    assert summary.deleted == len(set(before) - set(wanted)) == 1
    changed = {k for k in wanted if before.get(k) != wanted[k]}
    assert summary.upserted == len(changed)
    assert summary.unchanged == len(wanted) - len(changed)
    assert rows(con, where="WHERE project <> 2") == others

    again = reconcile(con, TABLE, read_export(EXPORT.read_bytes()), project=2)
    assert (again.snapshot_id, again.upserted, again.deleted) == (None, 0, 0)
    assert again.unchanged == len(wanted)
    assert snapshot_id(con) == head + 1
    assert rows(con, where="WHERE project <> 2") == others


def test_reconcile_writes_nothing_when_the_rows_came_from_the_same_export(tmp_path):
    con = new_catalog(tmp_path / "catalog")
    try:
        export = read_export(EXPORT.read_bytes())
        first = reconcile(con, TABLE, export, project=2)
        assert first.upserted == export.num_rows and first.snapshot_id == 1
        assert reconcile(con, TABLE, export, project=2).snapshot_id is None
    finally:
        con.close()


def test_reconcile_refuses_an_export_of_another_project(webhook_table):
    head = snapshot_id(webhook_table)
    with pytest.raises(SchemaError, match="project"):
        reconcile(webhook_table, TABLE, read_export(EXPORT.read_bytes()), project=1)
    assert snapshot_id(webhook_table) == head


def test_replaying_old_webhooks_after_a_reconcile_does_not_undo_it(webhook_table):
    """Reconcile after a receiver outage, then the journal replays what it had accepted
    before the crash: those older deliveries must not overwrite the exported rows (here the
    task's updated_at is unchanged, but predictions were imported since: total_predictions)."""
    con = webhook_table
    export = read_export(EXPORT.read_bytes())
    reconcile(con, TABLE, export, project=2)
    reconciled = rows(con, where="WHERE project = 2")
    head = snapshot_id(con)
    old = [e for e in _other_projects() if e.project == 2]
    apply_events(con, TABLE, old)
    after = rows(con, where="WHERE project = 2")
    diff = {
        (a["id"], k): (a[k], b[k])
        for a, b in zip(reconciled, after, strict=True)
        for k in a
        if a[k] != b[k]
    }
    assert diff == {}
    assert snapshot_id(con) == head


# --- 5. to_tasks -----------------------------------------------------------------------


def _original_tasks(name: str) -> list[dict[str, Any]]:
    raw = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return raw if isinstance(raw, list) else [raw]


@pytest.mark.parametrize("name", JSON_EXPORTS)
def test_to_tasks_gives_back_the_exported_results(name):
    originals = {t["id"]: t for t in _original_tasks(name)}
    table = read_export((FIXTURES / name).read_bytes())
    tasks = to_tasks(table)
    assert len(tasks) == table.num_rows == len(originals)
    n_results = 0
    for tid, made in zip(table.column("id").to_pylist(), tasks, strict=True):
        orig = originals[tid]
        assert canon(made["data"]) == canon(orig["data"])
        assert canon(made.get("meta", {})) == canon(orig.get("meta") or {})
        anns = orig.get("annotations") or []
        assert [canon(a["result"]) for a in made.get("annotations", [])] == [
            canon(a["result"]) for a in anns
        ]
        for a, b in zip(anns, made.get("annotations", []), strict=True):
            who = (
                a["completed_by"]["id"]
                if isinstance(a["completed_by"], dict)
                else a["completed_by"]
            )
            assert b.get("completed_by") == who
            assert b.get("was_cancelled", False) == a["was_cancelled"]
            assert b.get("ground_truth", False) == a["ground_truth"]
            assert b.get("lead_time") == a["lead_time"]
            n_results += len(a["result"])
        preds = [p for p in orig.get("predictions") or [] if isinstance(p, dict)]
        assert [canon(p["result"]) for p in made.get("predictions", [])] == [
            canon(p["result"]) for p in preds
        ]
        for p, q in zip(preds, made.get("predictions", []), strict=True):
            assert q.get("model_version") == (p.get("model_version") or None)
            assert q.get("score") == p.get("score")
    assert n_results > 0
    json.dumps(tasks)  # import JSON: plain JSON values only
    # annotations=False sends data (and predictions) only
    bare = to_tasks(table, annotations=False)
    assert all("annotations" not in t for t in bare)
    assert [t["data"] for t in bare] == [t["data"] for t in tasks]


def test_to_tasks_from_a_query_with_result_score_and_model_version(tmp_path):
    with new_catalog(tmp_path / "catalog") as con:
        con.sql(
            f"INSERT INTO tasks SELECT * FROM spacesql_read_labelstudio("
            f"'{FIXTURES / 'image_od' / 'export_JSON.json'}')"
        )
        rel = con.sql(
            "SELECT data_json->>'$.image' AS image, annotations[1].result AS result, "
            "0.75 AS score, 'yolo-v8' AS model_version, id FROM tasks "
            "WHERE len(annotations) > 0 AND NOT annotations[1].was_cancelled ORDER BY id"
        )
        assert rel is not None
        table = rel.to_arrow_table()
    originals = {t["id"]: t for t in _original_tasks("image_od/export_JSON.json")}
    tasks = to_tasks(table)
    assert len(tasks) == table.num_rows > 0
    for tid, made in zip(table.column("id").to_pylist(), tasks, strict=True):
        orig = originals[tid]
        assert made["data"] == {"image": orig["data"]["image"], "id": tid}
        assert "annotations" not in made
        (pred,) = made["predictions"]
        assert pred["model_version"] == "yolo-v8"
        assert pred["score"] == 0.75
        assert canon(pred["result"]) == canon(orig["annotations"][0]["result"])

    as_annotations = to_tasks(table, as_="annotations")
    for made in as_annotations:
        assert "predictions" not in made
        (ann,) = made["annotations"]
        assert set(ann) == {"result"}


def test_to_tasks_from_plain_rows():
    result = [
        {
            "from_name": "label",
            "to_name": "image",
            "type": "rectanglelabels",
            "value": {"x": 1.5, "y": 2, "width": 30, "height": 40, "rectanglelabels": ["car"]},
        }
    ]
    table = pa.table(
        {
            "image": ["s3://b/a.jpg", "s3://b/b.jpg"],
            "result": [json.dumps(result), "[]"],
            "score": [0.9, None],
            "model_version": ["m1", None],
        }
    )
    tasks = to_tasks(table, model_version="default")
    assert tasks == [
        {
            "data": {"image": "s3://b/a.jpg"},
            "predictions": [{"result": result, "model_version": "m1", "score": 0.9}],
        },
        {
            "data": {"image": "s3://b/b.jpg"},
            "predictions": [{"result": [], "model_version": "default"}],
        },
    ]
    assert to_tasks(table, as_="annotations")[0] == {
        "data": {"image": "s3://b/a.jpg"},
        "annotations": [{"result": result}],
    }
    # data as a struct or JSON text, meta, dates
    tasks = to_tasks([{"data": {"text": "hi", "day": dt.date(2026, 1, 2)}, "meta": '{"k": 1}'}])
    assert tasks == [{"data": {"text": "hi", "day": "2026-01-02"}, "meta": {"k": 1}}]
    assert to_tasks([{"data": '{"text": "hi"}', "result": None}]) == [{"data": {"text": "hi"}}]


def test_to_tasks_result_structs_without_raw_json_become_label_studio_items():
    """A result of typed RESULT fields (built in SQL, no ``raw_json``) must come out in Label
    Studio's shape: ``from_name``/``to_name``/``type`` plus the region in ``value``."""
    item = {
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "x": 10.0,
        "y": 20.0,
        "width": 30.0,
        "height": 40.0,
        "labels": ["car"],
        "raw_json": None,
    }
    (made,) = to_tasks([{"image": "a.jpg", "result": [item]}])
    (out,) = made["predictions"][0]["result"]
    assert {"from_name", "to_name", "type", "value"} <= set(out)
    assert out["value"]["x"] == 10.0 and out["value"]["rectanglelabels"] == ["car"]
    assert "x" not in out


@pytest.mark.parametrize(
    "result",
    ['{"from_name": "x"}', "not json", "[1, 2]", '["text"]', 42],
    ids=["object", "not json", "list of numbers", "list of strings", "number"],
)
def test_to_tasks_bad_result_is_a_schema_error(result):
    with pytest.raises(SchemaError, match="result"):
        to_tasks([{"image": "a.jpg", "result": result}])


def test_to_tasks_other_errors():
    with pytest.raises(SchemaError, match="as_"):
        to_tasks([{"image": "a.jpg"}], as_="drafts")
    with pytest.raises(SchemaError, match="data must be an object"):
        to_tasks([{"data": "[1, 2]"}])
    with pytest.raises(SchemaError, match="Binary"):
        to_tasks([{"image": b"\x89PNG"}])


# --- 6. CLI and SQL --------------------------------------------------------------------


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Any:
    from spacesql.cli import cli

    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_cli_import_and_reimport(tmp_path):
    catalog = str(tmp_path / "catalog")
    sources = [
        str(FIXTURES / "image_od" / "export_JSON.json"),
        str(FIXTURES / "text_cls" / "export_JSON.json"),
    ]
    first = invoke("labelstudio", "import", catalog, *sources, "--no-progress")
    assert first.exit_code == 0, first.output
    lines = first.output.strip().splitlines()
    assert lines == [
        f"{sources[0]}: JSON, 30 tasks: 30 new, 0 updated, 0 unchanged; snapshot 1",
        f"{sources[1]}: JSON, 30 tasks: 30 new, 0 updated, 0 unchanged; snapshot 2",
    ]
    again = invoke("labelstudio", "import", catalog, *sources, "--no-progress")
    assert again.exit_code == 0, again.output
    assert again.output.strip().splitlines() == [
        f"{sources[0]}: JSON, 30 tasks: 0 new, 0 updated, 30 unchanged",
        f"{sources[1]}: JSON, 30 tasks: 0 new, 0 updated, 30 unchanged",
    ]
    with spacesql.connect(catalog) as con:
        assert snapshot_id(con) == 2
        assert con.sql(
            "SELECT project, count(*) FROM tasks GROUP BY ALL ORDER BY 1"
        ).fetchall() == [(1, 30), (2, 30)]
    # a lossy export without a project, named with --project
    lossy = invoke(
        "labelstudio",
        "import",
        catalog,
        str(FIXTURES / "ner" / "export_CSV.csv"),
        "--project",
        "3",
        "--no-progress",
    )
    assert lossy.exit_code == 0, lossy.output
    assert ": CSV, " in lossy.output
    with spacesql.connect(catalog) as con:
        assert con.sql("SELECT count(*) FROM tasks WHERE project = 3").fetchall()[0][0] > 0


def test_cli_export_query_to_file(tmp_path):
    catalog = str(tmp_path / "catalog")
    source = FIXTURES / "text_cls" / "export_JSON.json"
    assert invoke("labelstudio", "import", catalog, str(source), "--no-progress").exit_code == 0
    out = tmp_path / "out.json"
    query = (
        "SELECT data_json->>'$.text' AS text, annotations[1].result AS result, "
        "CAST(0.5 AS DOUBLE) AS score FROM tasks WHERE len(annotations) > 0 "
        "AND NOT annotations[1].was_cancelled ORDER BY id"
    )
    result = invoke(
        "labelstudio", "export", catalog, "--query", query, "-o", str(out), "--model-version", "m9"
    )
    assert result.exit_code == 0, result.output
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert f"{len(tasks)} task(s) written to {out}" in result.output
    originals = [
        t
        for t in json.loads(source.read_text())
        if t["annotations"] and not t["annotations"][0]["was_cancelled"]
    ]
    assert len(tasks) == len(originals) > 0
    for made, orig in zip(tasks, originals, strict=True):
        assert made["data"] == {"text": orig["data"]["text"]}
        assert made["predictions"] == [
            {"result": orig["annotations"][0]["result"], "model_version": "m9", "score": 0.5}
        ]

    # a whole table to stdout: Label Studio import JSON of every task
    whole = invoke("labelstudio", "export", catalog, "--table", "tasks")
    assert whole.exit_code == 0
    assert [t["data"] for t in json.loads(whole.output)] == [
        t["data"] for t in sorted(json.loads(source.read_text()), key=lambda t: t["id"])
    ]

    both = invoke("labelstudio", "export", catalog, "--table", "tasks", "--query", "SELECT 1")
    assert both.exit_code == 2 and "exactly one of --table or --query" in both.output
    neither = invoke("labelstudio", "export", catalog)
    assert neither.exit_code == 2


def test_cli_export_with_a_decimal_score(tmp_path):
    """``0.5 AS score`` is a DECIMAL in DuckDB: the export must still be JSON."""
    catalog = str(tmp_path / "catalog")
    source = FIXTURES / "text_cls" / "export_JSON.json"
    assert invoke("labelstudio", "import", catalog, str(source), "--no-progress").exit_code == 0
    query = "SELECT data_json->>'$.text' AS text, '[]' AS result, 0.5 AS score FROM tasks"
    result = invoke("labelstudio", "export", catalog, "--query", query)
    assert result.exit_code == 0, result.output
    tasks = json.loads(result.output)
    assert len(tasks) == 30
    assert {t["predictions"][0]["score"] for t in tasks} == {0.5}


def test_cli_serve_without_a_secret_is_a_usage_error(tmp_path):
    result = invoke(
        "labelstudio",
        "serve",
        str(tmp_path / "catalog"),
        "--port",
        "0",
        env={"SPACESQL_LABELSTUDIO_SECRET": None},
    )
    assert result.exit_code == 2
    assert "A shared secret is required" in result.output
    assert not (tmp_path / "catalog" / ".labelstudio-tasks").exists()


def test_sql_table_function_inserts_an_export(tmp_path):
    path = FIXTURES / "ner" / "export_JSON.json"
    with spacesql.connect(tmp_path / "catalog") as con:
        ensure_tables(con, TABLE)
        sql = f"INSERT OR REPLACE INTO tasks SELECT * FROM spacesql_read_labelstudio('{path}')"
        con.sql(sql)
        expected = comparable(read_export(path).to_pylist())
        assert comparable(rows(con)) == expected
        con.sql(sql)  # again: replaces, no duplicates
        assert comparable(rows(con)) == expected
        n = con.sql(f"SELECT count(*) FROM spacesql_read_labelstudio('{path}')").fetchall()
        assert n == [(len(expected),)]
        with pytest.raises(spacesql.SpaceSQLError, match="no file or directory"):
            con.sql("SELECT * FROM spacesql_read_labelstudio('/nonexistent/export.json')")
