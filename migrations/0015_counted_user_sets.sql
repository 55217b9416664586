-- The user sets behind the distinct-user counts hold how many counted events keep each member
-- in, instead of being probed against the events table. A probe cannot see another session's
-- uncommitted rows: an operator's delete beside an insert of the same user, stage and day, or two
-- such deletes at once, moved a user out of (or left them in) a set wrongly. Counters moved by
-- upserts take the row's lock, so concurrent writers of one member queue on it and each sees the
-- other's count: a member enters when its count leaves zero and leaves when it returns to zero.

ALTER TABLE agg_stage_users ADD COLUMN events BIGINT NOT NULL DEFAULT 0;
-- Days on which the user has a counted event of the stage.
ALTER TABLE agg_funnel_users ADD COLUMN days BIGINT NOT NULL DEFAULT 0;

-- Counted again from the events (also mending any drift the probes left).
DELETE FROM agg_stage_users;
DELETE FROM agg_stage_users_per_day;
DELETE FROM agg_funnel_users;
DELETE FROM agg_funnel;

INSERT INTO agg_stage_users (day, event_type, user_id, events)
SELECT (event_time AT TIME ZONE 'UTC')::date, event_type COLLATE "C", user_id, count(*)
FROM ecommerce_events
WHERE (SELECT counted_up_to FROM agg_state) IS NULL
   OR event_id <= (SELECT counted_up_to FROM agg_state)
GROUP BY 1, 2, 3;

INSERT INTO agg_stage_users_per_day (day, event_type, shard, users)
SELECT day, event_type, 0, count(*) FROM agg_stage_users GROUP BY 1, 2;

INSERT INTO agg_funnel_users (event_type, user_id, days)
SELECT event_type, user_id, count(*) FROM agg_stage_users GROUP BY 1, 2;

INSERT INTO agg_funnel (event_type, shard, users)
SELECT event_type, 0, count(*) FROM agg_funnel_users GROUP BY 1;

CREATE OR REPLACE FUNCTION agg_events_statement(source TEXT, removing BOOLEAN) RETURNS TEXT
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    sign TEXT := CASE WHEN removing THEN '-1' ELSE '1' END;
    users TEXT;
BEGIN
    -- A user new to a stage over all time is new to it that day, and one who left a stage
    -- altogether left it that day: the all-time set is asked only about the day set's changes,
    -- which in steady state are few (most rows are of users the day has seen). Members whose
    -- count falls to zero are deleted by `agg_users_emptied_statement` afterwards.
    IF removing THEN
        users := $u$
        day_locked AS MATERIALIZED (
            SELECT s.day, s.event_type, s.user_id FROM agg_stage_users s
            JOIN per_user g USING (day, event_type, user_id)
            ORDER BY 1, 2, 3 FOR UPDATE OF s
        ), day_rows AS (
            UPDATE agg_stage_users s SET events = s.events - g.events
            FROM day_locked l JOIN per_user g USING (day, event_type, user_id)
            WHERE (s.day, s.event_type, s.user_id) = (l.day, l.event_type, l.user_id)
            RETURNING s.day, s.event_type, s.user_id, s.events
        ), day_users AS (
            SELECT day, event_type, user_id FROM day_rows WHERE events = 0
        ), per_funnel_user AS (
            SELECT event_type, user_id, count(*) AS days FROM day_users GROUP BY 1, 2
        ), funnel_locked AS MATERIALIZED (
            SELECT f.event_type, f.user_id FROM agg_funnel_users f
            JOIN per_funnel_user g USING (event_type, user_id)
            ORDER BY 1, 2 FOR UPDATE OF f
        ), funnel_rows AS (
            UPDATE agg_funnel_users f SET days = f.days - g.days
            FROM funnel_locked l JOIN per_funnel_user g USING (event_type, user_id)
            WHERE (f.event_type, f.user_id) = (l.event_type, l.user_id)
            RETURNING f.event_type, f.days
        ), funnel_users AS (
            SELECT event_type FROM funnel_rows WHERE days = 0
        ),$u$;
    ELSE
        users := $u$
        day_rows AS (
            INSERT INTO agg_stage_users AS s (day, event_type, user_id, events)
            SELECT day, event_type, user_id, events FROM per_user ORDER BY 1, 2, 3
            ON CONFLICT (day, event_type, user_id) DO UPDATE SET events = s.events + excluded.events
            RETURNING s.day, s.event_type, s.user_id, s.events
        ), day_users AS (
            -- Entered: the count is this statement's alone.
            SELECT r.day, r.event_type, r.user_id FROM day_rows r
            JOIN per_user g USING (day, event_type, user_id) WHERE r.events = g.events
        ), per_funnel_user AS (
            SELECT event_type, user_id, count(*) AS days FROM day_users GROUP BY 1, 2
        ), funnel_rows AS (
            INSERT INTO agg_funnel_users AS f (event_type, user_id, days)
            SELECT event_type, user_id, days FROM per_funnel_user ORDER BY 1, 2
            ON CONFLICT (event_type, user_id) DO UPDATE SET days = f.days + excluded.days
            RETURNING f.event_type, f.user_id, f.days
        ), funnel_users AS (
            SELECT r.event_type FROM funnel_rows r
            JOIN per_funnel_user g USING (event_type, user_id) WHERE r.days = g.days
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
        ), per_user AS (
            SELECT day, event_type, user_id, count(*) AS events FROM changed GROUP BY 1, 2, 3
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

-- Members a removal brought to zero leave the sets. A separate statement: one statement may
-- not change a row twice. The row locks are this transaction's already, so an insert of the
-- same member waits, then finds the row gone and enters it afresh.
CREATE FUNCTION agg_users_emptied_statement(source TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($s$
    WITH day_gone AS (
        DELETE FROM agg_stage_users s
        USING (SELECT DISTINCT (event_time AT TIME ZONE 'UTC')::date AS day,
                      event_type COLLATE "C" AS event_type, user_id FROM %1$s) g
        WHERE (s.day, s.event_type, s.user_id) = (g.day, g.event_type, g.user_id)
          AND s.events = 0
    )
    DELETE FROM agg_funnel_users f
    USING (SELECT DISTINCT event_type COLLATE "C" AS event_type, user_id FROM %1$s) g
    WHERE (f.event_type, f.user_id) = (g.event_type, g.user_id) AND f.days = 0 $s$, source)
$fn$;

CREATE OR REPLACE FUNCTION agg_events_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    upto TEXT;
BEGIN
    SELECT counted_up_to INTO upto FROM agg_state;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        EXECUTE agg_events_statement('old_rows', true) USING upto, agg_shard();
        EXECUTE agg_users_emptied_statement('old_rows');
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
