-- A file version is its content: the bridge sends the SHA-256 of the file's bytes as
-- source_file_id, so the same bytes under another name (renamed in the folder, dropped again)
-- record their bad rows once. Rows an earlier version recorded twice that way are merged first.
DELETE FROM ecommerce_events_rejected a
USING ecommerce_events_rejected b
WHERE a.source_file_id = b.source_file_id
  AND a.source_line = b.source_line
  AND a.id > b.id;

CREATE UNIQUE INDEX IF NOT EXISTS ecommerce_events_rejected_content_idx
    ON ecommerce_events_rejected (source_file_id, source_line);
DROP INDEX IF EXISTS ecommerce_events_rejected_source_idx;
