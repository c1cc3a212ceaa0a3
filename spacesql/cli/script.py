"""``spacesql run``: SQL scripts for scheduled jobs."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import click

import spacesql
from spacesql.cli.shell import print_result
from spacesql.errors import SpaceSQLError
from spacesql.sql.rendering import render_script
from spacesql.sql.statements import split

__all__ = ["run_script"]


def run_script(
    catalog: str, script: Path, variables: Mapping[str, str], *, quiet: bool = False
) -> int:
    """Run every statement of ``script``; on the first error print where and return 1."""
    try:
        text = render_script(script.read_text(encoding="utf-8"), variables)
        statements = split(text)
    except SpaceSQLError as exc:
        click.echo(f"{script}: {type(exc).__name__}: {exc}", err=True)
        return 1
    offset = 0
    with spacesql.connect(catalog) as con:
        if not quiet and sys.stderr.isatty():
            from spacesql.session.mview import progress_printer

            con.progress = progress_printer()  # steps of long refreshes
        for statement in statements:
            start = text.index(statement, offset)
            offset = start + len(statement)
            line = text.count("\n", 0, start + len(statement) - len(statement.lstrip())) + 1
            try:
                result = con.sql(statement)
            except SpaceSQLError as exc:
                click.echo(
                    f"{script}:{line}: {type(exc).__name__}: {exc}\n  in: {statement.strip()}",
                    err=True,
                )
                return 1
            if not quiet:
                print_result(result)
    return 0
