"""Label Studio exports: every format into one schema, cross-format equality, errors,
re-import semantics. Fixtures are real Label Studio 1.23.2 output in ../shared/labelstudio."""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import spacesql
from spacesql import Dataset, FormatError, SchemaError
from spacesql.integrations import labelstudio as ls
from spacesql.integrations.labelstudio.schema import TIMESTAMP

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "labelstudio"
if not (FIXTURES / "README.md").is_file():
    raise RuntimeError(
        f"Label Studio fixtures are missing: expected {FIXTURES} (the shared fixtures are "
        "cloned next to the repository, as ../shared/labelstudio)."
    )

PROJECTS = ("image_od", "text_cls", "ner")
#: Every fixture file that is a Label Studio export we read, with its detected format.
LOADABLE = {
    "image_od/export_JSON.json": "JSON",
    "image_od/snapshot_full.json": "JSON",
    "image_od/export_JSON_MIN.json": "JSON_MIN",
    "image_od/export_CSV.csv": "CSV",
    "image_od/export_TSV.tsv": "TSV",
    "text_cls/export_JSON.json": "JSON",
    "text_cls/export_JSON_annotated_only.json": "JSON",
    "text_cls/snapshot_full.json": "JSON",
    "text_cls/cli_export_JSON.json": "JSON",
    "text_cls/export_JSON_MIN.json": "JSON_MIN",
    "text_cls/export_CSV.csv": "CSV",
    "text_cls/export_CSV_annotated_only.csv": "CSV",
    "text_cls/export_TSV.tsv": "TSV",
    "ner/export_JSON.json": "JSON",
    "ner/export_JSON_MIN.json": "JSON_MIN",
    "ner/export_CSV.csv": "CSV",
    "ner/export_TSV.tsv": "TSV",
    "target_storage_localfiles/annotation_157__after_PATCH": "TARGET_STORAGE_ANNOTATION",
    "target_storage_localfiles/annotation_46__synced_on_create": "TARGET_STORAGE_ANNOTATION",
    "target_storage_localfiles/task_61.json__FUTURE_SAVE_TASK_TO_STORAGE.json": (
        "TARGET_STORAGE_TASK"
    ),
}
#: Fixture files that are not importable exports, with the words their error must use.
REJECTED = {
    "image_od/export_COCO.zip": "COCO export",
    "image_od/export_YOLO.zip": "YOLO export",
    "image_od/export_YOLO_OBB.zip": "YOLO export",
    "image_od/export_VOC.zip": "VOC export",
    "ner/export_CONLL2003.conll": "CONLL2003",
    "image_od/snapshot_create_response.json": "not a Label Studio export",
    "target_storage_localfiles/storage_create_response.json": "not a Label Studio export",
    "export_response_headers.json": "not a Label Studio export",
}
#: Values kept by JSON_MIN/CSV/TSV for each result (relations and region ids are lost).
RESULT_FIELDS = (
    "from_name",
    "type",
    "labels",
    "choices",
    "text",
    "x",
    "y",
    "width",
    "height",
    "rotation",
    "original_width",
    "original_height",
    "span_start",
    "span_end",
)


def label_config(project: str) -> str:
    """The project's labeling config, as Label Studio sent it in a webhook payload."""
    payload = FIXTURES / "webhooks" / "by_project_type" / f"{project}_ANNOTATION_CREATED.json"
    config: str = json.loads(payload.read_text())["project"]["label_config"]
    return config


def rows(table: pa.Table) -> dict[int, dict[str, Any]]:
    return {row["id"]: row for row in table.to_pylist()}


def task(tid: int = 1, **fields: Any) -> dict[str, Any]:
    return {"id": tid, "data": {"text": "hello"}, "annotations": [], **fields}


def result(rtype: str, value: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"id": "r1", "type": rtype, "from_name": "c", "to_name": "o"}
    if value is not None:
        item["value"] = value
    item.update(fields)
    return item


def read_one_result(item: dict[str, Any]) -> dict[str, Any]:
    table = ls.read_export(json.dumps([task(annotations=[{"id": 1, "result": [item]}])]).encode())
    out: dict[str, Any] = table.to_pylist()[0]["annotations"][0]["result"][0]
    return out


# --- every fixture file ------------------------------------------------------------------


def test_the_fixture_lists_cover_every_export_file():
    files = {
        str(p.relative_to(FIXTURES))
        for p in FIXTURES.rglob("*")
        if p.is_file() and "webhooks" not in p.parts and p.suffix != ".md"
    }
    assert files == set(LOADABLE) | set(REJECTED)


@pytest.mark.parametrize("name", sorted(LOADABLE))
def test_every_export_loads_into_the_one_schema(name):
    table = ls.read_export(FIXTURES / name)
    assert table.schema.equals(ls.SCHEMA)
    assert table.num_rows > 0
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids))
    assert set(table.column("source_format").to_pylist()) == {LOADABLE[name]}
    for row in table.to_pylist():
        assert json.loads(row["data_json"])  # the task data, verbatim
        for ann in row["annotations"] or []:
            if ann["created_at"] is not None:
                assert ann["created_at"].utcoffset() == dt.timedelta(0)
            for res in ann["result"]:
                assert json.loads(res["raw_json"])


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_other_fixture_files_are_rejected_with_a_reason(name):
    with pytest.raises(FormatError, match=REJECTED[name]) as info:
        ls.read_export(FIXTURES / name)
    assert str(FIXTURES / name) in str(info.value)


def test_bytes_and_path_read_the_same():
    path = FIXTURES / "ner" / "export_JSON.json"
    from_bytes = ls.read_export(path.read_bytes())
    assert from_bytes.equals(ls.read_export(path))


def test_json_export_values():
    t = rows(ls.read_export(FIXTURES / "image_od" / "export_JSON.json"))
    first = t[1]
    assert json.loads(first["data_json"])["meta_info"]["gps"] == [47.3, 8.5]
    assert first["created_at"] == dt.datetime(
        2026, 11, 24, 6, 8, 53, 800750, tzinfo=dt.timezone.utc
    )
    assert first["predictions"] == [] and first["prediction_ids"] == []
    box = first["annotations"][0]["result"][0]
    assert (box["type"], box["labels"], box["original_width"], box["original_height"]) == (
        "rectanglelabels",
        ["human"],
        640,
        480,
    )
    assert box["x"] == pytest.approx(25.5256) and box["height"] == pytest.approx(5.9575)
    assert box["id"] == "TAFnT0tEuw" and box["origin"] == "manual"
    # predictions as ids in the easy export; drafts as objects, without created_ago
    with_preds = [r for r in t.values() if r["prediction_ids"]]
    assert with_preds and all(r["predictions"] is None for r in with_preds)
    drafts = [d for r in t.values() for d in r["drafts"] or []]
    assert drafts and all(d["user"] == "admin@example.com" for d in drafts)
    assert {d["annotation"] is None for d in drafts} == {True, False}
    assert "created_ago" not in json.dumps([d["extra_json"] for d in drafts])
    skipped = [a for r in t.values() for a in r["annotations"] if a["was_cancelled"]]
    assert skipped and all(a["result"] == [] for a in skipped)


def test_snapshot_and_cli_exports_agree_with_the_easy_export():
    easy = rows(ls.read_export(FIXTURES / "text_cls" / "export_JSON.json"))
    snap = rows(ls.read_export(FIXTURES / "text_cls" / "snapshot_full.json"))
    cli = rows(ls.read_export(FIXTURES / "text_cls" / "cli_export_JSON.json"))
    assert set(snap) == set(easy) and set(easy) < set(cli)
    for tid, row in easy.items():
        for other in (snap[tid], cli[tid]):
            assert other["data_json"] == row["data_json"]
            a_ids = [(a["id"], a["completed_by"]) for a in row["annotations"]]
            assert [(a["id"], a["completed_by"]) for a in other["annotations"]] == a_ids
            assert [a["result"] for a in other["annotations"]] == [
                a["result"] for a in row["annotations"]
            ]
        # the snapshot has full prediction objects, the easy export ids
        assert snap[tid]["prediction_ids"] == row["prediction_ids"]
        assert [p["id"] for p in snap[tid]["predictions"]] == row["prediction_ids"]
    emails = {a["completed_by_email"] for r in snap.values() for a in r["annotations"]}
    assert "annotator1@example.com" in emails
    predicted = [p for r in snap.values() for p in r["predictions"]]
    assert {p["model_version"] for p in predicted} >= {"distilbert-sst2"}
    started = [a for r in snap.values() for a in r["annotations"] if a["prediction_id"]]
    assert started and all(json.loads(a["prediction_json"])["id"] == a["prediction_id"]
                           for a in started)  # fmt: skip
    assert "created_ago" not in started[0]["prediction_json"]


def test_ner_spans_relations_and_per_region_textarea():
    t = rows(ls.read_export(FIXTURES / "ner" / "export_JSON.json"))
    results = [r for row in t.values() for a in row["annotations"] for r in a["result"]]
    span = next(r for r in results if r["type"] == "labels")
    text = json.loads(t[61]["data_json"])["text"]
    assert text[int(span["span_start"]) : int(span["span_end"])] == span["text"][0]
    relation = next(r for r in results if r["type"] == "relation")
    assert relation["from_id"] and relation["to_id"] and relation["direction"] == "right"
    assert relation["labels"] and relation["from_name"] is None
    # a per-region TextArea: value.text is a list, value.start/end the region's span
    note = next(r for r in results if r["type"] == "textarea")
    assert isinstance(note["text"], list) and note["span_start"] is not None
    assert any(r["id"] == note["id"] and r["type"] == "labels" for r in results)


# --- the same content through different formats ------------------------------------------


def comparable(table: pa.Table, *, lossy: bool) -> dict[int, Any]:
    """Per task: data and the non-skipped annotations with what every format carries."""
    out = {}
    for row in table.to_pylist():
        data = json.loads(row["data_json"])
        if lossy:  # CSV writes a missing key, null and "" alike
            data = {k: v for k, v in data.items() if v not in (None, "")}
        annotations = []
        for a in row["annotations"]:
            if a["was_cancelled"]:
                continue
            kept = [r for r in a["result"] if r["type"] != "relation"]
            items = sorted(
                json.dumps(
                    [
                        r[f] if not (f.startswith("span") and r["type"] == "textarea") else None
                        for f in RESULT_FIELDS
                    ]
                )
                for r in kept
            )
            annotations.append(
                (a["id"], a["completed_by"], a["created_at"], a["updated_at"], a["lead_time"],
                 items)
            )  # fmt: skip
        out[row["id"]] = (data, annotations)
    return out


@pytest.mark.parametrize("project", PROJECTS)
@pytest.mark.parametrize("fmt", ["export_JSON_MIN.json", "export_CSV.csv", "export_TSV.tsv"])
def test_lossy_formats_give_the_same_rows_as_json(project, fmt):
    full = ls.read_export(FIXTURES / project / "export_JSON.json")
    lossy = ls.read_export(FIXTURES / project / fmt, label_config=label_config(project))
    expected = comparable(full, lossy=fmt.endswith("sv"))
    got = comparable(lossy, lossy=fmt.endswith("sv"))
    # tasks whose annotations are all skipped are not written
    skipped_only = {
        row["id"]
        for row in full.to_pylist()
        if row["annotations"] and all(a["was_cancelled"] for a in row["annotations"])
    }
    assert skipped_only and set(got) == set(expected) - skipped_only
    for tid, value in got.items():
        assert value == expected[tid], tid
    assert lossy.column("predictions").null_count == lossy.num_rows


def test_json_min_without_label_config_finds_results_by_position():
    boxes = comparable(ls.read_export(FIXTURES / "image_od" / "export_JSON_MIN.json"), lossy=False)
    full = comparable(ls.read_export(FIXTURES / "image_od" / "export_JSON.json"), lossy=False)
    assert all(boxes[tid] == full[tid] for tid in boxes)
    # one selected choice is a bare string: without the config its type is unknown
    t = rows(ls.read_export(FIXTURES / "text_cls" / "export_JSON_MIN.json"))
    item = t[32]["annotations"][0]["result"][0]
    assert (item["from_name"], item["type"], item["choices"]) == ("sentiment", None, None)
    assert json.loads(item["raw_json"])["value"] == "Negative"
    assert "sentiment" not in json.loads(t[32]["data_json"])


def test_csv_without_label_config_keeps_json_results_and_bare_strings_as_data():
    t = rows(ls.read_export(FIXTURES / "image_od" / "export_CSV.csv"))
    assert t[1]["annotations"][0]["result"][0]["type"] == "rectanglelabels"
    cls = rows(ls.read_export(FIXTURES / "text_cls" / "export_CSV.csv"))
    assert json.loads(cls[32]["data_json"])["sentiment"] == "Negative"


