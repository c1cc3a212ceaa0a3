"""``spacesql.connect()``: a DuckDB connection in which a catalog's datasets are tables."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from spacesql.catalog import Catalog, Registrar
from spacesql.engine import Dataset
from spacesql.errors import CommitConflictError, SqlError, TableNotFoundError
from spacesql.session.result import Result
from spacesql.sql.host import Params, Relation
from spacesql.sql.routing import PassThrough, Query, Reject, Write
from spacesql.sql.statements import decide, split, table_names, transaction_effect

if TYPE_CHECKING:
    from spacesql.session.mview import MaterializedView
from spacesql.sql.translate import (
    FunctionRef,
    TableRef,
    generate,
    rewrite_references,
)

__all__ = ["Connection", "connect"]

#: A parsed statement (a sqlglot tree; only the sql layer looks inside).
Statement = Any


def connect(path: str | os.PathLike[str] = ".", *, threads: int | None = None) -> Connection:
    """Open (creating if missing) the catalog at ``path`` as a DuckDB connection.

    Args:
        path: The catalog directory.
        threads: DuckDB worker threads (default: DuckDB's choice).
    """
    return Connection(path, threads=threads)


def _to_arrow(rel: Relation) -> pa.Table:
    if hasattr(rel, "to_arrow_table"):
        return rel.to_arrow_table()
    return rel.arrow()  # duckdb < 1.4


def _catalog_error(exc: Exception, message: str) -> SqlError | TableNotFoundError:
    """DuckDB's catalog errors: a missing table or view is a TableNotFoundError; a missing
    function, type or schema is a plain SqlError."""
    text = str(exc)
    if "Table with name" in text or "View with name" in text or "No table" in message:
        return TableNotFoundError(message)
    return SqlError(message)


#: Statements that would change a materialized view's rows or schema behind its query.
_VIEW_BLOCKED = frozenset({"insert", "delete", "update", "merge", "truncate", "alter", "drop"})


class Connection:
    """A DuckDB connection over a spacesql catalog.

    Reads see each dataset's current snapshot (``AT (VERSION => ...)`` for others); writes
    to datasets become engine commits; everything else is plain DuckDB.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        self.catalog = Catalog(path)
        config: dict[str, Any] = {} if threads is None else {"threads": threads}
        self._con = duckdb.connect(config=config)
        self._registrar = Registrar(self._con, self.catalog)
        self._functions = 0
        #: Datasets whose plain view is pinned to a snapshot for the running statement.
        self._pinned: set[str] = set()
        #: Head views already brought up to date for the running statement.
        self._fresh: set[str] = set()
        #: Receives the steps of long operations (materialized view refreshes), if set.
        self.progress: Callable[[str], None] | None = None
        self._in_transaction = False
        self._closed = False

    # --- DuckDB-like surface -----------------------------------------------------------

    @property
    def duckdb(self) -> duckdb.DuckDBPyConnection:
        """The underlying DuckDB connection."""
        return self._con

    def sql(self, query: str, *, params: Params = None) -> Relation | None:
        """Run statements; return the last one's result as a relation (None if it has none)."""
        result = None
        for text in split(query):
            result = self._run(text, params)
        return result

    def execute(self, query: str, parameters: Params = None) -> Connection:
        """Run statements and keep the last one's result for fetchone(), fetchall(), df(),
        arrow() (as DuckDB's connection does)."""
        rel = self.sql(query, params=parameters)
        try:
            self._last = None if rel is None else _to_arrow(rel)
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from exc
        self._cursor = 0
        return self

    def _result(self) -> pa.Table:
        last = getattr(self, "_last", None)
        if last is None:
            raise SqlError("The last statement returned no rows to fetch; run a query first.")
        return last

    def fetchall(self) -> list[tuple[Any, ...]]:
        table = self._result().slice(self._cursor)
        self._cursor += table.num_rows
        columns = [c.to_pylist() for c in table.columns]
        return list(zip(*columns, strict=True)) if columns else []

    def fetchone(self) -> tuple[Any, ...] | None:
        table = self._result()
        if self._cursor >= table.num_rows:
            return None
        row = table.slice(self._cursor, 1)
        self._cursor += 1
        return tuple(c[0].as_py() for c in row.columns)

    def df(self) -> Any:
        return self._result().to_pandas()

    fetchdf = df

    def arrow(self) -> pa.Table:
        return self._result()

    def close(self) -> None:
        if not self._closed:
            self._con.close()
            self._closed = True

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- catalog -----------------------------------------------------------------------

    def dataset(self, name: str) -> Dataset:
        """The dataset behind a table: its runner does what the SQL does."""
        return self.catalog.dataset(name)

    def materialized_view(self, name: str) -> MaterializedView:
        """A materialized view of the catalog, to refresh, explain or read its lineage."""
        from spacesql.session.mview import MaterializedView

        return MaterializedView(self, name)

    def create_function(self, name: str, function: Any, *args: Any, **kwargs: Any) -> Connection:
        """Register a Python function as a DuckDB function (same arguments as DuckDB's
        ``create_function``; ``type="arrow"`` makes it vectorized over Arrow arrays). Views
        using it refresh only in connections where it is registered."""
        self._con.create_function(name, function, *args, **kwargs)
        return self

    def tables(self) -> list[str]:
        return self.catalog.names()

    # --- execution ---------------------------------------------------------------------

    def _run(self, text: str, params: Params) -> Relation | None:
        self._pinned = set()
        stmt, decision = decide(text, self.catalog.__contains__)
        self._mentioned = table_names(stmt) if stmt is not None else []
        if isinstance(decision, Reject):
            raise SqlError(decision.message)
        # every head view is brought up to date once per statement
        self._fresh = self._registrar.refresh()
        if isinstance(decision, PassThrough):
            effect = transaction_effect(stmt)
            if effect is not None:
                self._in_transaction = effect
            return self._duck(text, params)
        assert stmt is not None
        if isinstance(decision, Query):
            return self._query(stmt, text, params, decision.tables)
        if self._in_transaction:
            raise SqlError(
                "Writes to spacesql tables inside BEGIN ... COMMIT are not supported yet: each "
                "statement commits on its own. COMMIT or ROLLBACK first."
            )
        from spacesql.sql.writes import execute_write

        assert isinstance(decision, Write)
        if decision.kind in _VIEW_BLOCKED and self.catalog.is_view(decision.table):
            raise SqlError(
                f"'{decision.table}' is a materialized view: its rows come from its query. "
                f"Change its sources and run REFRESH MATERIALIZED VIEW {decision.table}"
                + (
                    f", or DROP MATERIALIZED VIEW {decision.table}."
                    if decision.kind == "drop"
                    else "."
                )
            )

        for attempt in range(20):
            try:
                written = execute_write(self, stmt, decision, params)
                return None if written is None else Result(written)
            except CommitConflictError:
                if attempt == 19:
                    raise
        return None  # pragma: no cover

    def _duck(self, text: str, params: Params) -> Relation | None:
        try:
            rel = self._con.sql(text, params=params)
            return None if rel is None else Result(rel)
        except duckdb.CatalogException as exc:
            raise _catalog_error(exc, self._catalog_message(exc)) from exc
        except duckdb.ParserException as exc:
            raise SqlError(str(exc)) from exc
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from exc

    def _catalog_message(self, exc: Exception) -> str:
        """DuckDB's message, or ours with a "did you mean" when a table name is close to a
        spacesql table."""
        import difflib

        message = str(exc)
        names = self.catalog.names()
        for word in getattr(self, "_mentioned", []):
            if word in names or word not in message:
                continue
            close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
            if close:
                return (
                    f"No table '{word}' in catalog '{self.catalog.path}'. Did you mean "
                    f"'{close[0]}'?"
                )
        return message

    def _query(
        self, stmt: Statement, text: str, params: Params, tables: tuple[str, ...] = ()
    ) -> Relation | None:
        for name in tables:
            self._view_for(TableRef(name, None))
        rewritten, changed = rewrite_references(
            stmt, self.catalog.__contains__, self._view_for, self._function_view
        )
        return self._duck(generate(rewritten) if changed else text, params)

    def register_read(self, stmt: Statement) -> Statement:
        """Register what a statement reads; returns it pointed at the registered views."""
        rewritten, _ = rewrite_references(
            stmt, self.catalog.__contains__, self._view_for, self._function_view
        )
        return rewritten

    def _view_for(self, ref: TableRef) -> str:
        if ref.version is None:
            if ref.name in self._pinned or ref.name in self._fresh:
                return ref.name
            self._fresh.add(ref.name)
            return self._registrar.register(ref.name, ref.name).name
        _ds, record = self._registrar.resolve(ref.name, ref.version)
        view = f"{ref.name}@{record.snapshot_id}"
        return self._registrar.register(view, ref.name, record.snapshot_id).name

    def _function_view(self, ref: FunctionRef) -> str:
        from spacesql.session.metadata import metadata_table

        table = metadata_table(self, ref.function, ref.args)
        self._functions += 1
        name = f"__spacesql_fn_{self._functions}"
        self._con.register(name, table)
        return name

    def query_arrow(self, stmt: Statement, params: Params) -> pa.Table:
        """Run a (rewritten) query and fetch it as Arrow; errors become SqlError."""
        try:
            return _to_arrow(self._con.sql(generate(stmt), params=params))
        except duckdb.CatalogException as exc:
            raise _catalog_error(exc, self._catalog_message(exc)) from exc
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from exc

    def register_positions(self, view: str, name: str) -> tuple[str, int]:
        """Show the head of ``name`` with row positions as ``view``, and pin the plain view of
        ``name`` to the same snapshot for the statement; returns (view, snapshot)."""
        registered = self._registrar.register(view, name, positions=True)
        self._registrar.register(name, name, registered.snapshot_id)
        self._pinned = {name}
        return registered.name, registered.snapshot_id

    def forget(self, name: str) -> None:
        self._registrar.forget_dataset(name)
        self._fresh.discard(name)

    def register_snapshot(
        self, view: str, name: str, snapshot: int, *, positions: bool = False
    ) -> None:
        """Show snapshot ``snapshot`` of ``name`` as ``view`` (with row positions if asked)."""
        self._registrar.register(view, name, snapshot, positions=positions)

    def unregister(self, view: str) -> None:
        self._registrar.unregister(view)
