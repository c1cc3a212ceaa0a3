"""The few Label Studio REST calls spacesql needs (standard library only).

``label-studio-sdk`` is not required: it pulls pandas, opencv and more, for three endpoints.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from spacesql.errors import SpaceSQLError

__all__ = ["LabelStudioClient", "LabelStudioError"]


class LabelStudioError(SpaceSQLError, RuntimeError):
    """A Label Studio API call failed; the message has the URL, status and body."""


class LabelStudioClient:
    """A Label Studio server.

    Args:
        url: Base URL (default: ``$LABEL_STUDIO_URL``).
        api_key: A legacy token (default: ``$LABEL_STUDIO_API_KEY``), sent as
            ``Authorization: Token <key>``. Personal access tokens (JWT) are exchanged for an
            access token first.
        timeout: Seconds per request.
    """

    def __init__(
        self, url: str | None = None, *, api_key: str | None = None, timeout: float = 300.0
    ) -> None:
        url = url or os.environ.get("LABEL_STUDIO_URL")
        key = api_key or os.environ.get("LABEL_STUDIO_API_KEY")
        if not url or not key:
            raise LabelStudioError(
                "Label Studio's URL and API key are needed: pass --url/--api-key or set "
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY."
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._auth = f"Token {key}"
        # loopback servers must not go through a proxy configured for the internet
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        if key.count(".") == 2:  # a personal access token (JWT refresh token)
            access = self._call("POST", "/api/token/refresh/", {"refresh": key}, auth=False)
            self._auth = f"Bearer {json.loads(access)['access']}"

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Sequence[tuple[str, str]] = (),
        auth: bool = True,
    ) -> bytes:
        url = self.url + path + ("?" + urllib.parse.urlencode(list(query)) if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", self._auth)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            raise LabelStudioError(
                f"{method} {url} failed with HTTP {exc.code}: {detail}"
            ) from None
        except urllib.error.URLError as exc:
            raise LabelStudioError(f"{method} {url} failed: {exc.reason}") from None

    def export(self, project: int, *, export_type: str = "JSON", all_tasks: bool = True) -> bytes:
        """A project's export (every task, with annotations and drafts)."""
        query = [("exportType", export_type)]
        if all_tasks:
            query.append(("download_all_tasks", "true"))
        return self._call("GET", f"/api/projects/{int(project)}/export", query=query)

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        """Create tasks (with their predictions or annotations) in a project."""
        raw = self._call(
            "POST",
            f"/api/projects/{int(project)}/import",
            tasks,
            query=[("return_task_ids", "true")],
        )
        reply: dict[str, Any] = json.loads(raw)
        return reply

    def label_config(self, project: int) -> str:
        """A project's labeling config (XML)."""
        raw = json.loads(self._call("GET", f"/api/projects/{int(project)}/"))
        return str(raw.get("label_config", ""))
