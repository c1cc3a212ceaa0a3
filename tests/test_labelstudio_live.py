"""The Label Studio loop against a real server: webhooks, reconcile and round trips.

Opt-in (marker ``labelstudio_live``): the default ``pytest`` run deselects it. Start a server
first and export its coordinates::

    ls_env="$(scripts/labelstudio/start.sh --fresh)"; set -a; eval "${ls_env}"; set +a
    pytest -m labelstudio_live tests/test_labelstudio_live.py
    scripts/labelstudio/stop.sh

Without ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY``, or with the server down, every test
fails (it is never skipped): CI must not pass by testing nothing.

Everything goes through the real interfaces: Label Studio's REST API (``labelstudio_server``,
standard library only) on one side, the ``spacesql labelstudio`` commands run as
subprocesses (``serve``, ``import``, ``reconcile``, ``push``) on the other, and the tables
are read back with ``spacesql.connect``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from labelstudio_server import LabelStudio, LabelStudioError

import spacesql
from spacesql.integrations.labelstudio import read_export
from spacesql.integrations.labelstudio.tasks import to_tasks

pytestmark = pytest.mark.labelstudio_live

SECRET = "live-test-secret"
TABLE = "tasks"
#: One CLI subprocess (an import, a reconcile...) at most; the server answers in milliseconds.
CLI_TIMEOUT = 120

#: Image boxes with a per-image choice and a per-region text note.
IMAGE_CONFIG = """\
<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image">
    <Label value="car"/>
    <Label value="person"/>
  </RectangleLabels>
  <Choices name="quality" toName="image">
    <Choice value="good"/>
    <Choice value="blurry"/>
  </Choices>
  <TextArea name="note" toName="image" perRegion="true"/>
</View>
"""

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- building tasks and results ----------------------------------------------------------


def box(
    rid: str, label: str, x: float, y: float, w: float, h: float, **extra: Any
) -> dict[str, Any]:
    """A rectangle as the UI submits it (natural image size, rotation, origin)."""
    return {
        "id": rid,
        "type": "rectanglelabels",
        "from_name": "box",
        "to_name": "image",
        "original_width": 640,
        "original_height": 480,
        "image_rotation": 0,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": 0,
            "rectanglelabels": [label],
        },
        "origin": "manual",
        **extra,
    }


def note(rid: str, text: str, x: float, y: float, w: float, h: float) -> dict[str, Any]:
    """A per-region TextArea: it shares its region's id and geometry."""
    return {
        "id": rid,
        "type": "textarea",
        "from_name": "note",
        "to_name": "image",
        "original_width": 640,
        "original_height": 480,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "text": [text]},
        "origin": "manual",
    }


def quality(choice: str) -> dict[str, Any]:
    """A per-image choice, without an id (as API clients often send it)."""
    return {
        "type": "choices",
        "from_name": "quality",
        "to_name": "image",
        "value": {"choices": [choice]},
    }


def task(i: int, **extra: Any) -> dict[str, Any]:
    """A task with free-form, nested, non-ASCII data and a row key in ``meta``."""
    return {
        "data": {
            "image": f"https://example.com/images/{i:04d}.jpg",
            "row_id": f"r{i}",
            "split": ["train", "val", "test"][i % 3],
            "info": {"camera": f"cam-{i % 2}", "tags": ["a", None, 2.5], "note": "ünï ✓"},
        },
        "meta": {"batch": f"b{i // 4}", "source": "live-test"},
        **extra,
    }


def prediction(i: int, version: str = "yolo-v8n") -> dict[str, Any]:
    return {
        "model_version": version,
        "score": 0.5 + i / 100,
        "result": [
            box(f"p{i}a", "car", 10.125 + i, 20.5, 30.0, 15.333333333333334, score=0.91),
            box(f"p{i}b", "person", 50.0, 40.0, 5.5, 12.0, score=0.42),
        ],
    }


