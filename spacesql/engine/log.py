"""The snapshot log, tags and branches: the commit protocol.

* Snapshot ids are global across branches and dense: ``0, 1, 2, ...``. Snapshot ``n + 1`` is
  committed by creating ``metadata/snapshots/<n+1>.json`` with put-if-absent; whoever creates
  it wins, a loser re-reads and retries with the next id. The record carries the head of every
  branch, so the newest record alone gives the state of all branches.
* The newest snapshot is found from a hint file, then by probing forward for ``n + 1``: the
  cost does not depend on the length of the history.
* A tag is one file ``refs/tags/<name>.json`` created with put-if-absent (so two writers
  cannot both create it) and removed by deleting it. A branch is one file
  ``refs/branches/<name>.json`` holding a unique id and the snapshot it starts from; its head
  is in the newest snapshot record under that unique id (a branch removed and created again
  under the same name does not inherit the old head).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from spacesql.engine.format import (
    BRANCH_DIR,
    LATEST_HINT,
    MAIN_BRANCH,
    SNAPSHOT_DIR,
    TAG_DIR,
    Head,
    SnapshotRecord,
    dumps,
    loads,
    snapshot_path,
)
from spacesql.engine.store import LocalStore
from spacesql.errors import FormatError, NotFoundError, SchemaError, SnapshotNotFoundError

__all__ = ["Branch", "SnapshotLog", "Version", "check_ref_name"]

#: What names a version: a snapshot id, a tag or branch name, or a point in time.
Version = int | str | dt.datetime

MAIN_UID = "main"


@dataclass(frozen=True)
class Branch:
    name: str
    uid: str
    start_snapshot: int


def is_ref_name(name: object) -> bool:
    """Whether ``name`` can name a tag or branch (and so a file under ``refs/``).

    >>> is_ref_name("v1"), is_ref_name("../x"), is_ref_name("12")
    (True, False, False)
    """
    return (
        isinstance(name, str)
        and bool(name)
        and all(c.isalnum() or c in "_-." for c in name)
        and not name.startswith(".")
        and not name.isdigit()
    )


def check_ref_name(name: object, what: str) -> str:
    """Validate a tag or branch name.

    >>> check_ref_name("after_append", "tag")
    'after_append'
    """
    if not isinstance(name, str) or not name:
        raise SchemaError(f"A {what} name must be a non-empty string, got {name!r}.")
    ok = all(c.isalnum() or c in "_-." for c in name) and not name.startswith(".")
    if not ok or name.isdigit():
        raise SchemaError(
            f"Invalid {what} name {name!r}: use letters, digits, '_', '-' or '.', not only "
            "digits (those are snapshot ids), and no leading '.'."
        )
    return name


class SnapshotLog:
    """Reads and appends snapshot records and refs of one dataset."""

    def __init__(self, store: LocalStore, *, name: str) -> None:
        self.store = store
        self.name = name
        #: id -> (file size and mtime, record). Records are written once, but snapshot expiry
        #: (maybe in another process) turns them into tombstones or adds a checkpoint, so a
        #: cached record is used only while its file is unchanged (one stat per read).
        self._cache: dict[int, tuple[tuple[int, int], SnapshotRecord]] = {}

    # --- snapshots ---------------------------------------------------------------------

    def read(self, snapshot_id: int) -> SnapshotRecord:
        """The record of a snapshot (cached while its file is unchanged)."""
        rel = snapshot_path(snapshot_id)
        try:
            stamp = self.store.stamp(rel)
        except FileNotFoundError:
            raise SnapshotNotFoundError(self._unknown_message(snapshot_id)) from None
        hit = self._cache.get(snapshot_id)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        record = self._read_file(snapshot_id)
        if len(self._cache) > 8192:
            self._cache.clear()
        self._cache[snapshot_id] = (stamp, record)
        return record

    def clear_cache(self) -> None:
        self._cache.clear()

    def _read_file(self, snapshot_id: int) -> SnapshotRecord:
        rel = snapshot_path(snapshot_id)
        try:
            data = self.store.read_bytes(rel)
        except FileNotFoundError:
            raise SnapshotNotFoundError(self._unknown_message(snapshot_id)) from None
        if loads(data, rel).get("expired"):
            raise SnapshotNotFoundError(
                f"Snapshot {snapshot_id} of dataset '{self.name}' was expired by maintenance; "
                "see ds.versions() for the snapshots that remain."
            )
        return SnapshotRecord.from_json(data, rel)

    def expire(self, snapshot_id: int) -> None:
        """Replace a record by a tombstone: its id stays taken, so ids stay dense and the
        newest snapshot is still found by probing forward."""
        self.store.replace(
            snapshot_path(snapshot_id), dumps({"snapshot_id": snapshot_id, "expired": True})
        )
        self._cache.pop(snapshot_id, None)

    def exists(self, snapshot_id: int) -> bool:
        return self.store.exists(snapshot_path(snapshot_id))

    def latest(self) -> SnapshotRecord:
        """The newest snapshot: hint, then probe forward until an id is missing."""
        n = self._hint()
        if not self.exists(n):
            # The hint points at an expired snapshot (or nothing): fall back to listing.
            ids = self.list_ids()
            if not ids:
                raise FormatError(f"{self.name}: no snapshot records; this is not a dataset.")
            n = ids[-1]
        while self.exists(n + 1):
            n += 1
        return self.read(n)

    def _hint(self) -> int:
        try:
            return int(loads(self.store.read_bytes(LATEST_HINT), LATEST_HINT)["snapshot_id"])
        except (FileNotFoundError, FormatError, KeyError, TypeError, ValueError):
            return 0

    def list_ids(self) -> list[int]:
        ids = []
        for name in self.store.list_dir(SNAPSHOT_DIR):
            stem, dot, ext = name.partition(".")
            if dot and ext == "json" and stem.isdigit():
                ids.append(int(stem))
        return sorted(ids)

    def try_commit(self, record: SnapshotRecord) -> bool:
        """Create the record if its id is free: the commit point. False if taken."""
        if not self.store.put_if_absent(snapshot_path(record.snapshot_id), record.to_json()):
            return False
        # Committed. The hint is only a shortcut: failing to update it must not fail the commit.
        try:
            if self._hint() < record.snapshot_id:
                self.store.replace(LATEST_HINT, dumps({"snapshot_id": record.snapshot_id}))
        except OSError:
            pass
        return True

    def _unknown_message(self, version: object) -> str:
        try:
            latest = self.latest().snapshot_id
            tags = ", ".join(f"{t} -> {s}" for t, s in sorted(self.tags().items())) or "none"
            return (
                f"Dataset '{self.name}' has no version {version!r} (latest snapshot is "
                f"{latest}; tags: {tags}). See ds.versions() for what exists."
            )
        except FormatError:
            return f"Dataset '{self.name}' has no version {version!r}."

    # --- branches ----------------------------------------------------------------------

    def branches(self) -> dict[str, Branch]:
        out = {MAIN_BRANCH: Branch(MAIN_BRANCH, MAIN_UID, 0)}
        for fname in self.store.list_dir(BRANCH_DIR):
            if not fname.endswith(".json"):
                continue
            name = fname[: -len(".json")]
            try:
                obj = loads(self.store.read_bytes(f"{BRANCH_DIR}/{fname}"), fname)
            except FileNotFoundError:
                continue  # removed meanwhile
            out[name] = Branch(name, obj["uid"], int(obj["start_snapshot"]))
        return out

    def branch(self, name: str) -> Branch:
        if name == MAIN_BRANCH:
            return Branch(MAIN_BRANCH, MAIN_UID, 0)
        if not is_ref_name(name):
            raise NotFoundError(f"Dataset '{self.name}' has no branch {name!r}.")
        rel = f"{BRANCH_DIR}/{name}.json"
        try:
            obj = loads(self.store.read_bytes(rel), rel)
        except FileNotFoundError:
            known = ", ".join(sorted(self.branches()))
            raise NotFoundError(
                f"Dataset '{self.name}' has no branch {name!r} (branches: {known}). "
                "Create it with add_branch()."
            ) from None
        return Branch(name, obj["uid"], int(obj["start_snapshot"]))

    def head(self, branch: Branch, latest: SnapshotRecord) -> int:
        """The head snapshot id of a branch as of the given newest record."""
        h = latest.heads.get(branch.name)
        if h is not None and h.uid == branch.uid:
            return h.snapshot_id
        return branch.start_snapshot

    def next_heads(self, latest: SnapshotRecord, branch: Branch, new_id: int) -> dict[str, Head]:
        live = self.branches()
        heads = {
            name: h for name, h in latest.heads.items() if name in live and live[name].uid == h.uid
        }
        heads[branch.name] = Head(branch.uid, new_id)
        return heads

    def add_branch(self, name: str, start_snapshot: int) -> None:
        check_ref_name(name, "branch")
        if self.tag(name) is not None:
            raise SchemaError(
                f"Dataset '{self.name}' has a tag {name!r}; tags and branches share one "
                "namespace, pick another name."
            )
        if name == MAIN_BRANCH or not self.store.put_if_absent(
            f"{BRANCH_DIR}/{name}.json",
            dumps({"uid": uuid.uuid4().hex, "start_snapshot": start_snapshot}),
        ):
            raise SchemaError(
                f"Dataset '{self.name}' already has a branch {name!r}; pick another name or "
                "remove_branch() it first."
            )

    def remove_branch(self, name: str) -> None:
        if name == MAIN_BRANCH:
            raise SchemaError("The main branch cannot be removed.")
        self.branch(name)
        self.store.delete(f"{BRANCH_DIR}/{name}.json")

    # --- tags --------------------------------------------------------------------------

    def tags(self) -> dict[str, int]:
        out = {}
        for fname in self.store.list_dir(TAG_DIR):
            if not fname.endswith(".json"):
                continue
            try:
                obj = loads(self.store.read_bytes(f"{TAG_DIR}/{fname}"), fname)
            except FileNotFoundError:
                continue
            out[fname[: -len(".json")]] = int(obj["snapshot_id"])
        return out

    def tag(self, name: str) -> int | None:
        if not is_ref_name(name):
            return None  # never turn arbitrary text into a path
        rel = f"{TAG_DIR}/{name}.json"
        try:
            return int(loads(self.store.read_bytes(rel), rel)["snapshot_id"])
        except FileNotFoundError:
            return None

    def add_tag(self, name: str, snapshot_id: int) -> None:
        check_ref_name(name, "tag")
        if name in self.branches():
            raise SchemaError(
                f"Dataset '{self.name}' has a branch {name!r}; tags and branches share one "
                "namespace, pick another name."
            )
        if not self.store.put_if_absent(
            f"{TAG_DIR}/{name}.json", dumps({"snapshot_id": snapshot_id})
        ):
            raise SchemaError(
                f"Dataset '{self.name}' already has a tag {name!r} (-> {self.tag(name)}); "
                "remove_tag() it first or pick another name."
            )

    def remove_tag(self, name: str) -> None:
        if self.tag(name) is None:
            raise NotFoundError(
                f"Dataset '{self.name}' has no tag {name!r} (tags: "
                f"{', '.join(sorted(self.tags())) or 'none'})."
            )
        self.store.delete(f"{TAG_DIR}/{name}.json")
