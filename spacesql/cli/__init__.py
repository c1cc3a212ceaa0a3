"""The ``spacesql`` command line."""

from __future__ import annotations

import sys

import click

from spacesql.errors import SpaceSQLError

__all__ = ["main"]


@click.group()
@click.version_option(package_name="spacesql")
def cli() -> None:
    """Versioned ML ground-truth datasets, queried and changed with SQL."""


@cli.command()
@click.argument("path", default="demo-catalog", type=click.Path(file_okay=False))
@click.option("--fresh/--keep", default=True, help="Delete PATH first (default) or keep it.")
def demo(path: str, fresh: bool) -> None:
    """Build a small demo catalog at PATH and show versions, time travel and diffs."""
    from spacesql.cli.demo import run_demo

    run_demo(path, fresh=fresh)


def main() -> None:
    """Entry point: errors from spacesql print as one clear line and exit with status 1."""
    try:
        cli(standalone_mode=True)
    except SpaceSQLError as exc:
        click.echo(f"{type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
