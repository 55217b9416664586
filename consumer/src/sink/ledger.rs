//! The ledger of files: what became of every row, counted in the transaction that stores it.
//!
//! Every data row the bridge read ends as exactly one of: an event (the row is its source), a
//! quarantined row (keyed by file version and line), or a duplicate (a valid event whose id was
//! already stored from another row; keyed by file version and line in `ingest_duplicates`). Each of
//! the three is recorded once per file version and line, and a counter moves only when a record is
//! new, so a replay, a republished file or a rebalance counts nothing twice.

use super::rejects::RejectKind;
use super::unnest::{names, unnest, Input};
use crate::batch::{EventRow, WriteBatch};
use crate::storable;
use event_model::FileEnd;
use sqlx::PgConnection;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

/// A row that went into `ecommerce_events` in this transaction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InsertedRow {
    pub event_id: String,
    pub source_file: String,
    pub source_file_id: String,
    pub is_late: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct FileCounts {
    inserted: i64,
    duplicate: i64,
    /// Of the duplicates, those whose values differ from the stored event's.
    conflicting: i64,
    rejected: i64,
    late: i64,
}

/// What a batch's transaction stored, as its write paths return it: [`account`] turns it into
/// the ledger's counts in one step, after the write, so no write path keeps the ledger's books.
#[derive(Debug, Default)]
pub struct Written<'a> {
    /// Events the direct `COPY` took (rows of one file follow each other).
    pub copied: Vec<&'a EventRow>,
    /// Events that went in through staging, as the insert returned them.
    pub staged: Vec<InsertedRow>,
    /// Quarantined rows that came from a file (not a foreign message), one each.
    pub rejects: Vec<FileReject>,
    pub stored: Stored,
}

/// A quarantined row the ledger counts against its file version.
#[derive(Debug)]
pub struct FileReject {
    pub file_id: String,
    pub file: String,
    pub kind: RejectKind,
}

/// A file version as the ledger keys it: the identity of its content, and the name it came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion<'a> {
    id: &'a str,
    name: &'a str,
}

impl FileReject {
    fn file(&self) -> FileVersion<'_> {
        FileVersion {
            id: &self.file_id,
            name: &self.file,
        }
    }
}

/// A duplicate recorded in this transaction, and whether its values differ from the event's.
#[derive(sqlx::FromRow)]
struct RecordedDuplicate {
    source_file_id: String,
    source_file: String,
    conflicting: bool,
}

/// What one transaction adds to the ledger, per file version (sorted: rows are locked in one
/// order by every consumer, so two never wait on each other in a circle). Keyed by the identity
/// as stored: a forged 10 kB identity and its stored form are one file, never two rows of one
/// upsert (which PostgreSQL refuses for the whole statement).
#[derive(Debug, Default)]
pub struct LedgerDelta {
    files: BTreeMap<String, (String, FileCounts)>,
    ends: BTreeMap<String, FileEnd>,
    /// Every (identity, name) an end message came with: two names of one content are two.
    names: BTreeMap<(String, String), FileEnd>,
}

impl LedgerDelta {
    fn of(written: &Written) -> LedgerDelta {
        let mut delta = LedgerDelta::default();
        // Rows of one file follow each other and share its name: counted per run.
        let same_file = |a: &&EventRow, b: &&EventRow| {
            Arc::ptr_eq(&a.source.file_id, &b.source.file_id)
                && Arc::ptr_eq(&a.source.file, &b.source.file)
        };
        for run in written.copied.chunk_by(same_file) {
            let late = run.iter().filter(|row| row.late).count() as i64;
            let source = &run[0].source;
            let file = FileVersion {
                id: &source.file_id,
                name: &source.file,
            };
            delta.inserted(file, run.len() as i64, late);
        }
        for row in &written.staged {
            let file = FileVersion {
                id: &row.source_file_id,
                name: &row.source_file,
            };
            delta.inserted(file, 1, i64::from(row.is_late));
        }
        for reject in &written.rejects {
            delta.rejected(reject.file(), reject.kind);
        }
        delta
    }

