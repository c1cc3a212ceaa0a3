"""A webhook receiver for Label Studio: acknowledge at once, commit in the background.

Label Studio posts each webhook synchronously inside the annotator's request, waits at most
one second and never retries. So the receiver answers as soon as the payload is validated and
appended to a journal file, and a committer thread applies queued events in batches (a burst
becomes one commit). The journal makes acknowledged events survive a crash of the receiver:
on start, events after the last committed journal offset are applied again (applying is
idempotent). Project secrets in payloads (``token``, ``task_data_password``, ...) never reach
the journal: only the project's id is kept.
"""

from __future__ import annotations

import gc
import hmac
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from spacesql.errors import FormatError

__all__ = [
    "APPLIED_ACTIONS",
    "Event",
    "PayloadError",
    "Receiver",
    "parse_payload",
]

log = logging.getLogger("spacesql.labelstudio")

#: Actions that change tasks; others (PROJECT_UPDATED, LABEL_LINK_*, ...) are acknowledged and
#: ignored.
APPLIED_ACTIONS = frozenset(
    {
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATIONS_CREATED",
        "ANNOTATIONS_DELETED",
        "TASKS_CREATED",
        "TASKS_DELETED",
        "PROJECT_DELETED",
    }
)
#: Shapes of the keys each applied action needs: "object", "objects" (list of objects).
_REQUIRED: Mapping[str, Mapping[str, str]] = {
    "ANNOTATION_CREATED": {"annotation": "object", "task": "object"},
    "ANNOTATION_UPDATED": {"annotation": "object", "task": "object"},
    "ANNOTATIONS_CREATED": {"annotation": "objects", "task": "objects"},
    "ANNOTATIONS_DELETED": {"annotations": "objects"},
    "TASKS_CREATED": {"tasks": "objects"},
    "TASKS_DELETED": {"tasks": "objects"},
    "PROJECT_DELETED": {"project": "object"},
}


class PayloadError(FormatError):
    """A request body that is not a Label Studio webhook payload."""


@dataclass(frozen=True)
class Event:
    """One webhook delivery, without the project's secrets.

    Attributes:
        action: Label Studio's action name.
        project: The project id (None when Label Studio did not say, as for "delete all
            tasks").
        body: The payload's task/annotation keys (``project`` removed).
        received_at: Receiver clock, seconds since the epoch (orders deletes against
            replayed creations).
        seq: Position in the journal (0 when not journaled).
    """

    action: str
    project: int | None
    body: dict[str, Any]
    received_at: float
    seq: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "seq": self.seq,
                "action": self.action,
                "project": self.project,
                "received_at": self.received_at,
                "body": self.body,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> Event:
        obj = json.loads(line)
        return cls(obj["action"], obj["project"], obj["body"], obj["received_at"], obj["seq"])


def parse_payload(body: bytes, *, received_at: float | None = None) -> Event | None:
    """Validate a webhook body. Returns None for actions that change nothing.

    Raises:
        PayloadError: Not JSON, not an object, no ``action``, or a key the action needs is
            missing or has the wrong shape; the message names the field.
    """
    try:
        obj = json.loads(body)
    except UnicodeDecodeError as exc:
        raise PayloadError(f"The body is not UTF-8 text: {exc}.") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"The body is not JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}."
        ) from None
    if not isinstance(obj, dict):
        raise PayloadError(f"The body is JSON {type(obj).__name__}, not a webhook object.")
    action = obj.get("action")
    if not isinstance(action, str) or not action:
        raise PayloadError("The body has no 'action' string: not a Label Studio webhook.")
    if action not in APPLIED_ACTIONS:
        return None
    project = _project_id(obj.get("project"))
    out: dict[str, Any] = {}
    needs = _REQUIRED[action]
    if len(obj) == 1:  # a webhook with send_payload=false: nothing to apply
        return Event(action, None, {}, received_at or time.time())
    for key, shape in needs.items():
        value = obj.get(key)
        if shape == "object":
            if not isinstance(value, dict):
                raise PayloadError(
                    f"{action}: field '{key}' must be an object, got {_kind(value)}."
                )
            if key != "project":
                _check_id(value, f"{action}: field '{key}'")
        else:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise PayloadError(
                    f"{action}: field '{key}' must be a list of objects, got {_kind(value)}."
                )
            for i, v in enumerate(value):
                _check_id(v, f"{action}: field '{key}[{i}]'")
        if key != "project":
            out[key] = _without_projects(value)
    if action == "PROJECT_DELETED" and project is None:
        raise PayloadError("PROJECT_DELETED: field 'project.id' is missing.")
    return Event(action, project, out, received_at or time.time())


