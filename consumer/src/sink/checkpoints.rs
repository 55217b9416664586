//! Checkpoints: where each partition stands, moved only from where this consumer believes it is
//! (the fence against a consumer that lost the partition), and what was found about its log.

use crate::batch::Checkpoint;
use crate::log_check::LogEventKind;
use sqlx::PgConnection;

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
