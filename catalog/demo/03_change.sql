-- Deletes and updates are commits too; old versions stay readable.
DELETE FROM images WHERE id = 8 OR id = 9;
CALL spacesql_tag('images', 'after_delete');

UPDATE images SET label = 'ship' WHERE label = 'boat';

-- Upsert: a re-labelled image replaces the old row by its key.
INSERT OR REPLACE INTO images
SELECT id, image, 'car', 'bob', created_at, boxes FROM images WHERE id = 1;