    fn counts(&mut self, file: FileVersion) -> &mut FileCounts {
        let key = storable::key(file.id);
        if !self.files.contains_key(key.as_ref()) {
            let entry = (file.name.to_owned(), FileCounts::default());
            self.files.insert(key.clone().into_owned(), entry);
        }
        &mut self.files.get_mut(key.as_ref()).expect("just inserted").1
    }

    /// `rows` inserted rows of one file, `late` of them late.
    fn inserted(&mut self, file: FileVersion, rows: i64, late: i64) {
        let counts = self.counts(file);
        counts.inserted += rows;
        counts.late += late;
    }

    fn rejected(&mut self, file: FileVersion, kind: RejectKind) {
        let counts = self.counts(file);
        counts.rejected += 1;
        counts.late += i64::from(kind == RejectKind::Late);
    }

    fn duplicate(&mut self, duplicate: &RecordedDuplicate) {
        let counts = self.counts(FileVersion {
            id: &duplicate.source_file_id,
            name: &duplicate.source_file,
        });
        counts.duplicate += 1;
        counts.conflicting += i64::from(duplicate.conflicting);
    }

    fn file_ends(&mut self, ends: &[FileEnd]) {
        for end in ends {
            let key = storable::key(&end.file_id).into_owned();
            let name = storable::text(&end.file).into_owned();
            self.names.insert((key.clone(), name), end.clone());
            self.ends.insert(key, end.clone());
        }
    }
}

/// The columns of a duplicate [`record_duplicates`] binds one array each of, in its order; then
/// the values it is compared by with the stored event (`price` in cents).
const DUPLICATE_COLUMNS: [Input; 6] = [
    ("source_file_id", "text"),
    ("source_line", "int8"),
    ("source_file", "text"),
    ("event_id", "text"),
    ("kafka_partition", "int4"),
    ("kafka_offset", "int8"),
];
const COMPARED: [Input; 5] = [
    ("user_id", "int4"),
    ("event_type", "text"),
    ("product_id", "int4"),
    ("cents", "int8"),
    ("event_time", "timestamptz"),
];

static RECORD_DUPLICATES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO ingest_duplicates ({columns}, conflicting_fields)
         SELECT {values},
                (SELECT NULLIF(array_remove(ARRAY[
                            CASE WHEN ev.event_id <> u.event_id THEN 'event_id' END,
                            CASE WHEN ev.user_id <> u.user_id THEN 'user_id' END,
                            CASE WHEN ev.event_type <> u.event_type THEN 'event_type' END,
                            CASE WHEN ev.product_id <> u.product_id THEN 'product_id' END,
                            CASE WHEN ev.price <> u.cents::numeric / 100 THEN 'price' END,
                            CASE WHEN ev.event_time <> u.event_time THEN 'event_time' END],
                        NULL), '{{}}')
                 FROM ecommerce_events ev WHERE ev.event_key = event_key_of(u.event_id))
         FROM {unnest}
         WHERE NOT EXISTS (SELECT 1 FROM ecommerce_events ev
                           WHERE ev.event_key = event_key_of(u.event_id)
                             AND ev.source_file_id = u.source_file_id
                             AND ev.source_line = u.source_line)
           AND NOT EXISTS (SELECT 1 FROM ecommerce_events_rejected r
                           WHERE r.source_file_id = u.source_file_id
                             AND r.source_line = u.source_line)
         ON CONFLICT DO NOTHING
         RETURNING source_file_id, source_file, conflicting_fields IS NOT NULL AS conflicting",
        columns = names(&DUPLICATE_COLUMNS, ""),
        values = names(&DUPLICATE_COLUMNS, "u."),
        unnest = unnest(&[DUPLICATE_COLUMNS.as_slice(), &COMPARED].concat()),
    )
});

