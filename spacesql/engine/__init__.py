"""The storage engine: versioned Space datasets on Parquet and ArrayRecord."""

from __future__ import annotations

from spacesql.engine.changes import ChangeSet
from spacesql.engine.dataset import CommitResult, Dataset
from spacesql.engine.runner import LocalRunner

__all__ = ["ChangeSet", "CommitResult", "Dataset", "LocalRunner"]
