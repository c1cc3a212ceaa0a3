"""Materialized views: SQL surface, Python API, lineage, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

import spacesql
from spacesql.errors import SchemaError, SqlError, TableNotFoundError


@pytest.fixture
def con(tmp_path: Path) -> spacesql.Connection:
    c = spacesql.connect(tmp_path / "cat")
    c.sql("CREATE TABLE src (id BIGINT PRIMARY KEY, grp VARCHAR, val BIGINT, tags BIGINT[])")
    c.sql(
        "INSERT INTO src VALUES (1, 'a', 10, [1, 2]), (2, 'b', 20, [3]), (3, 'a', NULL, []),"
        " (4, NULL, 5, NULL)"
    )
    c.sql("CREATE TABLE dim (grp VARCHAR PRIMARY KEY, w INTEGER)")
    c.sql("INSERT INTO dim VALUES ('a', 1), ('b', 2)")
    return c


def rows(con: spacesql.Connection, sql: str) -> list[tuple[object, ...]]:
    return sorted(con.sql(sql).fetchall(), key=repr)  # type: ignore[union-attr]


def refresh(con: spacesql.Connection, name: str, extra: str = "") -> dict[str, object]:
    rel = con.sql(f"REFRESH MATERIALIZED VIEW {name}{extra}")
    assert rel is not None
    table = rel.to_arrow_table()
    return {k: table.column(k)[0].as_py() for k in table.column_names}


def test_create_query_and_refresh_incrementally(con: spacesql.Connection) -> None:
    query = "SELECT grp, count(*) AS n, sum(val) AS s FROM src GROUP BY grp"
    created = con.sql(f"CREATE MATERIALIZED VIEW per_grp AS {query}").fetchall()  # type: ignore[union-attr]
    assert created[0][1] == "incremental"
    assert rows(con, "SELECT * FROM per_grp") == rows(con, query)
    # hidden state columns are not shown
    assert con.sql("SELECT * FROM per_grp").columns == ["grp", "n", "s"]  # type: ignore[union-attr]
    con.sql("INSERT INTO src VALUES (5, 'b', 1, [])")
    con.sql("DELETE FROM src WHERE id = 1")
    # the view shows the snapshot it reflects until refreshed
    assert ("a", 2, 10) in rows(con, "SELECT * FROM per_grp")
    result = refresh(con, "per_grp")
    assert result["strategy"] == "incremental"
    assert result["changed_source_rows"] == 2
    assert rows(con, "SELECT * FROM per_grp") == rows(con, query)


def test_refresh_with_nothing_new_is_a_noop(con: spacesql.Connection) -> None:
    con.sql("CREATE MATERIALIZED VIEW v AS SELECT id FROM src WHERE val > 6")
    before = con.dataset("v").snapshot().snapshot_id
    result = refresh(con, "v")
    assert result["strategy"] == "none"
    assert result["snapshot_id"] is None
    assert con.dataset("v").snapshot().snapshot_id == before


def test_lineage_and_time_travel(con: spacesql.Connection) -> None:
    con.sql("CREATE MATERIALIZED VIEW v AS SELECT s.id, d.w FROM src s JOIN dim d USING (grp)")
    view = con.materialized_view("v")
    first = view.sources()
    assert first == {
        "src": con.dataset("src").snapshot().snapshot_id,
        "dim": con.dataset("dim").snapshot().snapshot_id,
    }
    con.sql("UPDATE dim SET w = 7 WHERE grp = 'a'")
    view.refresh()
    assert view.sources()["dim"] == con.dataset("dim").snapshot().snapshot_id
    # the first view snapshot still reads as it was, and says what it reflects
    assert rows(con, "SELECT * FROM v AT (VERSION => 1)") == [(1, 1), (2, 2), (3, 1)]
    assert view.sources(1) == first
    assert rows(con, "SELECT * FROM v") == [(1, 7), (2, 2), (3, 7)]


def test_refresh_to_a_tag_and_not_backwards(con: spacesql.Connection) -> None:
    con.sql("CREATE MATERIALIZED VIEW v AS SELECT id, val FROM src")
    con.sql("INSERT INTO src VALUES (10, 'c', 1, [])")
    con.sql("CALL spacesql_tag('src', 'release')")
    con.sql("INSERT INTO src VALUES (11, 'c', 2, [])")
    result = refresh(con, "v", " TO VERSION 'release'")
    assert result["strategy"] == "incremental"
    assert (10, 1) in rows(con, "SELECT * FROM v")
    assert (11, 2) not in rows(con, "SELECT * FROM v")
    refresh(con, "v")
    assert (11, 2) in rows(con, "SELECT * FROM v")
    with pytest.raises(SqlError, match="already reflects the newer snapshot"):
        con.sql("REFRESH MATERIALIZED VIEW v TO VERSION 'release'")


def test_full_refresh_and_fallback_reason(con: spacesql.Connection) -> None:
    query = "SELECT grp, count(*) AS n FROM src GROUP BY grp HAVING count(*) > 1"
    con.sql(f"CREATE MATERIALIZED VIEW v AS {query}")
    plan = {r["key"]: r["value"] for r in con.materialized_view("v").explain().to_pylist()}
    con.sql("INSERT INTO src VALUES (6, 'b', 3, [])")
    explained = {r["key"]: r["value"] for r in con.materialized_view("v").explain().to_pylist()}
    assert explained["strategy"] == "full"
    assert "HAVING" in explained["reason"]
    assert "HAVING" in plan["rule"]
    result = refresh(con, "v")
    assert result["strategy"] == "full"
    assert "HAVING" in str(result["reason"])
    assert rows(con, "SELECT * FROM v") == rows(con, query)
    con.sql("CREATE MATERIALIZED VIEW w AS SELECT id FROM src")
    assert refresh(con, "w", " FULL")["reason"] == "FULL was asked for"


@pytest.mark.parametrize(
    ("query", "culprit"),
    [
        ("SELECT id FROM src ORDER BY id", "ORDER BY"),
        ("SELECT id, random() AS r FROM src", "RANDOM()"),
        ("SELECT id, row_number() OVER () AS r FROM src", "window function"),
        ("SELECT id FROM src WHERE val > (SELECT avg(val) FROM src)", "subquery"),
        ("SELECT s.id FROM src s RIGHT JOIN dim d USING (grp)", "RIGHT JOIN"),
        ("SELECT grp FROM src UNION SELECT grp FROM dim", "UNION"),
    ],
)
def test_explain_names_what_forces_a_full_recompute(
    con: spacesql.Connection, query: str, culprit: str
) -> None:
    con.sql(f"CREATE MATERIALIZED VIEW v AS {query}")
    con.sql("INSERT INTO src VALUES (7, 'a', 1, [])")
    explained = {
        r["key"]: r["value"]
        for r in con.sql("EXPLAIN REFRESH MATERIALIZED VIEW v").to_arrow_table().to_pylist()  # type: ignore[union-attr]
    }
    assert explained["strategy"] == "full"
    assert culprit in explained["reason"]


def test_keyless_root_is_recomputed_with_a_reason(con: spacesql.Connection) -> None:
    con.sql("CREATE TABLE logs (grp VARCHAR, val BIGINT)")
    con.sql("INSERT INTO logs VALUES ('a', 1), ('a', 1)")
    con.sql("CREATE MATERIALIZED VIEW rows_v AS SELECT grp, val FROM logs")
    con.sql("CREATE MATERIALIZED VIEW agg_v AS SELECT grp, sum(val) AS s FROM logs GROUP BY grp")
    con.sql("INSERT INTO logs VALUES ('a', 1)")
    full = refresh(con, "rows_v")
    assert full["strategy"] == "full"
    assert "no primary key" in str(full["reason"])
    # aggregates over one keyless table merge its diff directly
    assert refresh(con, "agg_v")["strategy"] == "incremental"
    assert rows(con, "SELECT * FROM agg_v") == [("a", 3)]
    assert len(rows(con, "SELECT * FROM rows_v")) == 3


def test_view_over_a_view(con: spacesql.Connection) -> None:
    con.sql(
        "CREATE MATERIALIZED VIEW per_grp WITH (primary_key = 'grp') AS "
        "SELECT grp, count(*) AS n FROM src WHERE grp IS NOT NULL GROUP BY grp"
    )
    con.sql("CREATE MATERIALIZED VIEW big AS SELECT grp, n FROM per_grp WHERE n > 1")
    assert rows(con, "SELECT * FROM big") == [("a", 2)]
    con.sql("INSERT INTO src VALUES (8, 'b', 1, []), (9, 'b', 1, [])")
    refresh(con, "per_grp")
    assert refresh(con, "big")["strategy"] == "incremental"
    assert rows(con, "SELECT * FROM big") == [("a", 2), ("b", 3)]


def test_python_udf_runs_only_on_changed_rows(con: spacesql.Connection) -> None:
    seen: list[int] = []

    def plus_one(values: pa.Array) -> pa.Array:
        seen.append(len(values))
        return pc.add(values, 1)

    con.create_function("plus_one", plus_one, ["BIGINT"], "BIGINT", type="arrow")
    con.sql("INSERT INTO src SELECT i, 'x', i, [] FROM range(100, 2100) t(i)")
    con.sql("CREATE MATERIALIZED VIEW v AS SELECT id, plus_one(val) AS v1 FROM src")
    assert sum(seen) >= 2000
    seen.clear()
    con.sql("UPDATE src SET val = 0 WHERE id = 150")
    assert con.materialized_view("v").refresh().strategy == "incremental"
    assert sum(seen) == 1
    assert rows(con, "SELECT v1 FROM v WHERE id = 150") == [(1,)]
    # another connection without the function gets an error that says what to do
    other = spacesql.connect(con.catalog.path)
    other.sql("UPDATE src SET val = 1 WHERE id = 150")
    with pytest.raises(SqlError, match="plus_one"):
        other.sql("REFRESH MATERIALIZED VIEW v")


def test_progress_steps_are_reported(con: spacesql.Connection) -> None:
    con.sql("CREATE MATERIALIZED VIEW v AS SELECT id FROM src")
    con.sql("INSERT INTO src VALUES (12, 'z', 1, [])")
    steps: list[str] = []
    con.materialized_view("v").refresh(progress=steps.append)
    assert steps == ["reading changes of src", "computing the change of the view", "committing"]


def test_unnest_json_and_case(con: spacesql.Connection) -> None:
    con.sql("CREATE TABLE tasks (id BIGINT PRIMARY KEY, doc VARCHAR)")
    con.sql(
        """INSERT INTO tasks VALUES
        (1, '{"annotations": [{"label": "cat", "score": 0.9}, {"label": "dog", "score": 0.2}]}'),
        (2, '{"annotations": []}')"""
    )
    query = (
        "SELECT id, a->>'$.label' AS label, "
        "CASE WHEN CAST(a->>'$.score' AS DOUBLE) > 0.5 THEN 'sure' ELSE 'unsure' END AS c "
        "FROM (SELECT id, unnest(CAST(doc AS JSON)->'$.annotations[*]') AS a FROM tasks)"
    )
    direct = (
        "SELECT id, unnest(CAST(doc AS JSON)->'$.annotations[*]')->>'$.label' AS label FROM tasks"
    )
    con.sql(f"CREATE MATERIALIZED VIEW flat AS {direct}")
    con.sql(f"CREATE MATERIALIZED VIEW sure AS {query}")
    con.sql("""INSERT INTO tasks VALUES (3, '{"annotations": [{"label": "eel", "score": 1}]}')""")
    con.sql("DELETE FROM tasks WHERE id = 1")
    assert refresh(con, "flat")["strategy"] == "incremental"
    assert rows(con, "SELECT * FROM flat") == [(3, "eel")]
    refresh(con, "sure")
    assert rows(con, "SELECT * FROM sure") == [(3, "eel", "sure")]


def test_views_cannot_be_written_or_dropped_as_tables(con: spacesql.Connection) -> None:
    con.sql("CREATE MATERIALIZED VIEW v AS SELECT id, val FROM src")
    for stmt in (
        "INSERT INTO v VALUES (1, 2)",
        "DELETE FROM v",
        "UPDATE v SET val = 1",
        "DROP TABLE v",
        "ALTER TABLE v ADD COLUMN x INTEGER",
    ):
        with pytest.raises(SqlError, match="materialized view"):
            con.sql(stmt)
    with pytest.raises(SqlError, match="is a table"):
        con.sql("DROP MATERIALIZED VIEW src")
    with pytest.raises(SqlError, match="is a table"):
        con.sql("REFRESH MATERIALIZED VIEW src")
    con.sql("DROP MATERIALIZED VIEW v")
    assert "v" not in con.tables()
    con.sql("DROP MATERIALIZED VIEW IF EXISTS v")
    with pytest.raises(TableNotFoundError):
        con.sql("DROP MATERIALIZED VIEW v")


def test_bad_definitions_write_nothing(con: spacesql.Connection) -> None:
    from spacesql.errors import ConstraintError

    bad = {
        "CREATE MATERIALIZED VIEW v AS SELECT nope FROM src": "nope",
        "CREATE MATERIALIZED VIEW v AS SELECT * FROM missing_table": "missing_table",
        "CREATE MATERIALIZED VIEW v WITH (primary_key = 'nope') AS SELECT id FROM src": "nope",
        "CREATE MATERIALIZED VIEW v WITH (colour = 'red') AS SELECT id FROM src": "colour",
        "CREATE MATERIALIZED VIEW v WITH (primary_key = 'grp') AS SELECT grp FROM src": "null",
        "CREATE MATERIALIZED VIEW v AS SELECT id AS __spacesql_x FROM src": "reserved",
    }
    for stmt, needle in bad.items():
        with pytest.raises((SqlError, SchemaError, TableNotFoundError, ConstraintError)) as info:
            con.sql(stmt)
        assert needle in str(info.value)
        assert "v" not in con.tables()
    leftovers = [p.name for p in Path(con.catalog.path).iterdir() if p.name.startswith(".")]
    assert leftovers == []
    with pytest.raises(SqlError, match="is a table"):
        con.sql("CREATE MATERIALIZED VIEW src AS SELECT 1 AS x FROM dim")


def test_create_or_replace_and_if_not_exists(con: spacesql.Connection) -> None:
    con.sql("CREATE MATERIALIZED VIEW v AS SELECT id FROM src")
    con.sql("CREATE MATERIALIZED VIEW IF NOT EXISTS v AS SELECT grp FROM src")
    assert con.sql("SELECT * FROM v").columns == ["id"]  # type: ignore[union-attr]
    con.sql("CREATE OR REPLACE MATERIALIZED VIEW v AS SELECT grp FROM src")
    assert con.sql("SELECT * FROM v").columns == ["grp"]  # type: ignore[union-attr]
    with pytest.raises(SchemaError, match="already exists"):
        con.sql("CREATE MATERIALIZED VIEW v AS SELECT id FROM src")


def test_dropped_source_gives_a_clear_error_and_keeps_the_view(con: spacesql.Connection) -> None:
    con.sql("CREATE MATERIALIZED VIEW v AS SELECT id, w FROM src JOIN dim USING (grp)")
    before = rows(con, "SELECT * FROM v")
    con.sql("DROP TABLE dim")
    with pytest.raises(SqlError, match="source 'dim' no longer exists"):
        con.sql("REFRESH MATERIALIZED VIEW v")
    assert rows(con, "SELECT * FROM v") == before


def test_a_copied_catalog_keeps_working(con: spacesql.Connection, tmp_path: Path) -> None:
    con.sql("CREATE MATERIALIZED VIEW v AS SELECT grp, count(*) AS n FROM src GROUP BY grp")
    copy = tmp_path / "copy"
    shutil.copytree(con.catalog.path, copy)
    other = spacesql.connect(copy)
    other.sql("INSERT INTO src VALUES (20, 'a', 1, [])")
    assert refresh(other, "v")["strategy"] == "incremental"
    assert ("a", 3) in rows(other, "SELECT * FROM v")
    assert ("a", 2) in rows(con, "SELECT * FROM v")


def test_scheduled_refresh_script(con: spacesql.Connection, tmp_path: Path) -> None:
    from spacesql.cli import cli

    con.sql("CREATE MATERIALIZED VIEW v AS SELECT grp, count(*) AS n FROM src GROUP BY grp")
    con.sql("INSERT INTO src VALUES (30, 'b', 1, [])")
    script = tmp_path / "refresh.sql"
    script.write_text("REFRESH MATERIALIZED VIEW v;\n")
    out = CliRunner().invoke(cli, ["run", str(con.catalog.path), str(script)])
    assert out.exit_code == 0, out.output
    assert "incremental" in out.output
    assert ("b", 2) in rows(con, "SELECT * FROM v")


def test_star_is_expanded_when_the_view_is_created(con: spacesql.Connection) -> None:
    con.sql("CREATE MATERIALIZED VIEW v AS SELECT * FROM dim")
    con.sql("ALTER TABLE dim ADD COLUMN note VARCHAR")
    con.sql("INSERT INTO dim VALUES ('c', 3, 'new')")
    assert refresh(con, "v")["strategy"] == "incremental"
    assert con.sql("SELECT * FROM v").columns == ["grp", "w"]  # type: ignore[union-attr]
    assert rows(con, "SELECT * FROM v") == [("a", 1), ("b", 2), ("c", 3)]


def test_stock_duckdb_views_hide_the_state_columns(con: spacesql.Connection) -> None:
    from spacesql.catalog import Catalog
    from spacesql.sql.duckdb_init import duckdb_init_script

    con.sql("CREATE MATERIALIZED VIEW v AS SELECT grp, count(*) AS n FROM src GROUP BY grp")
    script = duckdb_init_script(Catalog(con.catalog.path))
    assert '"v"' in script or " v AS" in script
    assert "__spacesql_" not in script


def test_names_keep_their_case(con: spacesql.Connection) -> None:
    con.sql('CREATE TABLE "MyT" (id BIGINT PRIMARY KEY, "Name" VARCHAR, "My Col" INTEGER)')
    con.sql("INSERT INTO \"MyT\" VALUES (1, 'a', 1)")
    con.sql('CREATE MATERIALIZED VIEW v AS SELECT "Name", "My Col" FROM "MyT"')
    con.sql('CREATE MATERIALIZED VIEW g AS SELECT "Name", sum("My Col") AS s FROM "MyT" GROUP BY 1')
    con.sql("INSERT INTO \"MyT\" VALUES (2, 'b', 2)")
    assert refresh(con, "v")["strategy"] == "incremental"
    assert refresh(con, "g")["strategy"] == "incremental"
    assert rows(con, "SELECT * FROM v") == [("a", 1), ("b", 2)]
    assert len(rows(con, "SELECT * FROM g")) == 2


def test_a_table_read_at_a_fixed_version_stays_there(con: spacesql.Connection) -> None:
    first = con.dataset("dim").snapshot().snapshot_id
    con.sql("INSERT INTO dim VALUES ('c', 3)")
    con.sql(f"CREATE MATERIALIZED VIEW v AS SELECT * FROM dim AT (VERSION => {first})")
    assert rows(con, "SELECT * FROM v") == [("a", 1), ("b", 2)]
    con.sql("INSERT INTO dim VALUES ('d', 4)")
    result = refresh(con, "v")
    assert result["strategy"] == "full"
    assert "fixed version" in str(result["reason"])
    assert rows(con, "SELECT * FROM v") == [("a", 1), ("b", 2)]


def test_refreshing_to_a_branch_and_back(con: spacesql.Connection) -> None:
    con.sql("CREATE MATERIALIZED VIEW v AS SELECT grp, w FROM dim")
    con.sql("CALL spacesql_branch('dim', 'dev')")
    con.sql("INSERT INTO dim VALUES ('main_only', 1)")
    con.sql("CALL spacesql_use_branch('dim', 'dev')")
    con.sql("INSERT INTO dim VALUES ('dev_only', 2)")
    con.sql("CALL spacesql_use_branch('dim', 'main')")
    refresh(con, "v", " TO VERSION 'dev'")
    assert ("dev_only", 2) in rows(con, "SELECT * FROM v")
    refresh(con, "v")  # back to main: another branch, not an older version
    got = rows(con, "SELECT * FROM v")
    assert ("main_only", 1) in got and ("dev_only", 2) not in got


def test_avg_of_timestamps_is_maintained_by_recomputing_its_groups(
    con: spacesql.Connection,
) -> None:
    con.sql("CREATE TABLE ev (id BIGINT PRIMARY KEY, g VARCHAR, ts TIMESTAMP)")
    con.sql(
        "INSERT INTO ev VALUES (1, 'a', TIMESTAMP '2026-01-01'), (2, 'a', TIMESTAMP '2026-01-03')"
    )
    query = "SELECT g, avg(ts) AS mid, count(*) AS n FROM ev GROUP BY g"
    con.sql(f"CREATE MATERIALIZED VIEW v AS {query}")
    con.sql("INSERT INTO ev VALUES (3, 'b', TIMESTAMP '2026-02-01')")
    con.sql("DELETE FROM ev WHERE id = 1")
    assert refresh(con, "v")["strategy"] == "incremental"
    assert rows(con, "SELECT * FROM v") == rows(con, query)
