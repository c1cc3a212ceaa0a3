"""The command line: sql, run, shell, duckdb-init with the real duckdb binary, demo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SPACESQL = [sys.executable, "-m", "spacesql.cli"]


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SPACESQL, *args], capture_output=True, text=True, input=input, timeout=120
    )


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "cat"
    out = run(
        "sql",
        str(path),
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v VARCHAR); "
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'); CALL spacesql_tag('t', 'first')",
    )
    assert out.returncode == 0, out.stderr
    return path


def test_sql_prints_boxed_results(catalog):
    out = run("sql", str(catalog), "SELECT v FROM t ORDER BY id")
    assert out.returncode == 0
    assert "│ a" in out.stdout and "varchar" in out.stdout


def test_sql_error_exits_nonzero_with_message(catalog):
    out = run("sql", str(catalog), "INSERT INTO t VALUES (1, 'dup')")
    assert out.returncode == 1
    assert "ConstraintError" in out.stderr and "already in dataset" in out.stderr


def test_run_script_with_variables_and_error_line(catalog, tmp_path):
    script = tmp_path / "job.sql"
    script.write_text(
        "-- nightly job\nINSERT INTO t VALUES ({{ id }}, '{{ label }}');\n\n"
        "SELECT count(*) FROM t;\nINSERT INTO t VALUES (1, 'boom');\nSELECT 'not reached';\n"
    )
    out = run("run", str(catalog), str(script), "--var", "id=7", "--var", "label=x")
    assert out.returncode == 1
    assert f"{script}:5: ConstraintError" in out.stderr
    assert "INSERT INTO t VALUES (1, 'boom')" in out.stderr
    assert "not reached" not in out.stdout
    missing = run("run", str(catalog), str(script))
    assert missing.returncode == 1 and "--var" in missing.stderr
    check = run("sql", str(catalog), "SELECT count(*) FROM t")
    assert "3" in check.stdout


def test_shell_reads_multiline_statements_and_commands(catalog, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the shell's history file
    out = run(
        "shell",
        str(catalog),
        input="SELECT id\nFROM t\nORDER BY id;\n.tables\n.schema t\nSELECT * FROM nope;\n.quit\n",
    )
    assert out.returncode == 0
    assert "table_name" in out.stdout and "snapshot_id" in out.stdout
    assert "id int64" in out.stdout
    assert "TableNotFoundError" in out.stderr


@pytest.mark.skipif(shutil.which("duckdb") is None, reason="duckdb-cli is a dev dependency")
def test_duckdb_init_with_the_real_duckdb_shell(catalog, tmp_path):
    run("sql", str(catalog), "DELETE FROM t WHERE id = 1")
    init = run("duckdb-init", str(catalog))
    assert init.returncode == 0, init.stderr
    script = tmp_path / "init.sql"
    script.write_text(init.stdout)
    out = subprocess.run(
        [
            "duckdb",
            "-csv",
            "-c",
            f".read {script}",
            "-c",
            "SELECT id FROM t ORDER BY id",
            "-c",
            "SELECT id FROM t__first ORDER BY id",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["id", "2", "id", "1", "2"]


def test_demo_builds_catalog(tmp_path):
    out = run("demo", str(tmp_path / "demo"))
    assert out.returncode == 0, out.stderr
    assert "after_append" in out.stdout
    assert (tmp_path / "demo" / "images" / "metadata" / "dataset.json").exists()
