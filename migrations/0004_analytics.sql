-- What the events say: per-minute activity and revenue, the funnel, top products, rejections.

CREATE OR REPLACE VIEW events_per_minute AS
SELECT date_trunc('minute', event_time) AS minute, event_type, count(*) AS events
FROM ecommerce_events
GROUP BY 1, 2;

CREATE OR REPLACE VIEW revenue_per_minute AS
SELECT date_trunc('minute', event_time) AS minute, sum(price) AS revenue, count(*) AS purchases
FROM ecommerce_events
WHERE event_type = 'purchase'
GROUP BY 1;

-- Distinct users reaching each stage, and the conversion between stages.
CREATE OR REPLACE VIEW ecommerce_funnel AS
WITH stages AS (
    SELECT count(DISTINCT user_id) FILTER (WHERE event_type = 'view') AS viewers,
           count(DISTINCT user_id) FILTER (WHERE event_type = 'add_to_cart') AS carters,
           count(DISTINCT user_id) FILTER (WHERE event_type = 'purchase') AS buyers
    FROM ecommerce_events
)
SELECT viewers, carters, buyers,
       round(carters::numeric / nullif(viewers, 0), 4) AS view_to_cart_rate,
       round(buyers::numeric / nullif(carters, 0), 4) AS cart_to_purchase_rate,
       round(buyers::numeric / nullif(viewers, 0), 4) AS view_to_purchase_rate
FROM stages;

CREATE OR REPLACE VIEW top_products_by_revenue AS
SELECT product_id, sum(price) AS revenue, count(*) AS purchases
FROM ecommerce_events
WHERE event_type = 'purchase'
GROUP BY product_id
ORDER BY revenue DESC;

CREATE OR REPLACE VIEW rejected_by_reason AS
SELECT reason_code, field, count(*) AS rows, max(rejected_at) AS last_rejected_at
FROM ecommerce_events_rejected
GROUP BY reason_code, field;