# --- Label Studio ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ls() -> LabelStudio:
    """The server of $LABEL_STUDIO_URL with the token of $LABEL_STUDIO_API_KEY; fails (never
    skips) when they are missing, the server is down or the token is refused."""
    url = os.environ.get("LABEL_STUDIO_URL", "").strip()
    key = os.environ.get("LABEL_STUDIO_API_KEY", "").strip()
    missing = [n for n, v in (("LABEL_STUDIO_URL", url), ("LABEL_STUDIO_API_KEY", key)) if not v]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not set: these live tests need a running Label Studio. "
            'Start one with ls_env="$(scripts/labelstudio/start.sh --fresh)" and export its '
            'output (set -a; eval "${ls_env}"; set +a), or deselect them with '
            "-m 'not labelstudio_live'.",
            pytrace=False,
        )
    client = LabelStudio(url=url.rstrip("/"), api_key=key, timeout=60.0)
    try:
        client.wait_for_health(timeout=20)
    except TimeoutError:
        pytest.fail(
            f"Label Studio at {client.url} (LABEL_STUDIO_URL) does not answer GET /health "
            "within 20 s: start it with scripts/labelstudio/start.sh (log: "
            "$SPACESQL_LS_RUN_DIR/server.log).",
            pytrace=False,
        )
    try:
        client.whoami()
    except (LabelStudioError, OSError) as exc:
        pytest.fail(
            f"Label Studio at {client.url} refuses LABEL_STUDIO_API_KEY ({exc}); use the "
            "token printed by scripts/labelstudio/start.sh (--fresh re-creates the data dir).",
            pytrace=False,
        )
    return client


@pytest.fixture(scope="module")
def users(ls: LabelStudio) -> tuple[int, int]:
    """Two annotators (created once per server, found again afterwards)."""
    one = ls.ensure_user("live-annotator1@example.com", first_name="Ann", last_name="One")
    two = ls.ensure_user("live-annotator2@example.com", first_name="Bob", last_name="Two")
    return int(one["id"]), int(two["id"])


@pytest.fixture
def new_project(ls: LabelStudio) -> Iterator[Callable[[str], int]]:
    """new_project(title) -> id; the projects are deleted afterwards."""
    made: list[int] = []

    def make(title: str) -> int:
        project = ls.create_project(f"{title} {uuid.uuid4().hex[:6]}", IMAGE_CONFIG)
        made.append(int(project["id"]))
        return made[-1]

    yield make
    for pid in made:
        with contextlib.suppress(LabelStudioError):  # cleanup only
            ls.delete_project(pid)


def annotate(
    ls: LabelStudio, task_id: int, result: Sequence[Mapping[str, Any]], user: int, **fields: Any
) -> int:
    return int(ls.create_annotation(task_id, result, completed_by=user, **fields)["id"])


def export_json(ls: LabelStudio, project: int) -> bytes:
    """The easy export (every task; predictions as ids), what ``reconcile`` reads too."""
    return ls.export(project, "JSON", download_all_tasks=True).body


def snapshot_json(ls: LabelStudio, project: int) -> bytes:
    """An export snapshot with full prediction objects (the easy export has their ids only)."""
    snap = ls.request(
        "POST",
        f"/api/projects/{project}/exports/",
        {
            "title": "spacesql live test",
            "serialization_options": {"predictions": {"only_id": False}},
        },
    )
    deadline = time.monotonic() + 60
    while snap.get("status") != "completed":
        assert snap.get("status") != "failed", snap
        assert time.monotonic() < deadline, f"export snapshot not completed: {snap}"
        time.sleep(0.2)
        snap = ls.request("GET", f"/api/projects/{project}/exports/{snap['id']}")
    return ls.request_raw(
        "GET",
        f"/api/projects/{project}/exports/{snap['id']}/download",
        query={"exportType": "JSON"},
    ).body


# --- spacesql: the CLI and the tables ------------------------------------------------------


