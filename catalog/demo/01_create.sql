-- The demo catalog: labelled images, as an annotation team keeps them.
-- `image` is a record field: its bytes live in ArrayRecord files, referenced from Parquet.
CREATE TABLE images (
    id         BIGINT PRIMARY KEY,
    image      BLOB,
    label      VARCHAR,
    annotator  VARCHAR,
    created_at TIMESTAMPTZ,
    boxes      STRUCT(x DOUBLE, y DOUBLE, w DOUBLE, h DOUBLE)[]
) WITH (record_fields = 'image');

CREATE TABLE annotators (name VARCHAR PRIMARY KEY, team VARCHAR);
