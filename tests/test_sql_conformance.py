"""The SQL conformance suite: every sql/conformance/*.test file, run by tests/sqllogic.py.

``known_bugs.test`` holds the expected-correct behaviour of known spacesql bugs; each of its
``case`` sections runs on its own catalog and is a strict xfail, so a fixed bug shows up as
an XPASS failure (move the case to its area file then).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqllogic import SqlLogicFailure, cases, run

CONFORMANCE = Path(__file__).resolve().parent.parent / "sql" / "conformance"
KNOWN_BUGS = "known_bugs.test"


def _params() -> list[object]:
    params: list[object] = []
    for path in sorted(CONFORMANCE.glob("*.test")):
        for case in cases(path):
            test_id = path.name + (f"::{case.name}" if case.name else "")
            marks = []
            if path.name == KNOWN_BUGS:
                marks.append(pytest.mark.xfail(strict=True, reason=f"known bug: {case.name}"))
            params.append(pytest.param(path, case.records, id=test_id, marks=marks))
    return params


def test_suite_is_present() -> None:
    names = {p.name for p in CONFORMANCE.glob("*.test")}
    areas = [
        "ddl",
        "insert",
        "upsert",
        "delete",
        "update",
        "time_travel",
        "tags_branches",
        "metadata",
        "passthrough",
        "errors",
        "record_fields",
    ]
    assert {f"{a}.test" for a in areas} <= names


@pytest.mark.parametrize("path, records", _params())
def test_sql_file(path: Path, records: list, tmp_path: Path) -> None:
    failure = None
    try:
        run(path, records, tmp_path / "catalog")
    except SqlLogicFailure as exc:
        failure = str(exc)  # file:line, the statement and what went wrong
    if failure is not None:
        pytest.fail(failure, pytrace=False)
