"""Rows back to Label Studio: tasks in Label Studio's import JSON.

Two kinds of rows are understood:

* rows of a tasks table (:data:`~spacesql.integrations.labelstudio.schema.SCHEMA`): ``data``
  and ``meta`` come from ``data_json``/``meta_json``, annotations and predictions from their
  result items' ``raw_json`` (exactly what Label Studio stored), so an import, an export from
  Label Studio and a re-import give identical results;
* rows of any query: columns ``data`` (a struct or JSON text) or else every ordinary column
  become the task's ``data``; a ``result`` column (a list of result structs of the schema, or
  JSON text of a result list) with optional ``score`` and ``model_version`` becomes one
  prediction (or annotation); ``meta`` becomes the task's meta.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from spacesql.errors import SchemaError

__all__ = ["to_tasks"]

_SPECIAL = frozenset(
    {
        "data",
        "data_json",
        "meta",
        "meta_json",
        "result",
        "score",
        "model_version",
        "annotations",
        "predictions",
    }
)


def _json(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value)
    return value


def _results(items: Iterable[Any] | str | None) -> list[Any]:
    """Result items as Label Studio stores them.

    Raises:
        SchemaError: Not a list of result objects.
    """
    if items is None:
        return []
    if isinstance(items, str):
        try:
            parsed = json.loads(items)
        except json.JSONDecodeError as exc:
            raise SchemaError(
                f"A result must be JSON text of a list of result items; {exc.msg} at "
                f"position {exc.pos} of {items[:80]!r}."
            ) from None
        items = parsed
    if not isinstance(items, (list, tuple)):
        raise SchemaError(
            f"A result must be a list of result items, got {type(items).__name__}: {items!r:.80}."
        )
    out = []
    for item in items:
        if isinstance(item, str):
            with contextlib.suppress(json.JSONDecodeError):  # else: reported below
                item = json.loads(item)
        if not isinstance(item, Mapping):
            raise SchemaError(
                f"Each result item must be an object (from_name, to_name, type, value), got "
                f"{item!r:.80}."
            )
        if item.get("raw_json"):  # a result struct of the schema: exactly what was stored
            out.append(json.loads(item["raw_json"]))
        elif "raw_json" in item or set(item) & (_VALUE_FIELDS - {"text"}):
            out.append(_from_typed(item))  # typed fields only (e.g. built by a query)
        else:  # already in Label Studio's shape
            out.append({k: _plain(v) for k, v in item.items() if v is not None})
    return out


#: Typed result columns of the schema that live inside Label Studio's ``value``.
_VALUE_FIELDS = frozenset(
    {
        "labels",
        "choices",
        "text",
        "taxonomy",
        "x",
        "y",
        "width",
        "height",
        "rotation",
        "radius_x",
        "radius_y",
        "points",
        "span_start",
        "span_end",
        "span_start_ref",
        "span_end_ref",
        "start_offset",
        "end_offset",
        "rating",
        "number",
        "datetime",
        "selected",
    }
)
_ENVELOPE = {
    "id": "id",
    "type": "type",
    "from_name": "from_name",
    "to_name": "to_name",
    "origin": "origin",
    "score": "score",
    "parent_id": "parentID",
    "item_index": "item_index",
    "original_width": "original_width",
    "original_height": "original_height",
    "image_rotation": "image_rotation",
    "from_id": "from_id",
    "to_id": "to_id",
    "direction": "direction",
}
_VALUE_NAMES = {
    "radius_x": "radiusX",
    "radius_y": "radiusY",
    "span_start": "start",
    "span_end": "end",
    "span_start_ref": "start",
    "span_end_ref": "end",
    "start_offset": "startOffset",
    "end_offset": "endOffset",
}


def _from_typed(item: Mapping[str, Any]) -> dict[str, Any]:
    """A result item built from the schema's typed fields (no ``raw_json``), in Label
    Studio's shape: envelope keys at the top, the region and its labels in ``value``."""
    out: dict[str, Any] = {
        name: _plain(item[key]) for key, name in _ENVELOPE.items() if item.get(key) is not None
    }
    kind = str(item.get("type") or "")
    value: dict[str, Any] = {}
    for key in sorted(_VALUE_FIELDS):
        v = item.get(key)
        if v is None:
            continue
        if key == "labels":
            # the label list is named after the control type (rectanglelabels, labels, ...)
            value[kind if kind.endswith("labels") else "labels"] = list(v)
        elif key == "text":
            value["text"] = list(v)
        else:
            value[_VALUE_NAMES.get(key, key)] = _plain(v)
    if kind == "relation":
        if "labels" in value:
            out["labels"] = value.pop("labels")
        return out
    out["value"] = value
    return out


