"""A catalog is a directory whose subdirectories are datasets, addressed by name."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from spacesql.engine import Dataset
from spacesql.engine.format import DATASET_FILE
from spacesql.errors import SchemaError, TableNotFoundError

__all__ = ["HIDDEN_PREFIX", "VIEW_FILE", "Catalog", "is_hidden"]

#: A materialized view's definition, inside its dataset directory (written once).
VIEW_FILE = "metadata/view.json"
#: Columns holding a materialized view's own state; never shown by the SQL views.
HIDDEN_PREFIX = "__spacesql_"


def is_hidden(column: str) -> bool:
    """Whether a column is internal state of a materialized view.

    >>> is_hidden("__spacesql_n"), is_hidden("label")
    (True, False)
    """
    return column.startswith(HIDDEN_PREFIX)


def check_name(name: str) -> str:
    """Dataset names are directory names: letters, digits and underscores.

    >>> check_name("images")
    'images'
    """
    if not name or not all(c.isalnum() or c == "_" for c in name) or name[0].isdigit():
        raise SchemaError(
            f"Invalid table name {name!r}: use letters, digits and '_', not starting with a digit."
        )
    return name


class Catalog:
    """Datasets stored under one directory.

    Args:
        path: The catalog directory (created if missing).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self.path.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, tuple[tuple[int, int, int], Dataset]] = {}
        self._views: dict[str, tuple[str, dict[str, object] | None]] = {}

    def names(self) -> list[str]:
        """Names of the datasets, sorted (one directory listing, no dataset is opened)."""
        return sorted(
            entry.name
            for entry in os.scandir(self.path)
            if entry.is_dir()
            and not entry.name.startswith(".")
            and os.path.exists(os.path.join(entry.path, DATASET_FILE))
        )

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (self.path / name / DATASET_FILE).exists()

    def dataset(self, name: str) -> Dataset:
        """The dataset called ``name``, kept open while its identity file is unchanged (a
        table dropped and created again, maybe by another process, is opened afresh)."""
        try:
            stamp = _stamp(self.path / name / DATASET_FILE)
        except FileNotFoundError:
            self._open.pop(name, None)
            raise TableNotFoundError(self._not_found(name)) from None
        cached = self._open.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        ds = Dataset.load(self.path / name)
        self._open[name] = (stamp, ds)
        return ds

    def view_definition(self, name: str) -> dict[str, object] | None:
        """The definition of materialized view ``name``, or None for a plain table."""
        ds = self.dataset(name)
        cached = self._views.get(name)
        if cached is not None and cached[0] == ds.table.info.uuid:
            return cached[1]
        try:
            raw = ds.table.store.read_bytes(VIEW_FILE)
        except FileNotFoundError:
            definition = None
        else:
            definition = json.loads(raw)
        self._views[name] = (ds.table.info.uuid, definition)
        return definition

    def is_view(self, name: str) -> bool:
        return name in self and self.view_definition(name) is not None

    def _not_found(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"No table '{name}' in catalog '{self.path}'.{hint}"

    def create(
        self,
        name: str,
        schema: pa.Schema,
        *,
        primary_keys: Sequence[str],
        record_fields: Sequence[str] = (),
    ) -> Dataset:
        check_name(name)
        if name in self:
            raise SchemaError(
                f"Table '{name}' already exists in catalog '{self.path}'; DROP TABLE it first "
                "or pick another name."
            )
        ds = Dataset.create(
            self.path / name, schema, primary_keys=primary_keys, record_fields=record_fields
        )
        self._open[name] = (_stamp(ds.location / DATASET_FILE), ds)
        return ds

    def create_view(
        self,
        name: str,
        schema: pa.Schema,
        *,
        definition: dict[str, object],
        fill: Callable[[Dataset], object],
        primary_keys: Sequence[str] = (),
        replace: bool = False,
    ) -> Dataset:
        """Create a materialized view's dataset: built aside (``fill`` commits its first
        rows), its definition written, then renamed into place, so a crash leaves no
        half-made view. ``replace`` swaps out an existing dataset of that name."""
        check_name(name)
        if name in self and not replace:
            raise SchemaError(
                f"Table '{name}' already exists in catalog '{self.path}'; DROP it first, use "
                "CREATE OR REPLACE, or pick another name."
            )
        work = self.path / f".{name}.{uuid.uuid4().hex}.creating"
        try:
            ds = Dataset.create(work, schema, primary_keys=primary_keys)
            ds.table.store.put_if_absent(VIEW_FILE, json.dumps(definition, indent=1).encode())
            fill(ds)
            if replace and name in self:
                trash = self.path / f".{name}.{uuid.uuid4().hex}.dropped"
                os.rename(self.path / name, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(work, self.path / name)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        self._open.pop(name, None)
        return self.dataset(name)

    def drop(self, name: str) -> None:
        """Remove a dataset: renamed away first (atomic), then deleted."""
        if name not in self:
            raise TableNotFoundError(self._not_found(name))
        trash = self.path / f".{name}.{uuid.uuid4().hex}.dropped"
        os.rename(self.path / name, trash)
        self._open.pop(name, None)
        shutil.rmtree(trash, ignore_errors=True)


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns
