-- One commit per statement: snapshot 1 of each table.
INSERT INTO images
SELECT
    i,
    ('img-' || lpad(i::VARCHAR, 3, '0'))::BLOB,
    ['car', 'human', 'boat', 'building'][i % 4 + 1],
    ['ann1', 'ann2', 'bob'][i % 3 + 1],
    TIMESTAMPTZ '2026-11-24 10:00:00+00' + INTERVAL (7 * i) MINUTE,
    [{'x': 10.0 * i, 'y': 5.0, 'w': 20.0, 'h': 15.0}]
FROM range(12) AS t(i);

INSERT INTO annotators VALUES ('ann1', 'vision'), ('ann2', 'vision'), ('bob', 'contractors');

CALL spacesql_tag('images', 'after_append');
