"""``spacesql labelstudio ...``: import exports, receive webhooks, reconcile, push tasks."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import click

__all__ = ["labelstudio"]

_CATALOG = click.argument("catalog", type=click.Path(file_okay=False))
_TABLE = click.option("--table", default="tasks", show_default=True, help="The tasks table.")
_URL = click.option(
    "--url", envvar="LABEL_STUDIO_URL", help="Label Studio URL [$LABEL_STUDIO_URL]."
)
_KEY = click.option(
    "--api-key", envvar="LABEL_STUDIO_API_KEY", help="API token [$LABEL_STUDIO_API_KEY]."
)


@click.group()
def labelstudio() -> None:
    """Label Studio: load exports, sync annotations live, send rows back as tasks."""


@labelstudio.command("import")
@_CATALOG
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@_TABLE
@click.option(
    "--label-config",
    type=click.Path(exists=True, dir_okay=False),
    help="The project's labeling config (XML); helps JSON_MIN/CSV/TSV exports.",
)
@click.option(
    "--project",
    type=int,
    help="Project of tasks whose export does not name it (JSON_MIN/CSV/TSV; default 0).",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def import_(
    catalog: str,
    sources: tuple[str, ...],
    table: str,
    label_config: str | None,
    project: int | None,
    progress: bool,
) -> None:
    """Import Label Studio exports (any format; re-imports update changed tasks only)."""
    import spacesql
    from spacesql.integrations.labelstudio.load import import_into
    from spacesql.integrations.labelstudio.sync import ensure_tables

    config = Path(label_config).read_text(encoding="utf-8") if label_config else None
    with spacesql.connect(catalog) as con:
        ensure_tables(con, table)
        for source in sources:
            summary = import_into(
                con.dataset(table),
                source,
                label_config=config,
                project=project,
                progress=progress,
            )
            click.echo(
                f"{source}: {summary.format}, {summary.tasks} tasks: {summary.inserted} new, "
                f"{summary.updated} updated, {summary.unchanged} unchanged"
                + (f"; snapshot {summary.snapshot_id}" if summary.snapshot_id is not None else "")
            )


@labelstudio.command()
@_CATALOG
@_TABLE
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", default=8765, show_default=True, type=int)
@click.option(
    "--secret",
    envvar="SPACESQL_LABELSTUDIO_SECRET",
    help="Shared secret Label Studio sends in a custom header [$SPACESQL_LABELSTUDIO_SECRET].",
)
@click.option(
    "--secret-header",
    default="Authorization",
    show_default=True,
    help="Header holding the secret ('Bearer <secret>' is accepted in Authorization).",
)
@click.option("--no-secret", is_flag=True, help="Accept requests without a secret (unsafe).")
@click.option("--max-body-mb", default=64, show_default=True, type=int)
@click.option("--batch-seconds", default=0.2, show_default=True, type=float)
@click.option("--fsync/--no-fsync", default=False, help="fsync the journal per event.")
def serve(
    catalog: str,
    table: str,
    host: str,
    port: int,
    secret: str | None,
    secret_header: str,
    no_secret: bool,
    max_body_mb: int,
    batch_seconds: float,
    fsync: bool,
) -> None:
    """Receive Label Studio webhooks and commit them to TABLE (until Ctrl-C)."""
    import spacesql
    from spacesql.integrations.labelstudio.receiver import Receiver
    from spacesql.integrations.labelstudio.sync import apply_events, ensure_tables

    if not secret and not no_secret:
        raise click.UsageError(
            "A shared secret is required: --secret or $SPACESQL_LABELSTUDIO_SECRET (and add it "
            "to the webhook's headers in Label Studio), or --no-secret to accept anyone."
        )
    state: dict[str, Any] = {}

    def apply(events: Any) -> None:
        con = state.get("con")
        if con is None:  # a connection of the committer thread
            con = state["con"] = spacesql.connect(catalog)
            ensure_tables(con, table)
        summary = apply_events(con, table, list(events))
        click.echo(
            f"committed {summary.events} event(s): {summary.upserted} task(s) written, "
            f"{summary.deleted} deleted"
            + (f", snapshot {summary.snapshot_id}" if summary.snapshot_id is not None else ""),
            err=True,
        )

    with spacesql.connect(catalog) as con:
        ensure_tables(con, table)
    receiver = Receiver(
        apply,
        journal_dir=Path(catalog) / f".labelstudio-{table}",
        host=host,
        port=port,
        secret=secret,
        secret_header=secret_header,
        allow_no_secret=no_secret,
        max_body=max_body_mb * 1024 * 1024,
        batch_seconds=batch_seconds,
        fsync=fsync,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    receiver.start()
    click.echo(
        f"Receiving Label Studio webhooks at {receiver.url} into table '{table}' "
        f"(header {secret_header}); Ctrl-C to stop.",
        err=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    click.echo("Stopping: committing what was received...", err=True)
    receiver.stop(drain=True)
    if "con" in state:
        state["con"].close()


@labelstudio.command()
@_CATALOG
@_TABLE
@_URL
@_KEY
@click.option("--project", "projects", multiple=True, required=True, type=int)
def reconcile(
    catalog: str, table: str, url: str | None, api_key: str | None, projects: tuple[int, ...]
) -> None:
    """Pull each project's export and commit the difference (what webhooks missed)."""
    import spacesql
    from spacesql.integrations.labelstudio.client import LabelStudioClient
    from spacesql.integrations.labelstudio.load import read_export
    from spacesql.integrations.labelstudio.sync import reconcile as run_reconcile

    client = LabelStudioClient(url, api_key=api_key)
    with spacesql.connect(catalog) as con:
        for project in projects:
            export = read_export(client.export(project))
            summary = run_reconcile(con, table, export, project=project)
            click.echo(
                f"project {project}: {summary.upserted} task(s) written, {summary.deleted} "
                f"deleted, {summary.unchanged} unchanged"
                + (f"; snapshot {summary.snapshot_id}" if summary.snapshot_id is not None else "")
            )


