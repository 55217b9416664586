//! The live dashboard: one page that polls `/api/summary` every two seconds and draws the ingest
//! rate, lag, rejected and late counts, revenue per minute and the funnel. Figures come from the
//! live aggregates (`migrations/0013_aggregates.sql`) and this consumer's metrics.

use serde_json::json;
use sqlx::PgPool;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telemetry::{Handler, Response};

const PAGE: &str = include_str!("dashboard.html");

/// What the consumer serving the page knows beyond the database: its own figures.
pub trait LiveFigures: Send + Sync + 'static {
    /// Total lag over its partitions; `None` where it does not consume.
    fn lag_total(&self) -> Option<i64>;
    fn rows_inserted(&self) -> u64;
    /// Its metrics as OpenMetrics text.
    fn metrics_text(&self) -> String;
}

/// How far back the ingest rate looks: a minute spans several files at any rate, so the rate reads
/// steady (20 rows/s at the generator's default) instead of jumping between 0 and a burst.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Samples of the events count, to measure the ingest rate over [`RATE_WINDOW`].
#[derive(Default)]
pub struct RateWindow(Mutex<VecDeque<(Instant, i64)>>);

impl RateWindow {
    /// Adds a sample taken `at`; the rate in rows/s since the oldest sample in the window, once
    /// there are two samples a second or more apart.
    pub fn observe(&self, at: Instant, events: i64) -> Option<f64> {
        let mut samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        samples.push_back((at, events));
        while samples
            .front()
            .is_some_and(|(first, _)| at.duration_since(*first) > RATE_WINDOW)
        {
            samples.pop_front();
        }
        let (first, first_events) = *samples.front()?;
        let elapsed = at.duration_since(first).as_secs_f64();
        (elapsed >= 1.0).then(|| (events - first_events).max(0) as f64 / elapsed)
    }
}

pub fn handler(metrics: Arc<dyn LiveFigures>, pool: PgPool) -> Handler {
    let window = Arc::new(RateWindow::default());
    Arc::new(move |path: String| {
        let (metrics, pool, window) = (metrics.clone(), pool.clone(), window.clone());
        Box::pin(async move {
            match path.as_str() {
                "/" => Response::ok("text/html; charset=utf-8", PAGE),
                "/metrics" => Response::ok(telemetry::METRICS_CONTENT_TYPE, metrics.metrics_text()),
                "/api/summary" => match summary(&pool, &metrics, &window).await {
                    Ok(body) => Response::ok("application/json", body.to_string()),
                    Err(error) => {
                        tracing::warn!(%error, "dashboard query failed");
                        Response {
                            status: 503,
                            content_type: "application/json",
                            body: json!({ "error": error.to_string() })
                                .to_string()
                                .into_bytes(),
                        }
                    }
                },
                _ => Response::not_found(),
            }
        })
    })
}

/// A file of the ledger as the page lists it.
#[derive(sqlx::FromRow, serde::Serialize)]
struct RecentFile {
    file_name: String,
    rows_read: Option<i64>,
    rows_inserted: i64,
    rows_duplicate: i64,
    /// Of the duplicates, those with other values than the stored event.
    rows_conflicting: i64,
    rows_rejected: i64,
    state: String,
    backfilled: bool,
}

