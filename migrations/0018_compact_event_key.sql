-- The events' primary key is a 16-byte digest of event_id instead of the id's text (up to 64
-- characters, 36 for a UUID). Ids are random, so every insert touches a random leaf of that
-- index: once the index outgrows the buffers the rate falls to a quarter (docs/performance.md,
-- the curve at 50 million events). The digest's index is half the size and compares as bytes,
-- not through the collation.
--
-- A different event_id with the same digest (MD5: 2^-128 a pair, and a crafted pair must keep
-- within 64 characters without control characters) is not stored: it is recorded as a
-- conflicting duplicate whose differing field is `event_id`, never taken silently.
--
-- On a table with rows this rewrites it and builds the new key (a lock for as long as that
-- takes): see docs/operations.md.

CREATE FUNCTION event_key_of(event_id TEXT) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT md5(event_id)::uuid $$;

ALTER TABLE ecommerce_events ALTER COLUMN event_id SET NOT NULL;
ALTER TABLE ecommerce_events
    ADD COLUMN event_key uuid GENERATED ALWAYS AS (event_key_of(event_id)) STORED;
ALTER TABLE ecommerce_events DROP CONSTRAINT ecommerce_events_pkey;
ALTER TABLE ecommerce_events ADD CONSTRAINT ecommerce_events_pkey PRIMARY KEY (event_key);

-- The rebuild's cursor (`agg_state.counted_up_to`, text) is now an event_key's text: '' before
-- the first step. Canonical uuid text compares in "C" as the keys do.
-- One condition of the aggregate statement changes; the function is otherwise as 0015 left it,
-- so it is edited in place rather than copied whole.
DO $do$
DECLARE
    definition TEXT := pg_get_functiondef('agg_events_statement(text, boolean)'::regprocedure);
    before TEXT := 'source.event_id <= $1::text';
BEGIN
    IF position(before IN definition) = 0 THEN
        RAISE EXCEPTION 'agg_events_statement no longer holds %', before;
    END IF;
    EXECUTE replace(definition, before,
                    'source.event_key::text COLLATE "C" <= $1::text COLLATE "C"');
END $do$;

CREATE OR REPLACE FUNCTION agg_rebuild_step(max_rows INT) RETURNS BIGINT
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    low TEXT;
    high uuid;
    counted BIGINT;
BEGIN
    LOCK TABLE ecommerce_events IN SHARE MODE;
    SELECT counted_up_to INTO low FROM agg_state FOR UPDATE;
    IF low IS NULL THEN
        RETURN 0;
    END IF;
    -- Separate statements: a cast of '' to uuid would fail even in a branch not taken.
    IF low = '' THEN
        SELECT count(*), (array_agg(event_key ORDER BY event_key DESC))[1] INTO counted, high
        FROM (SELECT event_key FROM ecommerce_events ORDER BY event_key LIMIT max_rows) keys;
    ELSE
        SELECT count(*), (array_agg(event_key ORDER BY event_key DESC))[1] INTO counted, high
        FROM (SELECT event_key FROM ecommerce_events WHERE event_key > low::uuid
              ORDER BY event_key LIMIT max_rows) keys;
    END IF;
    IF high IS NULL THEN
        UPDATE agg_state SET counted_up_to = NULL, rebuild_finished_at = now();
        RETURN 0;
    END IF;
    EXECUTE agg_events_statement(
        format('(SELECT * FROM ecommerce_events WHERE event_key <= %L::uuid %s)', high,
               CASE WHEN low = '' THEN '' ELSE format('AND event_key > %L::uuid', low) END),
        false) USING NULL::text, agg_shard();
    UPDATE agg_state SET counted_up_to = high::text;
    RETURN counted;
END $fn$;