def cli(*args: str) -> str:
    """Run ``spacesql <args>`` (the installed package's entry point); returns its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "spacesql.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, (
        f"spacesql {' '.join(args)} exited with {done.returncode}\n"
        f"stdout: {done.stdout}\nstderr: {done.stderr}"
    )
    return done.stdout


def table_rows(catalog: Path, project: int | None = None) -> dict[tuple[int, int], dict[str, Any]]:
    """Rows of the tasks table (of one project), by (project, id)."""
    with spacesql.connect(str(catalog)) as con:
        if project is None:
            rel = con.sql(f"SELECT * FROM {TABLE}")
        else:
            rel = con.sql(f"SELECT * FROM {TABLE} WHERE project = ?", params=[project])
        assert rel is not None
        rows = rel.to_arrow_table().to_pylist()
    return {(r["project"], r["id"]): r for r in rows}


def export_rows(content: bytes) -> dict[tuple[int, int], dict[str, Any]]:
    return {(r["project"], r["id"]): r for r in read_export(content).to_pylist()}


def differences(
    got: Mapping[tuple[int, int], Mapping[str, Any]],
    want: Mapping[tuple[int, int], Mapping[str, Any]],
    *,
    ignore: Callable[[tuple[int, int], str], bool] = lambda key, column: column == "source_format",
) -> list[str]:
    """What differs between the table's rows and the export's, one line per column."""
    out = []
    for key in sorted(set(got) | set(want)):
        if key not in got:
            out.append(f"task {key}: in Label Studio but not in the table")
        elif key not in want:
            out.append(f"task {key}: in the table but not in Label Studio")
        else:
            for column, value in want[key].items():
                if not ignore(key, column) and got[key].get(column) != value:
                    out.append(
                        f"task {key} {column}:\n    table:  {_short(got[key].get(column))}\n"
                        f"    export: {_short(value)}"
                    )
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 600 else text[:600] + "..."


def assert_same(
    got: Mapping[tuple[int, int], Mapping[str, Any]],
    want: Mapping[tuple[int, int], Mapping[str, Any]],
    **options: Any,
) -> None:
    problems = differences(got, want, **options)
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(problems[:25])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    """``spacesql labelstudio serve`` as a subprocess (stopped by its pid only)."""

    def __init__(self, catalog: Path, log: Path, batch_seconds: float) -> None:
        self.catalog = catalog
        self.batch_seconds = batch_seconds
        self.log_path = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "spacesql.cli",
                    "labelstudio",
                    "serve",
                    str(self.catalog),
                    "--table",
                    TABLE,
                    "--port",
                    str(self.port),
                    "--secret",
                    SECRET,
                    "--batch-seconds",
                    str(self.batch_seconds),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                self.health()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"serve did not answer in 60 s:\n{self.output()}"
                    ) from None
                time.sleep(0.1)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def health(self) -> dict[str, Any]:
        with _NO_PROXY.open(self.url + "health", timeout=5) as response:
            health: dict[str, Any] = json.loads(response.read())
        return health

    def wait_committed(self, accepted: int, timeout: float = 30) -> dict[str, Any]:
        """Wait until ``GET /health`` shows ``accepted`` events, all committed."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            assert h["rejected"] == 0 and h["last_error"] is None, (h, self.output())
            if h["accepted"] >= accepted and h["committed"] == h["accepted"] and not h["pending"]:
                assert h["accepted"] == accepted, h
                return h
            assert time.monotonic() < deadline, f"not committed after {timeout} s: {h}"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: the receiver commits what it accepted and exits 0."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        assert code == 0, f"serve exited with {code}:\n{self.output()}"
        assert "Stopping: committing what was received" in self.output()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """serve(catalog, batch_seconds=0.05) -> a started receiver; killed afterwards if running.

    The short batch keeps the events of consecutive API calls in separate commits (the
    default, 0.2 s, would merge some of them)."""
    started: list[Serve] = []

    def start(catalog: Path, batch_seconds: float = 0.05) -> Serve:
        log = tmp_path / f"serve{len(started)}.log"
        started.append(Serve(catalog, log, batch_seconds).start())
        return started[-1]

    yield start
    for s in started:
        s.kill()


def webhook(ls: LabelStudio, project: int, receiver: Serve) -> int:
    """A project webhook for every action, carrying the shared secret."""
    hook = ls.create_webhook(
        project, receiver.url, headers={"Authorization": f"Bearer {SECRET}"}, send_payload=True
    )
    return int(hook["id"])


# --- 1 + 2: webhooks keep the table equal to Label Studio ------------------------------------


