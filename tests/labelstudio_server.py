"""Drive a real Label Studio server from tests, with the standard library only.

This is a helper module, not a test file. It talks to a server started by
``scripts/labelstudio/start.sh`` (or any Label Studio reachable with a legacy API token) through
its REST API using :mod:`urllib`, so it runs in the project's virtualenv without
``label-studio-sdk``. The server itself lives in its own virtualenv (see
``scripts/labelstudio/README.md``).

Example:
    >>> ls = LabelStudio.from_env()            # LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY
    >>> ls.wait_for_health(timeout=60)
    >>> project = ls.create_project("demo", TEXT_CLASSIFICATION_CONFIG)
    >>> task_ids = ls.import_tasks(project["id"], [{"text": "hello"}])
    >>> ls.create_annotation(task_ids[0], [choice_result("Positive")])
    >>> tasks = ls.export_json(project["id"])

Every server object comes back as a plain ``dict`` decoded from JSON: treat it as open, Label
Studio adds keys between versions.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast

URL_ENV = "LABEL_STUDIO_URL"
API_KEY_ENV = "LABEL_STUDIO_API_KEY"
# The defaults of scripts/labelstudio/start.sh.
DEFAULT_URL = "http://127.0.0.1:8089"
DEFAULT_API_KEY = "0123456789abcdef0123456789abcdef01234567"

TEXT_CLASSIFICATION_CONFIG = """\
<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text">
    <Choice value="Positive"/>
    <Choice value="Negative"/>
    <Choice value="Neutral"/>
  </Choices>