def _without_projects(value: Any) -> Any:
    """Tasks and annotations with a nested ``project`` object reduced to its id (the project
    object holds its share token and storage passwords)."""
    if isinstance(value, list):
        return [_without_projects(v) for v in value]
    if isinstance(value, dict) and isinstance(value.get("project"), dict):
        return {**value, "project": _project_id(value["project"])}
    return value


def _check_id(obj: Mapping[str, Any], where: str) -> None:
    for key in ("id", "task", "project"):
        value = obj.get(key)
        if key == "id" and value is None:
            raise PayloadError(f"{where} has no 'id'.")
        if key == "project" and isinstance(value, dict):
            continue
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63
        ):
            raise PayloadError(f"{where}.{key} must be a 64-bit integer, got {value!r:.40}.")


def _project_id(value: Any) -> int | None:
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


# --- the journal -------------------------------------------------------------------------


class Journal:
    """Accepted events, appended before they are acknowledged.

    ``<dir>/events.jsonl`` holds events; ``<dir>/committed`` the highest applied ``seq``.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "events.jsonl"
        self.fsync = fsync
        #: The journal is rewritten without committed events when it grows past this.
        self.compact_bytes = 16 * 1024 * 1024
        self._lock = threading.Lock()
        self.committed = self._read_committed()
        pending = self.pending()
        self._seq = max([self.committed, *(e.seq for e in pending)])
        self._cut_torn_tail()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open

    def _cut_torn_tail(self) -> None:
        """Drop a last line a crash left half-written (it was never acknowledged), so the
        next event starts on a line of its own."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def _read_committed(self) -> int:
        try:
            return int((self.dir / "committed").read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def pending(self) -> list[Event]:
        """Journaled events not yet committed (a torn last line is ignored)."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    event = Event.from_json(line)
                except (ValueError, KeyError):
                    continue  # a line torn by a crash was never acknowledged
                if event.seq > self.committed:
                    out.append(event)
        return out

    def append(self, event: Event) -> Event:
        with self._lock:
            self._seq += 1
            event = Event(event.action, event.project, event.body, event.received_at, self._seq)
            self._file.write(event.to_json() + "\n")
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        return event

    def mark_committed(self, seq: int) -> None:
        with self._lock:
            if seq <= self.committed:
                return
            tmp = self.dir / "committed.tmp"
            tmp.write_text(str(seq))
            os.replace(tmp, self.dir / "committed")
            self.committed = seq
            if seq == self._seq:  # everything applied: start the journal afresh
                self._file.close()
                self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
            elif self._file.tell() > self.compact_bytes:
                # steady traffic never empties it: keep only what is not committed yet
                self._file.close()
                keep = [e.to_json() + "\n" for e in self.pending()]
                tmp = self.dir / "events.jsonl.tmp"
                tmp.write_text("".join(keep), encoding="utf-8")
                os.replace(tmp, self.path)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def quarantine(self, event: Event, exc: BaseException) -> None:
        """Keep an event that cannot be applied, with the error, for a person to look at."""
        with self._lock, open(self.dir / "quarantine.jsonl", "a", encoding="utf-8") as f:
            f.write(
                json.dumps(
                    {"error": f"{type(exc).__name__}: {exc}", "event": json.loads(event.to_json())}
                )
                + "\n"
            )

    def close(self) -> None:
        with self._lock:
            self._file.close()


# --- the server --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    # Label Studio posts one connection per event and never retries: a burst must queue in
    # the listen backlog, not be reset (the default backlog is 5)
    request_queue_size = 1024
    daemon_threads = True


@dataclass
class Stats:
    """Counters shown at ``GET /health``."""

    accepted: int = 0
    ignored: int = 0
    rejected: int = 0
    quarantined: int = 0
    committed: int = 0
    commits: int = 0
    last_error: str | None = None
    latencies: list[float] = field(default_factory=list)


Apply = Callable[[Sequence[Event]], None]


def _transient(exc: BaseException) -> bool:
    """Whether retrying later may help. Only errors that say the event's data is wrong
    (a spacesql data error, ValueError, TypeError, LookupError, ArithmeticError,
    AssertionError) are not: an event
    failing that way on its own is set aside instead of blocking the others."""
    from spacesql.errors import CommitConflictError, SpaceSQLError

    if isinstance(exc, CommitConflictError):
        return True
    data_errors = (
        SpaceSQLError,
        ValueError,
        TypeError,
        LookupError,
        ArithmeticError,
        AssertionError,
    )
    return not isinstance(exc, data_errors)


class Receiver:
    """The webhook receiver.

    Args:
        apply: Commits a batch of events (idempotently).
        journal_dir: Where accepted events are journaled.
        host: Bind address (loopback by default).
        port: Port (0 picks a free one).
        secret: Required value of header ``secret_header`` (compared in constant time);
            None accepts any request (only with ``allow_no_secret``).
        secret_header: The header carrying the secret. With ``Authorization``, both the bare
            secret and ``Bearer <secret>`` are accepted.
        max_body: Largest body accepted, in bytes (larger: 413, nothing read or written).
        batch_seconds: How long the committer gathers a burst before committing it.
        max_batch: Events per commit at most.
    """

    def __init__(
        self,
        apply: Apply,
        *,
        journal_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 8765,
        secret: str | None,
        secret_header: str = "Authorization",
        allow_no_secret: bool = False,
        max_body: int = 64 * 1024 * 1024,
        batch_seconds: float = 0.2,
        max_batch: int = 5000,
        fsync: bool = False,
    ) -> None:
        if not secret and not allow_no_secret:
            raise ValueError(
                "A shared secret is required: pass one (Label Studio sends it as a custom "
                "webhook header), or allow_no_secret=True to accept unauthenticated requests."
            )
        self.apply = apply
        self.journal = Journal(journal_dir, fsync=fsync)
        self.secret = secret or None
        self.secret_header = secret_header
        self.max_body = max_body
        self.batch_seconds = batch_seconds
        self.max_batch = max_batch
        self.stats = Stats()
        self._queue: queue.Queue[Event] = queue.Queue()
        self._accepting = threading.Lock()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._server = _Server((host, port), self._handler())
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []
        for event in self.journal.pending():  # accepted before a crash, not committed
            self._queue.put(event)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/"

    def start(self) -> Receiver:
        gc.freeze()  # everything imported and set up so far is long-lived
        for target in (self._server.serve_forever, self._commit_loop):
            t = threading.Thread(target=target, daemon=True, name=f"spacesql-ls-{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting, commit what was accepted (if ``drain``), and close."""
        self._server.shutdown()
        self._server.server_close()
        if drain:
            self.wait_idle(timeout=timeout)
        self._stop.set()
        for t in self._threads:
            t.join(timeout=timeout)
        self.journal.close()

    def wait_idle(self, *, timeout: float = 30.0) -> bool:
        """Wait until every accepted event is committed."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self.journal.committed < self.journal._seq or not self._queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    # --- committing ------------------------------------------------------------------

    def _apply_singly(self, batch: list[Event]) -> bool:
        """Apply events one by one, setting aside (``quarantine.jsonl``) those that fail on
        their own with an error that retrying cannot fix, so one bad event cannot block the
        others. False if an error looked transient (the batch is retried later)."""
        for event in batch:
            try:
                self.apply([event])
            except Exception as exc:
                if _transient(exc):
                    return False
                self.journal.quarantine(event, exc)
                self.stats.quarantined += 1
                log.error("webhook event %d (%s) set aside: %s", event.seq, event.action, exc)
        return True

    def _commit_loop(self) -> None:
        failures = 0
        backoff = 0.1
        batch: list[Event] = []
        while not self._stop.is_set() or batch or not self._queue.empty():
            if not batch:
                try:
                    batch.append(self._queue.get(timeout=0.1))
                except queue.Empty:
                    continue
                deadline = time.monotonic() + self.batch_seconds
                while len(batch) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        batch.append(self._queue.get(timeout=left))
                    except queue.Empty:
                        break
            try:
                self.apply(batch)
            except Exception as exc:  # keep the events; try again (never drop accepted ones)
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("committing %d webhook event(s) failed; retrying", len(batch))
                failures += 1
                if failures >= 3 and not _transient(exc) and self._apply_singly(batch):
                    failures = 0  # the events that fail on their own were set aside
                else:
                    if self._stop.wait(backoff) and backoff > 5:
                        return  # stopping, and the table keeps failing: the journal keeps them
                    backoff = min(backoff * 2, 10.0)
                    continue
            failures = 0
            # What survives a batch is long-lived (caches, the connection): keep it out of
            # later full collections, whose pauses stop every HTTP thread (they held
            # acknowledgements for 70-90 ms). Batches create no reference cycles to leak.
            gc.freeze()
            backoff = 0.1
            self.stats.committed += len(batch)
            self.stats.commits += 1
            self.journal.mark_committed(max(e.seq for e in batch))
            batch = []
            with self._idle:
                self._idle.notify_all()

    # --- HTTP --------------------------------------------------------------------------

    def _authorized(self, headers: Any) -> bool:
        if self.secret is None:
            return True
        got = headers.get(self.secret_header) or ""
        if self.secret_header.lower() == "authorization" and got.startswith("Bearer "):
            got = got[len("Bearer ") :]
        return hmac.compare_digest(got.encode(), self.secret.encode())

    def _accept(self, body: bytes) -> tuple[int, dict[str, Any]]:
        event = parse_payload(body)
        if event is None:
            self.stats.ignored += 1
            return 200, {"status": "ignored"}
        if not event.body and (event.action != "PROJECT_DELETED" or event.project is None):
            self.stats.ignored += 1
            return 202, {
                "status": "ignored",
                "reason": "the webhook sends no payload; enable send_payload or run reconcile",
            }
        with self._accepting:  # journal order == queue order, so commits mark a prefix
            event = self.journal.append(event)
            self._queue.put(event)
        self.stats.accepted += 1
        return 200, {"status": "accepted", "seq": event.seq}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "spacesql-labelstudio"
            #: A client that stops sending (or idles on keep-alive) frees its thread.
            timeout = 30

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s " + format, self.address_string(), *args)

            def _send(self, status: int, obj: Mapping[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") in ("", "/health"):
                    s = receiver.stats
                    self._send(
                        200,
                        {
                            "status": "ok",
                            "accepted": s.accepted,
                            "committed": s.committed,
                            "commits": s.commits,
                            "ignored": s.ignored,
                            "rejected": s.rejected,
                            "quarantined": s.quarantined,
                            "pending": receiver._queue.qsize(),
                            "last_error": s.last_error,
                        },
                    )
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                started = time.perf_counter()
                if not receiver._authorized(self.headers):
                    receiver.stats.rejected += 1
                    self.close_connection = True  # nothing of an unauthenticated body is read
                    self._send(401, {"error": f"missing or wrong {receiver.secret_header} header"})
                    return
                if self.headers.get("Transfer-Encoding"):
                    receiver.stats.rejected += 1
                    self.close_connection = True
                    self._send(411, {"error": "send the body with a Content-Length"})
                    return
                length = self.headers.get("Content-Length")
                if length is None or not (length.isascii() and length.isdigit()):
                    receiver.stats.rejected += 1
                    self.close_connection = True
                    self._send(411, {"error": "Content-Length is required"})
                    return
                if int(length) > receiver.max_body:
                    receiver.stats.rejected += 1
                    self.close_connection = True
                    self._send(
                        413,
                        {
                            "error": f"body of {length} bytes exceeds the limit of "
                            f"{receiver.max_body} bytes"
                        },
                    )
                    return
                body = self.rfile.read(int(length))
                try:
                    status, reply = receiver._accept(body)
                except PayloadError as exc:
                    receiver.stats.rejected += 1
                    self._send(400, {"error": str(exc)})
                    return
                self._send(status, reply)
                lat = receiver.stats.latencies
                if len(lat) < 1_000_000:
                    lat.append(time.perf_counter() - started)

        return Handler