def test_target_storage_directory_merges_files_by_task(tmp_path):
    storage = FIXTURES / "target_storage_localfiles"
    # the names Label Studio gives them: <annotation id>, and <task id>.json
    shutil.copy(storage / "annotation_157__after_PATCH", tmp_path / "157")
    shutil.copy(storage / "annotation_46__synced_on_create", tmp_path / "46")
    shutil.copy(storage / "task_61.json__FUTURE_SAVE_TASK_TO_STORAGE.json", tmp_path / "61.json")
    t = rows(ls.read_export(tmp_path))
    assert sorted(t) == [31, 32, 61]
    assert t[31]["source_format"] == "TARGET_STORAGE_ANNOTATION"
    assert t[61]["source_format"] == "TARGET_STORAGE_TASK"
    ann = t[31]["annotations"][0]
    assert (ann["id"], ann["completed_by"], ann["completed_by_email"]) == (
        157,
        1,
        "admin@example.com",
    )
    assert ann["result"][0]["choices"] == ["Negative"]
    assert json.loads(t[31]["extra_json"]) == {"is_labeled": True, "overlap": 1}
    assert t[31]["predictions"] is None  # not in this format
    # an older copy of annotation 157 in another file loses against the newer one
    old = json.loads((storage / "annotation_157__after_PATCH").read_text())
    old["updated_at"] = "2020-01-01T00:00:00Z"
    old["result"][0]["value"]["choices"] = ["Positive"]
    (tmp_path / "157-old").write_text(json.dumps(old))
    again = rows(ls.read_export(tmp_path))
    assert again[31]["annotations"][0]["result"][0]["choices"] == ["Negative"]


# --- every control type -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (result("choices", {"choices": ["a", "b"]}), {"choices": ["a", "b"], "labels": None}),
        (
            result("rectanglelabels", {"x": 1, "y": 2.5, "width": 3, "height": 4,
                                       "rotation": 7.5, "rectanglelabels": ["car"]},
                   original_width=640, original_height=480, image_rotation=90),
            {"x": 1.0, "y": 2.5, "width": 3.0, "height": 4.0, "rotation": 7.5,
             "labels": ["car"], "original_width": 640, "image_rotation": 90.0},
        ),
        (result("rectangle", {"x": 1, "y": 2, "width": 3, "height": 4}), {"labels": None,
                                                                          "x": 1.0}),
        (
            result("polygonlabels", {"points": [[1, 2], [3.5, 4]], "closed": True,
                                     "polygonlabels": ["roof"]}),
            {"points": [[1.0, 2.0], [3.5, 4.0]], "labels": ["roof"]},
        ),
        (
            result("keypointlabels", {"x": 5, "y": 6, "width": 0.5, "keypointlabels": ["eye"]}),
            {"x": 5.0, "width": 0.5, "labels": ["eye"], "height": None},
        ),
        (
            result("ellipselabels", {"x": 5, "y": 6, "radiusX": 2, "radiusY": 3,
                                     "rotation": 0, "ellipselabels": ["cell"]}),
            {"radius_x": 2.0, "radius_y": 3.0, "labels": ["cell"]},
        ),
        (
            result("brushlabels", {"format": "rle", "rle": [1, 2, 3], "brushlabels": ["sky"]}),
            {"labels": ["sky"], "x": None},
        ),
        (
            result("labels", {"start": 0, "end": 5, "text": "hello", "labels": ["PER"]}),
            {"span_start": 0.0, "span_end": 5.0, "text": ["hello"], "labels": ["PER"]},
        ),
        (
            result("labels", {"start": 1.25, "end": 3.5, "channel": 0, "labels": ["speech"]}),
            {"span_start": 1.25, "span_end": 3.5, "labels": ["speech"]},
        ),
        (
            result("hypertextlabels", {"start": "/p[1]/text()[1]", "end": "/p[2]/text()[1]",
                                       "startOffset": 3, "endOffset": 9, "text": "x y",
                                       "hypertextlabels": ["link"]}),
            {"span_start_ref": "/p[1]/text()[1]", "span_end_ref": "/p[2]/text()[1]",
             "start_offset": 3, "end_offset": 9, "span_start": None, "labels": ["link"]},
        ),
        (
            result("paragraphlabels", {"start": "0", "end": "2", "startOffset": 0,
                                       "endOffset": 4, "text": "abc", "paragraphlabels": ["q"]}),
            {"span_start_ref": "0", "span_end_ref": "2", "end_offset": 4, "labels": ["q"]},
        ),
        (
            result("timeserieslabels", {"start": 1000, "end": 2000, "instant": False,
                                         "timeserieslabels": ["run"]}),
            {"span_start": 1000.0, "labels": ["run"]},
        ),
        (
            result("timeserieslabels", {"start": "2024-01-01 00:00", "end": "2024-01-02 00:00",
                                        "instant": False, "timeserieslabels": ["run"]}),
            {"span_start_ref": "2024-01-01 00:00", "span_start": None},
        ),
        (
            result("taxonomy", {"taxonomy": [["Animal", "Cat"], ["Plant"]]}),
            {"taxonomy": [["Animal", "Cat"], ["Plant"]], "labels": None},
        ),
        (result("textarea", {"text": ["line 1", "line 2"]}), {"text": ["line 1", "line 2"]}),
        (result("textarea", {"text": "one string"}), {"text": ["one string"]}),
        (result("rating", {"rating": 4}), {"rating": 4}),
        (result("number", {"number": 2.5}), {"number": 2.5}),
        (result("number", {"number": 3}), {"number": 3.0}),
        (result("datetime", {"datetime": "2024-01-15"}), {"datetime": "2024-01-15"}),
        (result("pairwise", {"selected": "left"}), {"selected": "left"}),
        (result("ranker", {"ranker": {"rank": ["a", "b"]}}), {"labels": None}),
        (
            result("videorectangle", {"sequence": [{"frame": 1, "x": 1, "y": 2}],
                                      "framesCount": 10, "labels": ["car"]}),
            {"labels": ["car"]},
        ),
        (
            result("timelinelabels", {"ranges": [{"start": 1, "end": 4}],
                                      "timelinelabels": ["jump"]}),
            {"labels": ["jump"]},
        ),
        (
            {"type": "relation", "from_id": "a", "to_id": "b", "direction": "bi",
             "labels": ["rel"]},
            {"from_id": "a", "to_id": "b", "direction": "bi", "labels": ["rel"],
             "from_name": None, "id": None},
        ),
        (
            result("choices", {"x": 1, "y": 2, "width": 3, "height": 4, "choices": ["ok"]},
                   parentID="p1", item_index=2, score=0.75, origin="prediction"),
            {"choices": ["ok"], "x": 1.0, "parent_id": "p1", "item_index": 2, "score": 0.75,
             "origin": "prediction"},
        ),
        (
            result("mycustomtag", {"anything": {"nested": [1, 2]}, "mycustomtag": ["z"]}),
            {"type": "mycustomtag", "labels": ["z"]},
        ),
    ],
)  # fmt: skip
def test_every_control_type(item, expected):
    got = read_one_result(item)
    assert {k: got[k] for k in expected} == expected
    assert json.loads(got["raw_json"]) == item  # the item itself, always


