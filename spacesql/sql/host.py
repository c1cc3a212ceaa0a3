"""What SQL write execution needs from a session (implemented by ``spacesql.session``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa
from sqlglot import exp

from spacesql.catalog import Catalog
from spacesql.engine import Dataset

__all__ = ["Host", "Params", "Relation"]

Params = Sequence[Any] | dict[str, Any] | None
#: duckdb.DuckDBPyRelation (its bundled type stubs differ between DuckDB releases).
Relation = Any


class Host(Protocol):
    """A DuckDB connection with a catalog registered in it."""

    catalog: Catalog

    @property
    def duckdb(self) -> Any: ...

    def dataset(self, name: str) -> Dataset: ...

    def register_read(self, stmt: exp.Expression) -> exp.Expression: ...

    def register_positions(self, view: str, name: str) -> tuple[str, int]: ...

    def query_arrow(self, stmt: exp.Expression, params: Params) -> pa.Table: ...

    def forget(self, name: str) -> None: ...

    def register_snapshot(
        self, view: str, name: str, snapshot: int, *, positions: bool = False
    ) -> None: ...

    def unregister(self, view: str) -> None: ...
