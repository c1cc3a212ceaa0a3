"""spacesql.connect(): the DuckDB-like surface, freshness across processes, laziness."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

import spacesql
from spacesql import SqlError, TableNotFoundError


@pytest.fixture
def con(tmp_path):
    c = spacesql.connect(tmp_path / "cat")
    c.sql("CREATE TABLE t (id BIGINT PRIMARY KEY, label VARCHAR, score DOUBLE)")
    c.sql("INSERT INTO t SELECT i, 'l' || (i % 3), i / 10 FROM range(10) r(i)")
    yield c
    c.close()


def test_duckdb_like_surface(con):
    assert con.execute("SELECT count(*) FROM t WHERE id > ?", [4]).fetchall() == [(5,)]
    assert con.execute("SELECT id FROM t WHERE id = $n", {"n": 3}).fetchone() == (3,)
    assert len(con.sql("SELECT * FROM t").fetchall()) == 10
    assert list(con.execute("SELECT id FROM t ORDER BY id LIMIT 2").df()["id"]) == [0, 1]
    assert isinstance(con.execute("SELECT 1").arrow(), pa.Table)
    assert con.tables() == ["t"]


def test_python_and_sql_share_one_engine(con):
    import pyarrow.compute as pc

    con.dataset("t").local().delete(pc.field("id") < 5)
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(5,)]
    con.sql("DELETE FROM t WHERE id = 9")
    assert con.dataset("t").local().read_all().num_rows == 4
    ops = con.dataset("t").versions().column("operation").to_pylist()
    assert ops == ["create", "insert", "delete", "delete"]


def test_one_snapshot_per_statement(con):
    before = con.dataset("t").snapshot().snapshot_id
    con.sql("UPDATE t SET score = score * 2 WHERE id < 3")
    con.sql("DELETE FROM t WHERE id IN (SELECT id FROM t WHERE label = 'l1')")
    assert con.dataset("t").snapshot().snapshot_id == before + 2


def test_views_are_lazy_parquet_scans(con):
    plan = "\n".join(
        str(r[1]) for r in con.execute("EXPLAIN SELECT label FROM t WHERE id = 3").fetchall()
    )
    assert "PARQUET" in plan.upper() or "READ_PARQUET" in plan.upper()
    assert "ARROW" not in plan.upper()


def test_passthrough_is_full_duckdb(con, tmp_path):
    con.sql("CREATE TEMP TABLE scratch AS SELECT * FROM t WHERE id < 3")
    con.sql("CREATE MACRO twice(x) AS x * 2")
    out = tmp_path / "out.parquet"
    con.execute("COPY (SELECT id, twice(id) AS d FROM scratch) TO '" + str(out) + "'")
    assert con.sql(f"SELECT sum(d) FROM read_parquet('{out}')").fetchall() == [(6,)]
    con.sql("INSERT INTO t SELECT id + 100, 'copy', 0 FROM read_parquet('" + str(out) + "')")
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(13,)]


def test_errors_are_spacesql_errors(con):
    with pytest.raises(TableNotFoundError, match="Did you mean 't'"):
        con.sql("SELECT * FROM tt")
    with pytest.raises(SqlError, match="line 1"):
        con.sql("SELECT * FROM t WHERE (")
    with pytest.raises(SqlError, match="historic snapshots are read-only"):
        con.sql("DELETE FROM t AT (VERSION => 1) WHERE id = 1")


def test_other_process_commits_are_seen_on_next_statement(con, tmp_path):
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(10,)]
    script = textwrap.dedent(
        f"""
        import spacesql
        with spacesql.connect({str(tmp_path / "cat")!r}) as c:
            c.sql("INSERT INTO t VALUES (500, 'other', 1.0)")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(11,)]


def test_connect_does_not_read_history(tmp_path, monkeypatch):
    with spacesql.connect(tmp_path / "cat") as c:
        c.sql("CREATE TABLE a (id INT PRIMARY KEY)")
        for i in range(5):
            c.sql(f"INSERT INTO a VALUES ({i})")
    from spacesql.engine.log import SnapshotLog

    def forbidden(self, *a, **k):
        raise AssertionError("connect() read snapshot history")

    monkeypatch.setattr(SnapshotLog, "read", forbidden)
    monkeypatch.setattr(SnapshotLog, "list_ids", forbidden)
    c = spacesql.connect(tmp_path / "cat")
    assert c.tables() == ["a"]
    c.close()


def test_table_dropped_and_recreated_by_another_process(con, tmp_path):
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(10,)]
    script = textwrap.dedent(
        f"""
        import spacesql
        with spacesql.connect({str(tmp_path / "cat")!r}) as c:
            c.sql("DROP TABLE t")
            c.sql("CREATE TABLE t (id VARCHAR PRIMARY KEY, extra INT)")
            c.sql("INSERT INTO t VALUES ('a', 1)")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert con.sql("SELECT * FROM t").fetchall() == [("a", 1)]
    assert con.dataset("t").primary_keys == ["id"]
    assert con.dataset("t").schema.field("id").type == pa.string()