/// Records, among `candidates` (valid rows that did not become an event or a quarantined row in
/// this transaction), those that are duplicates: a row that is the source of a stored event or of
/// a quarantined row is the same row delivered again, and a row recorded already is not new. A
/// duplicate whose values differ from the stored event's is recorded with the fields that differ.
async fn record_duplicates(
    tx: &mut PgConnection,
    candidates: &[&EventRow],
    delta: &mut LedgerDelta,
) -> Result<(), sqlx::Error> {
    if candidates.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&EventRow) -> &str| {
        candidates
            .iter()
            .map(|c| storable::key(f(c)).into_owned())
            .collect::<Vec<_>>()
    };
    let number = |f: fn(&EventRow) -> i64| candidates.iter().map(|c| f(c)).collect::<Vec<_>>();
    let event = |f: fn(&event_model::Event) -> i32| {
        candidates.iter().map(|c| f(&c.event)).collect::<Vec<_>>()
    };
    let recorded: Vec<RecordedDuplicate> = sqlx::query_as(&RECORD_DUPLICATES)
        .bind(text(|c| &c.source.file_id))
        .bind(number(|c| c.source.line))
        .bind(text(|c| &c.source.file))
        .bind(text(|c| &c.event.event_id))
        .bind(
            candidates
                .iter()
                .map(|c| c.source.partition)
                .collect::<Vec<_>>(),
        )
        .bind(number(|c| c.source.offset))
        .bind(event(|e| e.user_id))
        .bind(text(|c| c.event.event_type.as_str()))
        .bind(event(|e| e.product_id))
        .bind(number(|c| c.event.price_cents))
        .bind(
            candidates
                .iter()
                .map(|c| c.event.event_time)
                .collect::<Vec<_>>(),
        )
        .fetch_all(tx)
        .await?;
    for duplicate in &recorded {
        delta.duplicate(duplicate);
    }
    Ok(())
}

/// The arrays [`apply`] binds, in its order: a file version's row of the ledger.
const FILE_INPUTS: [Input; 13] = [
    ("content_id", "text"),
    ("file_name", "text"),
    ("content_sha256", "text"),
    ("size_bytes", "int8"),
    ("landed_ms", "int8"),
    ("rows_read", "int8"),
    ("rows_inserted", "int8"),
    ("rows_duplicate", "int8"),
    ("rows_rejected", "int8"),
    ("rows_late", "int8"),
    ("backfill", "bool"),
    ("changed", "bool"),
    ("rows_conflicting", "int8"),
];

static UPSERT_FILES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO ingest_files AS f
    (content_id, file_name, content_sha256, size_bytes, landed_at, rows_read,
     rows_inserted, rows_duplicate, rows_rejected, rows_late, backfilled_at, changed_while_read,
     rows_conflicting)
SELECT u.content_id, u.file_name, u.content_sha256, u.size_bytes,
       to_timestamp(u.landed_ms / 1000.0), u.rows_read, u.rows_inserted, u.rows_duplicate,
       u.rows_rejected, u.rows_late, CASE WHEN u.backfill THEN now() END,
       coalesce(u.changed, false), u.rows_conflicting
FROM {}
ORDER BY u.content_id
ON CONFLICT (content_id) DO UPDATE SET
    content_sha256 = coalesce(excluded.content_sha256, f.content_sha256),
    size_bytes     = coalesce(excluded.size_bytes, f.size_bytes),
    landed_at      = coalesce(f.landed_at, excluded.landed_at),
    -- A read cut short by a change counts fewer rows than a whole read of the same bytes.
    rows_read      = greatest(excluded.rows_read, f.rows_read),
    -- True while every end message of the version said so (rows_read is set with an end).
    changed_while_read = CASE WHEN excluded.rows_read IS NULL THEN f.changed_while_read
                              WHEN f.rows_read IS NULL THEN excluded.changed_while_read
                              ELSE f.changed_while_read AND excluded.changed_while_read END,
    rows_inserted  = f.rows_inserted + excluded.rows_inserted,
    rows_duplicate = f.rows_duplicate + excluded.rows_duplicate,
    rows_conflicting = f.rows_conflicting + excluded.rows_conflicting,
    rows_rejected  = f.rows_rejected + excluded.rows_rejected,
    rows_late      = f.rows_late + excluded.rows_late,
    backfilled_at  = coalesce(excluded.backfilled_at, f.backfilled_at),
    updated_at     = now()",
        unnest(&FILE_INPUTS)
    )
});

