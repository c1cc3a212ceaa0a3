"""The Python face of a materialized view: ``con.materialized_view(name)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa

from spacesql.engine.log import Version
from spacesql.sql.mview.refresh import RefreshResult, lineage
from spacesql.sql.mview.statements import explain_rows, manager

if TYPE_CHECKING:
    from spacesql.session.connection import Connection

__all__ = ["MaterializedView", "progress_printer"]


class MaterializedView:
    """A materialized view of a connection's catalog.

    >>> import spacesql, tempfile
    >>> con = spacesql.connect(tempfile.mkdtemp())
    >>> _ = con.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, label VARCHAR)")
    >>> _ = con.sql("CREATE MATERIALIZED VIEW per_label AS "
    ...             "SELECT label, count(*) AS n FROM t GROUP BY label")
    >>> _ = con.sql("INSERT INTO t VALUES (1, 'cat'), (2, 'cat'), (3, 'dog')")
    >>> view = con.materialized_view("per_label")
    >>> view.refresh().strategy
    'incremental'
    >>> sorted(con.sql("SELECT * FROM per_label").fetchall())
    [('cat', 2), ('dog', 1)]
    """

    def __init__(self, con: Connection, name: str) -> None:
        self._con = con
        self.name = name
        manager(con).definition(name)  # raises if it is not a view

    @property
    def query(self) -> str:
        """The stored query (normalised by sqlglot)."""
        return str(manager(self._con).definition(self.name)["query"])

    def refresh(
        self,
        *,
        to: Version | None = None,
        full: bool = False,
        progress: bool | Callable[[str], None] = False,
    ) -> RefreshResult:
        """Bring the view to its sources' current snapshots, or to version ``to`` of them.

        Args:
            to: A tag, branch or snapshot id of the sources (None: their heads).
            full: Recompute instead of applying the sources' changes.
            progress: True shows the steps on stderr; a callable receives them.

        Returns:
            What the refresh did: strategy, reason for a full recompute, rows, snapshot.
        """
        step = progress_printer() if progress is True else progress or None
        return manager(self._con).refresh(self.name, to=to, full=full, progress=step)

    def explain(self, *, to: Version | None = None, full: bool = False) -> pa.Table:
        """What a refresh would do: strategy, the reason for a full recompute, the rule."""
        return explain_rows(manager(self._con).explain(self.name, to=to, full=full))

    def sources(self, version: Version | None = None) -> dict[str, int]:
        """The source snapshots a snapshot of the view reflects (its lineage)."""
        record = self._con.dataset(self.name).snapshot(version)
        return {name: v.snapshot for name, v in lineage(record).items()}

    def __repr__(self) -> str:
        return f"MaterializedView({self.name!r})"


def progress_printer() -> Callable[[str], None]:
    """Steps of a long refresh, printed on stderr with the time since the first one."""
    import time

    from rich.console import Console

    console = Console(stderr=True)
    start = time.perf_counter()

    def show(step: str) -> None:
        console.print(f"[dim]{time.perf_counter() - start:7.2f}s[/dim] {step}")

    return show
