"""The one error hierarchy of spacesql.

Every error raised on purpose by spacesql derives from :class:`SpaceSQLError` and from the
builtin exception that matches its meaning, so callers can catch either.
Messages say what failed, name the offending value and say what to do next.
"""

from __future__ import annotations

__all__ = [
    "CommitConflictError",
    "ConstraintError",
    "FormatError",
    "MissingDependencyError",
    "NotFoundError",
    "SchemaError",
    "SnapshotNotFoundError",
    "SpaceSQLError",
    "SqlError",
    "TableNotFoundError",
]


class SpaceSQLError(Exception):
    """Root of every error spacesql raises on purpose."""


class SchemaError(SpaceSQLError, ValueError):
    """Data or an expression does not fit the dataset's schema."""


class ConstraintError(SpaceSQLError, ValueError):
    """A primary-key constraint would be violated (null, duplicate or existing key)."""


class NotFoundError(SpaceSQLError, LookupError):
    """Something addressed by name or id does not exist."""


class SnapshotNotFoundError(NotFoundError):
    """A version (snapshot id, tag, branch or timestamp) does not resolve."""


class TableNotFoundError(NotFoundError):
    """A catalog has no table of that name."""


class FormatError(SpaceSQLError, ValueError):
    """Files on disk or input files are not in the expected format."""


class SqlError(SpaceSQLError, ValueError):
    """A SQL statement cannot be parsed or is not supported."""


class MissingDependencyError(SpaceSQLError, ImportError):
    """An optional integration needs a package that is not installed."""


class CommitConflictError(SpaceSQLError, RuntimeError):
    """A commit could not be applied because other commits changed the same data.

    Attributes:
        expected: The snapshot id the writer based its change on.
        found: The snapshot id found at commit time.
    """

    def __init__(self, message: str, *, expected: int | None = None, found: int | None = None):
        super().__init__(message)
        self.expected = expected
        self.found = found
