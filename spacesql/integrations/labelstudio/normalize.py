"""Label Studio task objects -> Arrow record batches in :data:`schema.SCHEMA`.

Every reader turns its format into task objects shaped like Label Studio's JSON export;
this module is the one place that maps such objects to columns. It builds each column as a
Python list and converts it once, with an explicit type, so a 100k-task export costs about
as much as reading the JSON. Children (annotations, predictions, drafts, result items) are
gathered into flat lists with offsets and converted in one tight loop per level.

Typing is lenient for values and strict for structure:

* a known key whose value does not fit its column (a string where a number is expected, a
  timestamp that does not parse) becomes NULL in the typed column and is kept, under its
  own key, in the object's ``extra_json`` (result items keep everything in ``raw_json``);
* a structure that is not Label Studio's (a task that is not an object, ``annotations`` that
  is not a list, a task without an integer ``id``) raises :class:`ShapeError` with the task
  index and the path of the offending value.
"""

from __future__ import annotations

import datetime as dt
import json
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from spacesql.errors import FormatError
from spacesql.integrations.labelstudio.schema import (
    ANNOTATION,
    DRAFT,
    PREDICTION,
    RESULT,
    SCHEMA,
    TIMESTAMP,
)

__all__ = ["ShapeError", "encode_json", "parse_timestamp", "to_batches"]

#: Compact JSON text, unicode kept as is.
encode_json: Callable[[Any], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False
).encode
_ascii_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

_BATCH_TASKS = 10_000

#: Keys typed or handled explicitly, per object kind; any other key goes to ``extra_json``.
_TASK_KEYS = frozenset(
    {
        "id", "data", "meta", "annotations", "completions", "predictions", "drafts",
        "created_at", "updated_at", "inner_id", "total_annotations", "cancelled_annotations",
        "total_predictions", "comment_count", "unresolved_comment_count",
        "last_comment_updated_at", "project", "updated_by", "file_upload", "allow_skip",
        "comment_authors",
    }
)  # fmt: skip
_ANNOTATION_KEYS = frozenset(
    {
        "id", "completed_by", "result", "was_cancelled", "ground_truth", "created_at",
        "updated_at", "draft_created_at", "lead_time", "prediction", "result_count",
        "unique_id", "import_id", "last_action", "bulk_created", "updated_by",
        "parent_prediction", "parent_annotation", "last_created_by", "task", "project",
        "created_ago",
    }
)  # fmt: skip
_PREDICTION_KEYS = frozenset(
    {
        "id", "model_version", "score", "mislabeling", "result", "created_at", "updated_at",
        "task", "project", "created_ago",
    }
)  # fmt: skip
_DRAFT_KEYS = frozenset(
    {
        "id", "user", "annotation", "result", "lead_time", "was_postponed", "import_id",
        "created_at", "updated_at", "task", "created_ago",
    }
)  # fmt: skip
#: Result types whose ``value[type]`` is not a list of label names.
_NOT_LABEL_TYPES = frozenset(
    {"choices", "textarea", "taxonomy", "rating", "number", "datetime", "pairwise", "ranker"}
)


class ShapeError(FormatError):
    """An object does not have the structure of a Label Studio export (callers add the
    source's name: see ``load.read_export``).

    Attributes:
        task_index: Position of the task in the source (None if not known).
        path: Where in the task, e.g. ``annotations[1].result[0]``.
        problem: What is wrong, e.g. ``must be an object, got a list``.
    """

    def __init__(self, task_index: int | None, path: str, problem: str) -> None:
        self.task_index = task_index
        self.path = path
        self.problem = problem
        super().__init__(f"{path or 'task'} {problem}")


def kind(value: Any) -> str:
    """A JSON-ish name for the type of a value, for messages.

    >>> kind([1]), kind(None), kind({})
    ('a list', 'null', 'an object')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def to_batches(
    tasks: Sequence[Any],
    *,
    source_format: str | Sequence[str],
    progress: Callable[[int], None] | None = None,
) -> list[pa.RecordBatch]:
    """Convert task objects (Label Studio JSON export shape) to record batches.

    Args:
        tasks: The task objects, in source order.
        source_format: The value of the ``source_format`` column, for all tasks or per task.
        progress: Called with the number of tasks converted after each batch.

    Raises:
        ShapeError: An object does not have Label Studio's structure, or a task id repeats.

    >>> [b.num_rows for b in to_batches([{"id": 1, "data": {"text": "hi"}}], source_format="JSON")]
    [1]
    """
    batches = []
    seen: dict[int, int] = {}
    for start in range(0, len(tasks), _BATCH_TASKS):
        chunk = tasks[start : start + _BATCH_TASKS]
        formats = (
            [source_format] * len(chunk)
            if isinstance(source_format, str)
            else source_format[start : start + _BATCH_TASKS]
        )
        batches.append(_Batch(start, seen).build(chunk, formats))
        if progress is not None:
            progress(start + len(chunk))
    return batches


# --- columns ---------------------------------------------------------------------------


def _fits(value: Any, type_: pa.DataType) -> bool:
    if value is None:
        return True
    if pa.types.is_integer(type_):
        return type(value) is int and -(2**63) <= value < 2**63
    if pa.types.is_floating(type_):
        return type(value) in (int, float) and (type(value) is float or abs(value) < 2**63)
    if pa.types.is_boolean(type_):
        return type(value) is bool
    if pa.types.is_string(type_):
        return type(value) is str
    if pa.types.is_list(type_):
        return type(value) is list and all(_fits(v, type_.value_type) for v in value)
    return False


def _column(
    values: list[Any],
    type_: pa.DataType,
    *,
    key: str = "",
    extras: list[dict[str, Any] | None] | None = None,
) -> pa.Array:
    """One typed column; values that do not fit become NULL and move to ``extras``."""
    try:
        if pa.types.is_list(type_) and not _are_lists(values, pa.types.is_list(type_.value_type)):
            raise ValueError("not a list")  # pyarrow would read a string as a list of chars
        if pa.types.is_integer(type_):
            # pa.array(..., int64) would truncate 2.5 to 2 silently; a safe cast refuses.
            arr = pa.array(values)
            if not arr.type.equals(type_):
                arr = arr.cast(type_, safe=True)
            return arr
        return pa.array(values, type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError,
            ValueError, OverflowError):  # fmt: skip
        pass
    clean = list(values)
    for i, v in enumerate(values):
        if v is not None and not _fits(v, type_):
            clean[i] = None
            _set_extra(extras, i, key, v)
        elif type(v) is str and pa.types.is_string(type_):
            clean[i] = _valid_utf8(v)
    return pa.array(clean, type_)


def _are_lists(values: list[Any], nested: bool) -> bool:
    if nested:
        return all(
            v is None or (type(v) is list and all(type(x) is list for x in v)) for v in values
        )
    return all(v is None or type(v) is list for v in values)


def _valid_utf8(text: str) -> str:
    """Lone surrogates (legal in JSON escapes, not in UTF-8) as ``\\udXXX`` escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _json_column(values: Sequence[str | None]) -> pa.Array:
    """JSON text; text with lone surrogates is re-encoded with ASCII escapes (lossless)."""
    try:
        return pa.array(values, pa.string())
    except (UnicodeEncodeError, pa.ArrowInvalid):
        fixed = [v if v is None else _ascii_json(json.loads(v)) for v in values]
        return pa.array(fixed, pa.string())


def _set_extra(extras: list[dict[str, Any] | None] | None, i: int, key: str, v: Any) -> None:
    if extras is None:
        return
    e = extras[i]
    if e is None:
        extras[i] = {key: v}
    else:
        e[key] = v


def parse_timestamp(value: Any) -> dt.datetime | None:
    """An ISO-8601 string as an aware UTC datetime (no zone means UTC); None if it is not one.

    >>> parse_timestamp("2026-11-24T06:08:54.561166Z")
    datetime.datetime(2026, 11, 24, 6, 8, 54, 561166, tzinfo=datetime.timezone.utc)
    >>> parse_timestamp("yesterday") is None
    True
    """
    if type(value) is not str:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc)


def _timestamps(
    values: list[Any], *, key: str = "", extras: list[dict[str, Any] | None] | None = None
) -> pa.Array:
    try:
        return pa.array(values, pa.string()).cast(TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, UnicodeEncodeError):
        pass
    parsed: list[dt.datetime | None] = []
    for i, v in enumerate(values):
        p = parse_timestamp(v)
        if p is None and v is not None:
            _set_extra(extras, i, key, v)
        parsed.append(p)
    return pa.array(parsed, TIMESTAMP)


def _extras(extras: list[dict[str, Any] | None]) -> pa.Array:
    return _json_column([None if e is None else encode_json(e) for e in extras])


def _scatter(n: int, idx: list[int], values: pa.Array) -> pa.Array:
    """An array of length ``n`` with ``values`` at positions ``idx`` and NULL elsewhere."""
    if len(idx) == n:
        return values
    if not idx:
        return pa.nulls(n, values.type)
    padded = pa.concat_arrays([values, pa.nulls(1, values.type)])
    positions = [len(idx)] * n
    for k, i in enumerate(idx):
        positions[i] = k
    return padded.take(pa.array(positions, pa.int32()))


def _lists(
    offsets: list[int], values: pa.Array, type_: pa.DataType, mask: list[bool] | None
) -> pa.Array:
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()),
        values,
        type=type_,
        mask=None if mask is None or not any(mask) else pa.array(mask, pa.bool_()),
    )


def _int_lists(rows: list[list[Any] | None]) -> pa.Array:
    try:
        return pa.array(rows, pa.list_(pa.int64()))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        # ids that are not integers: keep the integers (the raw lists are not kept here;
        # ids are only a convenience next to the objects)
        return pa.array(
            [None if r is None else [v for v in r if _fits(v, pa.int64())] for r in rows],
            pa.list_(pa.int64()),
        )


# --- one batch ---------------------------------------------------------------------------


