-- Flat views over a Label Studio tasks table, kept as materialized views that refresh
-- incrementally (only changed tasks are flattened again):
--   spacesql run CATALOG sql/labelstudio/views.sql --var table=tasks
--   spacesql run CATALOG sql/labelstudio/refresh.sql --var table=tasks   (after imports/syncs)

-- One row per annotation (skipped ones included: was_cancelled).
CREATE MATERIALIZED VIEW IF NOT EXISTS {{ table }}_annotations AS
SELECT
    t.project,
    t.id AS task_id,
    a.id AS annotation_id,
    a.completed_by,
    a.completed_by_email,
    a.was_cancelled,
    a.ground_truth,
    a.lead_time,
    a.created_at,
    a.updated_at,
    len(a.result) AS results,
    list_sort(list_distinct(flatten(list_transform(a.result, lambda r: coalesce(r.labels, r.choices, [])))))
        AS label_set
FROM {{ table }} AS t, UNNEST(t.annotations) AS ua(a);

-- One row per result item (a region, a choice, a text answer, a relation...), with the box
-- both in percent of the image and in pixels, and text spans as character offsets.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{ table }}_regions AS
SELECT
    t.project,
    t.id AS task_id,
    a.id AS annotation_id,
    a.completed_by,
    a.was_cancelled,
    r.id AS region_id,
    r.type,
    r.from_name,
    r.to_name,
    coalesce(r.labels, r.choices) AS labels,
    r.text,
    r.x, r.y, r.width, r.height, r.rotation,
    r.x / 100 * r.original_width AS x_px,
    r.y / 100 * r.original_height AS y_px,
    r.width / 100 * r.original_width AS width_px,
    r.height / 100 * r.original_height AS height_px,
    r.original_width,
    r.original_height,
    r.start_offset,
    r.end_offset,
    r.span_start,
    r.span_end,
    r.rating,
    r.number,
    r.score,
    r.from_id,
    r.to_id
FROM {{ table }} AS t, UNNEST(t.annotations) AS ua(a), UNNEST(a.result) AS ur(r);