def test_text_is_a_list_whether_the_value_is_a_string_or_a_list():
    table = ls.read_export(
        json.dumps(
            [task(annotations=[{"id": 1, "result": [
                result("labels", {"start": 0, "end": 2, "text": "he", "labels": ["X"]}),
                result("textarea", {"text": ["a", "b"]}),
            ]}])]
        ).encode()
    )  # fmt: skip
    texts = [r["text"] for r in table.to_pylist()[0]["annotations"][0]["result"]]
    assert texts == [["he"], ["a", "b"]]


# --- open objects: unknown keys, odd values ----------------------------------------------


def test_unknown_keys_are_kept_and_never_an_error():
    item = result("choices", {"choices": ["a"]}, readonly=True, meta={"text": ["n"]}, new=1)
    source = [
        task(
            state="done",
            agreement=0.5,
            nothing=None,
            annotations=[
                {
                    "id": 7,
                    "completed_by": {"id": 2, "email": "a@b.c", "first_name": "A"},
                    "result": [item],
                    "reviews": [{"id": 1, "accepted": True}],
                    "task": 1,
                }
            ],
            predictions=[{"id": 3, "result": [], "cluster": 4, "created_ago": "1 minute"}],
            drafts=[{"id": 9, "result": [], "user": "a@b.c", "surprise": [1]}],
        )
    ]
    row = ls.read_export(json.dumps(source).encode()).to_pylist()[0]
    assert json.loads(row["extra_json"]) == {"state": "done", "agreement": 0.5}
    ann = row["annotations"][0]
    assert json.loads(ann["extra_json"]) == {
        "completed_by": {"first_name": "A"},
        "reviews": [{"id": 1, "accepted": True}],
    }
    assert (ann["completed_by"], ann["completed_by_email"]) == (2, "a@b.c")
    assert json.loads(row["predictions"][0]["extra_json"]) == {"cluster": 4}
    assert json.loads(row["drafts"][0]["extra_json"]) == {"surprise": [1]}
    assert json.loads(ann["result"][0]["raw_json"]) == item


