"""spacesql: versioned ML ground-truth datasets, queried and changed with SQL in DuckDB."""

from __future__ import annotations

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

__version__ = "0.1.0"

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
]
