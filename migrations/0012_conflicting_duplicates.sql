-- A duplicate whose values differ from the stored event's (same event_id, another price, time,
-- user, product or type) is a data-quality signal upstream: the fields that differ are kept, and
-- each file version counts its conflicting duplicates (a part of rows_duplicate).
ALTER TABLE ingest_duplicates ADD COLUMN IF NOT EXISTS conflicting_fields TEXT[];
ALTER TABLE ingest_files ADD COLUMN IF NOT EXISTS rows_conflicting BIGINT NOT NULL DEFAULT 0;

CREATE INDEX IF NOT EXISTS ingest_duplicates_conflicting_idx
    ON ingest_duplicates (seen_at) WHERE conflicting_fields IS NOT NULL;
