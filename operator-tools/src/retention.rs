//! Retention: the horizon before which events are dropped, and the drop itself, in bounded steps
//! (`migrations/0017_retention.sql` holds the rules; this is how the `retention` command asks).
//! Consumers quarantine an event dated before the horizon as `expired` from the moment it is set.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::time::Duration;

/// Where retention stands.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Retention {
    /// Events dated before it are dropped, and refused when they arrive.
    pub horizon: DateTime<Utc>,
    pub set_at: DateTime<Utc>,
    /// None while events dated before the horizon remain to be dropped.
    pub completed_at: Option<DateTime<Utc>>,
}

impl Retention {
    /// None before any retention was set.
    pub async fn read(db: &mut PgConnection) -> Result<Option<Retention>, sqlx::Error> {
        sqlx::query_as("SELECT horizon, set_at, completed_at FROM retention")
            .fetch_optional(db)
            .await
    }
}

/// Where the horizon goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Horizon {
    /// This instant.
    At(DateTime<Utc>),
    /// This long before the database's clock.
    OlderThan(Duration),
}

impl Horizon {
    /// The instant, by the database's clock: one clock for every consumer and every run.
    pub async fn resolve(self, db: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
        match self {
            Horizon::At(at) => Ok(at),
            Horizon::OlderThan(age) => {
                sqlx::query_scalar("SELECT now() - $1::interval")
                    .bind(age)
                    .fetch_one(db)
                    .await
            }
        }
    }
}

/// Which ways a horizon may move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moves {
    /// Only later: an earlier instant leaves it where it is.
    ForwardOnly,
    /// Earlier too (events dated after it that arrive from now on are kept; dropped ones stay
    /// dropped).
    BackToo,
}

/// Sets the horizon, once every batch judged by the old one has committed; returns the old one.
pub async fn move_horizon(
    db: &mut PgConnection,
    horizon: DateTime<Utc>,
    moves: Moves,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT retention_move($1, $2)")
        .bind(horizon)
        .bind(moves == Moves::BackToo)
        .fetch_one(db)
        .await
}

/// Drops up to `max_rows` events dated before the horizon, in one transaction with their
/// ledger counts and aggregates; how many (0: none is left).
pub async fn drop_step(db: &mut PgConnection, max_rows: i32) -> Result<u64, sqlx::Error> {
    let dropped: i64 = sqlx::query_scalar("SELECT retention_drop_step($1)")
        .bind(max_rows)
        .fetch_one(db)
        .await?;
    Ok(dropped.max(0) as u64)
}

/// Whether a step lost to a concurrent writer (a deadlock on a user set both touch, or a
/// serialization failure): it rolled back whole, and is worth trying again.
pub fn lost_to_a_writer(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

/// Events dated before the horizon still in the table.
pub async fn remaining(db: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM ecommerce_events
         WHERE event_time < (SELECT horizon FROM retention)",
    )
    .fetch_one(db)
    .await
}
