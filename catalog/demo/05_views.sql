-- Materialized views: stored query results that a refresh brings up to date from the
-- changes of their sources (not by recomputing), with the source snapshots they reflect.
CREATE MATERIALIZED VIEW label_counts AS
SELECT label, count(*) AS n, count(DISTINCT annotator) AS annotators
FROM images GROUP BY label;

CREATE MATERIALIZED VIEW training_rows AS
SELECT i.id, i.label, a.team, len(i.boxes) AS n_boxes
FROM images AS i JOIN annotators AS a ON i.annotator = a.name
WHERE i.label IS NOT NULL;

INSERT INTO images (id, label, annotator) VALUES (1000, 'boat', 'ann');
DELETE FROM images WHERE id = 3;

-- What the refresh will do, then do it: only the changed rows are processed.
EXPLAIN REFRESH MATERIALIZED VIEW training_rows;
REFRESH MATERIALIZED VIEW training_rows;
REFRESH MATERIALIZED VIEW label_counts;

SELECT * FROM label_counts ORDER BY label;
