-- What annotation teams ask every day, over the flat views (sql/labelstudio/views.sql):
--   spacesql run CATALOG sql/labelstudio/analytics.sql --var table=tasks

-- Label distribution (submitted annotations; a region with two labels counts for both).
SELECT project, label, count(*) AS regions
FROM {{ table }}_regions, UNNEST(labels) AS l(label)
WHERE NOT was_cancelled
GROUP BY ALL
ORDER BY project, regions DESC, label;

-- Annotations per annotator, skipped rate and lead time (seconds).
SELECT
    project,
    completed_by,
    any_value(completed_by_email) AS email,
    count(*) AS annotations,
    round(avg(was_cancelled::INTEGER), 3) AS skipped_rate,
    round(median(lead_time), 1) AS median_lead_time,
    round(avg(lead_time), 1) AS mean_lead_time
FROM {{ table }}_annotations
GROUP BY ALL
ORDER BY project, annotations DESC;

-- Skipped rate per project, and tasks nobody submitted yet.
SELECT
    t.project,
    count(*) AS tasks,
    count(*) FILTER (WHERE NOT EXISTS (
        SELECT 1 FROM {{ table }}_annotations AS a
        WHERE a.project = t.project AND a.task_id = t.id AND NOT a.was_cancelled)) AS not_submitted,
    round(avg((SELECT avg(a.was_cancelled::INTEGER) FROM {{ table }}_annotations AS a
               WHERE a.project = t.project AND a.task_id = t.id)), 3) AS skipped_rate
FROM {{ table }} AS t
GROUP BY ALL
ORDER BY project;

-- Lead time: from the task's creation to its first submitted annotation.
SELECT
    t.project,
    round(median(epoch(first_submit - t.created_at)), 1) AS median_seconds_to_first_label
FROM {{ table }} AS t
JOIN (
    SELECT project, task_id, min(created_at) AS first_submit
    FROM {{ table }}_annotations WHERE NOT was_cancelled GROUP BY ALL
) AS f ON f.project = t.project AND f.task_id = t.id
GROUP BY ALL
ORDER BY project;

-- Disagreement: tasks whose annotators gave different label sets.
SELECT
    project,
    task_id,
    count(*) AS annotators,
    count(DISTINCT label_set) AS different_answers,
    list(DISTINCT label_set) AS answers
FROM {{ table }}_annotations
WHERE NOT was_cancelled
GROUP BY ALL
HAVING count(*) > 1 AND count(DISTINCT label_set) > 1
ORDER BY project, task_id;