def test_webhooks_keep_the_table_equal_to_the_export(
    ls: LabelStudio,
    users: tuple[int, int],
    new_project: Callable[[str], int],
    serve: Callable[..., Serve],
    tmp_path: Path,
) -> None:
    u1, u2 = users
    pid = new_project("live webhooks")
    # --- before the receiver: tasks (some with predictions) and annotations of two users
    ids = ls.import_tasks(
        pid, [task(i, predictions=[prediction(i)]) if i % 2 else task(i) for i in range(6)]
    )
    kept = annotate(
        ls, ids[0], [box("a0", "car", 1.5, 2.5, 10, 10), quality("good")], u1, lead_time=3.25
    )
    gone = annotate(ls, ids[1], [box("b0", "person", 5, 5, 20.125, 30)], u2, lead_time=1.0)
    annotate(ls, ids[1], [box("b1", "car", 6, 6, 7, 8), note("b1", "two ✓", 6, 6, 7, 8)], u1)
    annotate(ls, ids[2], [], u2, was_cancelled=True)  # a skip
    catalog = tmp_path / "catalog"
    seed = tmp_path / "seed.json"
    seed.write_bytes(export_json(ls, pid))
    out = cli("labelstudio", "import", str(catalog), str(seed), "--table", TABLE, "--no-progress")
    assert "6 tasks: 6 new" in out, out
    assert_same(table_rows(catalog), export_rows(seed.read_bytes()))

    # --- the receiver, and a webhook for every action with the shared secret
    receiver = serve(catalog)
    webhook(ls, pid, receiver)
    events = 0

    def applied(n: int = 1) -> None:
        nonlocal events
        events += n

    annotate(ls, ids[3], [box("c0", "car", 11, 12, 13, 14), quality("blurry")], u2, lead_time=7.5)
    applied()  # ANNOTATION_CREATED
    ls.update_annotation(kept, result=[box("a0", "car", 1.5, 2.5, 12, 11), quality("blurry")])
    applied()  # ANNOTATION_UPDATED
    ls.delete_annotation(gone)
    applied()  # ANNOTATIONS_DELETED
    new = ls.import_tasks(pid, [task(10), task(11, predictions=[prediction(11)]), task(12)])
    applied()  # one TASKS_CREATED for the three
    annotate(ls, new[0], [box("n0", "person", 1, 1, 1, 1)], u1, ground_truth=True)
    annotate(ls, new[0], [box("n1", "person", 2, 2, 2, 2), note("n1", "ünï", 2, 2, 2, 2)], u2)
    annotate(ls, ids[4], [], u1, was_cancelled=True)
    applied(3)
    # an annotation deleted and another one added to the same task: the tombstone hides the
    # deleted one only
    last = annotate(ls, new[1], [box("x0", "car", 3, 3, 3, 3)], u1)
    ls.delete_annotation(last)
    annotate(ls, new[1], [box("x1", "car", 4, 4, 4, 4)], u2)
    applied(3)
    # the newest task deleted: on SQLite the next task gets its id (a new task, which the
    # task's tombstone must not hide)
    ls.request("DELETE", f"/api/tasks/{new[2]}/")
    ls.request("DELETE", f"/api/tasks/{ids[5]}/")
    applied(2)  # TASKS_DELETED each
    again = ls.import_tasks(pid, [task(13)])
    annotate(ls, again[0], [box("y0", "person", 9, 9, 9, 9)], u2, lead_time=0.5)
    applied(2)
    health = receiver.wait_committed(events)
    assert health["commits"] >= 1

    export = export_rows(export_json(ls, pid))
    got = table_rows(catalog)
    assert set(got) == set(export), (sorted(got), sorted(export))

    # Webhook tasks carry neither predictions nor drafts: rows made by webhooks have none,
    # seeded rows keep theirs. Everything else a webhook carries must equal the export.
    webhook_rows = {k for k, r in got.items() if r["source_format"] == "WEBHOOK"}
    assert webhook_rows == {(pid, t) for t in (new[0], new[1], again[0])}, webhook_rows

    # ANNOTATIONS_DELETED carries annotation ids only, not the task: the task's counters and
    # updated_at, which Label Studio changed, stay as the last event that carried the task
    # said (until the next event of the task, or a reconcile)
    deleted_last = {(pid, ids[1])}

    def not_carried(key: tuple[int, int], column: str) -> bool:
        if column == "source_format":
            return True
        if key in deleted_last and column in ("updated_at", "total_annotations"):
            return True
        return key in webhook_rows and column in ("predictions", "prediction_ids")

    assert_same(got, export, ignore=not_carried)
    for key in webhook_rows:
        assert got[key]["prediction_ids"] == [] and got[key]["predictions"] == []

    # every annotation, by id and result, as a per-task summary (the main point, spelled out)
    def summary(rows: Mapping[tuple[int, int], Mapping[str, Any]]) -> dict[Any, Any]:
        return {
            key: [
                (
                    a["id"],
                    a["completed_by"],
                    a["was_cancelled"],
                    [r["raw_json"] for r in a["result"]],
                )
                for a in row["annotations"]
            ]
            for key, row in rows.items()
        }

    assert summary(got) == summary(export)

    # a webhook with a wrong secret is refused (401) and changes nothing
    for hook in ls.list_webhooks(pid):
        ls.delete_webhook(hook["id"])
    ls.create_webhook(pid, receiver.url, headers={"Authorization": "Bearer not-the-secret"})
    annotate(ls, ids[0], [quality("good")], u2)
    health = receiver.health()
    assert (health["rejected"], health["accepted"]) == (1, events), health
    assert table_rows(catalog) == got
    receiver.stop()
    # the journal is empty once everything is committed
    journal = catalog / f".labelstudio-{TABLE}" / "events.jsonl"
    assert journal.read_text() == ""


