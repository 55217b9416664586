-- A checkpoint behind Kafka's committed offset (a database restored from an older backup, a
-- failover to a replica that missed the last transactions, checkpoints removed by hand): the
-- consumer reads again from the checkpoint, PostgreSQL being the authority, and records it here.
ALTER TABLE ingest_log_events DROP CONSTRAINT IF EXISTS ingest_log_events_kind_check;
ALTER TABLE ingest_log_events ADD CONSTRAINT ingest_log_events_kind_check
    CHECK (kind IN ('restarted', 'gap', 'rewound'));
