-- A compressed input file (`*.csv.gz`, `*.csv.zst`) whose stream does not decode is rejected
-- whole, as one row: undecodable_file.
COMMENT ON COLUMN ecommerce_events_rejected.reason_code IS
    'missing_column, field_count, invalid_utf8, row_too_large, field_too_large, too_large, '
    'invalid_field, late, future, undecodable, database, missing_header, undecodable_file';