/// Everything the page shows, in one JSON document. Every figure but the recent files comes
/// from the live aggregates, so a poll costs the same at any table size.
pub async fn summary(
    pool: &PgPool,
    metrics: &Arc<dyn LiveFigures>,
    window: &RateWindow,
) -> Result<serde_json::Value, sqlx::Error> {
    let (events, late_written): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(events), 0)::bigint, coalesce(sum(late), 0)::bigint FROM agg_totals",
    )
    .fetch_one(pool)
    .await?;
    let rejected: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT reason_code, sum(rows)::bigint, sum(resolved)::bigint
         FROM agg_rejects GROUP BY 1 HAVING sum(rows) <> 0 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let late_quarantined = rejected
        .iter()
        .find(|(reason, ..)| reason == event_model::RejectCode::Late.as_str())
        .map_or(0, |(_, rows, _)| *rows);
    let coverage = crate::aggregates::Coverage::read(pool).await?;
    Ok(json!({
        "events_total": events,
        "ingest_rate": window.observe(Instant::now(), events),
        "late_total": late_written + late_quarantined,
        "rejected_total": rejected.iter().map(|(_, rows, _)| rows).sum::<i64>(),
        "rejected_by_reason": rejected.iter().map(|(r, n, resolved)| json!({"reason": r, "rows": n, "resolved": resolved})).collect::<Vec<_>>(),
        "recent_files": recent_files(pool).await?,
        "events_per_minute": last_half_hour::<i64>(pool, PER_MINUTE_EVENTS).await?,
        "revenue_per_minute": last_half_hour::<f64>(pool, PER_MINUTE_REVENUE).await?,
        "funnel": funnel(pool).await?,
        // Figures are partial while `aggregates rebuild` counts events stored before them.
        "aggregates_rebuilding": coverage != crate::aggregates::Coverage::Complete,
        // Known only where this process consumes (not with --dashboard-only).
        "lag_total": metrics.lag_total(),
        "inserted_by_this_consumer": metrics.rows_inserted(),
    }))
}

async fn recent_files(pool: &PgPool) -> Result<Vec<RecentFile>, sqlx::Error> {
    sqlx::query_as(
        "SELECT file_name, rows_read, rows_inserted, rows_duplicate, rows_conflicting, rows_rejected,
                CASE WHEN reconciled_at IS NOT NULL THEN 'reconciled'
                     WHEN first_seen_at < now() - interval '15 minutes' THEN 'overdue'
                     ELSE 'in progress' END AS state,
                backfilled_at IS NOT NULL AS backfilled
         FROM ingest_files ORDER BY first_seen_at DESC LIMIT 10",
    )
    .fetch_all(pool)
    .await
}

const PER_MINUTE_EVENTS: &str =
    "SELECT to_char(minute AT TIME ZONE 'UTC', 'HH24:MI'), sum(events)::bigint
     FROM agg_events_per_minute WHERE minute > now() - interval '30 minutes'
     GROUP BY minute HAVING sum(events) <> 0 ORDER BY minute";

const PER_MINUTE_REVENUE: &str =
    "SELECT to_char(minute AT TIME ZONE 'UTC', 'HH24:MI'), sum(price_sum)::float8
     FROM agg_events_per_minute
     WHERE minute > now() - interval '30 minutes' AND event_type = 'purchase'
     GROUP BY minute HAVING sum(events) <> 0 ORDER BY minute";

/// A per-minute series of the last 30 minutes, as the page draws it.
async fn last_half_hour<T>(pool: &PgPool, sql: &str) -> Result<Vec<serde_json::Value>, sqlx::Error>
where
    T: serde::Serialize + Send + Unpin,
    (String, T): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let points: Vec<(String, T)> = sqlx::query_as(sql).fetch_all(pool).await?;
    Ok(points
        .into_iter()
        .map(|(minute, value)| json!({"minute": minute, "value": value}))
        .collect())
}

async fn funnel(pool: &PgPool) -> Result<serde_json::Value, sqlx::Error> {
    let (viewers, carters, buyers, view_to_cart, cart_to_purchase): (
        i64,
        i64,
        i64,
        Option<f64>,
        Option<f64>,
    ) = sqlx::query_as(
        "SELECT viewers, carters, buyers, view_to_cart_rate::float8, cart_to_purchase_rate::float8
         FROM ecommerce_funnel",
    )
    .fetch_one(pool)
    .await?;
    Ok(json!({
        "viewers": viewers,
        "carters": carters,
        "buyers": buyers,
        "view_to_cart_rate": view_to_cart,
        "cart_to_purchase_rate": cart_to_purchase,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_steady_over_the_window_when_files_arrive_in_bursts() {
        let window = RateWindow::default();
        let start = Instant::now();
        // 100 rows every 5 s, sampled every 2 s for three minutes.
        let mut last = None;
        for tick in 0..90u64 {
            let at = start + Duration::from_secs(tick * 2);
            let events = ((tick * 2) / 5 * 100) as i64;
            last = window.observe(at, events);
            if tick >= 30 {
                let rate = last.unwrap();
                assert!((16.0..=22.0).contains(&rate), "tick {tick}: {rate}");
            }
        }
        assert!(last.is_some());
    }
}
