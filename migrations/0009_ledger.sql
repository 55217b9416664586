-- The ledger: one row per file version (its content), counting what became of every data row the
-- bridge read. The consumer updates the counters in the same transaction as the rows they count,
-- and learns rows_read from the bridge's end-of-file message; a file is reconciled when
--   rows_read = rows_inserted + rows_duplicate + rows_rejected.
-- rows_late counts the late rows among the inserted (is_late) and the rejected (`late`).
CREATE TABLE IF NOT EXISTS ingest_files (
    -- The file identity every message carries: the first 128 bits of content_sha256.
    content_id      TEXT        PRIMARY KEY,
    content_sha256  TEXT,
    file_name       TEXT        NOT NULL,
    size_bytes      BIGINT,
    landed_at       TIMESTAMPTZ,
    -- NULL until the bridge's end-of-file message arrived.
    rows_read       BIGINT,
    rows_inserted   BIGINT      NOT NULL DEFAULT 0,
    rows_duplicate  BIGINT      NOT NULL DEFAULT 0,
    rows_rejected   BIGINT      NOT NULL DEFAULT 0,
    rows_late       BIGINT      NOT NULL DEFAULT 0,
    first_seen_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    reconciled_at   TIMESTAMPTZ,
    -- Set when `file-bridge --backfill` published the file again.
    backfilled_at   TIMESTAMPTZ,
    -- Every end message of this version said the file changed while it was read: rows_read
    -- counts the rows sent before that was found (the file is read again as its new version).
    changed_while_read BOOLEAN  NOT NULL DEFAULT false
);

CREATE INDEX IF NOT EXISTS ingest_files_unreconciled_idx
    ON ingest_files (first_seen_at) WHERE reconciled_at IS NULL;

-- Every data row that was a valid event already stored from another row: recorded once per
-- (file version, line), so a republished file counts its duplicates once; `explain` counts them.
CREATE TABLE IF NOT EXISTS ingest_duplicates (
    source_file_id  TEXT        NOT NULL,
    source_line     BIGINT      NOT NULL,
    source_file     TEXT        NOT NULL,
    event_id        VARCHAR(64) NOT NULL,
    kafka_partition INT         NOT NULL,
    kafka_offset    BIGINT      NOT NULL,
    seen_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_file_id, source_line)
);

CREATE INDEX IF NOT EXISTS ingest_duplicates_event_idx ON ingest_duplicates (event_id);

-- Quarantine you can fix: a reject whose event_id later lands as a valid event is resolved, by
-- the row (file version and line) that brought the event.
ALTER TABLE ecommerce_events_rejected ADD COLUMN IF NOT EXISTS resolved_at TIMESTAMPTZ;
ALTER TABLE ecommerce_events_rejected ADD COLUMN IF NOT EXISTS resolved_by_file TEXT;
ALTER TABLE ecommerce_events_rejected ADD COLUMN IF NOT EXISTS resolved_by_line BIGINT;

CREATE INDEX IF NOT EXISTS ecommerce_events_rejected_unresolved_idx
    ON ecommerce_events_rejected (event_id) WHERE resolved_at IS NULL AND event_id IS NOT NULL;
