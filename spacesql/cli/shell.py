"""``spacesql shell``: an interactive SQL shell with history and dot commands."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import click

import spacesql
from spacesql.errors import SpaceSQLError
from spacesql.sql.statements import split

__all__ = ["Shell", "print_result"]

HELP = """\
Statements end with ';' and may span lines. Commands:
  .tables                 list tables (current snapshot, rows, keys)
  .schema [TABLE]         column names and types
  .snapshots TABLE        snapshots of a table
  .help                   this text
  .quit / .exit           leave (or Ctrl-D)"""


def print_result(result: Any) -> None:
    """Print a relation as DuckDB's shell does (boxed, typed columns)."""
    if result is None:
        return
    result.show(max_width=max(80, _width()))


def _width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


class Shell:
    """Read statements (until a ';' token ends one), run them, print results."""

    def __init__(self, catalog: str) -> None:
        self.con = spacesql.connect(catalog)
        self.catalog = catalog
        self._history = Path.home() / ".spacesql_history"

    def _setup_readline(self) -> None:
        try:
            import readline
        except ImportError:  # pragma: no cover - Windows
            return
        with contextlib.suppress(OSError):
            readline.read_history_file(self._history)
        import atexit

        atexit.register(self._save_history, readline)

    def _save_history(self, readline: Any) -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(self._history)

    def loop(self) -> None:
        self._setup_readline()
        interactive = sys.stdin.isatty()
        if interactive:
            click.echo(
                f"spacesql {spacesql.__version__} on catalog {self.catalog}. "
                "Enter .help for commands."
            )
        buffer = ""
        while True:
            try:
                line = input("D " if not buffer else "‣ ") if interactive else input()
            except EOFError:
                break
            except KeyboardInterrupt:
                buffer = ""
                click.echo()
                continue
            if not buffer and line.strip().startswith("."):
                if self.command(line.strip()) is False:
                    break
                continue
            buffer += line + "\n"
            if self._complete(buffer):
                self.execute(buffer)
                buffer = ""
        if buffer.strip():
            self.execute(buffer)
        self.con.close()

    @staticmethod
    def _complete(text: str) -> bool:
        try:
            pieces = split(text)
        except SpaceSQLError:
            return False  # e.g. an unterminated string: keep reading
        return bool(pieces) and pieces[-1].rstrip().endswith(";")

    def execute(self, text: str) -> None:
        try:
            for statement in split(text):
                print_result(self.con.sql(statement))
        except SpaceSQLError as exc:
            click.echo(f"{type(exc).__name__}: {exc}", err=True)

    def command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in (".quit", ".exit"):
            return False
        try:
            if name == ".help":
                click.echo(HELP)
            elif name == ".tables":
                print_result(
                    self.con.sql(
                        "SELECT table_name, snapshot_id, rows, primary_key, record_fields "
                        "FROM spacesql_tables() ORDER BY table_name"
                    )
                )
            elif name == ".schema":
                names = [arg] if arg else self.con.tables()
                for table in names:
                    click.echo(f"{table}:")
                    for field in self.con.dataset(table).schema:
                        click.echo(f"  {field.name} {field.type}")
            elif name == ".snapshots" and arg:
                ds = self.con.dataset(arg)
                print_result(self.con.duckdb.from_arrow(ds.versions()))
            else:
                click.echo(f"Unknown command {line!r}; enter .help for the list.", err=True)
        except SpaceSQLError as exc:
            click.echo(f"{type(exc).__name__}: {exc}", err=True)
        return True
