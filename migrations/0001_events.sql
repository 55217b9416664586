-- The events table: the seed's schema with a primary key and a time zone, plus ingestion metadata.
CREATE TABLE IF NOT EXISTS ecommerce_events (
    event_id    VARCHAR(64)    PRIMARY KEY,
    user_id     INT            NOT NULL,
    event_type  VARCHAR(32)    NOT NULL,
    product_id  INT            NOT NULL,
    price       NUMERIC(10, 2) NOT NULL,
    event_time  TIMESTAMPTZ    NOT NULL,
    -- Older than its partition's watermark when it arrived (written under --late-policy accept).
    is_late     BOOLEAN        NOT NULL DEFAULT false,
    source_file TEXT           NOT NULL,
    source_line BIGINT         NOT NULL,
    -- When the file landed in the input folder (its modification time): freshness = ingested_at - landed_at.
    landed_at   TIMESTAMPTZ    NOT NULL,
    ingested_at TIMESTAMPTZ    NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS ecommerce_events_event_time_idx ON ecommerce_events (event_time);
CREATE INDEX IF NOT EXISTS ecommerce_events_user_id_idx ON ecommerce_events (user_id);
