"""spacesql: versioned ML ground-truth datasets, queried and changed with SQL in DuckDB."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spacesql.engine import ChangeSet, CommitResult, Dataset
from spacesql.errors import (
    CommitConflictError,
    ConstraintError,
    FormatError,
    MissingDependencyError,
    NotFoundError,
    SchemaError,
    SnapshotNotFoundError,
    SpaceSQLError,
    SqlError,
    TableNotFoundError,
)

if TYPE_CHECKING:
    from spacesql.session import Connection

__version__ = "0.1.0"


def connect(path: str = ".", *, threads: int | None = None) -> Connection:
    """Open the catalog at ``path`` (created if missing) as a DuckDB-backed connection.

    Args:
        path: The catalog directory.
        threads: DuckDB worker threads (default: DuckDB's choice).
    """
    import spacesql.integrations.labelstudio.sqlfunctions  # noqa: F401 - registers SQL functions
    from spacesql.session import connect as _connect

    return _connect(path, threads=threads)


__all__ = [
    "ChangeSet",
    "CommitConflictError",
    "CommitResult",
    "ConstraintError",
    "Dataset",
    "FormatError",
    "MissingDependencyError",
    "NotFoundError",
    "SchemaError",
    "SnapshotNotFoundError",
    "SpaceSQLError",
    "SqlError",
    "TableNotFoundError",
    "__version__",
    "connect",
]