</View>
"""

# Never send loopback traffic through an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

JsonObject = dict[str, Any]


class LabelStudioError(RuntimeError):
    """A Label Studio API call answered with an HTTP error status.

    Attributes:
        method: HTTP method of the failed call.
        url: Full URL of the failed call.
        status: HTTP status code.
        body: Response body, decoded as UTF-8 (with replacement characters), cut to 2000 chars.
    """

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        """Builds the error from the failed call.

        Args:
            method: HTTP method of the failed call.
            url: Full URL of the failed call.
            status: HTTP status code.
            body: Response body text.
        """
        self.method = method
        self.url = url
        self.status = status
        self.body = body[:2000]
        super().__init__(f"{method} {url} -> HTTP {status}: {self.body[:300]}")


def server_url() -> str:
    """Returns the server URL from ``$LABEL_STUDIO_URL``, else the start.sh default.

    Returns:
        The base URL without a trailing slash, e.g. ``http://127.0.0.1:8089``.
    """
    return (os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def server_api_key() -> str:
    """Returns the legacy API token from ``$LABEL_STUDIO_API_KEY``, else the start.sh default.

    Returns:
        The token sent as ``Authorization: Token <key>``.
    """
    return os.environ.get(API_KEY_ENV) or DEFAULT_API_KEY


def is_up(url: str | None = None, timeout: float = 1.0) -> bool:
    """Tells whether ``GET <url>/health`` answers 2xx right now.

    Args:
        url: Base URL of the server; defaults to :func:`server_url`.
        timeout: Seconds to wait for the answer.

    Returns:
        True if the server answered its health check.
    """
    base = (url or server_url()).rstrip("/")
    try:
        with _OPENER.open(f"{base}/health", timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (OSError, ValueError):  # URLError and HTTPError are OSErrors
        return False


def wait_for_health(url: str | None = None, timeout: float = 60.0, interval: float = 0.25) -> None:
    """Polls ``GET <url>/health`` until it answers 2xx.

    Args:
        url: Base URL of the server; defaults to :func:`server_url`.
        timeout: Seconds to wait in total.
        interval: Seconds between two attempts.

    Raises:
        TimeoutError: The server did not answer within ``timeout`` seconds.
    """
    base = (url or server_url()).rstrip("/")
    deadline = time.monotonic() + timeout
    while not is_up(base, timeout=min(2.0, max(interval, 0.1))):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Label Studio at {base} not healthy after {timeout:g} s")
        time.sleep(interval)


def choice_result(choice: str, from_name: str = "sentiment", to_name: str = "text") -> JsonObject:
    """Builds one ``choices`` result item, as the Label Studio UI would submit it.

    Args:
        choice: The selected choice value.
        from_name: Name of the ``<Choices>`` control.
        to_name: Name of the object tag it labels.

    Returns:
        A result item for :meth:`LabelStudio.create_annotation`.
    """
    return {
        "from_name": from_name,
        "to_name": to_name,
        "type": "choices",
        "value": {"choices": [choice]},
    }


@dataclass(frozen=True)
class Response:
    """A raw HTTP answer.

    Attributes:
        status: HTTP status code.
        headers: Response headers (last value wins for repeated names).
        body: Raw response body.
    """

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Decodes the body as JSON.

        Returns:
            The decoded value, or None for an empty body.
        """
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class LabelStudio:
    """A minimal Label Studio REST client authenticated with a legacy API token.

    Attributes:
        url: Base URL of the server, without a trailing slash.
        api_key: Legacy API token (``Authorization: Token <api_key>``).
        timeout: Seconds to wait for each HTTP answer.
    """

    url: str = field(default_factory=server_url)
    api_key: str = field(default_factory=server_api_key)
    timeout: float = 30.0

    @classmethod
    def from_env(cls) -> LabelStudio:
        """Builds a client from ``$LABEL_STUDIO_URL`` and ``$LABEL_STUDIO_API_KEY``.

        Returns:
            A client; the start.sh defaults fill in unset variables.
        """
        return cls(url=server_url(), api_key=server_api_key())

    # --- transport ----------------------------------------------------------------------------

    def request_raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
    ) -> Response:
        """Sends one API call and returns the raw answer.

        Args:
            method: HTTP method.
            path: Path below the base URL, e.g. ``/api/projects/``.
            body: JSON-serialisable request body, or None for no body.
            query: Query parameters; a sequence of pairs allows repeated keys (``ids[]``).

        Returns:
            The answer, for any 2xx status.

        Raises:
            LabelStudioError: The server answered with a non-2xx status.
            urllib.error.URLError: The server could not be reached.
        """
        url = f"{self.url.rstrip('/')}/{path.lstrip('/')}"
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Token {self.api_key}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                return Response(
                    int(response.status), dict(response.headers.items()), response.read()
                )
        except urllib.error.HTTPError as error:
            with error:
                text = error.read().decode("utf-8", "replace")
            raise LabelStudioError(method, url, error.code, text) from None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
    ) -> Any:
        """Sends one API call and decodes its JSON answer.

        Args:
            method: HTTP method.
            path: Path below the base URL.
            body: JSON-serialisable request body, or None.
            query: Query parameters.

        Returns:
            The decoded JSON answer, or None for an empty body (e.g. 204 after DELETE).

        Raises:
            LabelStudioError: The server answered with a non-2xx status.
        """
        return self.request_raw(method, path, body, query).json()

    # --- server -------------------------------------------------------------------------------

    def is_up(self) -> bool:
        """Tells whether the server answers its health check now.

        Returns:
            True if ``GET /health`` answered 2xx.
        """
        return is_up(self.url)

    def wait_for_health(self, timeout: float = 60.0) -> None:
        """Waits until the server answers its health check.

        Args:
            timeout: Seconds to wait in total.

        Raises:
            TimeoutError: The server did not answer in time.
        """
        wait_for_health(self.url, timeout=timeout)

    def whoami(self) -> JsonObject:
        """Returns the user the API token belongs to.

        Returns:
            The user object (``id``, ``email``, ...).
        """
        return cast(JsonObject, self.request("GET", "/api/current-user/whoami"))

    # --- users --------------------------------------------------------------------------------

    def create_user(
        self,
        email: str,
        *,
        first_name: str = "",
        last_name: str = "",
        password: str = "password12345",
        username: str | None = None,
    ) -> JsonObject:
        """Creates a user in the admin's organisation.

        Args:
            email: Email (the login).
            first_name: First name.
            last_name: Last name.
            password: Password.
            username: Username; defaults to the part of ``email`` before ``@``.

        Returns:
            The new user object; its ``id`` is what ``completed_by`` takes.
        """
        body = {
            "email": email,
            "username": username or email.split("@", 1)[0],
            "first_name": first_name,
            "last_name": last_name,
            "password": password,
        }
        return cast(JsonObject, self.request("POST", "/api/users/", body))

    def find_user(self, email: str) -> JsonObject | None:
        """Finds a user by email.

        Args:
            email: Email to look for (case-insensitive).

        Returns:
            The user object, or None if there is none.
        """
        users = self.request("GET", "/api/users/")
        if isinstance(users, dict):  # paginated on some versions
            users = users.get("results", [])
        for user in cast(list[JsonObject], users):
            if str(user.get("email", "")).lower() == email.lower():
                return user
        return None

    def ensure_user(self, email: str, **fields: Any) -> JsonObject:
        """Returns the user with this email, creating it first if needed.

        Args:
            email: Email (the login).
            **fields: Passed to :meth:`create_user` when the user is created.

        Returns:
            The user object.
        """
        return self.find_user(email) or self.create_user(email, **fields)

    # --- projects and tasks -------------------------------------------------------------------

    def create_project(self, title: str, label_config: str, **fields: Any) -> JsonObject:
        """Creates a project.

        Args:
            title: Project title (Label Studio wants at least 3 characters).
            label_config: The labeling config XML.
            **fields: More project fields (``description``, ``model_version``, ...).

        Returns:
            The project object.
        """
        body = {"title": title, "label_config": label_config, **fields}
        return cast(JsonObject, self.request("POST", "/api/projects/", body))

    def delete_project(self, project_id: int) -> None:
        """Deletes a project with its tasks and annotations.

        Args:
            project_id: Project id.
        """
        self.request("DELETE", f"/api/projects/{project_id}/")

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Imports tasks through ``POST /api/projects/{id}/import`` (synchronous in Community).

        Args:
            project_id: Project id.
            tasks: Tasks as Label Studio accepts them: ``{"data": {...}, "meta": ...,
                "predictions": [...], "annotations": [...]}`` or a bare data dict. ``data`` must
                hold every ``$variable`` of the labeling config (else HTTP 400).

        Returns:
            The ids of the created tasks, in import order.
        """
        answer = self.request(
            "POST",
            f"/api/projects/{project_id}/import",
            list(tasks),
            query={"return_task_ids": "true"},
        )
        return [int(task_id) for task_id in answer["task_ids"]]

    def get_task(self, task_id: int) -> JsonObject:
        """Returns one task.

        Args:
            task_id: Task id.

        Returns:
            The task object.
        """
        return cast(JsonObject, self.request("GET", f"/api/tasks/{task_id}/"))

    # --- annotations --------------------------------------------------------------------------

    def create_annotation(
        self,
        task_id: int,
        result: Sequence[Mapping[str, Any]],
        *,
        completed_by: int | None = None,
        **fields: Any,
    ) -> JsonObject:
        """Submits an annotation, as the UI's Submit button does (fires ANNOTATION_CREATED).

        Args:
            task_id: Task id.
            result: Result items (see :func:`choice_result`).
            completed_by: Id of the user the annotation is attributed to; the token's user if
                None.
            **fields: More annotation fields (``lead_time``, ``was_cancelled``, ``ground_truth``).

        Returns:
            The annotation object.
        """
        body: JsonObject = {"result": list(result), **fields}
        if completed_by is not None:
            body["completed_by"] = completed_by
        return cast(JsonObject, self.request("POST", f"/api/tasks/{task_id}/annotations/", body))

    def update_annotation(self, annotation_id: int, **fields: Any) -> JsonObject:
        """Patches an annotation (fires ANNOTATION_UPDATED).

        Args:
            annotation_id: Annotation id.
            **fields: Fields to change, e.g. ``result=[...]``.

        Returns:
            The updated annotation object.
        """
        return cast(
            JsonObject, self.request("PATCH", f"/api/annotations/{annotation_id}/", dict(fields))
        )

    def delete_annotation(self, annotation_id: int) -> None:
        """Deletes an annotation (fires ANNOTATIONS_DELETED).

        Args:
            annotation_id: Annotation id.
        """
        self.request("DELETE", f"/api/annotations/{annotation_id}/")

    # --- webhooks -----------------------------------------------------------------------------

    def create_webhook(
        self,
        project_id: int,
        url: str,
        *,
        actions: Iterable[str] | None = None,
        headers: Mapping[str, str] | None = None,
        send_payload: bool = True,
        is_active: bool = True,
    ) -> JsonObject:
        """Creates a project-level webhook.

        A receiver on 127.0.0.1 needs the server started with ``SSRF_PROTECTION_ENABLED=false``
        (start.sh does that); otherwise this answers HTTP 403.

        Args:
            project_id: Project id (required by the API in 1.23).
            url: Receiver URL.
            actions: Actions to send (e.g. ``["ANNOTATION_CREATED"]``); all actions if None.
            headers: Extra headers sent with every delivery (at most 10).
            send_payload: False sends only ``{"action": ...}``.
            is_active: False creates it disabled.

        Returns:
            The webhook object.
        """
        action_list = list(actions) if actions is not None else []
        body: JsonObject = {
            "project": project_id,
            "url": url,
            "send_payload": send_payload,
            "send_for_all_actions": not action_list,
            "actions": action_list,
            "headers": dict(headers or {}),
            "is_active": is_active,
        }
        return cast(JsonObject, self.request("POST", "/api/webhooks/", body))

    def list_webhooks(self, project_id: int | None = None) -> list[JsonObject]:
        """Lists webhooks.

        Args:
            project_id: Only this project's webhooks if given.

        Returns:
            The webhook objects.
        """
        query = {"project": project_id} if project_id is not None else None
        return cast(list[JsonObject], self.request("GET", "/api/webhooks/", query=query))

    def delete_webhook(self, webhook_id: int) -> None:
        """Deletes a webhook.

        Args:
            webhook_id: Webhook id.
        """
        self.request("DELETE", f"/api/webhooks/{webhook_id}/")

    # --- export -------------------------------------------------------------------------------

    def export(
        self,
        project_id: int,
        export_type: str = "JSON",
        *,
        download_all_tasks: bool = True,
        task_ids: Iterable[int] | None = None,
    ) -> Response:
        """Calls the synchronous export ``GET /api/projects/{id}/export``.

        Args:
            project_id: Project id.
            export_type: ``JSON``, ``JSON_MIN``, ``CSV``, ``TSV``, ``COCO``, ``YOLO``, ...
            download_all_tasks: True includes unannotated tasks (the API default is False).
            task_ids: Only these tasks (``ids[]=``) if given.

        Returns:
            The raw answer; ``headers["Content-Disposition"]`` carries the file name.
        """
        query: list[tuple[str, Any]] = [
            ("exportType", export_type),
            ("download_all_tasks", "true" if download_all_tasks else "false"),
        ]
        query += [("ids[]", task_id) for task_id in task_ids or ()]
        return self.request_raw("GET", f"/api/projects/{project_id}/export", query=query)

    def export_json(
        self,
        project_id: int,
        *,
        download_all_tasks: bool = True,
        task_ids: Iterable[int] | None = None,
    ) -> list[JsonObject]:
        """Exports a project as Label Studio JSON (one object per task, annotations inside).

        Args:
            project_id: Project id.
            download_all_tasks: True includes unannotated tasks.
            task_ids: Only these tasks if given.

        Returns:
            The task objects.
        """
        response = self.export(
            project_id, "JSON", download_all_tasks=download_all_tasks, task_ids=task_ids
        )
        return cast(list[JsonObject], response.json())


@dataclass(frozen=True)
class Delivery:
    """One webhook request received by :class:`WebhookReceiver`.

    Attributes:
        path: Request path (with query string).
        headers: Request headers.
        body: Decoded JSON body (None if the body was not JSON).
        raw: Raw body.
        received_at: ``time.monotonic()`` at arrival.
    """

    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    received_at: float

    @property
    def action(self) -> str | None:
        """The ``action`` of the payload (``ANNOTATION_CREATED``, ...), if any."""
        if isinstance(self.body, dict):
            action = self.body.get("action")
            return action if isinstance(action, str) else None
        return None


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True
    receiver: WebhookReceiver


class _ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        receiver = cast(_ReceiverServer, self.server).receiver
        # Record before answering: Label Studio delivers synchronously inside the API call, so
        # the delivery is visible as soon as that call returns.
        receiver._record(
            Delivery(self.path, dict(self.headers.items()), body, raw, time.monotonic())
        )
        self.send_response(receiver.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Keeps the test output quiet."""


