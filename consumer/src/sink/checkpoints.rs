//! Checkpoints: where each partition stands, moved only from where this consumer believes it is
//! (the fence against a consumer that lost the partition), and what was found about its log.

use crate::batch::Checkpoint;
use crate::log_check::LogEventKind;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::collections::HashMap;

/// A partition's checkpoint as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredCheckpoint {
    pub next_offset: i64,
    pub max_event_time: Option<DateTime<Utc>>,
    /// Hash of the last message it covers; `None` if written before checkpoints kept it.
    pub last_message: Option<String>,
}

#[derive(sqlx::FromRow)]
struct PartitionCheckpoint {
    kafka_partition: i32,
    #[sqlx(flatten)]
    stored: StoredCheckpoint,
}

/// The stored checkpoints of `partitions`.
pub async fn load(
    connection: &mut PgConnection,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, StoredCheckpoint>, sqlx::Error> {
    let rows: Vec<PartitionCheckpoint> = sqlx::query_as(
        "SELECT kafka_partition, next_offset, max_event_time, last_message
         FROM ingest_checkpoints
         WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = ANY($3)",
    )
    .bind(group)
    .bind(topic)
    .bind(partitions)
    .fetch_all(connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.kafka_partition, row.stored))
        .collect())
}

/// Moves a partition's checkpoint back from `expected` to `start` (its log restarted), fenced
/// like any update; false when another consumer moved it meanwhile.
pub async fn move_back(
    connection: &mut PgConnection,
    group: &str,
    topic: &str,
    partition: i32,
    expected: i64,
    start: i64,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query(
        "UPDATE ingest_checkpoints SET next_offset = $4, last_message = NULL, updated_at = now()
         WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3 AND next_offset = $5",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .bind(start)
    .bind(expected)
    .execute(connection)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

/// One finding about a partition's log: what, between which offsets, in words.
pub struct LogEvent<'a> {
    pub partition: i32,
    pub kind: LogEventKind,
    pub offsets: (i64, i64),
    pub detail: &'a str,
}

pub async fn record_log_event(
    connection: &mut PgConnection,
    group: &str,
    topic: &str,
    event: &LogEvent<'_>,
) -> Result<(), sqlx::Error> {
    let (from, to) = event.offsets;
    sqlx::query(
        "INSERT INTO ingest_log_events
             (consumer_group, topic, kafka_partition, kind, from_offset, to_offset, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(group)
    .bind(topic)
    .bind(event.partition)
    .bind(event.kind.as_str())
    .bind(from)
    .bind(to)
    .bind(event.detail)
    .execute(connection)
    .await
    .map(drop)
}

/// Moves a checkpoint forward only from where this consumer believes it is; false when another
/// consumer moved it meanwhile (the partition was reassigned), which must abort the transaction.
pub async fn advance_checkpoint(
    tx: &mut PgConnection,
    group: &str,
    topic: &str,
    checkpoint: &Checkpoint,
) -> Result<bool, sqlx::Error> {
    let query = match checkpoint.expected {
        None => sqlx::query(
            "INSERT INTO ingest_checkpoints
                 (consumer_group, topic, kafka_partition, next_offset, max_event_time, last_message)
             VALUES ($1, $2, $3, $4, $5, $7) ON CONFLICT DO NOTHING",
        ),
        Some(_) => sqlx::query(
            "UPDATE ingest_checkpoints
             SET next_offset = $4, max_event_time = $5, last_message = $7, updated_at = now()
             WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3
               AND next_offset = $6",
        ),
    };
    let result = query
        .bind(group)
        .bind(topic)
        .bind(checkpoint.partition)
        .bind(checkpoint.next_offset)
        .bind(checkpoint.max_event_time)
        .bind(checkpoint.expected)
        .bind(&checkpoint.last_message)
        .execute(tx)
        .await?;
    Ok(result.rows_affected() == 1)
}