def _annotation(ann: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"result": _results(ann.get("result"))}
    for key in ("was_cancelled", "ground_truth", "lead_time", "completed_by"):
        if ann.get(key) is not None:
            out[key] = _plain(ann[key])
    return out


def _prediction(pred: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"result": _results(pred.get("result"))}
    if pred.get("model_version") is not None:
        out["model_version"] = pred["model_version"]
    if pred.get("score") is not None:
        out["score"] = _plain(pred["score"])
    return out


def to_tasks(
    rows: pa.Table | Iterable[Mapping[str, Any]],
    *,
    as_: str = "predictions",
    model_version: str | None = None,
    annotations: bool = True,
) -> list[dict[str, Any]]:
    """Label Studio import JSON for rows.

    Args:
        rows: Arrow data (table, record batch reader, DuckDB result, anything with
            ``__arrow_c_stream__``) or dicts: a tasks table's rows or any query's.
        as_: What a ``result`` column becomes: ``"predictions"`` (pre-annotations, e.g. a
            model's output) or ``"annotations"``.
        model_version: Model version of predictions made from a ``result`` column.
        annotations: Include a tasks table's annotations (False sends data and predictions
            only, e.g. to label again).

    Raises:
        SchemaError: ``as_`` is neither, or a ``result`` is not a list of result items.
    """
    if as_ not in ("predictions", "annotations"):
        raise SchemaError(f"as_ must be 'predictions' or 'annotations', got {as_!r}.")
    if isinstance(rows, pa.Table) or hasattr(rows, "__arrow_c_stream__"):
        from spacesql.engine.inputs import to_table

        records = to_table(rows).to_pylist()
    else:
        records = list(rows)
    tasks = []
    for row in records:
        if "data_json" in row:
            data = _json(row["data_json"]) or {}
        elif "data" in row:
            data = _json(row["data"]) or {}
        else:
            data = {k: v for k, v in row.items() if k not in _SPECIAL}
        if not isinstance(data, dict):
            raise SchemaError(f"A task's data must be an object, got {data!r:.80}.")
        task: dict[str, Any] = {"data": _plain(data)}
        meta = _json(row.get("meta_json", row.get("meta")))
        if meta:
            task["meta"] = meta
        if annotations and row.get("annotations"):
            task["annotations"] = [_annotation(a) for a in row["annotations"]]
        if row.get("predictions"):
            task["predictions"] = [_prediction(p) for p in row["predictions"]]
        if "result" in row and row["result"] is not None:
            made: dict[str, Any] = {"result": _results(row["result"])}
            if as_ == "predictions":
                version = row.get("model_version") or model_version
                if version is not None:
                    made["model_version"] = version
                if row.get("score") is not None:
                    made["score"] = _plain(row["score"])
            task.setdefault(as_, []).append(made)
        tasks.append(task)
    return tasks


def _plain(value: Any) -> Any:
    """Values JSON can carry (dates as ISO text, bytes refused)."""
    import datetime as dt
    import decimal

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        raise SchemaError(
            "Binary values cannot go to Label Studio; select a URL or path column instead."
        )
    return value
