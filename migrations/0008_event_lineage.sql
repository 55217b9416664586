-- Lineage: every event keeps the identity of its file's content and the Kafka message it came
-- from, beside source_file and source_line. Rows written before this migration have none.
ALTER TABLE ecommerce_events ADD COLUMN IF NOT EXISTS source_file_id  TEXT;
ALTER TABLE ecommerce_events ADD COLUMN IF NOT EXISTS kafka_partition INT;
ALTER TABLE ecommerce_events ADD COLUMN IF NOT EXISTS kafka_offset    BIGINT;