# --- 3: reconcile catches up after the receiver was down -----------------------------------


def test_reconcile_after_the_receiver_was_down(
    ls: LabelStudio,
    users: tuple[int, int],
    new_project: Callable[[str], int],
    serve: Callable[..., Serve],
    tmp_path: Path,
) -> None:
    u1, u2 = users
    catalog = tmp_path / "catalog"
    # a bystander project in the same table: reconciling another project must not touch it
    other = new_project("live bystander")
    other_ids = ls.import_tasks(other, [task(i) for i in range(3)])
    annotate(ls, other_ids[0], [box("o0", "car", 1, 1, 1, 1)], u1)
    (tmp_path / "other.json").write_bytes(export_json(ls, other))
    cli("labelstudio", "import", str(catalog), str(tmp_path / "other.json"), "--no-progress")
    before_other = table_rows(catalog, other)

    pid = new_project("live reconcile")
    receiver = serve(catalog)
    webhook(ls, pid, receiver)
    ids = ls.import_tasks(pid, [task(i, predictions=[prediction(i)]) for i in range(6)])
    first = annotate(ls, ids[0], [box("a0", "car", 1, 2, 3, 4)], u1, lead_time=2.0)
    second = annotate(ls, ids[1], [box("b0", "person", 1, 2, 3, 4), quality("good")], u2)
    receiver.wait_committed(3)
    receiver.stop()  # --- the receiver is down from here on; LS loses the deliveries

    annotate(ls, ids[0], [box("a1", "person", 5, 6, 7, 8), note("a1", "late ✓", 5, 6, 7, 8)], u2)
    annotate(ls, ids[2], [quality("blurry")], u1, ground_truth=True, lead_time=4.5)
    annotate(ls, ids[3], [], u2, was_cancelled=True)
    ls.update_annotation(first, result=[box("a0", "car", 1, 2, 30, 40)])
    ls.delete_annotation(second)
    # the newest task deleted: on SQLite the next import re-uses its id, so the table's row of
    # the deleted task must become the new task
    ls.request("DELETE", f"/api/tasks/{ids[5]}/")
    # tasks imported with inline annotations (no annotation event, even when the receiver is up)
    inline = ls.import_tasks(
        pid,
        [
            task(
                20,
                annotations=[
                    {"result": [box("i0", "car", 2, 2, 2, 2)], "completed_by": u1, "lead_time": 9.0}
                ],
            ),
            task(
                21,
                annotations=[
                    {"result": [quality("good")], "completed_by": u2, "ground_truth": True}
                ],
                predictions=[prediction(21, "m2")],
            ),
        ],
    )
    ls.request("DELETE", f"/api/tasks/{ids[4]}/")
    ls.request(  # a draft: never sent by webhooks, only the export has it
        "POST", f"/api/tasks/{inline[0]}/drafts", {"result": [quality("blurry")], "lead_time": 1.0}
    )

    stale = table_rows(catalog, pid)
    assert (pid, inline[1]) not in stale and (pid, ids[4]) in stale  # the table missed it all

    url, key = ls.url, ls.api_key
    out = cli(
        "labelstudio",
        "reconcile",
        str(catalog),
        "--table",
        TABLE,
        "--project",
        str(pid),
        "--url",
        url,
        "--api-key",
        key,
    )
    assert f"project {pid}: " in out and "1 deleted" in out, out
    export = export_rows(export_json(ls, pid))
    if inline[0] == ids[5]:  # SQLite: the stale row of the deleted task became the new one
        assert json.loads(table_rows(catalog, pid)[(pid, ids[5])]["data_json"])["row_id"] == "r20"
    assert_same(table_rows(catalog, pid), export)  # everything but source_format
    assert table_rows(catalog, other) == before_other

    # a second reconcile finds nothing to do and writes no snapshot
    out = cli(
        "labelstudio",
        "reconcile",
        str(catalog),
        "--project",
        str(pid),
        "--url",
        url,
        "--api-key",
        key,
    )
    assert out.strip() == f"project {pid}: 0 task(s) written, 0 deleted, {len(export)} unchanged", (
        out
    )

    # the receiver back up: live events apply on top of the reconciled rows
    receiver = serve(catalog)
    for hook in ls.list_webhooks(pid):
        ls.request("PATCH", f"/api/webhooks/{hook['id']}/", {"url": receiver.url})
    annotate(ls, inline[1], [box("z0", "person", 8, 8, 8, 8)], u1)
    receiver.wait_committed(1)
    export = export_rows(export_json(ls, pid))
    assert_same(table_rows(catalog, pid), export)
    receiver.stop()


