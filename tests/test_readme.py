"""The README's code runs as written (in a scratch directory)."""

from __future__ import annotations

from pathlib import Path

import spacesql

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return [part.split("```")[0] for part in README.split(f"```{lang}\n")[1:]]


def test_readme_sql_block(tmp_path):
    (sql,) = _blocks("sql")
    con = spacesql.connect(tmp_path / "cat")
    results = {}
    for line in sql.splitlines():
        statement = line.split("--")[0].strip()
        if statement:
            rel = con.sql(statement)
            results[statement] = rel.fetchall() if rel is not None else None
    assert results["SELECT count(*) FROM labels AT (VERSION => 'after_append');"] == [(12,)]


def test_readme_dataset_block(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = next(b for b in _blocks("python") if "Dataset.create" in b)
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    ds = namespace["label_ds"]
    assert ds.local().read_all(version="after_append").num_rows == 12
    assert (tmp_path / "my-catalog" / "labels").is_dir()
