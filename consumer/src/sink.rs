//! The Postgres writer: one transaction per batch holding the events, the quarantined rows and the
//! partitions' checkpoints, so the checkpoint can never disagree with the data.
//!
//! Events go by `COPY` straight into `ecommerce_events` inside a savepoint: the fastest way in,
//! and right whenever none of them is there yet, which is the steady state (duplicates are mostly
//! caught in memory, replays by the checkpoint). Should one be there already (a duplicate beyond
//! the dedup window, a new group replaying the topic), the COPY fails, is rolled back to the
//! savepoint, and the batch goes through a temporary staging table and
//! `INSERT ... SELECT ... ON CONFLICT (event_id) DO NOTHING` instead; the sink stays on that path
//! until a batch meets no conflict, so a long replay does not pay for two writes per batch.

use crate::batch::{Checkpoint, EventRow, RejectRow, WriteBatch};
use crate::storable;
use chrono::{DateTime, Utc};
use event_model::RejectCode;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("failed to apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("checkpoint of partition {partition} moved under us: another consumer wrote it")]
    Fenced { partition: i32 },
}

impl SinkError {
    /// What the error says about the batch: only `Data` faults are the rows' own.
    pub fn fault(&self) -> Fault {
        match self {
            SinkError::Database(error) => fault_of(error),
            SinkError::Migrate(_) | SinkError::Fenced { .. } => Fault::Other,
        }
    }
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

const CREATE_STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS ingest_staging (
    event_id TEXT, user_id INT, event_type TEXT, product_id INT, price NUMERIC(10, 2),
    event_time TIMESTAMPTZ, is_late BOOLEAN, source_file TEXT, source_line BIGINT,
    landed_at TIMESTAMPTZ
) ON COMMIT DELETE ROWS";

/// A late event quarantined earlier keeps its id: a later copy is a duplicate, not a new event.
const INSERT_EVENTS: &str = "INSERT INTO ecommerce_events
    (event_id, user_id, event_type, product_id, price, event_time, is_late, source_file,
     source_line, landed_at)
SELECT s.event_id, s.user_id, s.event_type, s.product_id, s.price, s.event_time, s.is_late,
       s.source_file, s.source_line, s.landed_at
FROM ingest_staging s
WHERE NOT EXISTS (
    SELECT 1 FROM ecommerce_events_rejected r
    WHERE r.reason_code = 'late' AND r.event_id = s.event_id
)
ON CONFLICT (event_id) DO NOTHING";

const EVENT_COLUMNS: &str = "event_id, user_id, event_type, product_id, price, event_time, \
    is_late, source_file, source_line, landed_at";

/// The ids among a batch's events that were quarantined as late: they stay out of the events.
const LATE_QUARANTINED: &str = "SELECT event_id::text FROM ecommerce_events_rejected
    WHERE reason_code = 'late' AND event_id = ANY($1::text[])";

/// Whether any event was ever quarantined as late: one index probe, where the query above costs
/// a quarter of a 10,000-row `COPY`. Never true under the default `--late-policy accept`.
const ANY_LATE_QUARANTINED: &str =
    "SELECT EXISTS (SELECT 1 FROM ecommerce_events_rejected WHERE reason_code = 'late')";

const INSERT_REJECTS: &str = "INSERT INTO ecommerce_events_rejected
    (source_file, source_file_id, source_line, reason_code, field, reason, event_id, raw,
     kafka_topic, kafka_partition, kafka_offset, kafka_key)
SELECT u.f, u.fid, u.l, u.c, u.fld, u.r, u.e, u.raw, $9, u.p, u.o, u.k
FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::bytea[], $10::int4[], $11::int8[], $13::bytea[])
     AS u(f, fid, l, c, fld, r, e, raw, p, o, k)
WHERE NOT $12 OR NOT EXISTS (SELECT 1 FROM ecommerce_events ev WHERE ev.event_id = u.e)
ON CONFLICT DO NOTHING
RETURNING reason_code";

/// How a batch's events went in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WritePath {
    /// `COPY` straight into the table: none of them was there yet.
    #[default]
    Copy,
    /// Through the staging table and `ON CONFLICT DO NOTHING`: some may have been there.
    Staging,
    /// One by one, because the database refused a row.
    RowByRow,
}