/// The arrays [`record_names`] binds, in its order.
const NAME_INPUTS: [Input; 4] = [
    ("content_id", "text"),
    ("file_name", "text"),
    ("rows_read", "int8"),
    ("landed_ms", "int8"),
];

static UPSERT_NAMES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO ingest_file_names AS n (content_id, file_name, rows_read, landed_at)
SELECT u.content_id, u.file_name, u.rows_read, to_timestamp(u.landed_ms / 1000.0)
FROM {}
ORDER BY u.content_id, u.file_name
ON CONFLICT (content_id, file_name) DO UPDATE SET
    rows_read = greatest(excluded.rows_read, n.rows_read),
    landed_at = coalesce(n.landed_at, excluded.landed_at)",
        unnest(&NAME_INPUTS)
    )
});

const RECONCILE: &str = "UPDATE ingest_files SET reconciled_at = now()
WHERE content_id = ANY($1) AND reconciled_at IS NULL
  AND rows_read = rows_inserted + rows_duplicate + rows_rejected";

/// Adds `delta` to the ledger and marks reconciled the files it touched whose every row is now
/// accounted for.
async fn apply(tx: &mut PgConnection, delta: LedgerDelta) -> Result<(), sqlx::Error> {
    let mut ids: Vec<String> = delta.files.keys().cloned().collect();
    ids.extend(delta.ends.keys().cloned());
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    let mut columns = FileColumns::default();
    for id in &ids {
        let counted = delta.files.get(id);
        let end = delta.ends.get(id);
        let name = end
            .map(|e| e.file.as_str())
            .or(counted.map(|(name, _)| name.as_str()))
            .unwrap_or_default();
        columns.push(name, counted.map(|c| c.1).unwrap_or_default(), end);
    }
    sqlx::query(&UPSERT_FILES)
        .bind(&ids)
        .bind(columns.names)
        .bind(columns.sha)
        .bind(columns.size)
        .bind(columns.landed_ms)
        .bind(columns.read)
        .bind(columns.inserted)
        .bind(columns.duplicate)
        .bind(columns.rejected)
        .bind(columns.late)
        .bind(columns.backfill)
        .bind(columns.changed)
        .bind(columns.conflicting)
        .execute(&mut *tx)
        .await?;
    sqlx::query(RECONCILE).bind(&ids).execute(&mut *tx).await?;
    record_names(tx, &delta.names).await
}

/// Every name a content arrived under, with the rows its end message counted.
async fn record_names(
    tx: &mut PgConnection,
    names: &BTreeMap<(String, String), FileEnd>,
) -> Result<(), sqlx::Error> {
    if names.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = names.keys().map(|(id, _)| id.as_str()).collect();
    let files: Vec<&str> = names.keys().map(|(_, name)| name.as_str()).collect();
    let read: Vec<i64> = names
        .values()
        .map(|end| i64::try_from(end.rows_read).unwrap_or(i64::MAX))
        .collect();
    let landed: Vec<Option<i64>> = names
        .values()
        .map(|end| storable_millis(end.landed_ms))
        .collect();
    sqlx::query(&UPSERT_NAMES)
        .bind(ids)
        .bind(files)
        .bind(read)
        .bind(landed)
        .execute(tx)
        .await
        .map(drop)
}

/// A landing time PostgreSQL stores: one in years 1 to 9999, else none. An end message is written
/// by whoever produces to the topic, and a time out of range would fail the whole batch.
fn storable_millis(millis: i64) -> Option<i64> {
    use chrono::Datelike;
    chrono::DateTime::from_timestamp_millis(millis)
        .filter(|at| (1..=9999).contains(&at.year()))
        .map(|_| millis)
}

