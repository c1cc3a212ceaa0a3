"""The one Arrow schema every Label Studio export is imported into.

One row per task, keyed by the task ``id``. Annotations, predictions and drafts are lists of
structs inside the row, and each of them holds its result items as a list of ``RESULT``
structs. Columns ending in ``_json`` hold JSON text (free-form or unknown parts, kept
losslessly); every other column is typed. ``docs/labelstudio.md`` describes each column.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "ANNOTATION",
    "DRAFT",
    "PREDICTION",
    "RESULT",
    "SCHEMA",
    "SOURCE_FORMATS",
    "TIMESTAMP",
]

#: Every timestamp: microseconds, UTC, time-zone aware.
TIMESTAMP = pa.timestamp("us", tz="UTC")

_STR = pa.string()
_INT = pa.int64()
_FLOAT = pa.float64()
_BOOL = pa.bool_()

#: One result item (a region, a classification, a relation...): envelope, typed
#: projections of its ``value`` and the item itself as JSON.
RESULT = pa.struct(
    [
        ("id", _STR),
        ("type", _STR),
        ("from_name", _STR),
        ("to_name", _STR),
        ("origin", _STR),
        ("score", _FLOAT),
        ("parent_id", _STR),
        ("item_index", _INT),
        ("original_width", _INT),
        ("original_height", _INT),
        ("image_rotation", _FLOAT),
        ("labels", pa.list_(_STR)),
        ("choices", pa.list_(_STR)),
        ("text", pa.list_(_STR)),
        ("taxonomy", pa.list_(pa.list_(_STR))),
        ("x", _FLOAT),
        ("y", _FLOAT),
        ("width", _FLOAT),
        ("height", _FLOAT),
        ("rotation", _FLOAT),
        ("radius_x", _FLOAT),
        ("radius_y", _FLOAT),
        ("points", pa.list_(pa.list_(_FLOAT))),
        ("span_start", _FLOAT),
        ("span_end", _FLOAT),
        ("span_start_ref", _STR),
        ("span_end_ref", _STR),
        ("start_offset", _INT),
        ("end_offset", _INT),
        ("rating", _INT),
        ("number", _FLOAT),
        ("datetime", _STR),
        ("selected", _STR),
        ("from_id", _STR),
        ("to_id", _STR),
        ("direction", _STR),
        ("raw_json", _STR),
    ]
)

ANNOTATION = pa.struct(
    [
        ("id", _INT),
        ("completed_by", _INT),
        ("completed_by_email", _STR),
        ("result", pa.list_(RESULT)),
        ("was_cancelled", _BOOL),
        ("ground_truth", _BOOL),
        ("created_at", TIMESTAMP),
        ("updated_at", TIMESTAMP),
        ("draft_created_at", TIMESTAMP),
        ("lead_time", _FLOAT),
        ("prediction_id", _INT),
        ("prediction_json", _STR),
        ("result_count", _INT),
        ("unique_id", _STR),
        ("import_id", _INT),
        ("last_action", _STR),
        ("bulk_created", _BOOL),
        ("updated_by", _INT),
        ("parent_prediction", _INT),
        ("parent_annotation", _INT),
        ("last_created_by", _INT),
        ("extra_json", _STR),
    ]
)

PREDICTION = pa.struct(
    [
        ("id", _INT),
        ("model_version", _STR),
        ("score", _FLOAT),
        ("mislabeling", _FLOAT),
        ("result", pa.list_(RESULT)),
        ("created_at", TIMESTAMP),
        ("updated_at", TIMESTAMP),
        ("extra_json", _STR),
    ]
)

DRAFT = pa.struct(
    [
        ("id", _INT),
        ("user", _STR),
        ("annotation", _INT),
        ("result", pa.list_(RESULT)),
        ("lead_time", _FLOAT),
        ("was_postponed", _BOOL),
        ("import_id", _INT),
        ("created_at", TIMESTAMP),
        ("updated_at", TIMESTAMP),
        ("extra_json", _STR),
    ]
)

#: Names of the formats a row can come from (the ``source_format`` column).
SOURCE_FORMATS = (
    "JSON",
    "JSON_MIN",
    "CSV",
    "TSV",
    "TARGET_STORAGE_TASK",
    "TARGET_STORAGE_ANNOTATION",
)

SCHEMA = pa.schema(
    [
        pa.field("id", _INT, nullable=False),
        ("project", _INT),
        ("inner_id", _INT),
        ("data_json", _STR),
        ("meta_json", _STR),
        ("annotations", pa.list_(ANNOTATION)),
        ("predictions", pa.list_(PREDICTION)),
        ("prediction_ids", pa.list_(_INT)),
        ("drafts", pa.list_(DRAFT)),
        ("draft_ids", pa.list_(_INT)),
        ("created_at", TIMESTAMP),
        ("updated_at", TIMESTAMP),
        ("updated_by", _INT),
        ("file_upload", _STR),
        ("allow_skip", _BOOL),
        ("total_annotations", _INT),
        ("cancelled_annotations", _INT),
        ("total_predictions", _INT),
        ("comment_count", _INT),
        ("unresolved_comment_count", _INT),
        ("last_comment_updated_at", TIMESTAMP),
        ("extra_json", _STR),
        ("source_format", _STR),
    ]
)
