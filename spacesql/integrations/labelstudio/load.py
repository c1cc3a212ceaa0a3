"""Reading a Label Studio export into an Arrow table, and importing it into a dataset."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spacesql.engine import Dataset
from spacesql.engine.operations import Upsert
from spacesql.engine.rewrites import WithProperties
from spacesql.errors import CommitConflictError, FormatError, SchemaError
from spacesql.integrations.labelstudio.exports import Export, Source, read_source
from spacesql.integrations.labelstudio.normalize import ShapeError, to_batches
from spacesql.integrations.labelstudio.schema import SCHEMA

__all__ = ["KEYS", "ImportSummary", "create_dataset", "import_into", "read_export"]

#: Times an import re-compares and retries when another writer commits meanwhile.
_RETRIES = 10


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_into` did.

    Attributes:
        source: The file or directory read (``<bytes>`` for in-memory content).
        format: The detected export format.
        tasks: Tasks in the source.
        inserted: Tasks that were not in the dataset.
        updated: Tasks whose row changed.
        unchanged: Tasks whose row is identical to the dataset's (nothing written).
        absent: Tasks of the dataset that the source does not contain (left as they are).
        snapshot_id: The snapshot written, or None if nothing changed.
    """

    source: str
    format: str
    tasks: int
    inserted: int
    updated: int
    unchanged: int
    absent: int
    snapshot_id: int | None


def read_export(
    source: Source,
    *,
    label_config: str | Mapping[str, Any] | None = None,
    project: int | None = None,
) -> pa.Table:
    """Read any Label Studio export into a table with the schema :data:`SCHEMA`.

    Args:
        source: A file (JSON, JSON_MIN, CSV, TSV, a target-storage file), a directory of
            target-storage files, or the content as bytes. The format is found from the
            content, not from the file name.
        label_config: The project's labeling config (XML text or ``parsed_label_config``).
            Used by JSON_MIN, CSV and TSV only, to tell result columns from data columns
            and to restore each result's ``type`` and ``to_name``.
        project: The project id for tasks whose export does not say (JSON_MIN, CSV and TSV
            do not); None leaves it null.

    Returns:
        One row per task, in source order (target-storage directories: by task id).

    Raises:
        FormatError: The source is not a Label Studio export, is truncated or malformed; the
            message names the file and the position.
    """
    with _without_gc():
        table = _convert(read_source(source, label_config=label_config), None)
    return table if project is None else _fill_project(table, project)


def _fill_project(table: pa.Table, project: int) -> pa.Table:
    column = pc.fill_null(table.column("project"), pa.scalar(project, pa.int64()))
    return table.set_column(table.schema.get_field_index("project"), "project", column)


#: Label Studio re-uses the ids of deleted tasks on SQLite (in another project, too), so a
#: task is identified by its project and id.
KEYS = ["project", "id"]


def create_dataset(location: str | os.PathLike[str]) -> Dataset:
    """Create an empty dataset for Label Studio tasks (schema :data:`SCHEMA`, key
    ``project, id``).

    Inside a catalog directory, the dataset is the table named after ``location``'s last
    component.
    """
    return Dataset.create(location, SCHEMA, primary_keys=KEYS)


def import_into(
    dataset: Dataset | str | os.PathLike[str],
    source: Source,
    *,
    label_config: str | Mapping[str, Any] | None = None,
    project: int | None = None,
    progress: bool = False,
) -> ImportSummary:
    """Import an export into a dataset: new tasks are inserted, changed ones replaced.

    The whole source is converted before anything is written, so a malformed export
    leaves the dataset untouched. Each task is compared with the dataset's current row;
    unchanged tasks are not written, and an export with no change writes no snapshot.
    Tasks missing from the source are kept (an export of annotated tasks only must not
    delete the others): see ``ImportSummary.absent``.

    Args:
        dataset: A dataset, or the location of one (created with :func:`create_dataset`
            if nothing is there).
        source: The export (see :func:`read_export`).
        label_config: The labeling config, for JSON_MIN/CSV/TSV (see :func:`read_export`).
        project: The project of tasks whose export does not name it (JSON_MIN, CSV, TSV);
            they get project 0 when it is not given.
        progress: Show a progress bar (rich) while reading, converting and writing.

    Raises:
        FormatError: The source cannot be read (nothing is written).
        SchemaError: The dataset does not have the Label Studio schema.
    """
    ds = _existing(dataset)  # a wrong dataset fails before the conversion
    with _progress(progress) as step:
        with _without_gc():
            step("Reading export", None)
            export = read_source(source, label_config=label_config)
            step(f"Converting {len(export.tasks)} tasks", len(export.tasks))
            table = _convert(export, lambda done: step(None, done))
            table = _fill_project(table, 0 if project is None else project)
            name, fmt = export.name, export.format
            # free the parsed JSON (gigabytes for a large export) before the collector is
            # back, which would otherwise walk all of it once more
            del export
        if ds is None:
            ds = create_dataset(dataset.location if isinstance(dataset, Dataset) else dataset)
        step("Comparing with the dataset", None)
        for _attempt in range(_RETRIES):
            head = ds.snapshot().snapshot_id
            current = ds.local().read_all(version=head)
            changed, inserted, absent = _changes(table, current)
            step(f"Writing {changed.num_rows} changed tasks", None)
            snapshot_id = None
            if changed.num_rows:
                try:
                    op = WithProperties(
                        Upsert(changed),
                        {
                            "labelstudio.source": name,
                            "labelstudio.format": fmt,
                            "labelstudio.inserted": str(inserted),
                            "labelstudio.updated": str(changed.num_rows - inserted),
                            "labelstudio.unchanged": str(table.num_rows - changed.num_rows),
                        },
                    )
                    snapshot_id = ds.local().commit(op, expected_snapshot=head).snapshot_id
                except CommitConflictError:
                    continue  # another writer committed: compare again with its rows
            return ImportSummary(
                source=name,
                format=fmt,
                tasks=table.num_rows,
                inserted=inserted,
                updated=changed.num_rows - inserted,
                unchanged=table.num_rows - changed.num_rows,
                absent=absent,
                snapshot_id=snapshot_id,
            )
    raise CommitConflictError(
        f"Importing {name} into dataset '{ds.name}' lost {_RETRIES} races with other "
        "writers; try again when they are done."
    )