/// The upsert's arrays, one entry per file version.
#[derive(Default)]
struct FileColumns {
    names: Vec<String>,
    sha: Vec<Option<String>>,
    size: Vec<Option<i64>>,
    landed_ms: Vec<Option<i64>>,
    read: Vec<Option<i64>>,
    inserted: Vec<i64>,
    duplicate: Vec<i64>,
    rejected: Vec<i64>,
    late: Vec<i64>,
    backfill: Vec<bool>,
    changed: Vec<Option<bool>>,
    conflicting: Vec<i64>,
}

impl FileColumns {
    fn push(&mut self, name: &str, counts: FileCounts, end: Option<&FileEnd>) {
        self.names.push(storable::text(name).into_owned());
        self.sha
            .push(end.map(|e| storable::key(&e.content_sha256).into_owned()));
        self.size
            .push(end.map(|e| i64::try_from(e.size_bytes).unwrap_or(i64::MAX)));
        self.landed_ms
            .push(end.and_then(|e| storable_millis(e.landed_ms)));
        self.read
            .push(end.map(|e| i64::try_from(e.rows_read).unwrap_or(i64::MAX)));
        self.inserted.push(counts.inserted);
        self.duplicate.push(counts.duplicate);
        self.rejected.push(counts.rejected);
        self.late.push(counts.late);
        self.backfill.push(end.is_some_and(|e| e.backfill));
        self.changed.push(end.map(|e| e.changed_while_read));
        self.conflicting.push(counts.conflicting);
    }
}

/// What went in of a batch, as far as the ledger must know: where everything went in, none of
/// those rows can be a duplicate of a stored event. The default, nothing known to have gone in
/// whole (the row-by-row path), makes every row a candidate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stored {
    /// Every event of the batch was inserted.
    pub all_events: bool,
    /// Every late row quarantined under `--late-policy quarantine` was kept.
    pub all_late_rejects: bool,
}

/// The end of a batch's accounting, once its events and rejects are written: the duplicates
/// among the valid rows that were not stored, the files' ends, and the ledger updated. The
/// candidates are the in-memory dedup's drops always; the events, if not all of them went in;
/// the late rows, if not all were kept (as events or late rows).
pub async fn account(
    tx: &mut PgConnection,
    batch: &WriteBatch,
    written: Written<'_>,
) -> Result<(), sqlx::Error> {
    let mut delta = LedgerDelta::of(&written);
    let stored = written.stored;
    let mut candidates: Vec<&EventRow> = Vec::new();
    if !stored.all_events {
        candidates.extend(&batch.events);
    }
    // Some late rows may have gone in as events (the fix of a reject): candidates with them.
    if !stored.all_events || !stored.all_late_rejects {
        candidates.extend(batch.late_rejects.iter().map(|late| &late.event));
    }
    // A window duplicate stored after all is the source of its event: filtered out below.
    candidates.extend(batch.duplicates.iter().map(|d| &d.event));
    record_duplicates(tx, &candidates, &mut delta).await?;
    delta.file_ends(&batch.file_ends);
    apply(tx, delta).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_and_its_stored_form_are_one_file() {
        let long = "E".repeat(10_000);
        let stored = storable::key(&long).into_owned();
        assert_ne!(stored, long);
        let mut delta = LedgerDelta::default();
        let file = |id| FileVersion { id, name: "f.csv" };
        delta.inserted(file(&long), 1, 0);
        delta.rejected(file(&stored), RejectKind::Late);
        delta.file_ends(&[FileEnd {
            file: "f.csv".into(),
            file_id: long.clone(),
            content_sha256: String::new(),
            size_bytes: 0,
            landed_ms: 0,
            rows_read: 2,
            backfill: false,
            changed_while_read: false,
        }]);
        assert_eq!(delta.files.len(), 1);
        let counts = delta.files[&stored].1;
        assert_eq!((counts.inserted, counts.rejected, counts.late), (1, 1, 1));
        assert!(delta.ends.contains_key(&stored));
    }

    #[test]
    fn landing_times_out_of_postgres_range_are_left_out() {
        assert_eq!(storable_millis(0), Some(0));
        assert_eq!(storable_millis(i64::MAX), None);
        assert_eq!(storable_millis(i64::MIN), None);
        assert_eq!(storable_millis(-62_135_596_800_001), None);
    }
}
