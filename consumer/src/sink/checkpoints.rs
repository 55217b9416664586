//! Checkpoints: where each partition stands, moved only from where this consumer believes it is
//! (the fence against a consumer that lost the partition), and what was found about its log.

use super::{Sink, SinkError};
use crate::batch::Checkpoint;
use chrono::{DateTime, Utc};
use pipeline_store::log_events::{self, LogEvent, LogEventKind};
use sqlx::{Connection, PgConnection};
use std::collections::HashMap;

/// Why a partition is read again from PostgreSQL's checkpoint, behind where reading stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewind {
    /// Found on assignment: Kafka's committed offset is ahead of the checkpoint. A database
    /// restored from an older backup looks exactly like this.
    CommittedAhead { committed: i64, checkpoint: i64 },
    /// Found while running: the checkpoint is behind what this consumer had read and written
    /// (the database moved back under it: a failover to a replica that missed commits, a restore).
    MovedBack { read_from: i64, checkpoint: i64 },
}

impl Rewind {
    /// Where reading stood, and where it starts again.
    fn offsets(self) -> (i64, i64) {
        match self {
            Rewind::CommittedAhead {
                committed,
                checkpoint,
            } => (committed, checkpoint),
            Rewind::MovedBack {
                read_from,
                checkpoint,
            } => (read_from, checkpoint),
        }
    }

    fn detail(self) -> String {
        match self {
            Rewind::CommittedAhead { committed, checkpoint } => format!(
                "Kafka's committed offset {committed} is ahead of PostgreSQL's checkpoint {checkpoint} (a database restored from an older backup, or checkpoints removed): read again from {checkpoint}"
            ),
            Rewind::MovedBack { read_from, checkpoint } => format!(
                "the consumer was reading from offset {read_from} but PostgreSQL's checkpoint says {checkpoint} (the database moved back: a failover to a replica that missed commits, or a restore): read again from {checkpoint}"
            ),
        }
    }
}

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
        let (stream, connection) = self.open().await?;
        Ok(load(connection, &stream.group, &stream.topic, partitions).await?)
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
        let (stream, connection) = self.open().await?;
        let (group, topic) = (&stream.group, &stream.topic);
        let mut tx = connection.begin().await?;
        if !move_back(&mut tx, group, topic, partition, expected, start).await? {
            return Err(SinkError::Fenced { partition });
        }
        let event = LogEvent {
            kafka_partition: partition,
            kind: LogEventKind::Restarted,
            from_offset: expected,
            to_offset: start,
            detail: reason.to_owned(),
        };
        log_events::record(&mut *tx, group, topic, &event).await?;
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
        self.record_log_event(LogEvent {
            kafka_partition: partition,
            kind: LogEventKind::Gap,
            from_offset: from,
            to_offset: to,
            detail,
        })
        .await
    }

    /// Records that the partition is read again from PostgreSQL's checkpoint, and why: every
    /// rewind is recorded.
    pub async fn record_rewind(&mut self, partition: i32, rewind: Rewind) -> Result<(), SinkError> {
        let (from_offset, to_offset) = rewind.offsets();
        self.record_log_event(LogEvent {
            kafka_partition: partition,
            kind: LogEventKind::Rewound,
            from_offset,
            to_offset,
            detail: rewind.detail(),
        })
        .await
    }

    /// One finding about a partition's log, on its own (outside any batch's transaction).
    async fn record_log_event(&mut self, event: LogEvent) -> Result<(), SinkError> {
        let (stream, connection) = self.open().await?;
        log_events::record(connection, &stream.group, &stream.topic, &event).await?;
        Ok(())
    }
}
