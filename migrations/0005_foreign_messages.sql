-- A message that is not a pipeline row keeps its key as well as its value, byte for byte.
ALTER TABLE ecommerce_events_rejected ADD COLUMN IF NOT EXISTS kafka_key BYTEA;

COMMENT ON COLUMN ecommerce_events_rejected.reason_code IS
    'missing_column, field_count, invalid_utf8, row_too_large, field_too_large, too_large, '
    'invalid_field, late, future, undecodable, database';
