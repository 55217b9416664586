//! The quarantine: rejected rows in one statement, or one by one with a stand-in for a row the
//! database refuses even there, and resolved once the event that fixes them is stored. Every
//! text is made storable at this one door to the table.

use super::settle;
use super::unnest::{names, scalar, unnest, Input};
use crate::batch::{EventRow, KafkaPlace, Origin, RejectRow};
use crate::storable;
use event_model::RejectCode;
use sqlx::{Connection, PgConnection};
use std::sync::LazyLock;

/// The columns [`insert_rejects`] binds one array each of, in its order; then the topic, and
/// whether a row is kept only while its event is not stored.
const COLUMNS: [Input; 11] = [
    ("source_file", "text"),
    ("source_file_id", "text"),
    ("source_line", "int8"),
    ("reason_code", "text"),
    ("field", "text"),
    ("reason", "text"),
    ("event_id", "text"),
    ("raw", "bytea"),
    ("kafka_partition", "int4"),
    ("kafka_offset", "int8"),
    ("kafka_key", "bytea"),
];

static INSERT_REJECTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO ecommerce_events_rejected ({columns}, kafka_topic)
         SELECT {values}, {topic} FROM {unnest}
         WHERE NOT {only_if_not_an_event}
            OR NOT EXISTS (SELECT 1 FROM ecommerce_events ev
                           WHERE ev.event_key = event_key_of(u.event_id) AND ev.event_id = u.event_id)
         ON CONFLICT DO NOTHING
         RETURNING reason_code, source_file_id, source_file",
        columns = names(&COLUMNS, ""),
        values = names(&COLUMNS, "u."),
        unnest = unnest(&COLUMNS),
        topic = scalar(&COLUMNS, 0),
        only_if_not_an_event = scalar(&COLUMNS, 1),
    )
});

/// A quarantined row as the statement returns it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Stored {
    #[sqlx(try_from = "String")]
    reason_code: RejectCode,
    source_file_id: String,
    source_file: String,
}

/// A quarantined row the database took (not one it already held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub reason_code: RejectCode,
    /// The file version whose ledger counts it, as stored (identity, name); none for a message.
    pub file: Option<(String, String)>,
}

/// Quarantines one row; should the database refuse even that (a constraint an operator put on
/// the rejected table, say), a stand-in naming the row by a hash of its identity, with the raw
/// bytes and the refusal, is recorded instead. Only if that is refused too does the batch fail.
pub async fn insert_reject_or_its_stand_in(
    tx: &mut PgConnection,
    topic: &str,
    row: &RejectRow,
    kind: RejectKind,
) -> Result<Vec<Quarantined>, sqlx::Error> {
    let rows = std::slice::from_ref(row);
    let mut savepoint = tx.begin().await?;
    let result = insert_rejects(&mut savepoint, topic, rows, kind).await;
    let error = match settle(savepoint, result).await? {
        Ok(codes) => return Ok(codes),
        Err(error) => error,
    };
    let origin = &row.origin;
    tracing::error!(file = %origin.stored_file(topic), line = origin.line(), partition = origin.partition(), offset = origin.offset(), %error, "the database refused a quarantine row; recording a stand-in");
    // Keyed by what the row is, not where it was read: a row of a file by a hash of its file
    // version and its line (every redelivery is the same stand-in, counted once), a foreign
    // message by its Kafka identity, which already holds a hash of its content.
    let identity = match origin {
        Origin::File(source) => format!(
            "unstorable:{}",
            storable::short_hash(source.file_id.as_bytes(), 16)
        ),
        Origin::Kafka(place) => format!("{}:unstorable", place.identity),
    };
    let stand_in = RejectRow {
        origin: Origin::Kafka(KafkaPlace {
            partition: origin.partition(),
            offset: origin.offset(),
            identity,
            line: origin.line(),
        }),
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
    };
    insert_rejects(
        tx,
        topic,
        std::slice::from_ref(&stand_in),
        RejectKind::Invalid,
    )
    .await
}

/// Marks resolved every open reject whose event_id is among `inserted` (ids just written): the
/// fixed row of an exported quarantine, dropped into the input folder. Only the ids travel; the
/// rare reject that matches looks its event's source up.
pub async fn resolve_rejects_fixed_by<'r>(
    tx: &mut PgConnection,
    inserted: impl Iterator<Item = &'r str>,
) -> Result<(), sqlx::Error> {
    let inserted: Vec<&str> = inserted.collect();
    if inserted.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE ecommerce_events_rejected r
         SET resolved_at = now(), resolved_by_file = e.source_file, resolved_by_line = e.source_line
         FROM UNNEST($1::text[]) AS u(id) JOIN ecommerce_events e
                ON e.event_key = event_key_of(u.id) AND e.event_id = u.id
         WHERE r.event_id = u.id AND r.resolved_at IS NULL",
    )
    .bind(inserted)
    .execute(tx)
    .await
    .map(drop)
}

