"""The spacesql SQL dialect: DuckDB's, plus what spacesql adds.

Only the differences live here:

* ``CALL fn(args)`` parses into :class:`Call` (DuckDB's dialect in sqlglot keeps it as an
  opaque command), so catalog procedures such as ``CALL spacesql_tag('t', 'v1')`` are read
  from a tree, not from text.
* ``REFRESH MATERIALIZED VIEW name [TO VERSION 'tag' | n] [FULL]`` parses into
  :class:`RefreshView`.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlglot import TokenType, exp, parser
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import ErrorLevel

__all__ = ["Call", "RefreshView", "SpaceSQL", "parse"]


class Call(exp.Expression):
    """``CALL function(args)``."""

    arg_types = {"this": True}


class RefreshView(exp.Expression):
    """``REFRESH MATERIALIZED VIEW name [TO VERSION v] [FULL]``."""

    arg_types = {"this": True, "version": False, "full": False}


def _parse_refresh(self: parser.Parser) -> exp.Expression:
    if not self._match_text_seq("MATERIALIZED", "VIEW"):
        self.raise_error("Expected MATERIALIZED VIEW after REFRESH")
    table = self._parse_table_parts()
    version = None
    if self._match_text_seq("TO", "VERSION"):
        version = self._parse_primary()
        if not isinstance(version, exp.Literal):
            self.raise_error("Expected a tag, branch or snapshot number after TO VERSION")
    full = self._match_text_seq("FULL")
    return RefreshView(this=table, version=version, full=full or None)


def _refresh_sql(self: Any, e: RefreshView) -> str:
    sql = f"REFRESH MATERIALIZED VIEW {self.sql(e, 'this')}"
    if e.args.get("version") is not None:
        sql += f" TO VERSION {self.sql(e, 'version')}"
    if e.args.get("full"):
        sql += " FULL"
    return sql


def _parse_call(self: parser.Parser) -> exp.Expression:
    func = self._parse_function()
    if func is None:
        self.raise_error("Expected a procedure call after CALL, e.g. CALL spacesql_tag('t', 'v1')")
    return Call(this=func)


class SpaceSQL(DuckDB):
    """DuckDB's dialect with spacesql's statements."""

    class Tokenizer(DuckDB.Tokenizer):
        # DuckDB's tokenizer swallows everything after CALL as one opaque string.
        KEYWORDS = {
            **DuckDB.Tokenizer.KEYWORDS,
            "CALL": TokenType.PROCEDURE,
            "REFRESH": TokenType.REFRESH,
        }

    class Parser(DuckDB.Parser):  # type: ignore[valid-type,misc]
        STATEMENT_PARSERS = {
            **DuckDB.Parser.STATEMENT_PARSERS,
            TokenType.PROCEDURE: _parse_call,
            TokenType.REFRESH: _parse_refresh,
        }

    class Generator(DuckDB.Generator):  # type: ignore[valid-type,misc]
        TRANSFORMS: dict[type[exp.Expression], Any] = {
            **DuckDB.Generator.TRANSFORMS,  # type: ignore[dict-item]
            Call: lambda self, e: f"CALL {self.sql(e, 'this')}",
            RefreshView: _refresh_sql,
        }


# sqlglot logs a warning when it keeps a statement as an opaque command; routing handles
# those explicitly, so the warning is noise for shell users.
logging.getLogger("sqlglot").setLevel(logging.ERROR)


def parse(sql: str) -> list[exp.Expression]:
    """Parse statements in the spacesql dialect, raising on any error.

    >>> [type(e).__name__ for e in parse("SELECT 1; CALL spacesql_tag('t', 'v')")]
    ['Select', 'Call']
    """
    statements = SpaceSQL().parse(sql, error_level=ErrorLevel.RAISE)
    return [e for e in statements if e is not None]  # type: ignore[misc]
