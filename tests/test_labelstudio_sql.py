"""The SQL of the Label Studio integration: flat views and everyday analytics."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import spacesql
from spacesql.cli import cli
from spacesql.integrations.labelstudio import import_into
from spacesql.integrations.labelstudio.sync import ensure_tables

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "labelstudio"
SQL = ROOT / "sql" / "labelstudio"


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    assert FIXTURES.is_dir(), f"Label Studio fixtures missing at {FIXTURES}"
    con = spacesql.connect(tmp_path / "cat")
    ensure_tables(con, "tasks")
    for project in ("image_od", "ner", "text_cls"):
        import_into(con.dataset("tasks"), FIXTURES / project / "export_JSON.json")
    con.close()
    return tmp_path / "cat"


def run(catalog: Path, script: str) -> str:
    out = CliRunner().invoke(cli, ["run", str(catalog), str(SQL / script), "--var", "table=tasks"])
    assert out.exit_code == 0, out.output
    return out.output


def same_as_query(con: spacesql.Connection, view: str) -> bool:
    stored = con.sql(f"SELECT * FROM {view}").to_arrow_table()  # type: ignore[union-attr]
    fresh = con.sql(con.materialized_view(view).query).to_arrow_table()  # type: ignore[union-attr]
    return sorted(map(repr, stored.to_pylist())) == sorted(map(repr, fresh.to_pylist()))


def test_flat_views_refresh_incrementally(catalog: Path) -> None:
    run(catalog, "views.sql")
    con = spacesql.connect(catalog)
    n_annotations = con.sql("SELECT sum(len(annotations)) FROM tasks").fetchone()[0]  # type: ignore[union-attr]
    assert con.sql("SELECT count(*) FROM tasks_annotations").fetchone()[0] == n_annotations  # type: ignore[union-attr]
    boxes = con.sql(
        "SELECT x_px, width_px, original_width, x, width FROM tasks_regions "
        "WHERE type = 'rectanglelabels' LIMIT 1"
    ).fetchone()  # type: ignore[union-attr]
    assert boxes is not None
    assert boxes[0] == pytest.approx(boxes[3] / 100 * boxes[2])
    con.sql("DELETE FROM tasks WHERE id IN (1, 61)")
    con.sql(
        "UPDATE tasks SET annotations = list_filter(annotations, lambda a: NOT a.was_cancelled) "
        "WHERE project = 2"
    )
    con.close()
    output = run(catalog, "refresh.sql")
    assert output.count("incremental") == 2
    con = spacesql.connect(catalog)
    assert same_as_query(con, "tasks_annotations")
    assert same_as_query(con, "tasks_regions")
    assert (
        con.sql(
            "SELECT count(*) FROM tasks_annotations WHERE project = 2 AND was_cancelled"
        ).fetchone()[0]
        == 0
    )  # type: ignore[union-attr]


def test_analytics_answer_everyday_questions(catalog: Path) -> None:
    run(catalog, "views.sql")
    output = run(catalog, "analytics.sql")
    for header in ("regions", "skipped_rate", "median_lead_time", "different_answers"):
        assert header in output
    con = spacesql.connect(catalog)
    # task 1 of the image project has three annotators who disagree (fixture README)
    disagree = con.sql(
        "SELECT count(DISTINCT label_set) FROM tasks_annotations "
        "WHERE project = 1 AND task_id = 1 AND NOT was_cancelled"
    ).fetchone()[0]  # type: ignore[union-attr]
    assert disagree > 1


def test_import_commits_say_what_changed(catalog: Path) -> None:
    con = spacesql.connect(catalog)
    props = con.sql(
        "SELECT properties FROM spacesql_snapshots('tasks') ORDER BY snapshot_id"
    ).fetchall()  # type: ignore[union-attr]
    first = dict(props[1][0])
    assert first["labelstudio.inserted"] == "30"
    assert first["labelstudio.updated"] == "0"
    assert first["labelstudio.format"] == "JSON"
    assert first["labelstudio.source"].endswith("export_JSON.json")
