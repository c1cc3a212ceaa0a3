-- Label distribution now and at the tagged version, per team.
SELECT a.team, i.label, count(*) AS n
FROM images AS i JOIN annotators AS a ON i.annotator = a.name
GROUP BY ALL ORDER BY ALL;

SELECT label, count(*) AS n FROM images AT (VERSION => 'after_append') GROUP BY label ORDER BY label;

-- What changed since the tag, row by row.
SELECT change_type, snapshot_id, id, label
FROM spacesql_changes('images', 'after_append')
ORDER BY id, change_type;

SELECT snapshot_id, operation, added_rows, deleted_rows, total_rows, tags
FROM spacesql_snapshots('images');