impl WritePath {
    pub fn as_str(self) -> &'static str {
        match self {
            WritePath::Copy => "copy",
            WritePath::Staging => "staging",
            WritePath::RowByRow => "row_by_row",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct WriteOutcome {
    pub path: WritePath,
    pub inserted: u64,
    pub rejected: u64,
    pub late_quarantined: u64,
    /// Rows that went into the rejected table, by reason code.
    pub rejected_by_reason: BTreeMap<String, u64>,
}

/// A partition's checkpoint as stored.
#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub next_offset: i64,
    pub max_event_time: Option<DateTime<Utc>>,
    /// Hash of the last message it covers; `None` if written before checkpoints kept it.
    pub last_message: Option<String>,
}

impl WriteOutcome {
    /// Counts quarantined rows the database took, by the codes the insert returned.
    fn count_rejects(&mut self, codes: Vec<String>, late: bool) {
        if late {
            self.late_quarantined += codes.len() as u64;
        } else {
            self.rejected += codes.len() as u64;
        }
        for code in codes {
            *self.rejected_by_reason.entry(code).or_default() += 1;
        }
    }
}

pub struct Sink {
    url: String,
    /// `application_name` for connections whose URL sets none.
    application_name: Option<String>,
    group: String,
    topic: String,
    connection: Option<PgConnection>,
    /// Try the direct `COPY` first; false after a batch met rows already written.
    copy_direct: bool,
}

impl Sink {
    pub fn new(url: &str, group: &str, topic: &str) -> Sink {
        Sink {
            url: url.to_owned(),
            application_name: None,
            group: group.to_owned(),
            topic: topic.to_owned(),
            connection: None,
            copy_direct: true,
        }
    }

    /// Names the connections (PostgreSQL's `application_name`), unless the URL names them.
    pub fn named(mut self, application_name: &str) -> Sink {
        self.application_name = Some(application_name.to_owned());
        self
    }

    /// Applies `migrations/` (idempotent; concurrent consumers serialise on an advisory lock).
    pub async fn migrate(&mut self) -> Result<(), SinkError> {
        let connection = self.connection().await?;
        MIGRATOR.run(connection).await?;
        Ok(())
    }

    async fn connection(&mut self) -> Result<&mut PgConnection, SinkError> {
        if self.connection.is_none() {
            let mut options: PgConnectOptions = self.url.parse()?;
            if let (None, Some(name)) = (options.get_application_name(), &self.application_name) {
                options = options.application_name(name);
            }
            let mut connection = PgConnection::connect_with(&options).await?;
            sqlx::query(CREATE_STAGING).execute(&mut connection).await?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("connection was just set"))
    }

    /// Forgets the connection after an error; the next call reconnects.
    pub fn reset(&mut self) {
        self.connection = None;
    }

    /// The stored checkpoints of `partitions`.
    pub async fn load_checkpoints(
        &mut self,
        partitions: &[i32],
    ) -> Result<HashMap<i32, StoredCheckpoint>, SinkError> {
        let (group, topic) = (self.group.clone(), self.topic.clone());
        let rows = sqlx::query(
            "SELECT kafka_partition, next_offset, max_event_time, last_message
             FROM ingest_checkpoints
             WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = ANY($3)",
        )
        .bind(group)
        .bind(topic)
        .bind(partitions)
        .fetch_all(self.connection().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let stored = StoredCheckpoint {
                    next_offset: row.try_get(1)?,
                    max_event_time: row.try_get(2)?,
                    last_message: row.try_get(3)?,
                };
                Ok((row.try_get(0)?, stored))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(SinkError::from)
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
        let moved = sqlx::query(
            "UPDATE ingest_checkpoints SET next_offset = $4, last_message = NULL, updated_at = now()
             WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3 AND next_offset = $5",
        )
        .bind(&group)
        .bind(&topic)
        .bind(partition)
        .bind(start)
        .bind(expected)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            return Err(SinkError::Fenced { partition });
        }
        record_log_event(
            &mut tx,
            &group,
            &topic,
            partition,
            "restarted",
            (expected, start),
            reason,
        )
        .await?;
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
        let (group, topic) = (self.group.clone(), self.topic.clone());
        let detail = format!(
            "offsets {from}..{to} were removed from the log (retention) before this group read them"
        );
        let connection = self.connection().await?;
        record_log_event(
            connection,
            &group,
            &topic,
            partition,
            "gap",
            (from, to),
            &detail,
        )
        .await?;
        Ok(())
    }

