//! The Postgres writer: one transaction per batch holding the events, the quarantined rows and the
//! partitions' checkpoints, so the checkpoint can never disagree with the data.
//!
//! Events go by `COPY` straight into `ecommerce_events` inside a savepoint: the fastest way in,
//! and right whenever none of them is there yet, which is the steady state (duplicates are mostly
//! caught in memory, replays by the checkpoint). Should one be there already (a duplicate beyond
//! the dedup window, a new group replaying the topic), the COPY fails, is rolled back to the
//! savepoint, and the batch goes through a temporary staging table and
//! `INSERT ... SELECT ... ON CONFLICT (event_key) DO NOTHING` instead; the sink stays on that path
//! until a batch meets no conflict, so a long replay does not pay for two writes per batch.

mod checkpoints;
pub use checkpoints::{Rewind, StoredCheckpoint};
/// Public for `it-tests`' per-row cost example, which encodes batches without a database.
pub mod events;
mod fault;
mod held_back;
mod ledger;
mod rejects;
mod row_by_row;
mod session;
mod unnest;

pub use fault::{fault_of, refused_by_database, Fault};

use crate::batch::{Checkpoint, EventRow, WriteBatch};
use event_model::RejectCode;
use held_back::HeldBack;
use ledger::{FileReject, InsertedRow, Written};
use rejects::{Quarantined, RejectKind};
use row_by_row::{insert_one_by_one, OneByOne};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::collections::{BTreeMap, HashSet};

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
    pub rejected_by_reason: BTreeMap<RejectCode, u64>,
}

impl WriteOutcome {
    /// Counts quarantined rows the database took, by the codes the insert returned.
    fn count_reject_codes(&mut self, taken: &[Quarantined], kind: RejectKind) {
        if kind == RejectKind::Late {
            self.late_quarantined += taken.len() as u64;
        } else {
            self.rejected += taken.len() as u64;
        }
        for row in taken {
            *self.rejected_by_reason.entry(row.reason_code).or_default() += 1;
        }
    }
}

/// What a sink writes for: the consumer group and the topic its checkpoints are kept under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub group: String,
    pub topic: String,
}

pub struct Sink {
    url: String,
    /// `application_name` for connections whose URL sets none.
    application_name: Option<String>,
    stream: Stream,
    connection: Option<PgConnection>,
    /// The path the next batch's events try first: [`WritePath::Copy`], or
    /// [`WritePath::Staging`] after a batch met rows already written, until one meets none.
    first_try: WritePath,
}

impl Sink {
    pub fn new(url: &str, group: &str, topic: &str) -> Sink {
        Sink {
            url: url.to_owned(),
            application_name: None,
            stream: Stream {
                group: group.to_owned(),
                topic: topic.to_owned(),
            },
            connection: None,
            first_try: WritePath::Copy,
        }
    }

    /// A sink to the same database for the same group and topic, on a connection of its own.
    pub fn another(&self) -> Sink {
        Sink {
            url: self.url.clone(),
            application_name: self.application_name.clone(),
            stream: self.stream.clone(),
            connection: None,
            first_try: WritePath::Copy,
        }
    }

    /// Names the connections (PostgreSQL's `application_name`), unless the URL names them.
    pub fn named(mut self, application_name: &str) -> Sink {
        self.application_name = Some(application_name.to_owned());
        self
    }

    /// Applies `migrations/` (idempotent; concurrent consumers serialise on an advisory lock).
    pub async fn migrate(&mut self) -> Result<(), SinkError> {
        let (_, connection) = self.open().await?;
        session::begin_migrations(connection).await?;
        MIGRATOR.run(&mut *connection).await?;
        session::end_migrations(connection).await?;
        Ok(())
    }

    /// The stream and the connection, connected first if it is not.
    async fn open(&mut self) -> Result<(&Stream, &mut PgConnection), SinkError> {
        if self.connection.is_none() {
            let mut options: PgConnectOptions = self.url.parse()?;
            if let (None, Some(name)) = (options.get_application_name(), &self.application_name) {
                options = options.application_name(name);
            }
            let mut connection = PgConnection::connect_with(&options).await?;
            session::apply(&mut connection).await?;
            sqlx::query(&events::CREATE_STAGING)
                .execute(&mut connection)
                .await?;
            self.connection = Some(connection);
        }
        let connection = self.connection.as_mut().expect("connection was just set");
        Ok((&self.stream, connection))
    }

    /// Forgets the connection after an error; the next call reconnects.
    pub fn reset(&mut self) {
        self.connection = None;
    }

