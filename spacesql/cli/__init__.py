"""The ``spacesql`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from spacesql.errors import SpaceSQLError

__all__ = ["main"]

CATALOG = click.argument("catalog", type=click.Path(file_okay=False))


@click.group()
@click.version_option(package_name="spacesql")
def cli() -> None:
    """Versioned ML ground-truth datasets, queried and changed with SQL."""


@cli.command()
@click.argument("path", default="demo-catalog", type=click.Path(file_okay=False))
@click.option("--fresh/--keep", default=True, help="Delete PATH first (default) or keep it.")
def demo(path: str, fresh: bool) -> None:
    """Build the demo catalog at PATH from catalog/demo/*.sql and run a few queries."""
    from spacesql.cli.demo import run_demo

    run_demo(path, fresh=fresh)


@cli.command()
@CATALOG
@click.argument("statement")
def sql(catalog: str, statement: str) -> None:
    """Run one statement (or a ';'-separated few) and print the result."""
    import spacesql
    from spacesql.cli.shell import print_result
    from spacesql.sql.statements import split

    with spacesql.connect(catalog) as con:
        for piece in split(statement):
            print_result(con.sql(piece))


@cli.command()
@CATALOG
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--var",
    "variables",
    multiple=True,
    metavar="NAME=VALUE",
    help="A Jinja2 variable for the script: {{ NAME }}.",
)
@click.option("--quiet", is_flag=True, help="Do not print query results.")
def run(catalog: str, script: str, variables: tuple[str, ...], quiet: bool) -> None:
    """Run a SQL script (scheduled jobs): stops at the first error, exit status 1."""
    from spacesql.cli.script import run_script

    pairs = {}
    for item in variables:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--var")
        pairs[name] = value
    code = run_script(catalog, Path(script), pairs, quiet=quiet)
    sys.exit(code)


@cli.command()
@CATALOG
def shell(catalog: str) -> None:
    """An interactive SQL shell on CATALOG (history, multi-line, .help for commands)."""
    from spacesql.cli.shell import Shell

    Shell(catalog).loop()


@cli.command("duckdb-init")
@CATALOG
def duckdb_init(catalog: str) -> None:
    """Print SQL for the stock duckdb shell: read-only views of every table and tag."""
    from spacesql.catalog import Catalog
    from spacesql.sql.duckdb_init import duckdb_init_script

    click.echo(duckdb_init_script(Catalog(catalog)), nl=False)


def _add_groups() -> None:
    from spacesql.cli.labelstudio import labelstudio

    cli.add_command(labelstudio)


_add_groups()


def main() -> None:
    """Entry point: errors from spacesql print as one clear line and exit with status 1."""
    try:
        cli(standalone_mode=True)
    except SpaceSQLError as exc:
        click.echo(f"{type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
