-- A file whose first line names none of the columns has no header: every line of it, the first
-- included, is quarantined as missing_header.
COMMENT ON COLUMN ecommerce_events_rejected.reason_code IS
    'missing_column, field_count, invalid_utf8, row_too_large, field_too_large, too_large, '
    'invalid_field, late, future, undecodable, database, missing_header';
