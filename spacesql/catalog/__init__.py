"""The catalog: names -> datasets in a directory, and their registration in DuckDB."""

from __future__ import annotations

from spacesql.catalog.catalog import Catalog
from spacesql.catalog.duckdb import Registrar

__all__ = ["Catalog", "Registrar"]
