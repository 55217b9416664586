//! `ingest_log_events`: what a consumer found about a partition's log that an operator must
//! know, recorded once and shown by `status`.

use serde::Serialize;
use sqlx::PgExecutor;

/// What was found, as `ingest_log_events.kind` and the `kind` label of
/// `pipeline_consumer_log_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogEventKind {
    /// The log is not the one the checkpoint was taken on; read again from its start.
    Restarted,
    /// Messages were removed before this group read them.
    Gap,
    /// The partition is read again from PostgreSQL's checkpoint, behind where reading stood
    /// (Kafka's committed offset ahead of it, or the database moved back).
    Rewound,
}

impl LogEventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            LogEventKind::Restarted => "restarted",
            LogEventKind::Gap => "gap",
            LogEventKind::Rewound => "rewound",
        }
    }
}

impl TryFrom<String> for LogEventKind {
    type Error = String;

    fn try_from(kind: String) -> Result<Self, Self::Error> {
        [
            LogEventKind::Restarted,
            LogEventKind::Gap,
            LogEventKind::Rewound,
        ]
        .into_iter()
        .find(|known| known.as_str() == kind)
        .ok_or_else(|| format!("unknown log event kind `{kind}`"))
    }
}

/// One finding about a partition's log: what, between which offsets, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LogEvent {
    #[serde(rename = "partition")]
    pub kafka_partition: i32,
    #[sqlx(try_from = "String")]
    pub kind: LogEventKind,
    pub from_offset: i64,
    pub to_offset: i64,
    pub detail: String,
}

/// Records `event` for `group` on `topic`, once: the same finding again is not a second row.
pub async fn record(
    executor: impl PgExecutor<'_>,
    group: &str,
    topic: &str,
    event: &LogEvent,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ingest_log_events
             (consumer_group, topic, kafka_partition, kind, from_offset, to_offset, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(group)
    .bind(topic)
    .bind(event.kafka_partition)
    .bind(event.kind.as_str())
    .bind(event.from_offset)
    .bind(event.to_offset)
    .bind(&event.detail)
    .execute(executor)
    .await
    .map(drop)
}

/// The `limit` latest findings for `group` on `topic`, newest first.
pub async fn latest(
    executor: impl PgExecutor<'_>,
    group: &str,
    topic: &str,
    limit: i64,
) -> Result<Vec<LogEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kafka_partition, kind, from_offset, to_offset, detail FROM ingest_log_events
         WHERE consumer_group = $1 AND topic = $2 ORDER BY detected_at DESC LIMIT $3",
    )
    .bind(group)
    .bind(topic)
    .bind(limit)
    .fetch_all(executor)
    .await
}

#[cfg(test)]
mod tests {
    use super::LogEventKind;

    #[test]
    fn a_kind_reads_back_as_it_was_stored_and_an_unknown_one_is_named() {
        for kind in [
            LogEventKind::Restarted,
            LogEventKind::Gap,
            LogEventKind::Rewound,
        ] {
            assert_eq!(LogEventKind::try_from(kind.as_str().to_owned()), Ok(kind));
        }
        let unknown = LogEventKind::try_from("moved".to_owned()).unwrap_err();
        assert!(unknown.contains("`moved`"), "{unknown}");
    }
}
