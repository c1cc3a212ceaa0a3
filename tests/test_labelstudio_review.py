"""Regressions from the review of the webhook receiver and sync (one test per finding)."""

from __future__ import annotations

import copy
import http.client
import json
from pathlib import Path
from typing import Any

import pytest

import spacesql
from spacesql.integrations.labelstudio.receiver import (
    Event,
    Journal,
    PayloadError,
    Receiver,
    parse_payload,
)
from spacesql.integrations.labelstudio.sync import apply_events

SCENARIO = Path(__file__).resolve().parents[2] / "shared" / "labelstudio" / "webhooks" / "scenario"


def payload() -> dict[str, Any]:
    path = SCENARIO / "013_ANNOTATION_CREATED_hook-main.json"
    assert path.exists(), f"Label Studio fixtures missing at {path}"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_ids_beyond_64_bits_are_refused_at_the_door() -> None:
    bad = payload()
    bad["annotation"]["id"] = 2**63
    with pytest.raises(PayloadError, match="64-bit"):
        parse_payload(json.dumps(bad).encode())


def test_nested_project_objects_are_reduced_to_their_id() -> None:
    body = payload()
    body["task"]["project"] = {"id": 6, "token": "SECRET-TOKEN", "task_data_password": "pw"}
    event = parse_payload(json.dumps(body).encode())
    assert event is not None
    text = event.to_json()
    assert "SECRET-TOKEN" not in text and '"pw"' not in text
    assert event.body["task"]["project"] == 6


def test_an_empty_secret_does_not_open_the_door(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="secret"):
        Receiver(lambda events: None, journal_dir=tmp_path, port=0, secret="")


def test_journal_commits_never_skip_an_earlier_event(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    first = journal.append(Event("TASKS_CREATED", 1, {"tasks": [{"id": 1}]}, 1.0))
    second = journal.append(Event("TASKS_CREATED", 1, {"tasks": [{"id": 2}]}, 2.0))
    journal.mark_committed(first.seq)
    journal.close()
    again = Journal(tmp_path)
    assert [e.seq for e in again.pending()] == [second.seq]
    again.close()


def test_journal_is_compacted_under_steady_traffic(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.compact_bytes = 1_000
    for i in range(200):
        event = journal.append(Event("TASKS_CREATED", 1, {"tasks": [{"id": i}]}, float(i)))
        journal.append(Event("TASKS_CREATED", 1, {"tasks": [{"id": i + 1000}]}, float(i)))
        journal.mark_committed(event.seq)  # always one event behind
    assert journal.path.stat().st_size < 10_000
    journal.close()
    again = Journal(tmp_path)
    assert len(again.pending()) == 1
    again.close()


def test_chunked_bodies_and_odd_lengths_are_refused(tmp_path: Path) -> None:
    seen: list[Any] = []
    receiver = Receiver(seen.extend, journal_dir=tmp_path, port=0, secret="s").start()
    try:
        host, port = receiver.address
        for headers in (
            {"Transfer-Encoding": "chunked", "Content-Length": "2"},
            {"Content-Length": "\u00b2"},
        ):
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.putrequest("POST", "/")
            conn.putheader("Authorization", "Bearer s")
            for k, v in headers.items():
                conn.putheader(k, v.encode("latin-1").decode("latin-1"))
            conn.endheaders(b"{}")
            assert conn.getresponse().status == 411
            conn.close()
    finally:
        receiver.stop()
    assert seen == []


def test_a_task_tombstone_belongs_to_its_project(tmp_path: Path) -> None:
    con = spacesql.connect(tmp_path)
    body = payload()
    task = copy.deepcopy(body["task"])
    ann = copy.deepcopy(body["annotation"])
    deleted = Event("TASKS_DELETED", 6, {"tasks": [{"id": task["id"]}]}, 10.0, 1)
    other = dict(task, project=7)
    created = Event(
        "ANNOTATION_CREATED", 7, {"annotation": dict(ann, project=7), "task": other}, 11.0, 2
    )
    apply_events(con, "tasks", [deleted])
    summary = apply_events(con, "tasks", [created])
    assert summary.upserted == 1
    assert con.sql("SELECT project, id FROM tasks").fetchall() == [(7, task["id"])]  # type: ignore[union-attr]