class _Batch:
    """Converts one chunk of tasks; ``start`` is the chunk's offset in the source."""

    def __init__(self, start: int, seen: dict[int, int]) -> None:
        self.start = start
        self.seen = seen

    def error(self, task: int, path: str, problem: str) -> ShapeError:
        return ShapeError(self.start + task, path, problem)

    def build(self, tasks: Sequence[Any], formats: Sequence[str]) -> pa.RecordBatch:
        ids: list[int] = []
        projects: list[Any] = []
        inner: list[Any] = []
        data: list[str | None] = []
        meta: list[str | None] = []
        created: list[Any] = []
        updated: list[Any] = []
        updated_by: list[Any] = []
        file_upload: list[Any] = []
        allow_skip: list[Any] = []
        counters: dict[str, list[Any]] = {
            k: []
            for k in (
                "total_annotations",
                "cancelled_annotations",
                "total_predictions",
                "comment_count",
                "unresolved_comment_count",
            )
        }
        last_comment: list[Any] = []
        extras: list[dict[str, Any] | None] = []
        # children, flattened: items, owner task (batch position), offsets per task
        ann_items: list[Any] = []
        ann_owner: list[int] = []
        ann_offsets = [0]
        ann_missing: list[bool] = []
        pred_items: list[Any] = []
        pred_owner: list[int] = []
        pred_offsets = [0]
        pred_missing: list[bool] = []
        pred_ids: list[list[Any] | None] = []
        draft_items: list[Any] = []
        draft_owner: list[int] = []
        draft_offsets = [0]
        draft_missing: list[bool] = []
        draft_ids: list[list[Any] | None] = []

        seen = self.seen
        counter_items = list(counters.items())
        for ti, t in enumerate(tasks):
            if type(t) is not dict:
                raise self.error(ti, "", f"must be an object, got {kind(t)}")
            get = t.get
            tid = get("id")
            if type(tid) is not int:
                raise self.error(ti, "id", f"must be an integer task id, got {kind(tid)}")
            if tid in seen:
                raise self.error(
                    ti, "id", f"repeats task id {tid} (first seen at task #{seen[tid]})"
                )
            seen[tid] = self.start + ti
            ids.append(tid)
            projects.append(get("project"))
            inner.append(get("inner_id"))
            data.append(encode_json(t["data"]) if "data" in t else None)
            meta.append(encode_json(t["meta"]) if "meta" in t else None)
            created.append(get("created_at"))
            updated.append(get("updated_at"))
            updated_by.append(get("updated_by"))
            fu = get("file_upload")
            file_upload.append(str(fu) if type(fu) is int else fu)
            allow_skip.append(get("allow_skip"))
            for key, col in counter_items:
                col.append(get(key))
            last_comment.append(get("last_comment_updated_at"))
            extra = None
            if t.keys() - _TASK_KEYS:
                extra = {k: v for k, v in t.items() if k not in _TASK_KEYS and v is not None}
            authors = get("comment_authors")
            if authors:
                extra = extra or {}
                extra["comment_authors"] = authors
            extras.append(extra or None)

            anns = get("annotations")
            if anns is None:
                anns = get("completions")  # exports older than Label Studio 1.0
            if anns is None:
                ann_missing.append("annotations" not in t and "completions" not in t)
            elif type(anns) is list:
                ann_missing.append(False)
                ann_items += anns
                ann_owner += [ti] * len(anns)
            else:
                raise self.error(ti, "annotations", f"must be a list, got {kind(anns)}")
            ann_offsets.append(len(ann_items))

            preds = get("predictions")
            if preds is None:
                pred_missing.append(True)
                pred_ids.append(None)
            elif type(preds) is list:
                objects = [p for p in preds if type(p) is dict]
                pred_missing.append(bool(preds) and not objects)
                pred_items += objects
                pred_owner += [ti] * len(objects)
                pred_ids.append([p.get("id") if type(p) is dict else p for p in preds])
            else:
                raise self.error(ti, "predictions", f"must be a list, got {kind(preds)}")
            pred_offsets.append(len(pred_items))

            drafts = get("drafts")
            if drafts is None:
                draft_missing.append(True)
                draft_ids.append(None)
            elif type(drafts) is list:
                objects = [d for d in drafts if type(d) is dict]
                draft_missing.append(bool(drafts) and not objects)
                draft_items += objects
                draft_owner += [ti] * len(objects)
                draft_ids.append([d.get("id") if type(d) is dict else d for d in drafts])
            else:
                raise self.error(ti, "drafts", f"must be a list, got {kind(drafts)}")
            draft_offsets.append(len(draft_items))

        annotations = self._annotations(ann_items, ann_owner, ann_offsets, ids, projects)
        predictions = self._predictions(pred_items, pred_owner, pred_offsets, ids, projects)
        drafts_arr = self._drafts(draft_items, draft_owner, draft_offsets, ids)
        columns = {
            "id": pa.array(ids, pa.int64()),
            "project": _column(projects, pa.int64(), key="project", extras=extras),
            "inner_id": _column(inner, pa.int64(), key="inner_id", extras=extras),
            "data_json": _json_column(data),
            "meta_json": _json_column(meta),
            "annotations": _lists(
                ann_offsets, annotations, SCHEMA.field("annotations").type, ann_missing
            ),
            "predictions": _lists(
                pred_offsets, predictions, SCHEMA.field("predictions").type, pred_missing
            ),
            "prediction_ids": _int_lists(pred_ids),
            "drafts": _lists(draft_offsets, drafts_arr, SCHEMA.field("drafts").type, draft_missing),
            "draft_ids": _int_lists(draft_ids),
            "created_at": _timestamps(created, key="created_at", extras=extras),
            "updated_at": _timestamps(updated, key="updated_at", extras=extras),
            "updated_by": _column(updated_by, pa.int64(), key="updated_by", extras=extras),
            "file_upload": _column(file_upload, pa.string(), key="file_upload", extras=extras),
            "allow_skip": _column(allow_skip, pa.bool_(), key="allow_skip", extras=extras),
            **{k: _column(v, pa.int64(), key=k, extras=extras) for k, v in counters.items()},
            "last_comment_updated_at": _timestamps(
                last_comment, key="last_comment_updated_at", extras=extras
            ),
        }
        columns["extra_json"] = _extras(extras)
        columns["source_format"] = pa.array(formats, pa.string())
        return pa.RecordBatch.from_arrays([columns[f.name] for f in SCHEMA], schema=SCHEMA)

    # --- children --------------------------------------------------------------------------

    def _where(self, what: str, owner: list[int], offsets: list[int], k: int) -> tuple[int, str]:
        ti = owner[k]
        return ti, f"{what}[{k - offsets[ti]}]"

    def _annotations(
        self,
        items: list[Any],
        owner: list[int],
        offsets: list[int],
        task_ids: list[int],
        projects: list[Any],
    ) -> pa.StructArray:
        cols: dict[str, list[Any]] = {f.name: [] for f in ANNOTATION}
        extras: list[dict[str, Any] | None] = []
        results: list[Any] = []
        res_offsets = [0]
        a_id = cols["id"].append
        a_cb = cols["completed_by"].append
        a_email = cols["completed_by_email"].append
        a_pred_id = cols["prediction_id"].append
        a_pred = cols["prediction_json"].append
        plain = [
            (name, cols[name].append)
            for name in (
                "was_cancelled", "ground_truth", "created_at", "updated_at",
                "draft_created_at", "lead_time", "result_count", "unique_id", "import_id",
                "last_action", "bulk_created", "updated_by", "parent_prediction",
                "parent_annotation", "last_created_by",
            )
        ]  # fmt: skip
        for k, a in enumerate(items):
            if type(a) is not dict:
                ti, path = self._where("annotations", owner, offsets, k)
                raise self.error(ti, path, f"must be an object, got {kind(a)}")
            get = a.get
            a_id(get("id"))
            for name, append in plain:
                append(get(name))
            extra = None
            cb = get("completed_by")
            if type(cb) is dict:
                a_cb(cb.get("id"))
                a_email(cb.get("email"))
                rest = {key: v for key, v in cb.items() if key not in ("id", "email") and v}
                if rest:
                    extra = {"completed_by": rest}
            else:
                a_cb(cb)
                a_email(None)
            pred = get("prediction")
            if type(pred) is dict and pred:
                # created_ago ("5\u00a0minutes") changes with the export time, not the data
                a_pred(encode_json({f: v for f, v in pred.items() if f != "created_ago"}))
                a_pred_id(pred.get("id"))
            elif pred:
                a_pred(encode_json(pred))
                a_pred_id(None)
            else:
                a_pred(None)
                a_pred_id(None)
            res = get("result")
            if type(res) is list:
                results += res
            elif res is not None:
                ti, path = self._where("annotations", owner, offsets, k)
                raise self.error(ti, path + ".result", f"must be a list, got {kind(res)}")
            res_offsets.append(len(results))
            if a.keys() - _ANNOTATION_KEYS:
                extra = {**(extra or {}), **_unknown(a, _ANNOTATION_KEYS)}
            ti = owner[k]
            for key, expected in (("task", task_ids[ti]), ("project", projects[ti])):
                value = get(key)
                if value is not None and value != expected:
                    extra = extra or {}
                    extra[key] = value
            extras.append(extra or None)

        def locate(r: int) -> tuple[int, str]:
            k = bisect_right(res_offsets, r) - 1
            ti, path = self._where("annotations", owner, offsets, k)
            return ti, f"{path}.result[{r - res_offsets[k]}]"

        result_arr = self._results(results, locate)
        arrays = []
        for f in ANNOTATION:
            if f.name == "result":
                arrays.append(_lists(res_offsets, result_arr, f.type, None))
            elif f.name == "extra_json":
                arrays.append(_extras(extras))
            elif f.type == TIMESTAMP:
                arrays.append(_timestamps(cols[f.name], key=f.name, extras=extras))
            elif f.name == "prediction_json":
                arrays.append(_json_column(cols[f.name]))
            else:
                arrays.append(_column(cols[f.name], f.type, key=f.name, extras=extras))
        return pa.StructArray.from_arrays(arrays, fields=list(ANNOTATION))

    def _predictions(
        self,
        items: list[Any],
        owner: list[int],
        offsets: list[int],
        task_ids: list[int],
        projects: list[Any],
    ) -> pa.StructArray:
        return self._objects(
            "predictions", PREDICTION, _PREDICTION_KEYS, items, owner, offsets,
            {"task": task_ids, "project": projects},
        )  # fmt: skip

    def _drafts(
        self, items: list[Any], owner: list[int], offsets: list[int], task_ids: list[int]
    ) -> pa.StructArray:
        return self._objects(
            "drafts", DRAFT, _DRAFT_KEYS, items, owner, offsets, {"task": task_ids}
        )

    def _objects(
        self,
        what: str,
        struct: pa.StructType,
        known: frozenset[str],
        items: list[Any],
        owner: list[int],
        offsets: list[int],
        inherited: dict[str, Sequence[Any]],
    ) -> pa.StructArray:
        """Predictions and drafts: flat objects with a result list."""
        names = [f.name for f in struct if f.name not in ("result", "extra_json")]
        cols: dict[str, list[Any]] = {name: [] for name in names}
        appends = [(name, cols[name].append) for name in names]
        extras: list[dict[str, Any] | None] = []
        results: list[Any] = []
        res_offsets = [0]
        for k, p in enumerate(items):
            get = p.get
            for name, append in appends:
                append(get(name))
            res = get("result")
            if type(res) is list:
                results += res
            elif res is not None:
                ti, path = self._where(what, owner, offsets, k)
                raise self.error(ti, path + ".result", f"must be a list, got {kind(res)}")
            res_offsets.append(len(results))
            extra = _unknown(p, known) if p.keys() - known else None
            ti = owner[k]
            for key, values in inherited.items():
                value = get(key)
                if value is not None and value != values[ti]:
                    extra = extra or {}
                    extra[key] = value
            extras.append(extra or None)

        def locate(r: int) -> tuple[int, str]:
            k = bisect_right(res_offsets, r) - 1
            ti, path = self._where(what, owner, offsets, k)
            return ti, f"{path}.result[{r - res_offsets[k]}]"

        result_arr = self._results(results, locate)
        arrays = []
        for f in struct:
            if f.name == "result":
                arrays.append(_lists(res_offsets, result_arr, f.type, None))
            elif f.name == "extra_json":
                arrays.append(_extras(extras))
            elif f.type == TIMESTAMP:
                arrays.append(_timestamps(cols[f.name], key=f.name, extras=extras))
            else:
                arrays.append(_column(cols[f.name], f.type, key=f.name, extras=extras))
        return pa.StructArray.from_arrays(arrays, fields=list(struct))

    # --- result items -----------------------------------------------------------------------

    def _results(
        self, items: list[Any], locate: Callable[[int], tuple[int, str]]
    ) -> pa.StructArray:
        n = len(items)
        # envelope columns (dense), then sparse groups: positions + values
        r_id, r_type, r_from, r_to, r_origin, r_raw = _new_lists(6)
        score_i, score_v = _new_lists(2)
        parent_i, parent_v = _new_lists(2)
        item_i, item_v = _new_lists(2)
        img_i, img_w, img_h, img_r = _new_lists(4)
        lab_i, lab_v = _new_lists(2)
        cho_i, cho_v = _new_lists(2)
        txt_i, txt_v = _new_lists(2)
        tax_i, tax_v = _new_lists(2)
        box_i, box_x, box_y, box_w, box_h, box_r = _new_lists(6)
        rad_i, rad_x, rad_y = _new_lists(3)
        pts_i, pts_v = _new_lists(2)
        num_span_i, num_span_s, num_span_e = _new_lists(3)
        ref_span_i, ref_span_s, ref_span_e = _new_lists(3)
        off_i, off_s, off_e = _new_lists(3)
        rating_i, rating_v = _new_lists(2)
        number_i, number_v = _new_lists(2)
        dt_i, dt_v = _new_lists(2)
        sel_i, sel_v = _new_lists(2)
        rel_i, rel_from, rel_to, rel_dir = _new_lists(4)
        enc = encode_json
        not_labels = _NOT_LABEL_TYPES
        numbers = (int, float)

        for i, r in enumerate(items):
            if type(r) is not dict:
                ti, path = locate(i)
                raise self.error(ti, path, f"must be an object, got {kind(r)}")
            get = r.get
            typ = get("type")
            r_id.append(get("id"))
            r_type.append(typ)
            r_from.append(get("from_name"))
            r_to.append(get("to_name"))
            r_origin.append(get("origin"))
            r_raw.append(enc(r))
            if "score" in r:
                score_i.append(i)
                score_v.append(r["score"])
            if "parentID" in r:
                parent_i.append(i)
                parent_v.append(r["parentID"])
            if "item_index" in r:
                item_i.append(i)
                item_v.append(r["item_index"])
            if "original_width" in r or "original_height" in r:
                img_i.append(i)
                img_w.append(get("original_width"))
                img_h.append(get("original_height"))
                img_r.append(get("image_rotation"))
            if "from_id" in r or "to_id" in r:
                rel_i.append(i)
                rel_from.append(get("from_id"))
                rel_to.append(get("to_id"))
                rel_dir.append(get("direction"))
                if "labels" in r:
                    lab_i.append(i)
                    lab_v.append(r["labels"])
            v = get("value")
            if type(v) is not dict:
                continue
            vget = v.get
            if typ not in not_labels:
                labels = vget(typ) if type(typ) is str else None
                if labels is None:
                    labels = vget("labels")
                if labels is not None:
                    lab_i.append(i)
                    lab_v.append(labels)
            if "choices" in v:
                cho_i.append(i)
                cho_v.append(v["choices"])
            if "text" in v:
                t = v["text"]
                txt_i.append(i)
                txt_v.append([t] if type(t) is str else t)
            if "x" in v or "width" in v:
                box_i.append(i)
                box_x.append(vget("x"))
                box_y.append(vget("y"))
                box_w.append(vget("width"))
                box_h.append(vget("height"))
                box_r.append(vget("rotation"))
            if "radiusX" in v or "radiusY" in v:
                rad_i.append(i)
                rad_x.append(vget("radiusX"))
                rad_y.append(vget("radiusY"))
            if "points" in v:
                pts_i.append(i)
                pts_v.append(v["points"])
            if "start" in v or "end" in v:
                s = vget("start")
                e = vget("end")
                if type(s) in numbers or type(e) in numbers:
                    num_span_i.append(i)
                    num_span_s.append(s)
                    num_span_e.append(e)
                else:
                    ref_span_i.append(i)
                    ref_span_s.append(s)
                    ref_span_e.append(e)
            if "startOffset" in v or "endOffset" in v:
                off_i.append(i)
                off_s.append(vget("startOffset"))
                off_e.append(vget("endOffset"))
            if "taxonomy" in v:
                tax_i.append(i)
                tax_v.append(v["taxonomy"])
            if "rating" in v:
                rating_i.append(i)
                rating_v.append(v["rating"])
            if "number" in v:
                number_i.append(i)
                number_v.append(v["number"])
            if "datetime" in v:
                dt_i.append(i)
                dt_v.append(v["datetime"])
            if "selected" in v:
                sel_i.append(i)
                sel_v.append(v["selected"])

        f64 = pa.float64()
        i64 = pa.int64()
        s = pa.string()
        strs = pa.list_(s)

        def sparse(idx: list[int], values: list[Any], type_: pa.DataType) -> pa.Array:
            return _scatter(n, idx, _column(values, type_))

        columns = {
            "id": _column(r_id, s),
            "type": _column(r_type, s),
            "from_name": _column(r_from, s),
            "to_name": _column(r_to, s),
            "origin": _column(r_origin, s),
            "score": sparse(score_i, score_v, f64),
            "parent_id": sparse(parent_i, parent_v, s),
            "item_index": sparse(item_i, item_v, i64),
            "original_width": sparse(img_i, img_w, i64),
            "original_height": sparse(img_i, img_h, i64),
            "image_rotation": sparse(img_i, img_r, f64),
            "labels": sparse(lab_i, lab_v, strs),
            "choices": sparse(cho_i, cho_v, strs),
            "text": sparse(txt_i, txt_v, strs),
            "taxonomy": sparse(tax_i, tax_v, pa.list_(strs)),
            "x": sparse(box_i, box_x, f64),
            "y": sparse(box_i, box_y, f64),
            "width": sparse(box_i, box_w, f64),
            "height": sparse(box_i, box_h, f64),
            "rotation": sparse(box_i, box_r, f64),
            "radius_x": sparse(rad_i, rad_x, f64),
            "radius_y": sparse(rad_i, rad_y, f64),
            "points": sparse(pts_i, pts_v, pa.list_(pa.list_(f64))),
            "span_start": sparse(num_span_i, num_span_s, f64),
            "span_end": sparse(num_span_i, num_span_e, f64),
            "span_start_ref": sparse(ref_span_i, [_ref(x) for x in ref_span_s], s),
            "span_end_ref": sparse(ref_span_i, [_ref(x) for x in ref_span_e], s),
            "start_offset": sparse(off_i, off_s, i64),
            "end_offset": sparse(off_i, off_e, i64),
            "rating": sparse(rating_i, rating_v, i64),
            "number": sparse(number_i, number_v, f64),
            "datetime": sparse(dt_i, dt_v, s),
            "selected": sparse(sel_i, sel_v, s),
            "from_id": sparse(rel_i, rel_from, s),
            "to_id": sparse(rel_i, rel_to, s),
            "direction": sparse(rel_i, rel_dir, s),
            "raw_json": _json_column(r_raw),
        }
        return pa.StructArray.from_arrays([columns[f.name] for f in RESULT], fields=list(RESULT))


def _new_lists(count: int) -> list[list[Any]]:
    return [[] for _ in range(count)]


def _ref(value: Any) -> Any:
    """A non-numeric span bound as text (XPath, paragraph index, datetime); numbers kept."""
    return value if value is None or type(value) is str else encode_json(value)


def _unknown(obj: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in known and v is not None}
