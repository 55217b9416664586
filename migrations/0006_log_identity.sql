-- A checkpoint knows its log: the hash of the last message it covers (key and value). On every
-- assignment the consumer compares it with the message now at that offset; a log that was
-- recreated, wiped or truncated is read again from its start instead of being skipped.
ALTER TABLE ingest_checkpoints ADD COLUMN IF NOT EXISTS last_message TEXT;

-- What the consumer found about a partition's log that an operator must know: a log that
-- restarted (re-read from its start) or messages removed by retention before they were read.
CREATE TABLE IF NOT EXISTS ingest_log_events (
    id              BIGSERIAL   PRIMARY KEY,
    consumer_group  TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    kafka_partition INT         NOT NULL,
    kind            TEXT        NOT NULL CHECK (kind IN ('restarted', 'gap')),
    -- restarted: the checkpoint's offset and where reading starts again; gap: the missing offsets.
    from_offset     BIGINT      NOT NULL,
    to_offset       BIGINT      NOT NULL,
    detail          TEXT        NOT NULL,
    detected_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A gap is seen again on every assignment until the checkpoint passes it: recorded once.
CREATE UNIQUE INDEX IF NOT EXISTS ingest_log_events_gap_idx
    ON ingest_log_events (consumer_group, topic, kafka_partition, from_offset, to_offset)
    WHERE kind = 'gap';
