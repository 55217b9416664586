//! The live dashboard: one page that polls `/api/summary` every two seconds and draws the ingest
//! rate, lag, rejected and late counts, revenue per minute and the funnel. Figures come from the
//! analytics views (`migrations/0004_analytics.sql`) and this consumer's metrics.

use crate::metrics::ConsumerMetrics;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use telemetry::{Handler, Response};

const PAGE: &str = include_str!("dashboard.html");

pub fn handler(metrics: ConsumerMetrics, pool: PgPool) -> Handler {
    Arc::new(move |path: String| {
        let (metrics, pool) = (metrics.clone(), pool.clone());
        Box::pin(async move {
            match path.as_str() {
                "/" => Response::ok("text/html; charset=utf-8", PAGE),
                "/metrics" => Response::ok(
                    telemetry::METRICS_CONTENT_TYPE,
                    telemetry::render(&metrics.registry),
                ),
                "/api/summary" => match summary(&pool, &metrics).await {
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

/// Everything the page shows, in one JSON document.
pub async fn summary(
    pool: &PgPool,
    metrics: &ConsumerMetrics,
) -> Result<serde_json::Value, sqlx::Error> {
    let (events, late_written): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE is_late) FROM ecommerce_events")
            .fetch_one(pool)
            .await?;
    let rejected: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason_code, sum(rows)::bigint FROM rejected_by_reason GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let per_minute: Vec<(String, i64)> = sqlx::query_as(
        "SELECT to_char(minute AT TIME ZONE 'UTC', 'HH24:MI'), sum(events)::bigint
         FROM events_per_minute WHERE minute > now() - interval '30 minutes'
         GROUP BY minute ORDER BY minute",
    )
    .fetch_all(pool)
    .await?;
    let revenue: Vec<(String, f64)> = sqlx::query_as(
        "SELECT to_char(minute AT TIME ZONE 'UTC', 'HH24:MI'), revenue::float8
         FROM revenue_per_minute WHERE minute > now() - interval '30 minutes' ORDER BY minute",
    )
    .fetch_all(pool)
    .await?;
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
    let late_quarantined = rejected
        .iter()
        .find(|(reason, _)| reason == "late")
        .map_or(0, |(_, rows)| *rows);
    Ok(json!({
        "events_total": events,
        "late_total": late_written + late_quarantined,
        "rejected_total": rejected.iter().map(|(_, rows)| rows).sum::<i64>(),
        "rejected_by_reason": rejected.iter().map(|(r, n)| json!({"reason": r, "rows": n})).collect::<Vec<_>>(),
        "events_per_minute": per_minute.iter().map(|(m, n)| json!({"minute": m, "value": n})).collect::<Vec<_>>(),
        "revenue_per_minute": revenue.iter().map(|(m, v)| json!({"minute": m, "value": v})).collect::<Vec<_>>(),
        "funnel": {
            "viewers": viewers,
            "carters": carters,
            "buyers": buyers,
            "view_to_cart_rate": view_to_cart,
            "cart_to_purchase_rate": cart_to_purchase,
        },
        // Known only where this process consumes (not with --dashboard-only).
        "lag_total": metrics.lag_total(),
        "inserted_by_this_consumer": metrics.rows_inserted(),
    }))
}
