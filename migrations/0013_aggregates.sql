-- Live aggregates: moved in the same transaction as the rows they count, by statement-level
-- triggers over the rows each statement really changed (rows an insert skipped with ON CONFLICT
-- DO NOTHING are not among them). Exactly once by construction, whoever writes (the consumer on
-- either path, an operator, a restore), so always equal to a full scan; `aggregates check`
-- proves it. The dashboard, `status` and the analytics views read them: a read costs the same at
-- any table size.
--
-- Counters are split by writer (`shard`, from the backend's pid), so consumers committing at
-- once do not queue on one hot row; readers sum the shards. Days and minutes are UTC. Text keys
-- compare bytewise (COLLATE "C"): the sets are probed for every distinct user of every batch. The
-- functions run as the owner (SECURITY DEFINER): a writer role needs no grant on these tables.

-- NULL: every stored event is counted. Otherwise `aggregates rebuild` is under way: events with
-- an id up to `counted_up_to` are counted, the rest wait for the rebuild to reach them.
CREATE TABLE agg_state (
    only_row            BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    counted_up_to       TEXT,
    rebuild_started_at  TIMESTAMPTZ,
    rebuild_finished_at TIMESTAMPTZ
);
-- Events stored before this migration are counted by a rebuild.
INSERT INTO agg_state (counted_up_to)
SELECT CASE WHEN EXISTS (SELECT 1 FROM ecommerce_events) THEN '' END;

-- Events and the sum of their prices per minute of event time (late events in the minute they
-- are dated, whenever they arrive) and event type.
CREATE TABLE agg_events_per_minute (
    minute     TIMESTAMPTZ NOT NULL,
    event_type VARCHAR(32) COLLATE "C" NOT NULL,
    shard      SMALLINT    NOT NULL,
    events     BIGINT      NOT NULL,
    late       BIGINT      NOT NULL,
    price_sum  NUMERIC     NOT NULL,
    PRIMARY KEY (minute, event_type, shard)
);

-- Running totals per day of ingestion (UTC): `status` counts the rows written today.
CREATE TABLE agg_totals (
    ingested_day DATE     NOT NULL,
    shard        SMALLINT NOT NULL,
    events       BIGINT   NOT NULL,
    late         BIGINT   NOT NULL,
    revenue      NUMERIC  NOT NULL,
    PRIMARY KEY (ingested_day, shard)
);

-- Exact distinct users per stage (event type) per day: the set, and its size per day.
CREATE TABLE agg_stage_users (
    day        DATE        NOT NULL,
    event_type VARCHAR(32) COLLATE "C" NOT NULL,
    user_id    INT         NOT NULL,
    PRIMARY KEY (day, event_type, user_id)
);

CREATE TABLE agg_stage_users_per_day (
    day        DATE        NOT NULL,
    event_type VARCHAR(32) COLLATE "C" NOT NULL,
    shard      SMALLINT    NOT NULL,
    users      BIGINT      NOT NULL,
    PRIMARY KEY (day, event_type, shard)
);

-- The same over all time, for the funnel.
CREATE TABLE agg_funnel_users (
    event_type VARCHAR(32) COLLATE "C" NOT NULL,
    user_id    INT         NOT NULL,
    PRIMARY KEY (event_type, user_id)
);

CREATE TABLE agg_funnel (
    event_type VARCHAR(32) COLLATE "C" NOT NULL,
    shard      SMALLINT    NOT NULL,
    users      BIGINT      NOT NULL,
    PRIMARY KEY (event_type, shard)
);

CREATE TABLE agg_products_per_day (
    day        DATE     NOT NULL,
    product_id INT      NOT NULL,
    shard      SMALLINT NOT NULL,
    purchases  BIGINT   NOT NULL,
    revenue    NUMERIC  NOT NULL,
    PRIMARY KEY (day, product_id, shard)
);

-- The quarantine per reason and field; `resolved` counts the rows a later fix resolved.
CREATE TABLE agg_rejects (
    reason_code      TEXT COLLATE "C" NOT NULL,
    field            TEXT COLLATE "C" NOT NULL,
    shard            SMALLINT    NOT NULL,
    rows             BIGINT      NOT NULL,
    resolved         BIGINT      NOT NULL,
    last_rejected_at TIMESTAMPTZ,
    PRIMARY KEY (reason_code, field, shard)
);

CREATE FUNCTION agg_shard() RETURNS SMALLINT LANGUAGE sql STABLE AS
$$ SELECT (pg_backend_pid() % 16)::smallint $$;

-- The one statement that moves the event aggregates by the rows of `source` (a transition table,
-- or a subquery for the rebuild), added or removed. Parameters: $1 counted_up_to, $2 the shard.
-- Every upsert takes its rows in key order, so writers that share a shard cannot deadlock.
CREATE FUNCTION agg_events_statement(source TEXT, removing BOOLEAN) RETURNS TEXT
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    sign TEXT := CASE WHEN removing THEN '-1' ELSE '1' END;
    users TEXT;
BEGIN
    -- A user new to a stage over all time is new to it that day, and one who left a stage
    -- altogether left it that day: the all-time set is asked only about the day set's changes,
    -- which in steady state are few (most rows are of users the day has seen).
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
            INSERT INTO agg_stage_users (day, event_type, user_id)
            SELECT DISTINCT day, event_type, user_id FROM changed ORDER BY 1, 2, 3
            ON CONFLICT DO NOTHING
            RETURNING day, event_type, user_id
        ), funnel_users AS (
            INSERT INTO agg_funnel_users (event_type, user_id)
            SELECT DISTINCT event_type, user_id FROM day_users ORDER BY 1, 2
            ON CONFLICT DO NOTHING
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

CREATE FUNCTION agg_rejects_statement(source TEXT, removing BOOLEAN) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($s$
    INSERT INTO agg_rejects AS a (reason_code, field, shard, rows, resolved, last_rejected_at)
    SELECT reason_code, coalesce(field, ''), $1, %2$s * count(*),
           %2$s * count(*) FILTER (WHERE resolved_at IS NOT NULL),
           CASE WHEN %2$s > 0 THEN max(rejected_at) END
    FROM %1$s AS source GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (reason_code, field, shard) DO UPDATE
    SET rows = a.rows + excluded.rows, resolved = a.resolved + excluded.resolved,
        last_rejected_at = greatest(a.last_rejected_at, excluded.last_rejected_at) $s$,
    source, CASE WHEN removing THEN '-1' ELSE '1' END)
$fn$;

CREATE FUNCTION agg_events_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    upto TEXT;
BEGIN
    SELECT counted_up_to INTO upto FROM agg_state;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        EXECUTE agg_events_statement('old_rows', true) USING upto, agg_shard();
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        EXECUTE agg_events_statement('new_rows', false) USING upto, agg_shard();
    END IF;
    RETURN NULL;
END $fn$;

CREATE FUNCTION agg_rejects_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        EXECUTE agg_rejects_statement('old_rows', true) USING agg_shard();
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        EXECUTE agg_rejects_statement('new_rows', false) USING agg_shard();
    END IF;
    RETURN NULL;
END $fn$;

CREATE FUNCTION agg_clear_events() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    DELETE FROM agg_events_per_minute;
    DELETE FROM agg_totals;
    DELETE FROM agg_stage_users;
    DELETE FROM agg_stage_users_per_day;
    DELETE FROM agg_funnel_users;
    DELETE FROM agg_funnel;
    DELETE FROM agg_products_per_day;
END $fn$;

-- An emptied table leaves nothing to count, and nothing to rebuild.
CREATE FUNCTION agg_events_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    PERFORM agg_clear_events();
    UPDATE agg_state SET counted_up_to = NULL;
    RETURN NULL;
END $fn$;

CREATE FUNCTION agg_rejects_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    DELETE FROM agg_rejects;
    RETURN NULL;
END $fn$;

CREATE TRIGGER agg_events_inserted AFTER INSERT ON ecommerce_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION agg_events_changed();
CREATE TRIGGER agg_events_deleted AFTER DELETE ON ecommerce_events
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION agg_events_changed();
CREATE TRIGGER agg_events_updated AFTER UPDATE ON ecommerce_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION agg_events_changed();
CREATE TRIGGER agg_events_emptied AFTER TRUNCATE ON ecommerce_events
    FOR EACH STATEMENT EXECUTE FUNCTION agg_events_truncated();

CREATE TRIGGER agg_rejects_inserted AFTER INSERT ON ecommerce_events_rejected
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION agg_rejects_changed();
CREATE TRIGGER agg_rejects_deleted AFTER DELETE ON ecommerce_events_rejected
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION agg_rejects_changed();
CREATE TRIGGER agg_rejects_updated AFTER UPDATE ON ecommerce_events_rejected
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION agg_rejects_changed();
CREATE TRIGGER agg_rejects_emptied AFTER TRUNCATE ON ecommerce_events_rejected
    FOR EACH STATEMENT EXECUTE FUNCTION agg_rejects_truncated();

-- The rejects already stored are counted now: the quarantine is small beside the events.
DO $do$ BEGIN
    EXECUTE agg_rejects_statement('ecommerce_events_rejected', false) USING agg_shard();
END $do$;

-- Rebuild, in steps an operator command calls in turn (`aggregates rebuild`). Each step holds
-- writers back (SHARE lock) only while it counts its bounded range; readers never wait.
CREATE FUNCTION agg_rebuild_start() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    LOCK TABLE ecommerce_events, ecommerce_events_rejected IN SHARE MODE;
    PERFORM agg_clear_events();
    DELETE FROM agg_rejects;
    EXECUTE agg_rejects_statement('ecommerce_events_rejected', false) USING agg_shard();
    UPDATE agg_state
    SET counted_up_to = '', rebuild_started_at = now(), rebuild_finished_at = NULL;
END $fn$;

-- Counts the next `max_rows` events in id order; returns how many (0: the rebuild is complete).
CREATE FUNCTION agg_rebuild_step(max_rows INT) RETURNS BIGINT
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    low TEXT;
    high TEXT;
    counted BIGINT;
BEGIN
    LOCK TABLE ecommerce_events IN SHARE MODE;
    SELECT counted_up_to INTO low FROM agg_state FOR UPDATE;
    IF low IS NULL THEN
        RETURN 0;
    END IF;
    SELECT max(event_id), count(*) INTO high, counted
    FROM (SELECT event_id FROM ecommerce_events WHERE event_id > low
          ORDER BY event_id LIMIT max_rows) ids;
    IF high IS NULL THEN
        UPDATE agg_state SET counted_up_to = NULL, rebuild_finished_at = now();
        RETURN 0;
    END IF;
    EXECUTE agg_events_statement(
        format('(SELECT * FROM ecommerce_events WHERE event_id > %L AND event_id <= %L)', low, high),
        false) USING NULL::text, agg_shard();
    UPDATE agg_state SET counted_up_to = high;
    RETURN counted;
END $fn$;

-- The analytics views, now over the aggregates.
-- Columns keep the collation the views had before.
CREATE OR REPLACE VIEW events_per_minute AS
SELECT minute, event_type COLLATE "default" AS event_type, sum(events)::bigint AS events
FROM agg_events_per_minute
GROUP BY 1, 2
HAVING sum(events) <> 0;

CREATE OR REPLACE VIEW revenue_per_minute AS
SELECT minute, sum(price_sum) AS revenue, sum(events)::bigint AS purchases
FROM agg_events_per_minute
WHERE event_type = 'purchase'
GROUP BY 1
HAVING sum(events) <> 0;

CREATE OR REPLACE VIEW ecommerce_funnel AS
WITH stages AS (
    SELECT coalesce(sum(users) FILTER (WHERE event_type = 'view'), 0)::bigint AS viewers,
           coalesce(sum(users) FILTER (WHERE event_type = 'add_to_cart'), 0)::bigint AS carters,
           coalesce(sum(users) FILTER (WHERE event_type = 'purchase'), 0)::bigint AS buyers
    FROM agg_funnel
)
SELECT viewers, carters, buyers,
       round(carters::numeric / nullif(viewers, 0), 4) AS view_to_cart_rate,
       round(buyers::numeric / nullif(carters, 0), 4) AS cart_to_purchase_rate,
       round(buyers::numeric / nullif(viewers, 0), 4) AS view_to_purchase_rate
FROM stages;

CREATE OR REPLACE VIEW funnel_per_day AS
WITH stages AS (
    SELECT day,
           coalesce(sum(users) FILTER (WHERE event_type = 'view'), 0)::bigint AS viewers,
           coalesce(sum(users) FILTER (WHERE event_type = 'add_to_cart'), 0)::bigint AS carters,
           coalesce(sum(users) FILTER (WHERE event_type = 'purchase'), 0)::bigint AS buyers
    FROM agg_stage_users_per_day
    GROUP BY day
)
SELECT day, viewers, carters, buyers,
       round(carters::numeric / nullif(viewers, 0), 4) AS view_to_cart_rate,
       round(buyers::numeric / nullif(carters, 0), 4) AS cart_to_purchase_rate
FROM stages;

CREATE OR REPLACE VIEW top_products_by_revenue AS
SELECT product_id, sum(revenue) AS revenue, sum(purchases)::bigint AS purchases
FROM agg_products_per_day
GROUP BY product_id
HAVING sum(purchases) <> 0
ORDER BY revenue DESC;

CREATE OR REPLACE VIEW rejected_by_reason AS
SELECT reason_code COLLATE "default" AS reason_code, nullif(field, '') COLLATE "default" AS field,
       sum(rows)::bigint AS rows,
       max(last_rejected_at) AS last_rejected_at
FROM agg_rejects
GROUP BY reason_code, field
HAVING sum(rows) <> 0;

-- The dashboard lists the most recent files.
CREATE INDEX IF NOT EXISTS ingest_files_first_seen_idx ON ingest_files (first_seen_at);