# --- 4: table -> Label Studio -> export -> table gives the same results -------------------


def _results(rows: Sequence[Mapping[str, Any]], kind: str) -> list[Any]:
    """Per task: data, meta and each annotation's (or prediction's) content and results."""
    out = []
    for row in rows:
        items = []
        for obj in row[kind]:
            head: tuple[Any, ...]
            if kind == "annotations":
                head = (
                    obj["completed_by"],
                    obj["was_cancelled"],
                    obj["ground_truth"],
                    obj["lead_time"],
                )
            else:
                head = (obj["model_version"], obj["score"])
            canonical = [
                json.dumps(json.loads(r["raw_json"]), sort_keys=True) for r in obj["result"]
            ]
            items.append((head, canonical, obj["result"]))
        out.append((json.loads(row["data_json"]), json.loads(row["meta_json"] or "{}"), items))
    return out


def test_round_trip_through_a_fresh_project_gives_identical_results(
    ls: LabelStudio, users: tuple[int, int], new_project: Callable[[str], int], tmp_path: Path
) -> None:
    u1, u2 = users
    pid = new_project("live source")
    ids = ls.import_tasks(
        pid,
        [
            task(0, predictions=[prediction(0), prediction(100, "rtdetr")]),
            task(1, predictions=[prediction(1)]),
            task(2),
            task(
                3,
                annotations=[
                    {"result": [box("imp", "car", 0.5, 0.25, 99.5, 99.75)], "completed_by": u2}
                ],
            ),
        ],
    )
    annotate(
        ls,
        ids[0],
        [
            box("r0", "car", 10.1, 20.2, 30.3, 40.4),
            note("r0", 'ünï\n✓ "q"', 10.1, 20.2, 30.3, 40.4),
            quality("good"),
        ],
        u1,
        lead_time=12.5,
    )
    annotate(
        ls, ids[0], [box("r1", "person", 1e-3, 99.999, 0.001, 0.0009765625)], u2, lead_time=0.1
    )
    annotate(ls, ids[1], [], u1, was_cancelled=True)
    annotate(ls, ids[2], [quality("blurry")], u2, ground_truth=True)

    catalog = tmp_path / "catalog"
    source = tmp_path / "source.json"
    source.write_bytes(snapshot_json(ls, pid))  # full predictions
    cli("labelstudio", "import", str(catalog), str(source), "--no-progress")
    original = [r for _, r in sorted(table_rows(catalog, pid).items())]
    assert sum(len(r["annotations"]) for r in original) == 5
    assert sum(len(r["predictions"]) for r in original) == 3

    # push the table's rows (data, meta, annotations and predictions) into a fresh project
    copy_pid = new_project("live copy")
    out = cli(
        "labelstudio",
        "push",
        str(catalog),
        "--project",
        str(copy_pid),
        "--query",
        f"SELECT * FROM {TABLE} WHERE project = {pid} ORDER BY id",
        "--url",
        ls.url,
        "--api-key",
        ls.api_key,
    )
    assert out.strip() == f"project {copy_pid}: 4 task(s), 3 prediction(s), 5 annotation(s) created"
    copied = read_export(snapshot_json(ls, copy_pid)).to_pylist()
    copied.sort(key=lambda r: r["id"])
    assert len(copied) == len(original)
    for kind in ("annotations", "predictions"):
        assert _results(copied, kind) == _results(original, kind), kind
    # ... and imported into the same table, next to the original
    (tmp_path / "copy.json").write_bytes(export_json(ls, copy_pid))
    cli("labelstudio", "import", str(catalog), str(tmp_path / "copy.json"), "--no-progress")
    again = [r for _, r in sorted(table_rows(catalog, copy_pid).items())]
    assert _results(again, "annotations") == _results(original, "annotations")

    # the Python API builds the same import JSON as `spacesql labelstudio export`
    exported = cli(
        "labelstudio",
        "export",
        str(catalog),
        "--query",
        f"SELECT * FROM {TABLE} WHERE project = {pid} ORDER BY id",
    )
    assert json.loads(exported) == to_tasks(pa.Table.from_pylist(original, schema=_schema(catalog)))

    # predictions only (to label again): a query of data, meta and predictions
    relabel_pid = new_project("live relabel")
    out = cli(
        "labelstudio",
        "push",
        str(catalog),
        "--project",
        str(relabel_pid),
        "--query",
        f"SELECT data_json, meta_json, predictions FROM {TABLE} WHERE project = {pid} ORDER BY id",
        "--url",
        ls.url,
        "--api-key",
        ls.api_key,
    )
    assert "3 prediction(s), 0 annotation(s)" in out, out
    relabel = sorted(read_export(snapshot_json(ls, relabel_pid)).to_pylist(), key=lambda r: r["id"])
    assert _results(relabel, "predictions") == _results(original, "predictions")
    assert all(r["annotations"] == [] for r in relabel)


