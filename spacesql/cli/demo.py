"""``spacesql demo``: build the demo catalog from ``catalog/demo/*.sql`` and query it."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from spacesql.cli.script import run_script
from spacesql.errors import NotFoundError

__all__ = ["DEMO_SCRIPTS", "run_demo"]

#: The demo scripts live in the repository, next to the package (no Python in them).
DEMO_SCRIPTS = Path(__file__).resolve().parents[2] / "catalog" / "demo"


def run_demo(path: str, *, fresh: bool = True) -> None:
    scripts = sorted(DEMO_SCRIPTS.glob("*.sql"))
    if not scripts:
        raise NotFoundError(
            f"No demo scripts in {DEMO_SCRIPTS}; run the demo from a source checkout "
            "(pip install -e .)."
        )
    root = Path(path)
    if fresh and root.exists():
        shutil.rmtree(root)
    for script in scripts:
        click.secho(f"-- {script.name}", bold=True)
        if run_script(str(root), script, {}) != 0:
            raise SystemExit(1)
    click.echo(f"Demo catalog written to {root.absolute()}; try: spacesql shell {path}")
