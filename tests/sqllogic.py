"""A small sqllogictest-style runner for spacesql (format: sql/README.md, "The .test format").

Records are separated by blank lines; ``#`` lines are comments. Record kinds:

* ``statement ok`` + SQL: must run without error (its result, if any, is ignored);
* ``statement error [ErrorClass]`` + SQL [+ ``----`` + message substring]: must raise a
  spacesql error (an instance of ``spacesql.<ErrorClass>`` if named, else of SpaceSQLError)
  whose message contains the substring;
* ``query <types> [rowsort]`` + SQL + ``----`` + rows: one letter per column (I integer,
  R float/decimal, B boolean, T anything); rows are tab-separated, rendered by :func:`render`;
* ``restart``: close the connection and reconnect to the same catalog;
* ``case <name>``: starts an independent case (fresh catalog), see :func:`cases`.

``__TMP__`` in SQL and expected text is replaced by the catalog directory.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import spacesql

__all__ = ["Case", "Record", "SqlLogicFailure", "cases", "parse", "render", "run"]


@dataclass
class Record:
    kind: str  # "statement", "query", "restart", "case"
    line: int  # 1-based line of the record's header
    args: list[str]  # header words after the kind
    sql: str = ""
    expected: list[str] | None = None  # lines after ----, None if there is no ----


@dataclass
class Case:
    name: str
    line: int
    records: list[Record] = field(default_factory=list)


class SqlLogicFailure(AssertionError):
    """A record did not behave as the file says; the message names file:line and the SQL."""


def parse(path: Path) -> list[Record]:
    """The records of a .test file, in order."""
    records: list[Record] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        if not lines[i].strip() or lines[i].startswith("#"):
            i += 1
            continue
        words = lines[i].split()
        rec = Record(words[0], i + 1, words[1:])
        if rec.kind not in ("statement", "query", "restart", "case"):
            raise SqlLogicFailure(f"{path}:{i + 1}: unknown record {lines[i]!r}")
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() and lines[i] != "----":
            body.append(lines[i])
            i += 1
        if i < len(lines) and lines[i] == "----":
            i += 1
            rec.expected = []
            while i < len(lines) and lines[i].strip():
                rec.expected.append(lines[i])
                i += 1
        rec.sql = "\n".join(body)
        if rec.kind in ("statement", "query") and not rec.sql:
            raise SqlLogicFailure(f"{path}:{rec.line}: {rec.kind} without SQL")
        records.append(rec)
    return records


def cases(path: Path) -> list[Case]:
    """Records grouped by ``case`` headers (records before the first one form case '')."""
    out = [Case("", 1)]
    for rec in parse(path):
        if rec.kind == "case":
            out.append(Case(" ".join(rec.args), rec.line))
        else:
            out[-1].records.append(rec)
    return [c for c in out if c.records or c.name]


def render(value: Any) -> str:
    """One value as text: NULL, true/false, ints as digits, floats as repr of the value
    rounded to 6 decimals (``1.5``, ``3.0``, ``0.333333``, ``NaN``, ``inf``), ``(empty)``
    for '', bytes with non-printable bytes (and backslash) as ``\\xNN``, datetimes with a
    space before the time, lists as ``[a, b]``, dicts as ``{k: v}``, anything else str()."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return repr(round(value, 6) + 0.0)  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, str):
        return value if value else "(empty)"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02X}" for b in value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{render(k)}: {render(v)}" for k, v in value.items()) + "}"
    return str(value)


_TYPES = {
    "I": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "R": lambda v: isinstance(v, (float, decimal.Decimal)),
    "B": lambda v: isinstance(v, bool),
    "T": lambda v: True,
}


def _execute(con: Any, sql: str) -> list[tuple[Any, ...]] | None:
    """Run SQL with ``con.sql`` and fetch its rows, so that execution errors surface too."""
    result = con.sql(sql)
    return None if result is None else result.fetchall()


def _query(con: Any, rec: Record) -> list[str]:
    rows = _execute(con, rec.sql)
    if rows is None:
        raise AssertionError("the statement returned no result")
    types = rec.args[0] if rec.args else ""
    for row in rows:
        if len(row) != len(types):
            raise AssertionError(f"{len(row)} columns, header says {len(types)} ({types!r})")
        for letter, value in zip(types, row, strict=True):
            if value is not None and not _TYPES.get(letter, _TYPES["T"])(value):
                raise AssertionError(f"value {value!r} is not of type {letter}")
    return ["\t".join(render(v) for v in row) for row in rows]


def _run_record(con: Any, rec: Record) -> None:
    if rec.kind == "query":
        actual = _query(con, rec)
        expected = list(rec.expected or [])
        if "rowsort" in rec.args[1:]:
            actual, expected = sorted(actual), sorted(expected)
        if actual != expected:
            want, got = "\n".join(expected), "\n".join(actual)
            raise AssertionError(f"wrong result\n--- expected\n{want}\n--- actual\n{got}")
    elif rec.args[:1] == ["ok"]:
        _execute(con, rec.sql)
    elif rec.args[:1] == ["error"]:
        cls = getattr(spacesql, rec.args[1]) if len(rec.args) > 1 else spacesql.SpaceSQLError
        if not (isinstance(cls, type) and issubclass(cls, spacesql.SpaceSQLError)):
            raise AssertionError(f"{rec.args[1]!r} is not a spacesql error class")
        try:
            _execute(con, rec.sql)
        except Exception as exc:
            if not isinstance(exc, cls):
                raise AssertionError(f"expected {cls.__name__}, got {exc!r}") from exc
            want = "\n".join(rec.expected or [])
            if want not in str(exc):
                raise AssertionError(f"error message {str(exc)!r} lacks {want!r}") from exc
        else:
            raise AssertionError("statement succeeded but an error was expected")
    else:
        raise AssertionError(f"unknown statement mode {rec.args!r}")


def run(path: Path, records: list[Record], catalog: Path) -> None:
    """Run records against a fresh connection over the (empty) directory ``catalog``."""
    con = spacesql.connect(catalog)
    try:
        for rec in records:
            if rec.kind == "restart":
                con.close()
                con = spacesql.connect(catalog)
                continue
            tmp = str(catalog)
            expected = (
                None if rec.expected is None else [e.replace("__TMP__", tmp) for e in rec.expected]
            )
            rec = Record(rec.kind, rec.line, rec.args, rec.sql.replace("__TMP__", tmp), expected)
            try:
                _run_record(con, rec)
            except Exception as exc:
                detail = str(exc) if isinstance(exc, AssertionError) else repr(exc)
                raise SqlLogicFailure(
                    f"{path}:{rec.line}: {rec.kind} {' '.join(rec.args)}\n{rec.sql}\n{detail}"
                ) from exc
    finally:
        con.close()