class WebhookReceiver:
    """A tiny webhook listener on 127.0.0.1 that records every POST it gets.

    Use it as a context manager; it serves from a background thread and answers every POST with
    ``status`` (200 by default) right away.

    Example:
        >>> with WebhookReceiver() as receiver:
        ...     ls.create_webhook(project_id, receiver.url, actions=["ANNOTATION_CREATED"])
        ...     ls.create_annotation(task_id, [choice_result("Positive")])
        ...     delivery = receiver.wait_for("ANNOTATION_CREATED", timeout=5)

    Attributes:
        host: Address it listens on.
        status: HTTP status it answers with.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, status: int = 200) -> None:
        """Prepares the listener; nothing is bound before :meth:`start`.

        Args:
            host: Address to listen on (keep it on loopback).
            port: Port; 0 picks a free one.
            status: HTTP status to answer with.
        """
        self.host = host
        self.status = status
        self._port = port
        self._server: _ReceiverServer | None = None
        self._thread: threading.Thread | None = None
        self._deliveries: list[Delivery] = []
        self._changed = threading.Condition()

    @property
    def url(self) -> str:
        """The URL to register as the webhook target (valid after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("WebhookReceiver is not started")
        port = self._server.server_address[1]
        return f"http://{self.host}:{port}/"

    @property
    def deliveries(self) -> list[Delivery]:
        """A copy of the deliveries received so far, in arrival order."""
        with self._changed:
            return list(self._deliveries)

    def start(self) -> WebhookReceiver:
        """Binds the port and serves in a daemon thread.

        Returns:
            self.
        """
        server = _ReceiverServer((self.host, self._port), _ReceiverHandler)
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(self, delivery: Delivery) -> None:
        with self._changed:
            self._deliveries.append(delivery)
            self._changed.notify_all()

    def wait_for(self, action: str, timeout: float = 10.0, count: int = 1) -> list[Delivery]:
        """Waits until ``count`` deliveries with this ``action`` have arrived.

        Args:
            action: Payload action, e.g. ``ANNOTATION_CREATED``.
            timeout: Seconds to wait in total.
            count: How many such deliveries to wait for.

        Returns:
            All deliveries with that action so far (at least ``count``).

        Raises:
            TimeoutError: Fewer than ``count`` arrived in time.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [d for d in self._deliveries if d.action == action]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [d.action for d in self._deliveries]
                    raise TimeoutError(
                        f"{len(found)}/{count} {action} deliveries after {timeout} s; got {seen}"
                    )
                self._changed.wait(remaining)