/// Marks resolved every open reject that a stored event of `events` names as the row it fixes
/// (the `reject_id` column of an exported quarantine): how a reject without a usable event_id
/// (none, empty, too long, a row too large) is resolved. The event must be stored, now or
/// before; the reject names the stored event's file and line.
pub async fn resolve_fixed_rejects(
    tx: &mut PgConnection,
    events: &[EventRow],
) -> Result<u64, sqlx::Error> {
    let (rejects, ids): (Vec<i64>, Vec<&str>) = events
        .iter()
        .filter_map(|row| Some((row.fixes?, row.event.event_id.as_str())))
        .unzip();
    if rejects.is_empty() {
        return Ok(0);
    }
    let resolved = sqlx::query(
        "UPDATE ecommerce_events_rejected r
         SET resolved_at = now(), resolved_by_file = e.source_file, resolved_by_line = e.source_line
         FROM UNNEST($1::int8[], $2::text[]) AS u(reject, id)
              JOIN ecommerce_events e
                ON e.event_key = event_key_of(u.id) AND e.event_id = u.id
         WHERE r.id = u.reject AND r.resolved_at IS NULL",
    )
    .bind(&rejects)
    .bind(&ids)
    .execute(tx)
    .await?;
    Ok(resolved.rows_affected())
}

/// What a quarantined row is: invalid (or foreign, or refused), or a valid event quarantined
/// as late, which is kept out only while its event is not stored (a fix of it may be).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    Invalid,
    Late,
}

impl RejectKind {
    fn only_if_not_an_event(self) -> bool {
        self == RejectKind::Late
    }
}

/// Quarantines `rows` in one statement for the rows of files and one for messages, so each
/// row taken is returned with the ledger that counts it.
pub async fn insert_rejects(
    tx: &mut PgConnection,
    topic: &str,
    rows: &[RejectRow],
    kind: RejectKind,
) -> Result<Vec<Quarantined>, sqlx::Error> {
    let (of_files, messages): (Vec<&RejectRow>, Vec<&RejectRow>) =
        rows.iter().partition(|row| row.origin.file().is_some());
    let mut taken = Vec::with_capacity(rows.len());
    for stored in insert(&mut *tx, topic, &of_files, kind).await? {
        let file = Some((stored.source_file_id, stored.source_file));
        let reason_code = stored.reason_code;
        taken.push(Quarantined { reason_code, file });
    }
    for stored in insert(&mut *tx, topic, &messages, kind).await? {
        let reason_code = stored.reason_code;
        taken.push(Quarantined {
            reason_code,
            file: None,
        });
    }
    Ok(taken)
}

async fn insert(
    tx: &mut PgConnection,
    topic: &str,
    rows: &[&RejectRow],
    kind: RejectKind,
) -> Result<Vec<Stored>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // Every text made storable here, at the one door to the table: NUL escaped, indexed values
    // bounded. The bytes as they were stay in `raw` and `kafka_key`.
    let column =
        |f: &dyn Fn(&RejectRow) -> Option<String>| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let number = |f: fn(&Origin) -> i64| rows.iter().map(|r| f(&r.origin)).collect::<Vec<_>>();
    sqlx::query_as(&INSERT_REJECTS)
        .bind(column(&|r| {
            Some(storable::key(&r.origin.stored_file(topic)).into_owned())
        }))
        .bind(column(&|r| {
            Some(storable::key(r.origin.stored_file_id()).into_owned())
        }))
        .bind(number(Origin::line))
        .bind(column(&|r| Some(r.code.as_str().to_owned())))
        .bind(column(&|r| r.field.map(str::to_owned)))
        .bind(column(&|r| Some(storable::text(&r.reason).into_owned())))
        .bind(column(&|r| {
            r.event_id
                .as_deref()
                .map(|id| storable::key(id).into_owned())
        }))
        .bind(rows.iter().map(|r| r.raw.clone()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.origin.partition())
                .collect::<Vec<_>>(),
        )
        .bind(number(Origin::offset))
        .bind(rows.iter().map(|r| r.kafka_key.clone()).collect::<Vec<_>>())
        .bind(storable::text(topic))
        .bind(kind.only_if_not_an_event())
        .fetch_all(tx)
        .await
}
