"""Label Studio exports as versioned datasets.

Any export (JSON, JSON_MIN, CSV, TSV, target-storage files) becomes one row per task in one
documented Arrow schema (``docs/labelstudio.md``)::

    from spacesql.integrations import labelstudio

    table = labelstudio.read_export("export.json")                 # pure: an Arrow table
    summary = labelstudio.import_into("catalog/tasks", "export.json")  # insert or update
    summary.inserted, summary.updated, summary.unchanged

Nothing here imports Label Studio or its SDK.
"""

from __future__ import annotations

from spacesql.integrations.labelstudio.exports import parse_label_config
from spacesql.integrations.labelstudio.load import (
    ImportSummary,
    create_dataset,
    import_into,
    read_export,
)
from spacesql.integrations.labelstudio.schema import (
    ANNOTATION,
    DRAFT,
    PREDICTION,
    RESULT,
    SCHEMA,
)

__all__ = [
    "ANNOTATION",
    "DRAFT",
    "PREDICTION",
    "RESULT",
    "SCHEMA",
    "ImportSummary",
    "create_dataset",
    "import_into",
    "parse_label_config",
    "read_export",
]