    /// Writes the batch in one transaction; nothing of it is visible unless all of it is.
    /// Should the database refuse the batch in its own words (a value it will not store, a
    /// constraint, an operator's trigger or policy, whatever the SQLSTATE), the batch is written
    /// again row by row and only the refused rows are quarantined: poison is data, never an
    /// outage. Only when it refuses every row and a harmless row too (a broken schema, a missing
    /// privilege) is the batch retried and, in time, reported stuck.
    pub async fn write(&mut self, batch: &WriteBatch) -> Result<WriteOutcome, SinkError> {
        match self.write_bulk(batch).await {
            Err(SinkError::Database(error)) if refused_by_database(&error) => {
                tracing::warn!(%error, "the database refused a row; finding it row by row");
                self.write_row_by_row(batch).await
            }
            other => other,
        }
    }

    async fn write_bulk(&mut self, batch: &WriteBatch) -> Result<WriteOutcome, SinkError> {
        let first_try = self.first_try;
        let (stream, connection) = self.open().await?;
        let mut tx = connection.begin().await?;
        let held = HeldBack::decide(&mut tx, batch).await?;
        let events = held.events_with(&batch.events);
        let mut next_try = first_try;
        let direct = if first_try == WritePath::Copy && !events.is_empty() {
            copy_direct(&mut tx, &events).await?
        } else {
            None
        };
        let mut written = Written::default();
        let (inserted, path) = match direct {
            Some(skipped) => {
                written.copied = events
                    .iter()
                    .filter(|row| !skipped.contains(&row.event.event_id))
                    .collect();
                let ids = written.copied.iter().map(|row| row.event.event_id.as_str());
                rejects::resolve_rejects_fixed_by(&mut tx, ids).await?;
                (written.copied.len() as u64, WritePath::Copy)
            }
            None if events.is_empty() => (0, WritePath::Copy),
            None => {
                written.staged = insert_through_staging(&mut tx, &events).await?;
                let ids = written.staged.iter().map(|row| row.event_id.as_str());
                rejects::resolve_rejects_fixed_by(&mut tx, ids).await?;
                let count = written.staged.len() as u64;
                // Back to the fast path once a batch had nothing already written.
                next_try = if count == events.len() as u64 {
                    WritePath::Copy
                } else {
                    WritePath::Staging
                };
                (count, WritePath::Staging)
            }
        };
        let mut outcome = WriteOutcome {
            path,
            inserted,
            ..WriteOutcome::default()
        };
        let mut late_taken = 0;
        for (rows, kind) in [
            (&batch.rejects[..], RejectKind::Invalid),
            (&held.expired[..], RejectKind::Invalid),
            (&held.late_rejects[..], RejectKind::Late),
        ] {
            let taken = rejects::insert_rejects(&mut tx, &stream.topic, rows, kind).await?;
            outcome.count_reject_codes(&taken, kind);
            if kind == RejectKind::Late {
                late_taken += taken.len();
            }
            written
                .rejects
                .extend(taken.into_iter().filter_map(|row| from_a_file(row, kind)));
        }
        written.stored = ledger::Stored {
            all_events: inserted == events.len() as u64,
            all_late_rejects: late_taken == held.late_rejects.len(),
        };
        rejects::resolve_fixed_rejects(&mut tx, &events).await?;
        ledger::account(&mut tx, batch, written).await?;
        let outcome = finish_transaction(tx, stream, &batch.checkpoints, outcome).await?;
        if (first_try, next_try) == (WritePath::Copy, WritePath::Staging) {
            tracing::debug!("rows already written: staging batches until one meets none");
        }
        self.first_try = next_try;
        Ok(outcome)
    }

    async fn write_row_by_row(&mut self, batch: &WriteBatch) -> Result<WriteOutcome, SinkError> {
        let (stream, connection) = self.open().await?;
        let mut tx = connection.begin().await?;
        let held = HeldBack::decide(&mut tx, batch).await?;
        let events = held.events_with(&batch.events);
        let OneByOne { inserted, refused } = insert_one_by_one(&mut tx, &events).await?;
        let mut outcome = WriteOutcome {
            path: WritePath::RowByRow,
            inserted: inserted.len() as u64,
            ..WriteOutcome::default()
        };
        let mut written = Written {
            staged: inserted,
            ..Written::default()
        };
        for (rows, kind) in [
            (&batch.rejects[..], RejectKind::Invalid),
            (&refused[..], RejectKind::Invalid),
            (&held.expired[..], RejectKind::Invalid),
            (&held.late_rejects[..], RejectKind::Late),
        ] {
            for row in rows {
                let taken =
                    rejects::insert_reject_or_its_stand_in(&mut tx, &stream.topic, row, kind)
                        .await?;
                // Counted as the row it stands for, whatever went in for it.
                if let (Some(source), false) = (row.origin.file(), taken.is_empty()) {
                    written.rejects.push(FileReject {
                        file_id: source.file_id.to_string(),
                        file: source.file.to_string(),
                        kind,
                    });
                }
                outcome.count_reject_codes(&taken, kind);
            }
        }
        rejects::resolve_fixed_rejects(&mut tx, &events).await?;
        ledger::account(&mut tx, batch, written).await?;
        finish_transaction(tx, stream, &batch.checkpoints, outcome).await
    }
}

