-- Retention: events dated before the horizon are dropped (the `retention` command), and an event
-- dated before it that arrives afterwards is quarantined `expired`: it can be neither stored (it
-- would be dropped again) nor taken for a duplicate of a row that is gone.
--
-- A writer reads the horizon under a shared advisory lock it holds until it commits; moving the
-- horizon takes that lock exclusively. So no batch judged by the old horizon commits after the
-- new one is set, and the drop that follows sees every row such a batch wrote.
CREATE TABLE IF NOT EXISTS retention (
    only_row     BOOLEAN     PRIMARY KEY DEFAULT true CHECK (only_row),
    horizon      TIMESTAMPTZ NOT NULL,
    set_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- NULL while events dated before the horizon remain to be dropped.
    completed_at TIMESTAMPTZ
);

-- Rows a file's ledger counted as inserted that retention dropped since: the file's events in
-- the table are rows_inserted - rows_expired.
ALTER TABLE ingest_files ADD COLUMN IF NOT EXISTS rows_expired BIGINT NOT NULL DEFAULT 0;

COMMENT ON COLUMN ecommerce_events_rejected.reason_code IS
    'missing_column, field_count, invalid_utf8, row_too_large, field_too_large, too_large, '
    'invalid_field, late, future, undecodable, database, missing_header, undecodable_file, expired';

-- The one advisory lock key writers and the horizon's mover share (the bytes of 'retentio').
CREATE FUNCTION retention_lock_key() RETURNS BIGINT LANGUAGE sql IMMUTABLE
AS $$ SELECT 8243122671965202799 $$;

-- First in a writer's transaction: the horizon its events are judged by, held until it commits.
CREATE FUNCTION retention_horizon_held() RETURNS TIMESTAMPTZ
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(retention_lock_key());
    RETURN (SELECT horizon FROM retention);
END $fn$;

-- Sets the horizon, after every batch judged by the old one has committed; returns the old one.
-- It only moves forward unless `back` (events dropped before stay dropped either way).
CREATE FUNCTION retention_move(new_horizon TIMESTAMPTZ, back BOOLEAN) RETURNS TIMESTAMPTZ
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    old TIMESTAMPTZ;
BEGIN
    PERFORM pg_advisory_xact_lock(retention_lock_key());
    SELECT horizon INTO old FROM retention FOR UPDATE;
    IF old IS NOT NULL AND new_horizon < old AND NOT back THEN
        RAISE EXCEPTION 'the retention horizon is % and only moves forward: % is before it', old, new_horizon
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO retention (horizon) VALUES (new_horizon)
    ON CONFLICT (only_row) DO UPDATE
        SET horizon = excluded.horizon, set_at = now(),
            completed_at = CASE WHEN excluded.horizon <= retention.horizon
                                THEN retention.completed_at END;
    RETURN old;
END $fn$;

-- Drops up to `max_rows` events dated before the horizon, counting them in their files' ledger
-- rows in the same transaction (the aggregates follow by their triggers); returns how many. At 0
-- every event before the horizon is gone, and the retention is marked complete.
CREATE FUNCTION retention_drop_step(max_rows INT) RETURNS BIGINT
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    cutoff TIMESTAMPTZ;
    dropped BIGINT;
BEGIN
    SELECT horizon INTO cutoff FROM retention;
    IF cutoff IS NULL THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        DELETE FROM ecommerce_events
        WHERE ctid = ANY (ARRAY(SELECT ctid FROM ecommerce_events
                                WHERE event_time < cutoff LIMIT max_rows))
        RETURNING source_file_id
    ), per_file AS (
        SELECT source_file_id, count(*) AS n FROM gone
        WHERE source_file_id IS NOT NULL GROUP BY source_file_id
    ), counted AS (
        UPDATE ingest_files f SET rows_expired = f.rows_expired + p.n, updated_at = now()
        FROM per_file p WHERE f.content_id = p.source_file_id
        RETURNING 1
    )
    SELECT count(*) INTO dropped FROM gone;
    IF dropped = 0 THEN
        UPDATE retention SET completed_at = now() WHERE completed_at IS NULL;
    END IF;
    RETURN dropped;
END $fn$;
