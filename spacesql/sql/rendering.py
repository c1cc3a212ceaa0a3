"""Jinja2 renders final SQL text only: every decision is made in Python and passed in as
plain values, already quoted by sqlglot. Rendered SQL is parsed back as a check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from sqlglot import exp

from spacesql.errors import SqlError
from spacesql.sql.dialect import parse

__all__ = ["identifier", "render", "render_script", "string_literal"]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("spacesql.sql", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)


def identifier(name: str) -> str:
    """A quoted SQL identifier.

    >>> identifier("my table")
    '"my table"'
    """
    return exp.to_identifier(name, quoted=True).sql(dialect="duckdb")


def string_literal(value: str) -> str:
    """A SQL string literal.

    >>> string_literal("it's")
    "'it''s'"
    """
    return exp.Literal.string(value).sql(dialect="duckdb")


def render(template: str, **values: Any) -> str:
    """Render a packaged template and check that the result parses."""
    text = _ENV.get_template(template).render(**values)
    parse(text)
    return text


def render_script(text: str, variables: Mapping[str, str]) -> str:
    """Render a user's SQL script with ``{{ var }}`` placeholders (undefined ones fail).

    >>> render_script("SELECT {{ n }}", {"n": "1"})
    'SELECT 1'
    """
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    try:
        return env.from_string(text).render(**variables)
    except jinja2.UndefinedError as exc:
        raise SqlError(
            f"Script variable missing: {exc.message}; pass it with --var name=value."
        ) from exc
    except jinja2.TemplateSyntaxError as exc:
        raise SqlError(f"Template error at line {exc.lineno}: {exc.message}") from exc
