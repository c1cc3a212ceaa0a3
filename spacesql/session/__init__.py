"""Sessions: ``spacesql.connect()`` ties the catalog, DuckDB and the SQL layer together."""

from __future__ import annotations

from spacesql.session.connection import Connection, connect

__all__ = ["Connection", "connect"]