def _rows(catalog: str, table: str | None, query: str | None) -> Any:
    import spacesql
    from spacesql.catalog.catalog import check_name

    if (table is None) == (query is None):
        raise click.UsageError("Give exactly one of --table or --query.")
    if table is not None:
        check_name(table)  # letters, digits and '_': safe to quote
    with spacesql.connect(catalog) as con:
        rel = con.sql(query if query is not None else f'SELECT * FROM "{table}"')
        if rel is None:
            raise click.UsageError("The query returns no rows.")
        return rel.to_arrow_table()


@labelstudio.command()
@_CATALOG
@click.option("--table", help="Send the rows of this table.")
@click.option("--query", help="Send the rows of this query.")
@click.option(
    "--as", "as_", type=click.Choice(["predictions", "annotations"]), default="predictions"
)
@click.option("--model-version", help="Model version of predictions from a 'result' column.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File (default: stdout).")
def export(
    catalog: str,
    table: str | None,
    query: str | None,
    as_: str,
    model_version: str | None,
    output: str | None,
) -> None:
    """Write rows as Label Studio import JSON (tasks with data and predictions)."""
    from spacesql.integrations.labelstudio.tasks import to_tasks

    tasks = to_tasks(_rows(catalog, table, query), as_=as_, model_version=model_version)
    text = json.dumps(tasks, ensure_ascii=False)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"{len(tasks)} task(s) written to {output}", err=True)
    else:
        click.echo(text)


@labelstudio.command()
@_CATALOG
@click.option("--project", required=True, type=int, help="The Label Studio project.")
@click.option("--table", help="Send the rows of this table.")
@click.option("--query", help="Send the rows of this query.")
@click.option(
    "--as", "as_", type=click.Choice(["predictions", "annotations"]), default="predictions"
)
@click.option("--model-version", help="Model version of predictions from a 'result' column.")
@_URL
@_KEY
def push(
    catalog: str,
    project: int,
    table: str | None,
    query: str | None,
    as_: str,
    model_version: str | None,
    url: str | None,
    api_key: str | None,
) -> None:
    """Create tasks in a Label Studio project from rows (e.g. a model's pre-annotations)."""
    from spacesql.integrations.labelstudio.client import LabelStudioClient
    from spacesql.integrations.labelstudio.tasks import to_tasks

    client = LabelStudioClient(url, api_key=api_key)
    tasks = to_tasks(_rows(catalog, table, query), as_=as_, model_version=model_version)
    reply = client.import_tasks(project, tasks)
    click.echo(
        f"project {project}: {reply.get('task_count', len(tasks))} task(s), "
        f"{reply.get('prediction_count', 0)} prediction(s), "
        f"{reply.get('annotation_count', 0)} annotation(s) created"
    )
