-- The distinct-user sets stay exact under concurrent writers. A removal decides that a user
-- left a set by probing the events table, which cannot see another session's uncommitted rows:
-- an operator's delete beside an insert of the same user, stage and day, or two such deletes at
-- once, moved a user out of (or left them in) a set wrongly. Now writers of one member queue on
-- its row: an insert locks the members it finds; a removal first locks the members its rows
-- touch, in key order, and probes only then, in a statement of its own, whose snapshot sees
-- every writer it waited for. Inserts write nothing more than before (a lock, no row version).
-- Sets that drifted before are mended by `aggregates rebuild`.

CREATE OR REPLACE FUNCTION agg_events_statement(source TEXT, removing BOOLEAN) RETURNS TEXT
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    sign TEXT := CASE WHEN removing THEN '-1' ELSE '1' END;
    users TEXT;
BEGIN
    -- A user new to a stage over all time is new to it that day, and one who left a stage
    -- altogether left it that day: the all-time set is asked only about the day set's changes,
    -- which in steady state are few (most rows are of users the day has seen). An insert locks
    -- the members it finds (DO UPDATE ... WHERE false locks without writing a row version), so
    -- a removal that locked them first is waited for, and one that comes later waits for it.
    IF removing THEN
        -- A user leaves a set only when no stored event keeps them in it.
        users := $u$
        day_users AS (
            DELETE FROM agg_stage_users s
            USING (SELECT DISTINCT day, event_type, user_id FROM changed) g
            WHERE (s.day, s.event_type, s.user_id) = (g.day, g.event_type, g.user_id)
              AND NOT EXISTS (
                  SELECT 1 FROM ecommerce_events e
                  WHERE e.user_id = g.user_id AND e.event_type = g.event_type
                    AND e.event_time >= g.day::timestamp AT TIME ZONE 'UTC'
                    AND e.event_time < (g.day + 1)::timestamp AT TIME ZONE 'UTC')
            RETURNING s.day, s.event_type, s.user_id
        ), funnel_users AS (
            DELETE FROM agg_funnel_users f
            USING (SELECT DISTINCT event_type, user_id FROM day_users) g
            WHERE (f.event_type, f.user_id) = (g.event_type, g.user_id)
              AND NOT EXISTS (
                  SELECT 1 FROM ecommerce_events e
                  WHERE e.user_id = g.user_id AND e.event_type = g.event_type)
            RETURNING f.event_type
        ),$u$;
    ELSE
        users := $u$
        day_users AS (
            INSERT INTO agg_stage_users AS s (day, event_type, user_id)
            SELECT DISTINCT day, event_type, user_id FROM changed ORDER BY 1, 2, 3
            ON CONFLICT (day, event_type, user_id) DO UPDATE SET user_id = excluded.user_id WHERE false
            RETURNING day, event_type, user_id
        ), funnel_users AS (
            INSERT INTO agg_funnel_users AS f (event_type, user_id)
            SELECT DISTINCT event_type, user_id FROM day_users ORDER BY 1, 2
            ON CONFLICT (event_type, user_id) DO UPDATE SET user_id = excluded.user_id WHERE false
            RETURNING event_type
        ),$u$;
    END IF;
    RETURN format($s$
        WITH changed AS MATERIALIZED (
            SELECT user_id, event_type COLLATE "C" AS event_type, product_id, price, is_late,
                   date_trunc('minute', event_time, 'UTC') AS minute,
                   (event_time AT TIME ZONE 'UTC')::date AS day,
                   (ingested_at AT TIME ZONE 'UTC')::date AS ingested_day
            FROM %1$s AS source
            WHERE $1::text IS NULL OR source.event_id <= $1::text
        ), minutes AS (
            INSERT INTO agg_events_per_minute AS a (minute, event_type, shard, events, late, price_sum)
            SELECT minute, event_type, $2, %2$s * count(*), %2$s * count(*) FILTER (WHERE is_late),
                   %2$s * sum(price)
            FROM changed GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT (minute, event_type, shard) DO UPDATE
            SET events = a.events + excluded.events, late = a.late + excluded.late,
                price_sum = a.price_sum + excluded.price_sum
        ), totals AS (
            INSERT INTO agg_totals AS a (ingested_day, shard, events, late, revenue)
            SELECT ingested_day, $2, %2$s * count(*), %2$s * count(*) FILTER (WHERE is_late),
                   %2$s * coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0)
            FROM changed GROUP BY 1 ORDER BY 1
            ON CONFLICT (ingested_day, shard) DO UPDATE
            SET events = a.events + excluded.events, late = a.late + excluded.late,
                revenue = a.revenue + excluded.revenue
        ), products AS (
            INSERT INTO agg_products_per_day AS a (day, product_id, shard, purchases, revenue)
            SELECT day, product_id, $2, %2$s * count(*), %2$s * sum(price)
            FROM changed WHERE event_type = 'purchase' GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT (day, product_id, shard) DO UPDATE
            SET purchases = a.purchases + excluded.purchases, revenue = a.revenue + excluded.revenue
        ), %3$s
        day_counts AS (
            INSERT INTO agg_stage_users_per_day AS a (day, event_type, shard, users)
            SELECT day, event_type, $2, %2$s * count(*) FROM day_users GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT (day, event_type, shard) DO UPDATE SET users = a.users + excluded.users
        ), funnel_counts AS (
            INSERT INTO agg_funnel AS a (event_type, shard, users)
            SELECT event_type, $2, %2$s * count(*) FROM funnel_users GROUP BY 1 ORDER BY 1
            ON CONFLICT (event_type, shard) DO UPDATE SET users = a.users + excluded.users
        )
        SELECT 1 $s$, source, sign, users);
