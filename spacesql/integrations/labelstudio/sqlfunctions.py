"""SQL table functions of the Label Studio integration.

``FROM spacesql_read_labelstudio('export.json' [, 'label_config.xml'])`` reads any export into
rows of the tasks schema, e.g.
``INSERT OR REPLACE INTO tasks SELECT * FROM spacesql_read_labelstudio('export.json')``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from spacesql.errors import SqlError
from spacesql.integrations.labelstudio.load import read_export
from spacesql.session.connection import Connection
from spacesql.session.metadata import register_table_function

__all__ = ["read_labelstudio"]

_USAGE = "spacesql_read_labelstudio('export file or directory' [, 'label config file'])"


def read_labelstudio(con: Connection, args: tuple[Any, ...]) -> pa.Table:
    """Rows of an export (see :func:`~spacesql.integrations.labelstudio.read_export`)."""
    if not all(isinstance(a, str) for a in args):
        raise SqlError(f"Usage: FROM {_USAGE}")
    config = Path(args[1]).read_text(encoding="utf-8") if len(args) > 1 else None
    if not Path(args[0]).exists():
        raise SqlError(f"spacesql_read_labelstudio: no file or directory {args[0]!r}.")
    return read_export(args[0], label_config=config)


register_table_function(
    "spacesql_read_labelstudio", _USAGE, read_labelstudio, min_args=1, max_args=2
)
