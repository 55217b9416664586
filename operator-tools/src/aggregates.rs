//! The live aggregates (`migrations/0013_aggregates.sql`): the proof that they equal a full scan,
//! and the rebuild that fills them for events stored before they existed.

use serde::Serialize;
use sqlx::{Connection, PgConnection};

/// Whether every stored event is counted, or a rebuild is under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Coverage {
    Complete,
    /// Events with an id up to `counted_up_to` are counted; `aggregates rebuild` counts the rest.
    Rebuilding {
        counted_up_to: String,
    },
}

impl Coverage {
    pub async fn read<'e>(db: impl sqlx::PgExecutor<'e>) -> Result<Coverage, sqlx::Error> {
        let (counted_up_to,): (Option<String>,) =
            sqlx::query_as("SELECT counted_up_to FROM agg_state")
                .fetch_one(db)
                .await?;
        Ok(match counted_up_to {
            None => Coverage::Complete,
            Some(counted_up_to) => Coverage::Rebuilding { counted_up_to },
        })
    }

    /// The bound the events counted so far stay under, as the checks' `$1` takes it.
    fn bound(&self) -> Option<&str> {
        match self {
            Coverage::Complete => None,
            Coverage::Rebuilding { counted_up_to } => Some(counted_up_to),
        }
    }
}

/// One aggregate row that is not what a full scan says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub aggregate: &'static str,
    pub key: String,
    /// What a scan of the stored rows says; `none` where it has no such row.
    pub scanned: String,
    /// What the aggregate holds; `none` where it has no such row.
    pub kept: String,
}

/// An aggregate and the scan it must equal, each as (key, value) text rows. Kept rows summing
/// to zero are left out: removals leave them behind.
struct Comparison {
    aggregate: &'static str,
    scanned: &'static str,
    kept: &'static str,
}

const COMPARISONS: [Comparison; 6] = [
    Comparison {
        aggregate: "events per minute and type",
        scanned: "SELECT date_trunc('minute', event_time, 'UTC')::text || ' ' || event_type,
                         format('events=%s late=%s price_sum=%s', count(*),
                                count(*) FILTER (WHERE is_late), sum(price))
                  FROM counted GROUP BY date_trunc('minute', event_time, 'UTC'), event_type",
        kept: "SELECT minute::text || ' ' || event_type,
                      format('events=%s late=%s price_sum=%s', sum(events), sum(late),
                             round(sum(price_sum), 2))
               FROM agg_events_per_minute GROUP BY minute, event_type
               HAVING sum(events) <> 0 OR sum(late) <> 0 OR sum(price_sum) <> 0",
    },
    Comparison {
        aggregate: "totals per day of ingestion",
        scanned: "SELECT (ingested_at AT TIME ZONE 'UTC')::date::text,
                         format('events=%s late=%s revenue=%s', count(*),
                                count(*) FILTER (WHERE is_late),
                                coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0.00))
                  FROM counted GROUP BY (ingested_at AT TIME ZONE 'UTC')::date",
        kept: "SELECT ingested_day::text,
                      format('events=%s late=%s revenue=%s', sum(events), sum(late),
                             round(sum(revenue), 2))
               FROM agg_totals GROUP BY ingested_day
               HAVING sum(events) <> 0 OR sum(late) <> 0 OR sum(revenue) <> 0",
    },
    Comparison {
        aggregate: "distinct users per stage per day",
        scanned: "SELECT (event_time AT TIME ZONE 'UTC')::date::text || ' ' || event_type,
                         format('users=%s', count(DISTINCT user_id))
                  FROM counted GROUP BY (event_time AT TIME ZONE 'UTC')::date, event_type",
        kept: "SELECT day::text || ' ' || event_type, format('users=%s', sum(users))
               FROM agg_stage_users_per_day GROUP BY day, event_type HAVING sum(users) <> 0",
    },
    Comparison {
        aggregate: "distinct users per stage",
        scanned: "SELECT event_type, format('users=%s', count(DISTINCT user_id))
                  FROM counted GROUP BY event_type",
        kept: "SELECT event_type, format('users=%s', sum(users))
               FROM agg_funnel GROUP BY event_type HAVING sum(users) <> 0",
    },
    Comparison {
        aggregate: "purchases per product per day",
        scanned: "SELECT (event_time AT TIME ZONE 'UTC')::date::text || ' ' || product_id,
                         format('purchases=%s revenue=%s', count(*), sum(price))
                  FROM counted WHERE event_type = 'purchase'
                  GROUP BY (event_time AT TIME ZONE 'UTC')::date, product_id",
        kept: "SELECT day::text || ' ' || product_id,
                      format('purchases=%s revenue=%s', sum(purchases), round(sum(revenue), 2))
               FROM agg_products_per_day GROUP BY day, product_id
               HAVING sum(purchases) <> 0 OR sum(revenue) <> 0",
    },
    Comparison {
        aggregate: "quarantined rows per reason and field",
        scanned: "SELECT reason_code || ' ' || coalesce(field, ''),
                         format('rows=%s resolved=%s', count(*),
                                count(*) FILTER (WHERE resolved_at IS NOT NULL))
                  FROM ecommerce_events_rejected GROUP BY reason_code, coalesce(field, '')",
        kept: "SELECT reason_code || ' ' || field, format('rows=%s resolved=%s', sum(rows), sum(resolved))
               FROM agg_rejects GROUP BY reason_code, field
               HAVING sum(rows) <> 0 OR sum(resolved) <> 0",
    },
];