def test_values_that_do_not_fit_their_column_move_to_extra_json():
    source = [
        task(
            created_at="2026-11-24T08:00:00+02:00",
            updated_at="2026-11-24T06:00:00",  # no zone: UTC
            inner_id="seven",
            annotations=[
                {"id": 1, "result": [], "lead_time": "fast", "created_at": "yesterday",
                 "ground_truth": 1}
            ],
        )
    ]  # fmt: skip
    row = ls.read_export(json.dumps(source).encode()).to_pylist()[0]
    assert (
        row["created_at"]
        == row["updated_at"]
        == dt.datetime(2026, 11, 24, 6, tzinfo=dt.timezone.utc)
    )
    assert row["inner_id"] is None and json.loads(row["extra_json"]) == {"inner_id": "seven"}
    ann = row["annotations"][0]
    assert ann["lead_time"] is None and ann["created_at"] is None
    assert json.loads(ann["extra_json"]) == {
        "lead_time": "fast",
        "created_at": "yesterday",
        "ground_truth": 1,
    }
    # a typed result field that does not fit is NULL; raw_json keeps it
    got = read_one_result(result("rectanglelabels", {"x": "left", "rectanglelabels": "car"}))
    assert (got["x"], got["labels"]) == (None, None)
    assert json.loads(got["raw_json"])["value"]["x"] == "left"


def test_legacy_completions_and_null_results():
    source = [{"id": 5, "data": {}, "completions": [{"id": 1, "result": None}]}]
    row = ls.read_export(json.dumps(source).encode()).to_pylist()[0]
    assert row["annotations"][0]["result"] == []
    assert row["predictions"] is None and row["drafts"] is None


def test_timestamps_are_utc_aware():
    table = ls.read_export(FIXTURES / "ner" / "export_JSON.json")
    assert table.schema.field("created_at").type == TIMESTAMP == pa.timestamp("us", tz="UTC")


def test_label_config_as_xml_or_parsed_mapping():
    xml = label_config("ner")
    assert ls.parse_label_config(xml) == {"label": ("labels", "text"), "note": ("textarea", "text")}
    payload = json.loads(
        (FIXTURES / "webhooks/by_project_type/text_cls_ANNOTATION_CREATED.json").read_text()
    )
    parsed = payload["project"]["parsed_label_config"]
    assert ls.parse_label_config(parsed) == ls.parse_label_config(label_config("text_cls"))
    with pytest.raises(FormatError, match="label_config is not valid XML"):
        ls.parse_label_config("<View><Choices")


# --- malformed input: a clear error, nothing written --------------------------------------


def _json_export() -> str:
    return (FIXTURES / "text_cls" / "export_JSON.json").read_text()


def _tasks() -> list[Any]:
    loaded: list[Any] = json.loads(_json_export())
    return loaded


def _with(mutate: Any) -> bytes:
    tasks = _tasks()
    mutate(tasks)
    return json.dumps(tasks).encode()


