-- The consumer's checkpoint, written in the same transaction as the rows it covers: the next offset
-- to process and the highest event_time seen, per group and partition. Kafka's committed offsets
-- trail it; where they are behind, the consumer skips what this table says is already written, so
-- a replay writes nothing twice and classifies late events exactly as the first pass did.
CREATE TABLE IF NOT EXISTS ingest_checkpoints (
    consumer_group  TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    kafka_partition INT         NOT NULL,
    next_offset     BIGINT      NOT NULL,
    max_event_time  TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);
