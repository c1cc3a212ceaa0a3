"""Access to the files of one dataset, addressed by paths relative to its root.

The commit protocol needs exactly two primitives beyond plain reads and writes:

* ``put_if_absent``: create a file with its full content, failing if it exists. On a local
  filesystem this is ``link(2)`` of a fully written temporary file (atomic, and the content is
  complete before the name appears). On object stores it is a conditional PUT
  (``If-None-Match: *``), supported by S3, GCS and Azure.
* ``replace``: overwrite a small file atomically (``rename(2)`` locally, a plain PUT on
  object stores): the newest-snapshot hint (staleness is harmless), and snapshot expiry's
  tombstones and checkpointed records (maintenance, not part of commits).

Everything else (data files, manifests) is written under fresh unique names and never
overwritten, so it needs no coordination.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LocalStore"]


class LocalStore:
    """Files of one dataset on a local (or locally mounted) filesystem.

    Args:
        root: The dataset's directory. All other paths are relative to it.
        durable: fsync files and directories on commit-critical writes.
    """

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root).absolute()
        self.durable = durable

    def abs(self, rel: str) -> str:
        """The absolute path of a relative one."""
        return str(self.root / rel)

    def exists(self, rel: str) -> bool:
        return os.path.exists(self.abs(rel))

    def stamp(self, rel: str) -> tuple[int, int]:
        """Size and modification time (ns): changes whenever the file is replaced."""
        st = os.stat(self.abs(rel))
        return st.st_size, st.st_mtime_ns

    def read_bytes(self, rel: str) -> bytes:
        with open(self.abs(rel), "rb") as f:
            return f.read()

    def makedirs(self, rel: str) -> None:
        os.makedirs(self.abs(rel), exist_ok=True)

    def _write_temp(self, rel: str, data: bytes) -> str:
        target = self.abs(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        return tmp

    def _sync_dir(self, rel: str) -> None:
        if not self.durable:
            return
        fd = os.open(os.path.dirname(self.abs(rel)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put_if_absent(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` atomically; False if it already exists."""
        tmp = self._write_temp(rel, data)
        try:
            os.link(tmp, self.abs(rel))
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        # The file exists: the operation happened. A failed directory sync cannot undo it,
        # so it must not be reported as a failure.
        with contextlib.suppress(OSError):
            self._sync_dir(rel)
        return True

    def replace(self, rel: str, data: bytes) -> None:
        """Overwrite ``rel`` atomically (readers see the old or the new content)."""
        tmp = self._write_temp(rel, data)
        os.replace(tmp, self.abs(rel))

    def write_new(self, rel: str, data: bytes) -> None:
        """Write a file under a fresh name nobody else uses."""
        target = self.abs(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)

    def sync_file(self, rel: str) -> None:
        """Make a written file durable before it is referenced by a commit."""
        if not self.durable:
            return
        fd = os.open(self.abs(rel), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.abs(rel))

    def list_dir(self, rel: str) -> list[str]:
        """Names (not paths) in a directory; empty if it does not exist."""
        try:
            return sorted(os.listdir(self.abs(rel)))
        except FileNotFoundError:
            return []

    def walk_files(self, rel: str) -> Iterator[tuple[str, float]]:
        """Every file below ``rel`` as (relative path, modification time)."""
        base = self.abs(rel)
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = os.path.join(dirpath, name)
                try:
                    mtime = os.stat(full).st_mtime
                except FileNotFoundError:
                    continue
                yield os.path.relpath(full, self.root).replace(os.sep, "/"), mtime
