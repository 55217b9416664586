//! Checkpoints: where each partition stands, moved only from where this consumer believes it is
//! (the fence against a consumer that lost the partition), and what was found about its log.

use super::{Sink, SinkError};
use crate::batch::Checkpoint;
use crate::log_check::LogEventKind;
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
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

/// The sink's checkpoint reads and its records of what happened to a partition's log, each in a
/// transaction of its own (outside any batch's).
impl Sink {
    /// The stored checkpoints of `partitions`.
    pub async fn load_checkpoints(
        &mut self,
        partitions: &[i32],
    ) -> Result<HashMap<i32, StoredCheckpoint>, SinkError> {
        let (group, topic) = (self.group.clone(), self.topic.clone());
        let connection = self.connection().await?;
        Ok(load(connection, &group, &topic, partitions).await?)
    }

    /// Moves a partition's checkpoint back to `start` because its log restarted, and records
    /// why, in one transaction; fenced like any checkpoint update.
    pub async fn restart_checkpoint(
        &mut self,
        partition: i32,
        expected: i64,
        start: i64,
        reason: &str,
    ) -> Result<(), SinkError> {
        let (group, topic) = (self.group.clone(), self.topic.clone());
        let connection = self.connection().await?;
        let mut tx = connection.begin().await?;
        if !move_back(&mut tx, &group, &topic, partition, expected, start).await? {
            return Err(SinkError::Fenced { partition });
        }
        let event = LogEvent {
            partition,
            kind: LogEventKind::Restarted,
            offsets: (expected, start),
            detail: reason,
        };
        record_log_event(&mut tx, &group, &topic, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that `from..to` of a partition were removed before this group read them.
    pub async fn record_gap(
        &mut self,
        partition: i32,
        from: i64,
        to: i64,
    ) -> Result<(), SinkError> {
        let detail = format!(
            "offsets {from}..{to} were removed from the log (retention) before this group read them"
        );
        self.record_log_event(partition, LogEventKind::Gap, (from, to), &detail)
            .await
    }

    /// Records that Kafka's committed offset `committed` was ahead of where PostgreSQL says the
    /// partition stands (`start`), so reading starts again at `start`. A database restored from
    /// an older backup looks exactly like this; every rewind is recorded.
    pub async fn record_rewind(
        &mut self,
        partition: i32,
        committed: i64,
        start: i64,
    ) -> Result<(), SinkError> {
        let detail = format!(
            "Kafka's committed offset {committed} is ahead of PostgreSQL's checkpoint {start} (a database restored from an older backup, or checkpoints removed): read again from {start}"
        );
        self.record_log_event(
            partition,
            LogEventKind::Rewound,
            (committed, start),
            &detail,
        )
        .await
    }

    /// Records that PostgreSQL's checkpoint was found behind what this consumer had read and
    /// written (the database moved back under it: a failover to a replica that missed commits,
    /// a restore), so the partition is read again from the checkpoint.
    pub async fn record_moved_back(
        &mut self,
        partition: i32,
        read_from: i64,
        checkpoint: i64,
    ) -> Result<(), SinkError> {
        let detail = format!(
            "the consumer was reading from offset {read_from} but PostgreSQL's checkpoint says {checkpoint} (the database moved back: a failover to a replica that missed commits, or a restore): read again from {checkpoint}"
        );
        self.record_log_event(
            partition,
            LogEventKind::Rewound,
            (read_from, checkpoint),
            &detail,
        )
        .await
    }

    /// One finding about a partition's log, on its own (outside any batch's transaction).
    async fn record_log_event(
        &mut self,
        partition: i32,
        kind: LogEventKind,
        offsets: (i64, i64),
        detail: &str,
    ) -> Result<(), SinkError> {
        let (group, topic) = (self.group.clone(), self.topic.clone());
        let connection = self.connection().await?;
        let event = LogEvent {
            partition,
            kind,
            offsets,
            detail,
        };
        record_log_event(connection, &group, &topic, &event).await?;
        Ok(())
    }
}
