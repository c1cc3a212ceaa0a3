"""Query results: DuckDB relations whose errors surface as spacesql errors."""

from __future__ import annotations

import functools
from typing import Any

import duckdb

from spacesql.errors import SqlError

__all__ = ["Result"]


def _translate(value: Any) -> Any:
    if isinstance(value, duckdb.DuckDBPyRelation):
        return Result(value)
    return value


class Result:
    """A lazy DuckDB relation (``fetchall``, ``df``, ``arrow``, ``show``, relational methods);
    errors DuckDB raises while running it become :class:`~spacesql.SqlError`."""

    def __init__(self, relation: duckdb.DuckDBPyRelation) -> None:
        self._relation = relation

    @property
    def relation(self) -> duckdb.DuckDBPyRelation:
        """The DuckDB relation itself."""
        return self._relation

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._relation, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return _translate(attr(*args, **kwargs))
            except duckdb.Error as exc:
                raise SqlError(str(exc)) from exc

        return call

    def fetchone(self) -> tuple[Any, ...] | None:
        """The first row, or None (DuckDB 2 relations dropped ``fetchone``)."""
        try:
            rows = self._relation.limit(1).fetchall()
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from exc
        return rows[0] if rows else None

    def to_arrow_table(self) -> Any:
        """All rows as an Arrow table (on every DuckDB version)."""
        rel = self._relation
        try:
            if hasattr(rel, "to_arrow_table"):
                return rel.to_arrow_table()
            return rel.arrow()  # pragma: no cover - duckdb < 1.4
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from exc

    def __len__(self) -> int:
        return len(self._relation)

    def __repr__(self) -> str:
        return repr(self._relation)

    def __str__(self) -> str:
        return str(self._relation)