def _schema(catalog: Path) -> pa.Schema:
    with spacesql.connect(str(catalog)) as con:
        schema: pa.Schema = con.dataset(TABLE).schema
    return schema


# --- task ids re-used by Label Studio (SQLite) -------------------------------------------------


def test_a_task_id_reused_within_one_batch_is_kept(
    ls: LabelStudio,
    new_project: Callable[[str], int],
    serve: Callable[..., Serve],
    tmp_path: Path,
) -> None:
    pid = new_project("live reuse batch")
    catalog = tmp_path / "catalog"
    receiver = serve(catalog, batch_seconds=1.0)  # the delete and the import: one batch
    webhook(ls, pid, receiver)
    [old] = ls.import_tasks(pid, [task(0)])
    receiver.wait_committed(1)
    ls.request("DELETE", f"/api/tasks/{old}/")
    [new] = ls.import_tasks(pid, [task(1)])
    if new != old:
        raise RuntimeError(f"Label Studio did not re-use task id {old} (got {new}): not SQLite?")
    receiver.wait_committed(3)
    assert_same(table_rows(catalog, pid), export_rows(export_json(ls, pid)))


def test_a_task_id_reused_after_an_unseen_delete_is_a_new_task(
    ls: LabelStudio,
    users: tuple[int, int],
    new_project: Callable[[str], int],
    serve: Callable[..., Serve],
    tmp_path: Path,
) -> None:
    u1, u2 = users
    pid = new_project("live reuse unseen")
    catalog = tmp_path / "catalog"
    receiver = serve(catalog)
    webhook(ls, pid, receiver)
    ids = ls.import_tasks(pid, [task(0), task(1)])
    annotate(ls, ids[0], [box("a", "car", 1, 1, 1, 1)], u1)
    annotate(ls, ids[1], [box("b", "car", 2, 2, 2, 2)], u2)
    receiver.wait_committed(3)
    # "delete all tasks" tells organisation webhooks only: the receiver never hears of it
    ls.request("DELETE", f"/api/projects/{pid}/tasks/")
    new = ls.import_tasks(pid, [task(10), task(11)])
    if new != ids:
        raise RuntimeError(f"Label Studio did not re-use task ids {ids} (got {new}): not SQLite?")
    receiver.wait_committed(4)
    got, export = table_rows(catalog, pid), export_rows(export_json(ls, pid))
    # the rows of the re-used ids must be the new tasks (the deletion itself is reconcile's job)
    assert_same({k: got[k] for k in export}, export)