BAD_INPUTS = {
    "truncated JSON": (
        lambda: _json_export()[:5000].encode(),
        r"invalid JSON at line \d+, column \d+ .*truncated",
    ),
    "broken JSON": (
        lambda: b'[\n  {\n    "id": 1,\n    "data" {}\n  }\n]',
        r"invalid JSON at line 4, column 12 \(Expecting ':' delimiter\)\. Export the",
    ),
    "random JSON object": (lambda: b'{"hello": "world"}', r"keys \['hello'\].*not a Label"),
    "JSON list of numbers": (lambda: b"[1, 2, 3]", "a JSON list of int values"),
    "JSON list of other objects": (lambda: b'[{"name": "x"}]', "not a Label Studio export"),
    "empty file": (lambda: b"  \n", "the file is empty"),
    "not UTF-8": (lambda: b'[{"id": 1, "data": {"t": "\xff"}}]', "not UTF-8 .*offset 26"),
    "webhook payload": (
        lambda: (FIXTURES / "webhooks/by_project_type/ner_ANNOTATION_CREATED.json").read_bytes(),
        "webhook payload",
    ),
    "COCO zip": (lambda: (FIXTURES / "image_od/export_COCO.zip").read_bytes(), "COCO export"),
    "CONLL": (lambda: (FIXTURES / "ner/export_CONLL2003.conll").read_bytes(), "CONLL2003"),
    "annotations not a list": (
        lambda: _with(lambda t: t[1].__setitem__("annotations", {"id": 1})),
        r"task #1 \(id 32\)\.annotations must be a list, got an object",
    ),
    "result item not an object": (
        lambda: _with(lambda t: t[2]["annotations"][0]["result"].append([1])),
        r"task #2 \(id 33\)\.annotations\[0\]\.result\[1\] must be an object, got a list",
    ),
    "prediction result not a list": (
        lambda: _with(lambda t: t[0].__setitem__("predictions", [{"id": 1, "result": "x"}])),
        r"task #0 \(id 31\)\.predictions\[0\]\.result must be a list, got a string",
    ),
    "task without id": (
        lambda: _with(lambda t: t[3].pop("id")),
        r"task #3\.id must be an integer task id, got null",
    ),
    "repeated task id": (
        lambda: _with(lambda t: t[4].__setitem__("id", t[0]["id"])),
        r"task #4 \(id 31\)\.id repeats task id 31 \(first seen at task #0\)",
    ),
    "truncated CSV": (
        lambda: (FIXTURES / "text_cls/export_CSV.csv").read_bytes()[:2000],
        r"line \d+: a quoted field is not closed|line \d+ has \d+ fields",
    ),
    "CSV row with missing fields": (
        lambda: (FIXTURES / "text_cls/export_CSV.csv").read_bytes() + b'99,"x"\r\n',
        r"line 47 has 2 fields but the header has 11",
    ),
    "JSON_MIN row without task id": (
        lambda: json.dumps([{"text": "a", "id": None, "annotation_id": 1}]).encode(),
        r"row #0: 'id' must be an integer task id, got None",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_malformed_input_is_a_clear_error_and_writes_nothing(case, tmp_path):
    make, message = BAD_INPUTS[case]
    path = tmp_path / "export.json"
    path.write_bytes(make())
    with pytest.raises(FormatError, match=message) as info:
        ls.read_export(path)
    assert str(path) in str(info.value)
    # the same error from import_into, and the dataset keeps its snapshot and rows
    ds = ls.create_dataset(tmp_path / "tasks")
    ls.import_into(ds, FIXTURES / "ner" / "export_JSON.json")
    before = ds.snapshot().snapshot_id, ds.local().read_all()
    with pytest.raises(FormatError, match=message):
        ls.import_into(ds, path)
    assert ds.snapshot().snapshot_id == before[0]
    assert ds.local().read_all().equals(before[1])


def test_a_malformed_export_creates_no_dataset(tmp_path):
    with pytest.raises(FormatError, match="CONLL2003"):
        ls.import_into(tmp_path / "tasks", FIXTURES / "ner" / "export_CONLL2003.conll")
    assert not (tmp_path / "tasks").exists()


def test_a_directory_with_other_files_is_rejected(tmp_path):
    shutil.copy(FIXTURES / "text_cls" / "export_CSV.csv", tmp_path / "x.csv")
    with pytest.raises(FormatError, match=r"x\.csv: is a CSV export; a directory is read as"):
        ls.read_export(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="has no files"):
        ls.read_export(tmp_path / "empty")
    with pytest.raises(FormatError, match=r"Cannot read the Label Studio export .*nothing"):
        ls.read_export(tmp_path / "nothing")


# --- import into a dataset ----------------------------------------------------------------


def test_import_then_reimport_writes_only_what_changed(tmp_path):
    location = tmp_path / "tasks"
    source = FIXTURES / "image_od" / "export_JSON.json"
    first = ls.import_into(location, source)
    assert (first.format, first.tasks, first.inserted, first.updated, first.unchanged) == (
        "JSON",
        30,
        30,
        0,
        0,
    )
    ds = Dataset.load(location)
    assert first.snapshot_id == ds.snapshot().snapshot_id == 1

    again = ls.import_into(ds, source)
    assert (again.inserted, again.updated, again.unchanged, again.snapshot_id) == (0, 0, 30, None)
    assert ds.snapshot().snapshot_id == 1  # no new snapshot

    tasks = json.loads(source.read_text())
    changed = copy.deepcopy(tasks)
    box = changed[0]["annotations"][0]["result"][0]
    box["value"]["rectanglelabels"] = ["boat"]
    changed[0]["updated_at"] = "2026-11-25T00:00:00Z"
    changed.append({**copy.deepcopy(tasks[1]), "id": 999})
    newer = ls.import_into(ds, json.dumps(changed).encode())
    assert (newer.inserted, newer.updated, newer.unchanged, newer.absent) == (1, 1, 29, 0)
    assert newer.snapshot_id == 2
    delta = ds.local().changes(1, 2)
    assert sorted(zip(delta.column("change_type").to_pylist(), delta.column("id").to_pylist(),
                      strict=True)) == [("delete", 1), ("insert", 1), ("insert", 999)]  # fmt: skip
    row = rows(ds.local().read_all())[1]
    assert row["annotations"][0]["result"][0]["labels"] == ["boat"]

    # a subset (here: one task) updates nothing else and deletes nothing
    subset = ls.import_into(ds, json.dumps(changed[:1]).encode())
    assert (subset.unchanged, subset.absent, subset.snapshot_id) == (1, 30, None)
    assert ds.local().read_all().num_rows == 31


def test_reimport_of_a_snapshot_with_volatile_created_ago_changes_nothing(tmp_path):
    source = FIXTURES / "text_cls" / "snapshot_full.json"
    ds = ls.create_dataset(tmp_path / "tasks")
    ls.import_into(ds, source)
    tasks = json.loads(source.read_text())
    for t in tasks:
        for p in t["predictions"]:
            p["created_ago"] = "3\u00a0days"
        for a in t["annotations"]:
            if a["prediction"]:
                a["prediction"]["created_ago"] = "3\u00a0days"
    again = ls.import_into(ds, json.dumps(tasks).encode())
    assert (again.unchanged, again.snapshot_id) == (30, None)


@pytest.mark.parametrize("name", ["ner/export_JSON_MIN.json", "text_cls/export_TSV.tsv"])
def test_reimporting_a_lossy_export_is_stable(tmp_path, name):
    ds = ls.create_dataset(tmp_path / "tasks")
    first = ls.import_into(ds, FIXTURES / name)
    again = ls.import_into(ds, FIXTURES / name)
    assert (again.unchanged, again.snapshot_id) == (first.inserted, None)


def test_an_empty_export_is_an_empty_table_and_writes_nothing(tmp_path):
    assert ls.read_export(b"[]").schema.equals(ls.SCHEMA)
    ds = ls.create_dataset(tmp_path / "tasks")
    summary = ls.import_into(ds, b"[]")
    assert (summary.tasks, summary.snapshot_id, ds.snapshot().snapshot_id) == (0, None, 0)


def test_import_into_checks_the_dataset_schema(tmp_path):
    other = Dataset.create(tmp_path / "other", pa.schema([("id", pa.int64())]), primary_keys=["id"])
    with pytest.raises(SchemaError, match="does not have the Label Studio task schema"):
        ls.import_into(other, FIXTURES / "ner" / "export_JSON.json")


def test_import_with_progress_bar(tmp_path, capsys):
    summary = ls.import_into(tmp_path / "t", FIXTURES / "ner" / "export_JSON.json", progress=True)
    assert summary.inserted == 25
    assert "Label Studio import done" in capsys.readouterr().out


def test_imported_tasks_are_queried_with_sql(tmp_path):
    ls.import_into(tmp_path / "catalog" / "tasks", FIXTURES / "image_od" / "export_JSON.json")
    con = spacesql.connect(tmp_path / "catalog")
    labels = con.sql(
        "SELECT label, count(*) AS n FROM (SELECT unnest(r.labels) AS label FROM "
        "(SELECT unnest(a.result) AS r FROM (SELECT unnest(annotations) AS a FROM tasks))) "
        "GROUP BY label ORDER BY label"
    ).fetchall()
    assert {label for label, _ in labels} <= {"airplane", "boat", "building", "car", "human"}
    pixels = con.sql(
        "SELECT max(r.width / 100 * r.original_width) FROM (SELECT unnest(a.result) AS r FROM "
        "(SELECT unnest(annotations) AS a FROM tasks))"
    ).fetchall()[0][0]
    assert 0 < pixels <= 640
    image = con.sql("SELECT data_json->>'$.image' FROM tasks WHERE id = 1").fetchall()
    assert image == [("/data/local-files/?d=images/img_0000.jpg",)]