/// The event_ids among `ids` that `query` (taking them as `$1`) returns.
async fn ids_matching(
    tx: &mut PgConnection,
    query: &'static str,
    ids: &[&str],
) -> Result<HashSet<String>, sqlx::Error> {
    let found: Vec<String> = sqlx::query_scalar(query).bind(ids).fetch_all(tx).await?;
    Ok(found.into_iter().collect())
}

/// A quarantined row as its file's ledger counts it; none for a message that is not a row.
fn from_a_file(row: Quarantined, kind: RejectKind) -> Option<FileReject> {
    let (file_id, file) = row.file?;
    Some(FileReject {
        file_id,
        file,
        kind,
    })
}

/// Closes `savepoint` (a transaction inside the batch's, begun on its connection) around a step
/// that ended with `result`: kept when the step succeeded; rolled back when the database refused
/// it (any SQLSTATE but a connection or server failure), the refusal returned as `Ok(Err(..))`
/// and the batch's transaction still usable. Any other error ends the batch's transaction; the
/// savepoint, dropped, rolls back with it.
pub(super) async fn settle<T>(
    savepoint: sqlx::Transaction<'_, sqlx::Postgres>,
    result: Result<T, sqlx::Error>,
) -> Result<Result<T, sqlx::Error>, sqlx::Error> {
    match result {
        Ok(value) => {
            savepoint.commit().await?;
            Ok(Ok(value))
        }
        Err(error) if refused_by_database(&error) => {
            savepoint.rollback().await?;
            Ok(Err(error))
        }
        Err(error) => Err(error),
    }
}

/// `COPY` of the events straight into `ecommerce_events`, in a savepoint; the ids it left out
/// (quarantined as late before). `None` when the database refused it (a row already there, or a
/// row it will not take): the savepoint is rolled back and the caller takes the staging path,
/// which sorts out which rows are which.
async fn copy_direct(
    tx: &mut PgConnection,
    events: &[EventRow],
) -> Result<Option<HashSet<String>>, SinkError> {
    let mut late: HashSet<String> = HashSet::new();
    let any_late: bool = sqlx::query_scalar(events::ANY_LATE_QUARANTINED)
        .fetch_one(&mut *tx)
        .await?;
    if any_late {
        let ids: Vec<&str> = events.iter().map(|r| r.event.event_id.as_str()).collect();
        late = ids_matching(tx, events::LATE_QUARANTINED, &ids).await?;
    }
    let copy = events::encode_events(events, &late);
    let mut savepoint = tx.begin().await?;
    match copy_in(&mut savepoint, &events::COPY_DIRECT, &copy).await {
        Ok(_) => {
            savepoint.commit().await?;
            Ok(Some(late))
        }
        Err(error) if fault_of(&error) == Fault::Data => {
            savepoint.rollback().await?;
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

/// Sends `events` through the staging table into `ecommerce_events`: what is already there, or
/// was quarantined as late, is left out. The staging table is emptied for the next use.
async fn insert_through_staging(
    tx: &mut PgConnection,
    events: &[EventRow],
) -> Result<Vec<InsertedRow>, sqlx::Error> {
    let copy = events::encode_events(events, &HashSet::new());
    copy_in(&mut *tx, &events::COPY_STAGING, &copy).await?;
    let inserted = sqlx::query_as(&events::INSERT_FROM_STAGING)
        .fetch_all(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM ingest_staging")
        .execute(&mut *tx)
        .await?;
    Ok(inserted)
}

/// The common end of a batch's transaction: checkpoints (the fence), then commit.
async fn finish_transaction(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    stream: &Stream,
    checkpoints: &[Checkpoint],
    outcome: WriteOutcome,
) -> Result<WriteOutcome, SinkError> {
    for checkpoint in checkpoints {
        if !checkpoints::advance_checkpoint(&mut tx, &stream.group, &stream.topic, checkpoint)
            .await?
        {
            tx.rollback().await?;
            return Err(SinkError::Fenced {
                partition: checkpoint.partition,
            });
        }
    }
    tx.commit().await?;
    Ok(outcome)
}
