"""Reading Label Studio exports: find the format from the content, return task objects.

Every reader returns task objects shaped like Label Studio's JSON export (``id``, ``data``,
``annotations`` ...), carrying only what its format carries; :mod:`.normalize` maps them to
columns. Formats:

========================== ==============================================================
``JSON``                   a list of tasks: easy export, export snapshot, CLI export
``JSON_MIN``               a list of flat rows, one per annotation (lossy)
``CSV``, ``TSV``           the same rows as a table (lossy; a TSV may be named ``.csv``)
``TARGET_STORAGE_TASK``    one task object per file (``FUTURE_SAVE_TASK_TO_STORAGE``)
``TARGET_STORAGE_ANNOTATION`` one annotation per file with its task nested under ``task``
========================== ==============================================================

A directory is read as target storage: every file in it (not hidden, not in
subdirectories) is one of the JSON formats, and the tasks of all files are merged by id.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union
from xml.etree import ElementTree

from spacesql.errors import FormatError

__all__ = ["Export", "Source", "parse_label_config", "read_source"]

#: What an export can be read from: a file, a directory of target-storage files, or bytes.
Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

_EXPORT_AGAIN = "Export the project again from Label Studio (Export > JSON)."


@dataclass(frozen=True)
class Export:
    """Task objects read from one source.

    Attributes:
        name: The file or directory (``<bytes>`` for in-memory content), for messages.
        format: The detected format (for a directory, the format of most of its tasks).
        tasks: Task objects in Label Studio's JSON export shape.
        formats: The format each task came from (differs from ``format`` only when a
            directory mixes one-file-per-task and one-file-per-annotation files).
    """

    name: str
    format: str
    tasks: list[Any]
    formats: list[str]


def read_source(source: Source, *, label_config: str | Mapping[str, Any] | None = None) -> Export:
    """Read an export from a path (file or directory) or from its bytes.

    Args:
        source: A file, a directory of target-storage files, or the content itself.
        label_config: The project's labeling config (XML text, or ``parsed_label_config``
            from the project API). Only JSON_MIN, CSV and TSV use it: it tells which
            columns hold results and of which control type.

    Raises:
        FormatError: The content is not a Label Studio export this module reads.
    """
    controls = None if label_config is None else parse_label_config(label_config)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_content(bytes(source), "<bytes>", controls)
    path = Path(source)
    if path.is_dir():
        return _read_directory(path, controls)
    try:
        content = path.read_bytes()
    except OSError as exc:
        hint = (
            " It looks like JSON text: pass the content as bytes (text.encode())."
            if isinstance(source, str) and source.lstrip()[:1] in ("[", "{")
            else ""
        )
        raise FormatError(
            f"Cannot read the Label Studio export {str(path)[:80]!r}: {exc.strerror or exc}.{hint}"
        ) from exc
    return _read_content(content, str(path), controls)


def _read_directory(path: Path, controls: Controls | None) -> Export:
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FormatError(
            f"The directory {str(path)!r} has no files; point to a Label Studio export file "
            "or to a target-storage directory."
        )
    by_id: dict[int, tuple[dict[str, Any], str]] = {}
    for file in files:
        try:
            content = file.read_bytes()
        except OSError as exc:
            raise FormatError(f"Cannot read {str(file)!r}: {exc.strerror or exc}.") from exc
        part = _read_content(content, str(file), controls)
        if part.format not in ("JSON", "TARGET_STORAGE_TASK", "TARGET_STORAGE_ANNOTATION"):
            raise FormatError(
                f"{file}: is a {part.format} export; a directory is read as Label Studio "
                "target storage (one JSON file per task or per annotation). Import the "
                f"{part.format} file on its own."
            )
        for task, fmt in zip(part.tasks, part.formats, strict=True):
            key = task.get("id") if isinstance(task, dict) else None
            if type(key) is not int:
                raise FormatError(f"{file}: task without an integer 'id'. {_EXPORT_AGAIN}")
            known = by_id.get(key)
            by_id[key] = (task, fmt) if known is None else _merge(known, (task, fmt))
    merged = [by_id[k] for k in sorted(by_id)]
    formats = [fmt for _, fmt in merged]
    majority = max(sorted(set(formats)), key=formats.count, default="TARGET_STORAGE_TASK")
    return Export(str(path), majority, [t for t, _ in merged], formats)


def _merge(
    a: tuple[dict[str, Any], str], b: tuple[dict[str, Any], str]
) -> tuple[dict[str, Any], str]:
    """Two objects of one task (files of one target storage): a task file beats the task
    nested in annotation files, newer ``updated_at`` beats older; annotations are merged
    by id, the newer version of each winning."""
    (ta, fa), (tb, fb) = a, b
    rank_a = (fa != "TARGET_STORAGE_ANNOTATION", str(ta.get("updated_at") or ""))
    rank_b = (fb != "TARGET_STORAGE_ANNOTATION", str(tb.get("updated_at") or ""))
    (base, fmt), other = ((ta, fa), tb) if rank_a >= rank_b else ((tb, fb), ta)
    mine, theirs = base.get("annotations"), other.get("annotations")
    if not isinstance(mine, list) or not isinstance(theirs, list):
        return base, fmt  # not mergeable; the conversion reports what is wrong with it
    annotations: dict[Any, Any] = {}
    for k, ann in enumerate([*theirs, *mine]):
        if not isinstance(ann, dict):
            annotations[("not an object", k)] = ann  # kept so the conversion reports it
            continue
        key = ann.get("id")
        old = annotations.get(key)
        if old is None or str(ann.get("updated_at") or "") >= str(old.get("updated_at") or ""):
            annotations[key] = ann
    result = dict(base)
    result["annotations"] = sorted(annotations.values(), key=_annotation_order)
    return result, fmt


def _annotation_order(ann: Any) -> tuple[bool, int]:
    key = ann.get("id") if isinstance(ann, dict) else None
    return (type(key) is not int, key if type(key) is int else 0)


# --- one file ---------------------------------------------------------------------------


def _read_content(content: bytes, name: str, controls: Controls | None) -> Export:
    if content.startswith(b"\xef\xbb\xbf"):
        content = content[3:]
    head = content.lstrip()[:64]
    if not head:
        raise FormatError(f"{name}: the file is empty. {_EXPORT_AGAIN}")
    if content.startswith(b"PK\x03\x04"):
        raise FormatError(f"{name}: {_zip_kind(content)} {_EXPORT_AGAIN}")
    if content.startswith(b"\x1f\x8b"):
        raise FormatError(f"{name}: is gzip-compressed; decompress it first.")
    text = _decode(content, name)
    stripped = text.lstrip()
    if stripped.startswith("-DOCSTART-"):
        raise FormatError(
            f"{name}: is a CONLL2003 export (tokens and tags only: no task ids, data or "
            f"annotation details), which cannot be imported. {_EXPORT_AGAIN}"
        )
    if stripped[0] in "[{":
        return _read_json(text, name, controls)
    first_line = stripped.split("\n", 1)[0]
    for delimiter, fmt in (("\t", "TSV"), (",", "CSV")):
        names = [v for v, _ in csv_records(first_line, delimiter, name)[0]]
        if "id" in names and "annotation_id" in names:
            return _read_table(text, delimiter, fmt, name, controls)
    preview = stripped[:40].split("\n", 1)[0]
    raise FormatError(
        f"{name}: is not a Label Studio export (it starts with {preview!r}; expected JSON, "
        f"JSON_MIN, CSV or TSV). {_EXPORT_AGAIN}"
    )


def _decode(content: bytes, name: str) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(
            f"{name}: is not UTF-8 text (invalid byte at offset {exc.start}); Label Studio "
            f"exports are UTF-8. {_EXPORT_AGAIN}"
        ) from exc


def _zip_kind(content: bytes) -> str:
    try:
        names = zipfile.ZipFile(io.BytesIO(content)).namelist()
    except zipfile.BadZipFile:
        return "is a damaged ZIP archive, not a Label Studio JSON, JSON_MIN, CSV or TSV export."
    if "classes.txt" in names or any(n.startswith("labels/") for n in names):
        kind = "a YOLO export"
    elif any(n.startswith("Annotations/") for n in names):
        kind = "a Pascal VOC export"
    elif "result.json" in names:
        kind = "a COCO export"
    else:
        kind = "a ZIP archive"
    return (
        f"is {kind} (ZIP). COCO, YOLO and VOC exports keep boxes only, without task ids, "
        "data or annotators, so they cannot be imported."
    )


def _read_json(text: str, name: str, controls: Controls | None) -> Export:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        # EOF inside a string, or nothing but whitespace after the error: the text stopped
        truncated = exc.msg.startswith("Unterminated string") or not text[exc.pos :].strip()
        hint = (
            "The file ends before the JSON is complete: it looks truncated (an interrupted "
            "download?). Download the export again."
            if truncated
            else _EXPORT_AGAIN
        )
        raise FormatError(
            f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}). {hint}"
        ) from exc
    except RecursionError as exc:
        raise FormatError(f"{name}: JSON nested too deeply to read. {_EXPORT_AGAIN}") from exc
    if isinstance(doc, dict):
        return _read_object(doc, name)
    first = next((item for item in doc if item is not None), None)
    if first is None:
        return Export(name, "JSON", [], [])
    if isinstance(first, dict):
        if "annotation_id" in first and "data" not in first:
            tasks = rows_to_tasks(
                ((f"row #{i}", row, None) for i, row in enumerate(doc)), controls, name
            )
            return Export(name, "JSON_MIN", tasks, ["JSON_MIN"] * len(tasks))
        if "data" in first or "annotations" in first or "completions" in first:
            return Export(name, "JSON", doc, ["JSON"] * len(doc))
        keys = sorted(first)[:8]
        raise FormatError(
            f"{name}: a JSON list whose first item has keys {keys}, which is not a Label Studio "
            "export (tasks have 'id' and 'data'; JSON_MIN rows have 'id' and "
            f"'annotation_id'). {_EXPORT_AGAIN}"
        )
    raise FormatError(
        f"{name}: a JSON list of {type(first).__name__} values, not of Label Studio tasks. "
        f"{_EXPORT_AGAIN}"
    )


def _read_object(doc: dict[str, Any], name: str) -> Export:
    if isinstance(doc.get("task"), dict) and "result" in doc:
        task = dict(doc["task"])
        annotation = {k: v for k, v in doc.items() if k != "task"}
        task["annotations"] = [annotation]
        return Export(name, "TARGET_STORAGE_ANNOTATION", [task], ["TARGET_STORAGE_ANNOTATION"])
    if "data" in doc and "id" in doc:
        return Export(name, "TARGET_STORAGE_TASK", [doc], ["TARGET_STORAGE_TASK"])
    if "action" in doc:
        raise FormatError(
            f"{name}: is a Label Studio webhook payload (action {doc['action']!r}), not an "
            "export. Import an export, or apply webhook events with a webhook receiver."
        )
    if "images" in doc and "categories" in doc:
        raise FormatError(
            f"{name}: is a COCO annotation file (boxes only, without task ids, data or "
            f"annotators), which cannot be imported. {_EXPORT_AGAIN}"
        )
    keys = sorted(doc)[:8]
    raise FormatError(
        f"{name}: a JSON object with keys {keys}, which is not a Label Studio export (a task "
        "file has 'id' and 'data'; an annotation file has 'result' and 'task'). "
        f"{_EXPORT_AGAIN}"
    )


def _read_table(
    text: str, delimiter: str, fmt: str, name: str, controls: Controls | None
) -> Export:
    header, rows, lines = csv_records(text, delimiter, name, strict=True)
    names = [v for v, _ in header]
    if len(set(names)) != len(names):
        raise FormatError(f"{name}: the header repeats a column name. {_EXPORT_AGAIN}")
    records = []
    for row, line in zip(rows, lines, strict=True):
        if len(row) != len(names):
            raise FormatError(
                f"{name}: line {line} has {len(row)} fields but the header has {len(names)}; "
                "the file is truncated or not a Label Studio export. Download it again."
            )
        records.append((f"line {line}", dict(zip(names, row, strict=True)), None))
    control_names = _table_controls(names, records, controls)
    tasks = rows_to_tasks(
        ((where, row, control_names) for where, row, _ in records), controls, name, cells=True
    )
    return Export(name, fmt, tasks, [fmt] * len(tasks))


def _table_controls(
    names: list[str], records: list[tuple[str, dict[str, Any], None]], controls: Controls | None
) -> list[str]:
    """Which CSV columns hold results: those of the labeling config, else those whose every
    value is a JSON list or object shaped like Label Studio values."""
    candidates = [n for n in names if n not in CSV_RESERVED and not n.startswith("_data_")]
    if controls is not None:
        return [n for n in candidates if n in controls]
    found = []
    for column in candidates:
        cells = [row[column] for _, row, _ in records if row[column] != ("", True)]
        if cells and all(quoted and looks_like_values(v) for v, quoted in cells):
            found.append(column)
    return found


# --- labeling config ----------------------------------------------------------------------

#: Control name (``from_name``) -> (result type, object name or None).
Controls = dict[str, tuple[str, str | None]]


def parse_label_config(config: str | Mapping[str, Any]) -> Controls:
    """The control tags of a labeling config: name -> (result type, ``toName``).

    Args:
        config: The XML text, or the project's ``parsed_label_config`` mapping.

    >>> parse_label_config('<View><Text name="t" value="$text"/>'
    ...                    '<Choices name="mood" toName="t"/></View>')
    {'mood': ('choices', 't')}
    """
    if isinstance(config, Mapping):
        controls: Controls = {}
        for name, info in config.items():
            if not isinstance(info, Mapping) or not isinstance(info.get("type"), str):
                raise FormatError(
                    f"label_config[{name!r}] is not a control description with a 'type'; pass "
                    "the project's label_config XML or its parsed_label_config."
                )
            to = info.get("to_name")
            to_name = to[0] if isinstance(to, list) and len(to) == 1 else to
            controls[str(name)] = (
                info["type"].lower(),
                to_name if isinstance(to_name, str) else None,
            )
        return controls
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError as exc:
        raise FormatError(
            f"label_config is not valid XML ({exc}); pass the project's labeling config "
            "(Settings > Labeling Interface > Code, or label_config from the project API)."
        ) from exc
    found: Controls = {}
    for element in root.iter():
        control, targets = element.attrib.get("name"), element.attrib.get("toName")
        if control and targets:
            found[control] = (element.tag.lower(), None if "," in targets else targets)
    return found


# --- JSON_MIN, CSV, TSV: rows -> tasks ---------------------------------------------------

#: Columns that Label Studio's JSON_MIN and CSV writers add to every row.
CSV_RESERVED = frozenset(
    {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement",
     "history"}
)  # fmt: skip
#: Value keys naming the control type when it is not known from the labeling config.
_VALUE_TYPES = {
    "choices": "choices", "taxonomy": "taxonomy", "rating": "rating", "number": "number",
    "datetime": "datetime", "ranker": "ranker", "selected": "pairwise", "labels": "labels",
}  # fmt: skip
_INT = re.compile(r"-?\d+\Z")


def value_type(value: Mapping[str, Any]) -> str | None:
    """The result type a prettified value implies (``None`` if it does not tell).

    >>> value_type({"x": 1, "rectanglelabels": ["car"]}), value_type({"text": ["a"]})
    ('rectanglelabels', 'textarea')
    """
    for key, item in value.items():
        if key.endswith("labels") and key != "labels" and isinstance(item, list):
            return key
    for key, typ in _VALUE_TYPES.items():
        if key in value:
            return typ
    text = value.get("text")
    return "textarea" if isinstance(text, list) else None


def looks_like_values(text: str) -> bool:
    """Whether a CSV cell holds results: a JSON object or list of Label Studio values.

    >>> looks_like_values('{"choices": ["a", "b"]}'), looks_like_values('{"camera": 1}')
    (True, False)
    """
    if text[:1] not in ("[", "{"):
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(v, dict) and value_type(v) for v in items)


def _results(name: str, value: Any, control: tuple[str, str | None] | None) -> list[Any]:
    """Result items rebuilt from one prettified control value of a JSON_MIN/CSV row."""
    typ, to_name = control if control is not None else (None, None)
    out = []
    for item in value if isinstance(value, list) else [value]:
        result: dict[str, Any] = {"from_name": name}
        if to_name is not None:
            result["to_name"] = to_name
        if isinstance(item, dict):
            item = dict(item)
            extent = {k: item.pop(k) for k in ("original_width", "original_height") if k in item}
            result["type"] = typ or value_type(item)
            result["value"] = item
            result.update(extent)
        elif isinstance(item, str) and typ in ("choices", "textarea"):
            result["type"] = typ
            result["value"] = {"choices": [item]} if typ == "choices" else {"text": [item]}
        else:
            # a bare string without the labeling config: a single choice or a one-line
            # TextArea, which the row cannot tell apart; kept as is in raw_json
            result["type"] = typ
            result["value"] = item
        out.append(result)
    return out


def _cell(text: str, quoted: bool, *, decode_json: bool) -> Any:
    """A CSV cell as a value: unquoted cells are numbers (QUOTE_NONNUMERIC), quoted ones
    strings, JSON-looking strings decoded when ``decode_json``; ``""`` is None."""
    if quoted:
        if text == "":
            return None
        if decode_json and text[:1] in ("[", "{"):
            try:
                decoded = json.loads(text)
            except ValueError:
                return text
            return decoded if isinstance(decoded, (list, dict)) else text
        return text
    if text == "":
        return None
    if _INT.match(text):
        return int(text)
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def rows_to_tasks(
    rows: Iterable[tuple[str, dict[str, Any], list[str] | None]],
    controls: Controls | None,
    name: str,
    *,
    cells: bool = False,
) -> list[dict[str, Any]]:
    """Group JSON_MIN/CSV rows (one per annotation) into task objects.

    Args:
        rows: ``(where, row, control columns)``; ``where`` names the row in messages; the
            control columns are None for JSON_MIN, where they are found by position.
        controls: The labeling config's controls, if given.
        name: The source, for messages.
        cells: The row values are CSV ``(text, quoted)`` cells.
    """
    tasks: dict[int, dict[str, Any]] = {}
    for where, row, control_names in rows:
        if not isinstance(row, dict):
            raise FormatError(f"{name}: {where} must be an object, got {type(row).__name__}.")
        values = {k: _cell(*v, decode_json=True) for k, v in row.items()} if cells else row
        tid = values.get("id")
        if type(tid) is not int:
            raise FormatError(
                f"{name}: {where}: 'id' must be an integer task id, got {tid!r}. {_EXPORT_AGAIN}"
            )
        if control_names is None:
            control_names = _json_min_controls(list(values), controls)
        data = {}
        for key, value in values.items():
            if key in CSV_RESERVED or key in control_names:
                continue
            if cells:
                if value is None:
                    continue  # CSV writes a missing key and None alike: ""
                key = key[len("_data_") :] if key.startswith("_data_") else key
            data[key] = value
        task = tasks.get(tid)
        if task is None:
            task = tasks[tid] = {"id": tid, "data": data, "annotations": []}
        if "agreement" in values and values["agreement"] is not None:
            task["agreement"] = values["agreement"]
        result = [
            item
            for c in control_names
            if values.get(c) is not None
            for item in _results(c, values[c], None if controls is None else controls.get(c))
        ]
        if values.get("annotation_id") is None and not result:
            continue  # a task without annotations
        task["annotations"].append(_annotation(values, result))
    out = list(tasks.values())
    for task in out:
        task["annotations"].sort(key=_annotation_order)
    return out


def _json_min_controls(keys: list[str], controls: Controls | None) -> list[str]:
    """JSON_MIN writes ``{**data, "id", <controls>, "annotator", ...}``: without a
    labeling config, the keys between ``id`` and the annotation columns are controls."""
    if controls is not None:
        return [k for k in keys if k in controls]
    after = keys[keys.index("id") + 1 :]
    return [k for k in after if k not in CSV_RESERVED]


def _annotation(values: dict[str, Any], result: list[Any]) -> dict[str, Any]:
    annotator = values.get("annotator")
    if isinstance(annotator, str):
        if _INT.match(annotator):
            annotator = int(annotator)
        elif annotator == "None":
            annotator = None  # str(None): the annotation's user was deleted
        else:
            annotator = {"email": annotator}
    annotation = {
        "id": values.get("annotation_id"),
        "completed_by": annotator,
        "result": result,
        "was_cancelled": False,  # these formats drop skipped annotations
        "created_at": values.get("created_at"),
        "updated_at": values.get("updated_at"),
        "lead_time": values.get("lead_time"),
    }
    if values.get("history") is not None:
        annotation["history"] = values["history"]
    return annotation


# --- CSV tokens ---------------------------------------------------------------------------

_QUOTED = re.compile(r'"([^"]*(?:""[^"]*)*)"')
_PLAIN = {d: re.compile(f'[^"{re.escape(d)}\\r\\n]*') for d in (",", "\t")}


def csv_records(
    text: str, delimiter: str, name: str, *, strict: bool = False
) -> tuple[list[tuple[str, bool]], list[list[tuple[str, bool]]], list[int]]:
    """Split CSV text into ``(text, quoted)`` cells: header, rows and each row's line.

    The csv module cannot tell ``1`` from ``"1"``, which is how Label Studio's writer
    (``QUOTE_NONNUMERIC``) marks numbers. With ``strict=False`` a malformed line ends the
    parse quietly (used to sniff a header).

    >>> csv_records('"id","n"\\r\\n1,"a ""b"" c"\\r\\n', ",", "x")
    ([('id', True), ('n', True)], [[('1', False), ('a "b" c', True)]], [2])
    """
    rows: list[list[tuple[str, bool]]] = []
    starts: list[int] = []
    plain = _PLAIN[delimiter]
    pos, n = 0, len(text)
    row: list[tuple[str, bool]] = []
    starts.append(0)
    while pos < n:
        if text[pos] == '"':
            m = _QUOTED.match(text, pos)
            if m is None:
                if not strict:
                    break
                raise FormatError(
                    f"{name}: line {_line(text, pos)}: a quoted field is not closed; the file "
                    "is truncated or not a Label Studio export. Download it again."
                )
            row.append((m.group(1).replace('""', '"'), True))
        else:
            m = plain.match(text, pos)
            assert m is not None  # the pattern matches the empty string
            row.append((m.group(0), False))
        pos = m.end()
        if pos >= n:
            break
        c = text[pos]
        if c == delimiter:
            pos += 1
            if pos == n:
                row.append(("", False))
        elif c in "\r\n":
            pos += 2 if text.startswith("\r\n", pos) else 1
            rows.append(row)
            row = []
            starts.append(pos)
        else:
            if not strict:
                break
            raise FormatError(
                f"{name}: line {_line(text, pos)}: unexpected {c!r} after a field; not a "
                f"Label Studio {'TSV' if delimiter == chr(9) else 'CSV'} export. {_EXPORT_AGAIN}"
            )
    if row:
        rows.append(row)
    else:
        starts.pop()
    if not rows:
        return [], [], []
    lines = _lines(text, starts[1 : len(rows)])
    return rows[0], rows[1:], lines


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _lines(text: str, starts: list[int]) -> list[int]:
    out, line, last = [], 1, 0
    for start in starts:
        line += text.count("\n", last, start)
        last = start
        out.append(line)
    return out