    /// Writes the batch in one transaction; nothing of it is visible unless all of it is.
    /// Should the database refuse a row's data (a value it will not store, a constraint an operator
    /// added), the batch is written again row by row and only the refused rows are quarantined:
    /// poison is data, never an outage.
    pub async fn write(&mut self, batch: &WriteBatch) -> Result<WriteOutcome, SinkError> {
        match self.write_bulk(batch).await {
            Err(SinkError::Database(error)) if fault_of(&error) == Fault::Data => {
                tracing::warn!(%error, "the database refused a row; finding it row by row");
                self.write_row_by_row(batch).await
            }
            other => other,
        }
    }

    async fn write_bulk(&mut self, batch: &WriteBatch) -> Result<WriteOutcome, SinkError> {
        let (group, topic) = (self.group.clone(), self.topic.clone());
        let try_direct = self.copy_direct;
        let connection = self.connection().await?;
        let mut tx = connection.begin().await?;
        let mut next_direct = try_direct;
        let direct = if try_direct && !batch.events.is_empty() {
            copy_direct(&mut tx, &batch.events).await?
        } else {
            None
        };
        let (inserted, path) = match direct {
            Some(count) => (count, WritePath::Copy),
            None if batch.events.is_empty() => (0, WritePath::Copy),
            None => {
                let copy = encode_events(&batch.events, &HashSet::new());
                copy_in(
                    &mut tx,
                    "COPY ingest_staging FROM STDIN (FORMAT binary)",
                    &copy,
                )
                .await?;
                let count = sqlx::query(INSERT_EVENTS)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                // Back to the fast path once a batch had nothing already written.
                next_direct = count == batch.events.len() as u64;
                (count, WritePath::Staging)
            }
        };
        let mut outcome = WriteOutcome {
            path,
            inserted,
            ..WriteOutcome::default()
        };
        outcome.count_rejects(
            insert_rejects(&mut tx, &topic, &batch.rejects, false).await?,
            false,
        );
        outcome.count_rejects(
            insert_rejects(&mut tx, &topic, &batch.late_rejects, true).await?,
            true,
        );
        let outcome = finish_transaction(tx, &group, &topic, &batch.checkpoints, outcome).await?;
        if try_direct && !next_direct {
            tracing::debug!("rows already written: staging batches until one meets none");
        }
        self.copy_direct = next_direct;
        Ok(outcome)
    }