def _convert(export: Export, progress: Callable[[int], None] | None) -> pa.Table:
    try:
        batches = to_batches(export.tasks, source_format=export.formats, progress=progress)
    except ShapeError as exc:
        raise _shape_error(export, exc) from exc
    return pa.Table.from_batches(batches, schema=SCHEMA)


def _shape_error(export: Export, exc: ShapeError) -> FormatError:
    where = "a task"
    if exc.task_index is not None:
        task = export.tasks[exc.task_index]
        tid = task.get("id") if isinstance(task, dict) else None
        where = f"task #{exc.task_index}" + (f" (id {tid})" if type(tid) is int else "")
    path = f".{exc.path}" if exc.path else ""
    return FormatError(
        f"{export.name}: {where}{path} {exc.problem}; this is not the structure of a Label "
        "Studio export. Export the project again, or fix that value."
    )


def _existing(dataset: Dataset | str | os.PathLike[str]) -> Dataset | None:
    """The dataset to import into, checked; None if ``dataset`` is a location to create."""
    if isinstance(dataset, Dataset):
        ds = dataset
    else:
        path = Path(dataset)
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return None
        ds = Dataset.load(path)
    if not ds.schema.equals(SCHEMA) or ds.primary_keys != KEYS:
        raise SchemaError(
            f"Dataset '{ds.name}' does not have the Label Studio task schema with primary key "
            f"{KEYS}; import into a dataset made by create_dataset() (or a new location)."
        )
    return ds


def _changes(new: pa.Table, current: pa.Table) -> tuple[pa.Table, int, int]:
    """The rows of ``new`` that are not in ``current`` as they are; with the number of new
    ids and the number of ``current`` ids missing from ``new``."""
    if current.num_rows == 0:
        return new, new.num_rows, 0
    import duckdb

    con = duckdb.connect()
    try:
        numbered = new.append_column("__spacesql_i", pa.array(range(new.num_rows), pa.int64()))
        con.register("new_rows", numbered)
        con.register("old_rows", current.select(new.column_names))
        # whole-row comparison of nested values, done by DuckDB without serialising rows
        same_key = "n.project = o.project AND n.id = o.id"
        # the schema's own column names (fixed identifiers, no user input)
        differs = " OR ".join(f'n."{c}" IS DISTINCT FROM o."{c}"' for c in new.column_names)
        changed = con.sql(
            "SELECT n.__spacesql_i, o.id IS NULL AS is_new FROM new_rows n LEFT JOIN old_rows o "
            f"ON {same_key} WHERE o.id IS NULL OR {differs}"
        ).fetchall()
        absent = con.sql(
            f"SELECT count(*) FROM old_rows o ANTI JOIN new_rows n ON {same_key}"
        ).fetchall()[0][0]
    finally:
        con.close()
    rows = sorted(row[0] for row in changed)
    inserted = sum(1 for row in changed if row[1])
    return new.take(pa.array(rows, pa.int64())), inserted, int(absent)


@contextmanager
def _without_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while an export is parsed and converted.

    Both allocate millions of small acyclic objects; every full collection would walk the
    whole parsed export again, which made reading twice as slow. Nothing here creates
    reference cycles, and the collector's previous state is restored.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str | None, int | None], None]]:
    """A ``step(description, value)`` callback: a new description starts a stage (with
    ``value`` as its total, None for unknown); no description advances to ``value``."""
    if not enabled:
        yield lambda description, value: None
        return
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("Label Studio import", total=None)

        def step(description: str | None, value: int | None) -> None:
            if description is None:
                bar.update(task, completed=value)
            else:
                bar.update(task, description=description, total=value, completed=0)

        yield step
        bar.update(task, description="Label Studio import done", total=1, completed=1)