/// At most this many differences are listed per aggregate.
const LISTED: i64 = 20;

/// Recomputes every aggregate from the stored rows and lists where they differ, in one snapshot
/// (writers commit rows and aggregates together, so a snapshot sees both or neither). During a
/// rebuild, the scan covers the events counted so far. Reads the whole table: an audit, not a
/// view to poll.
pub async fn check(db: &mut PgConnection) -> Result<(Coverage, Vec<Difference>), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let coverage = Coverage::read(&mut *tx).await?;
    let mut differences = Vec::new();
    for comparison in &COMPARISONS {
        let sql = format!(
            "WITH counted AS (SELECT * FROM ecommerce_events
                              WHERE $1::text IS NULL OR event_id <= $1::text),
                  scanned(key, value) AS ({}), kept(key, value) AS ({})
             SELECT coalesce(s.key COLLATE \"C\", k.key COLLATE \"C\"),
                    coalesce(s.value, 'none'), coalesce(k.value, 'none')
             FROM scanned s FULL JOIN kept k ON s.key COLLATE \"C\" = k.key COLLATE \"C\"
             WHERE s.value IS DISTINCT FROM k.value
             ORDER BY 1 LIMIT $2",
            comparison.scanned, comparison.kept
        );
        let rows: Vec<(String, String, String)> = sqlx::query_as(&sql)
            .bind(coverage.bound())
            .bind(LISTED)
            .fetch_all(&mut *tx)
            .await?;
        differences.extend(rows.into_iter().map(|(key, scanned, kept)| Difference {
            aggregate: comparison.aggregate,
            key,
            scanned,
            kept,
        }));
    }
    tx.commit().await?;
    Ok((coverage, differences))
}

/// Empties the aggregates and starts counting again from the first event id; the quarantine's
/// counts are recomputed at once. Writers wait only while this runs.
pub async fn start_rebuild(db: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT agg_rebuild_start()")
        .execute(db)
        .await?;
    Ok(())
}

/// Counts the next `max_rows` events (in id order, one transaction); 0 when the rebuild is done.
pub async fn rebuild_step(db: &mut PgConnection, max_rows: i32) -> Result<u64, sqlx::Error> {
    let (counted,): (i64,) = sqlx::query_as("SELECT agg_rebuild_step($1)")
        .bind(max_rows)
        .fetch_one(db)
        .await?;
    Ok(counted.max(0) as u64)
}
