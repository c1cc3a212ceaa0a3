"""From SQL text to routed statements: splitting scripts, parsing, deciding."""

from __future__ import annotations

import functools
from collections.abc import Callable

from sqlglot import TokenType, exp
from sqlglot.errors import ParseError, TokenError

from spacesql.errors import SqlError
from spacesql.sql.dialect import SpaceSQL, parse
from spacesql.sql.routing import Decision, PassThrough, Reject, route

__all__ = ["decide", "split", "table_names", "transaction_effect"]


def split(script: str) -> list[str]:
    """Statements of a script, cut at semicolon tokens (a ';' in a string or comment is part
    of a token, so it never splits).

    >>> split("SELECT ';'; SELECT 2 -- done;")
    ["SELECT ';';", ' SELECT 2 -- done;']
    """
    if ";" not in script:
        return [script] if script.strip() else []
    try:
        tokens = SpaceSQL().tokenize(script)
    except TokenError as exc:
        raise SqlError(f"Cannot parse SQL: {exc}") from exc
    pieces, start = [], 0
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            pieces.append(script[start : tok.end + 1])
            start = tok.end + 1
    pieces.append(script[start:])
    return [p for p in pieces if p.strip().strip(";").strip()]


def decide(text: str, is_dataset: Callable[[str], bool]) -> tuple[exp.Expression | None, Decision]:
    """Parse one statement and route it. A statement sqlglot cannot parse passes to DuckDB
    only if none of its tokens names a dataset; otherwise it is rejected with the position."""
    try:
        parsed = _parse_cached(text)
    except TokenError as exc:
        return None, Reject(f"Cannot parse SQL: {exc}")
    except ParseError as exc:
        return None, _unparsed(text, exc, is_dataset)
    if not parsed:
        return None, PassThrough()
    if len(parsed) > 1:
        raise SqlError(f"Expected one statement, found {len(parsed)} in {text!r}.")
    return parsed[0], route(parsed[0], is_dataset)


@functools.lru_cache(maxsize=512)
def _parse_cached(text: str) -> list[exp.Expression]:
    """Statements are parsed once per distinct text (scripts and notebooks repeat them).
    Callers never modify the trees: rewrites work on copies."""
    return parse(text)


def _unparsed(text: str, exc: ParseError, is_dataset: Callable[[str], bool]) -> Decision:
    try:
        tokens = SpaceSQL().tokenize(text)
    except TokenError:
        tokens = []
    touched = sorted({t.text for t in tokens if is_dataset(t.text)})
    if touched or not tokens:
        err = exc.errors[0] if exc.errors else {}
        where = f" (line {err.get('line')}, column {err.get('col')})" if err else ""
        return Reject(f"Cannot parse SQL{where}: {err.get('description', exc)}.")
    return PassThrough()


def transaction_effect(stmt: exp.Expression | None) -> bool | None:
    """True for BEGIN, False for COMMIT/ROLLBACK, None otherwise.

    >>> [transaction_effect(s) for s in parse("BEGIN; SELECT 1; COMMIT")]
    [True, None, False]
    """
    if isinstance(stmt, exp.Transaction):
        return True
    if isinstance(stmt, (exp.Commit, exp.Rollback)):
        return False
    return None


def table_names(stmt: exp.Expression) -> list[str]:
    """Names of the plain tables a statement mentions.

    >>> table_names(parse("SELECT * FROM a JOIN b.c ON true")[0])
    ['a']
    """
    return [
        t.name
        for t in stmt.find_all(exp.Table)
        if isinstance(t.this, exp.Identifier) and not t.args.get("db")
    ]
