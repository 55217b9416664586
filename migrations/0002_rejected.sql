-- Every row that did not become an event, with the reason, where it came from and its raw bytes.
CREATE TABLE IF NOT EXISTS ecommerce_events_rejected (
    id              BIGSERIAL   PRIMARY KEY,
    -- File name, or `kafka:<topic>` for a message that did not come from the bridge.
    source_file     TEXT        NOT NULL,
    -- Identity of the file's content (inode, size, mtime): a republished file is the same file.
    source_file_id  TEXT        NOT NULL,
    source_line     BIGINT      NOT NULL,
    -- missing_column, field_count, invalid_utf8, invalid_field, late, undecodable
    reason_code     TEXT        NOT NULL,
    -- The offending column, where one is to blame.
    field           TEXT,
    reason          TEXT        NOT NULL,
    -- The row's event_id where it is a valid one (always for `late`).
    event_id        VARCHAR(64),
    -- The row as one CSV line, byte for byte (invalid UTF-8 and NUL included).
    raw             BYTEA       NOT NULL,
    kafka_topic     TEXT        NOT NULL,
    kafka_partition INT         NOT NULL,
    kafka_offset    BIGINT      NOT NULL,
    rejected_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A row delivered again (consumer replay, file republished after a crash) is recorded once.
CREATE UNIQUE INDEX IF NOT EXISTS ecommerce_events_rejected_source_idx
    ON ecommerce_events_rejected (source_file, source_file_id, source_line);
-- A late event is quarantined once; later copies of it are duplicates.
CREATE UNIQUE INDEX IF NOT EXISTS ecommerce_events_rejected_late_idx
    ON ecommerce_events_rejected (event_id) WHERE reason_code = 'late';
CREATE INDEX IF NOT EXISTS ecommerce_events_rejected_reason_idx
    ON ecommerce_events_rejected (reason_code, rejected_at);