    async fn write_row_by_row(&mut self, batch: &WriteBatch) -> Result<WriteOutcome, SinkError> {
        let (group, topic) = (self.group.clone(), self.topic.clone());
        let connection = self.connection().await?;
        let mut tx = connection.begin().await?;
        let (mut inserted, mut refused) = (0, Vec::new());
        for row in &batch.events {
            savepoint(&mut tx).await?;
            let result = insert_one(&mut tx, row).await;
            match settle_savepoint(&mut tx, result).await? {
                Ok(count) => inserted += count,
                Err(error) => {
                    tracing::warn!(event_id = %row.event.event_id, file = %row.file, line = row.line, %error, "row quarantined: the database refused it");
                    refused.push(RejectRow {
                        file: row.file.clone(),
                        file_id: row.file_id.clone(),
                        line: row.line,
                        code: RejectCode::Database,
                        field: None,
                        reason: format!("the database refused the row: {error}"),
                        event_id: Some(row.event.event_id.clone()),
                        raw: row.canonical_csv(),
                        kafka_key: None,
                        partition: row.partition,
                        offset: row.offset,
                    });
                }
            }
        }
        let mut rejected = Vec::new();
        for (rows, only_if_not_an_event) in [
            (&batch.rejects[..], false),
            (&refused[..], false),
            (&batch.late_rejects[..], true),
        ] {
            for row in rows {
                let codes =
                    insert_reject_or_its_stand_in(&mut tx, &topic, row, only_if_not_an_event)
                        .await?;
                rejected.push((codes, only_if_not_an_event));
            }
        }
        let mut outcome = WriteOutcome {
            path: WritePath::RowByRow,
            inserted,
            ..WriteOutcome::default()
        };
        for (codes, late) in rejected {
            outcome.count_rejects(codes, late);
        }
        finish_transaction(tx, &group, &topic, &batch.checkpoints, outcome).await
    }
}

/// Opens the savepoint that [`settle_savepoint`] closes.
async fn savepoint(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SAVEPOINT one_row").execute(tx).await.map(drop)
}

/// Closes the savepoint around a step that ended with `result`. A refusal of the data rolls the
/// savepoint back and is returned as `Ok(Err(..))`, the transaction still usable; any other error
/// ends the transaction.
async fn settle_savepoint<T>(
    tx: &mut PgConnection,
    result: Result<T, sqlx::Error>,
) -> Result<Result<T, sqlx::Error>, sqlx::Error> {
    match result {
        Ok(value) => {
            sqlx::query("RELEASE SAVEPOINT one_row").execute(tx).await?;
            Ok(Ok(value))
        }
        Err(error) if fault_of(&error) == Fault::Data => {
            sqlx::query("ROLLBACK TO SAVEPOINT one_row")
                .execute(tx)
                .await?;
            Ok(Err(error))
        }
        Err(error) => Err(error),
    }
}

/// Quarantines one row; should the database refuse even that (a constraint an operator put on
/// the rejected table, say), a stand-in naming the message by its Kafka identity, with the raw
/// bytes and the refusal, is recorded instead. Only if that is refused too does the batch fail.
async fn insert_reject_or_its_stand_in(
    tx: &mut PgConnection,
    topic: &str,
    row: &RejectRow,
    only_if_not_an_event: bool,
) -> Result<Vec<String>, sqlx::Error> {
    let rows = std::slice::from_ref(row);
    savepoint(tx).await?;
    let result = insert_rejects(tx, topic, rows, only_if_not_an_event).await;
    let error = match settle_savepoint(tx, result).await? {
        Ok(codes) => return Ok(codes),
        Err(error) => error,
    };
    tracing::error!(file = %row.file, line = row.line, partition = row.partition, offset = row.offset, %error, "the database refused a quarantine row; recording a stand-in");
    let stand_in = RejectRow {
        file: format!("kafka:{topic}"),
        file_id: format!("partition-{}:unstorable", row.partition),
        line: row.offset,
        code: RejectCode::Database,
        field: None,
        // Nothing the row carried goes into the text again: it may be what was refused.
        reason: format!(
            "the database refused this row's quarantine record ({error}); it was rejected as `{}`; its bytes are in raw",
            row.code.as_str()
        ),
        event_id: None,
        raw: row.raw.clone(),
        kafka_key: row.kafka_key.clone(),
        partition: row.partition,
        offset: row.offset,
    };
    insert_rejects(tx, topic, std::slice::from_ref(&stand_in), false).await
}

/// `COPY` of the events straight into `ecommerce_events`, in a savepoint. `None` when the database
/// refused it (a row already there, or a row it will not take): the savepoint is rolled back and
/// the caller takes the staging path, which sorts out which rows are which.
async fn copy_direct(tx: &mut PgConnection, events: &[EventRow]) -> Result<Option<u64>, SinkError> {
    let mut late: HashSet<String> = HashSet::new();
    let any_late: bool = sqlx::query_scalar(ANY_LATE_QUARANTINED)
        .fetch_one(&mut *tx)
        .await?;
    if any_late {
        let ids: Vec<&str> = events.iter().map(|r| r.event.event_id.as_str()).collect();
        late = sqlx::query_scalar(LATE_QUARANTINED)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    }
    let copy = encode_events(events, &late);
    sqlx::query("SAVEPOINT copy_direct")
        .execute(&mut *tx)
        .await?;
    let statement = format!("COPY ecommerce_events ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)");
    match copy_in(&mut *tx, &statement, &copy).await {
        Ok(count) => {
            sqlx::query("RELEASE SAVEPOINT copy_direct")
                .execute(&mut *tx)
                .await?;
            Ok(Some(count))
        }
        Err(error) if fault_of(&error) == Fault::Data => {
            sqlx::query("ROLLBACK TO SAVEPOINT copy_direct")
                .execute(&mut *tx)
                .await?;
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// Sends `data` through `statement` (a `COPY ... FROM STDIN`); the number of rows it took.
async fn copy_in(tx: &mut PgConnection, statement: &str, data: &[u8]) -> Result<u64, sqlx::Error> {
    let mut copy = tx.copy_in_raw(statement).await?;
    copy.send(data).await?;
    copy.finish().await
}

/// What a database error says about the batch that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The data was refused (SQLSTATE classes 22 data exception, 23 integrity constraint, 54
    /// program limit such as an oversized index entry): retrying cannot help, the row that caused
    /// it is quarantined.
    Data,
    /// The connection or the server failed (classes 08, 53, 57, 58, serialization failures and
    /// deadlocks, and any error below SQL such as I/O or TLS): retried with backoff.
    Connection,
    /// Anything else (a missing privilege, a broken schema): retried with backoff and reported,
    /// since an operator must act.
    Other,
}

pub fn fault_of(error: &sqlx::Error) -> Fault {
    let Some(database) = error.as_database_error() else {
        return match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Fault::Connection,
            _ => Fault::Other,
        };
    };
    let code = database.code().unwrap_or_default();
    match code.get(..2).unwrap_or_default() {
        "22" | "23" | "54" => Fault::Data,
        "08" | "53" | "57" | "58" => Fault::Connection,
        "40" if code == "40001" || code == "40P01" => Fault::Connection,
        _ => Fault::Other,
    }
}

async fn insert_one(tx: &mut PgConnection, row: &EventRow) -> Result<u64, sqlx::Error> {
    let event = &row.event;
    let landed = DateTime::from_timestamp_millis(row.landed_ms).unwrap_or_default();
    let result = sqlx::query(
        "INSERT INTO ecommerce_events
             (event_id, user_id, event_type, product_id, price, event_time, is_late, source_file,
              source_line, landed_at)
         SELECT $1, $2, $3, $4, $5::numeric, $6, $7, $8, $9, $10
         WHERE NOT EXISTS (SELECT 1 FROM ecommerce_events_rejected r
                           WHERE r.reason_code = 'late' AND r.event_id = $1)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&event.event_id)
    .bind(event.user_id)
    .bind(event.event_type.as_str())
    .bind(event.product_id)
    .bind(event_model::event::format_price(event.price_cents))
    .bind(event.event_time)
    .bind(row.late)
    .bind(storable::text(&row.file))
    .bind(row.line)
    .bind(landed)
    .execute(tx)
    .await?;
    Ok(result.rows_affected())
}

/// The common end of a batch's transaction: checkpoints (the fence), then commit.
async fn finish_transaction(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    group: &str,
    topic: &str,
    checkpoints: &[Checkpoint],
    outcome: WriteOutcome,
) -> Result<WriteOutcome, SinkError> {
    for checkpoint in checkpoints {
        if !advance_checkpoint(&mut tx, group, topic, checkpoint).await? {
            tx.rollback().await?;
            return Err(SinkError::Fenced {
                partition: checkpoint.partition,
            });
        }
    }
    tx.commit().await?;
    Ok(outcome)
}

async fn insert_rejects(
    tx: &mut PgConnection,
    topic: &str,
    rows: &[RejectRow],
    only_if_not_an_event: bool,
) -> Result<Vec<String>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // Every text made storable here, at the one door to the table: NUL escaped, indexed values
    // bounded. The bytes as they were stay in `raw` and `kafka_key`.
    let column = |f: fn(&RejectRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query_scalar(INSERT_REJECTS)
        .bind(column(|r| Some(storable::key(&r.file).into_owned())))
        .bind(column(|r| Some(storable::key(&r.file_id).into_owned())))
        .bind(rows.iter().map(|r| r.line).collect::<Vec<_>>())
        .bind(column(|r| Some(r.code.as_str().to_owned())))
        .bind(column(|r| r.field.map(str::to_owned)))
        .bind(column(|r| Some(storable::text(&r.reason).into_owned())))
        .bind(column(|r| {
            r.event_id
                .as_deref()
                .map(|id| storable::key(id).into_owned())
        }))
        .bind(rows.iter().map(|r| r.raw.clone()).collect::<Vec<_>>())
        .bind(storable::text(topic))
        .bind(rows.iter().map(|r| r.partition).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.offset).collect::<Vec<_>>())
        .bind(only_if_not_an_event)
        .bind(rows.iter().map(|r| r.kafka_key.clone()).collect::<Vec<_>>())
        .fetch_all(tx)
        .await
}

async fn record_log_event(
    connection: &mut PgConnection,
    group: &str,
    topic: &str,
    partition: i32,
    kind: &str,
    (from, to): (i64, i64),
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ingest_log_events
             (consumer_group, topic, kafka_partition, kind, from_offset, to_offset, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .bind(kind)
    .bind(from)
    .bind(to)
    .bind(detail)
    .execute(connection)
    .await
    .map(drop)
}

/// Moves a checkpoint forward only from where this consumer believes it is; false when another
/// consumer moved it meanwhile (the partition was reassigned), which must abort the transaction.
async fn advance_checkpoint(
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

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The events in PostgreSQL's binary `COPY` format, leaving out the ids in `skip`. Binary rather
/// than text: PostgreSQL then parses no numbers or timestamps, which took about a tenth of its
/// time per row.
fn encode_events(events: &[EventRow], skip: &HashSet<String>) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + events.len() * 140);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    // Flags, then the length of the header extension: none of either.
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for row in events {
        if !skip.contains(&row.event.event_id) {
            encode_event(&mut out, row);
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// One tuple, the columns in the order of [`EVENT_COLUMNS`].
fn encode_event(out: &mut Vec<u8>, row: &EventRow) {
    let event = &row.event;
    out.extend_from_slice(&10i16.to_be_bytes());
    push_field(out, event.event_id.as_bytes());
    push_field(out, &event.user_id.to_be_bytes());
    push_field(out, event.event_type.as_str().as_bytes());
    push_field(out, &event.product_id.to_be_bytes());
    push_numeric_cents(out, event.price_cents);
    push_field(out, &postgres_micros(event.event_time.timestamp_micros()));
    push_field(out, &[u8::from(row.late)]);
    push_field(out, storable::text(&row.file).as_bytes());
    push_field(out, &row.line.to_be_bytes());
    push_field(out, &postgres_micros(row.landed_ms.saturating_mul(1000)));
}

fn postgres_micros(unix_micros: i64) -> [u8; 8] {
    unix_micros
        .saturating_sub(POSTGRES_EPOCH_MICROS)
        .to_be_bytes()
}

fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are bounded by the row size limit, far below 2 GiB.
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// `cents / 100` as PostgreSQL's binary NUMERIC: base-10000 digits, most significant first, the
/// weight of the first one, sign, and a display scale of 2; no leading or trailing zero digits.
fn push_numeric_cents(out: &mut Vec<u8>, cents: i64) {
    let magnitude = cents.unsigned_abs();
    let (mut whole, fraction) = (magnitude / 100, (magnitude % 100) as i16 * 100);
    let mut digits: Vec<i16> = Vec::with_capacity(6);
    while whole > 0 {
        digits.push((whole % 10_000) as i16);
        whole /= 10_000;
    }
    digits.reverse();
    let mut weight = digits.len() as i16 - 1;
    digits.push(fraction);
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let sign: u16 = if cents < 0 { 0x4000 } else { 0 };
    let length = 8 + 2 * digits.len();
    out.extend_from_slice(&(length as i32).to_be_bytes());
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&2u16.to_be_bytes());
    for digit in digits {
        out.extend_from_slice(&digit.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(cents: i64) -> Vec<i16> {
        let mut out = Vec::new();
        push_numeric_cents(&mut out, cents);
        out[4..]
            .chunks(2)
            .map(|pair| i16::from_be_bytes([pair[0], pair[1]]))
            .collect()
    }

    #[test]
    fn prices_become_base_10000_numerics() {
        // ndigits, weight, sign, dscale, digits...
        assert_eq!(numeric(0), [0, 0, 0, 2]);
        assert_eq!(numeric(1), [1, -1, 0, 2, 100]);
        assert_eq!(numeric(1999), [2, 0, 0, 2, 19, 9900]);
        assert_eq!(numeric(100), [1, 0, 0, 2, 1]);
        assert_eq!(numeric(1_000_000), [1, 1, 0, 2, 1]);
        assert_eq!(numeric(1_234_567_890), [3, 1, 0, 2, 1234, 5678, 9000]);
        assert_eq!(numeric(-250), [2, 0, 0x4000, 2, 2, 5000]);
    }
}