END $fn$;


-- Locks, in key order, the set members (per day and over all time) of the events in `source`.
CREATE FUNCTION agg_users_lock_statement(source TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($s$
    WITH members AS MATERIALIZED (
        SELECT DISTINCT (event_time AT TIME ZONE 'UTC')::date AS day,
               event_type COLLATE "C" AS event_type, user_id
        FROM %1$s AS source
    )
    SELECT count(*) FROM (
        SELECT 1 FROM agg_stage_users s JOIN members m USING (day, event_type, user_id)
        ORDER BY s.day, s.event_type, s.user_id FOR UPDATE OF s) day_members
    UNION ALL
    SELECT count(*) FROM (
        SELECT 1 FROM agg_funnel_users f
        JOIN (SELECT DISTINCT event_type, user_id FROM members) m USING (event_type, user_id)
        ORDER BY f.event_type, f.user_id FOR UPDATE OF f) funnel_members $s$, source)
$fn$;

CREATE OR REPLACE FUNCTION agg_events_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    upto TEXT;
BEGIN
    SELECT counted_up_to INTO upto FROM agg_state;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        -- Two statements: the probe's snapshot must be taken after the locks are held.
        EXECUTE agg_users_lock_statement('old_rows');
        EXECUTE agg_events_statement('old_rows', true) USING upto, agg_shard();
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        EXECUTE agg_events_statement('new_rows', false) USING upto, agg_shard();
    END IF;
    RETURN NULL;
END $fn$;

-- A start waits for a step under way (and a step for a start) on the state row before it
-- clears anything: two overlapping rebuilds once counted the same range twice.
CREATE OR REPLACE FUNCTION agg_rebuild_start() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    LOCK TABLE ecommerce_events, ecommerce_events_rejected IN SHARE MODE;
    PERFORM 1 FROM agg_state FOR UPDATE;
    PERFORM agg_clear_events();
    DELETE FROM agg_rejects;
    EXECUTE agg_rejects_statement('ecommerce_events_rejected', false) USING agg_shard();
    UPDATE agg_state
    SET counted_up_to = '', rebuild_started_at = now(), rebuild_finished_at = NULL;
END $fn$;
