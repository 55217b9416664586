//! `ingest_checkpoints`: where a group's reading of each partition stands in PostgreSQL.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// A partition's checkpoint: everything below `next_offset` is accounted for in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GroupCheckpoint {
    pub kafka_partition: i32,
    pub next_offset: i64,
    /// When a batch last moved it; `None` for a checkpoint written before the column existed.
    pub updated_at: Option<DateTime<Utc>>,
}

/// The checkpoints of `group` on `topic`, by partition.
pub async fn of_group(
    executor: impl PgExecutor<'_>,
    group: &str,
    topic: &str,
) -> Result<Vec<GroupCheckpoint>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kafka_partition, next_offset, updated_at FROM ingest_checkpoints
         WHERE consumer_group = $1 AND topic = $2 ORDER BY kafka_partition",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(executor)
    .await
}
