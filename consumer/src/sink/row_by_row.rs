//! The batch written again row by row, after the database refused it in its own words: only the
//! rows it refuses are quarantined.

use super::rejects::resolve_rejects_fixed_by;
use super::{fault_of, insert_through_staging, settle, Fault};
use crate::batch::{EventRow, Origin, RejectRow, Source};
use chrono::Utc;
use event_model::RejectCode;
use ledger::InsertedRow;
use sqlx::{Connection, PgConnection};
use std::sync::Arc;

use super::{ledger, SinkError};

/// What [`insert_one_by_one`] did: the rows that went in, and the refused ones as rejects.
pub(super) struct OneByOne {
    pub(super) inserted: Vec<InsertedRow>,
    pub(super) refused: Vec<RejectRow>,
}

/// Inserts `events` one by one, each in a savepoint: a row the database refuses becomes a
/// `database` reject and the rest go in. Fails only when the database refuses every row, none
/// for its data, and a harmless row of ours too: then the database, not these rows, is wrong.
pub(super) async fn insert_one_by_one(
    tx: &mut PgConnection,
    events: &[EventRow],
) -> Result<OneByOne, SinkError> {
    let (mut inserted, mut refused) = (Vec::new(), Vec::new());
    // Refusals outside the data classes may not be the rows' doing: kept to decide below.
    let mut refusals_beyond_data: Option<sqlx::Error> = None;
    let mut data_refused = false;
    for row in events {
        let mut savepoint = tx.begin().await?;
        let result = insert_through_staging(&mut savepoint, std::slice::from_ref(row)).await;
        match settle(savepoint, result).await? {
            Ok(rows) => {
                let ids = rows.iter().map(|row| row.event_id.as_str());
                resolve_rejects_fixed_by(tx, ids).await?;
                inserted.extend(rows);
            }
            Err(error) => {
                tracing::warn!(event_id = %row.event.event_id, file = %row.source.file, line = row.source.line, %error, "row quarantined: the database refused it");
                data_refused |= fault_of(&error) == Fault::Data;
                refused.push(refused_row(row, &error));
                refusals_beyond_data.get_or_insert(error);
            }
        }
    }
    if let Some(error) = refusals_beyond_data {
        let every_row_refused = inserted.is_empty() && refused.len() == events.len();
        if every_row_refused && !data_refused && !accepts_a_harmless_row(tx).await? {
            return Err(SinkError::Database(error));
        }
    }
    Ok(OneByOne { inserted, refused })
}

/// The event the database refused, as a `database` reject with the database's words.
fn refused_row(row: &EventRow, error: &sqlx::Error) -> RejectRow {
    RejectRow {
        origin: Origin::File(row.source.clone()),
        code: RejectCode::Database,
        field: None,
        reason: format!("the database refused the row: {error}"),
        event_id: Some(row.event.event_id.clone()),
        raw: row.canonical_csv(),
        kafka_key: None,
    }
}

/// Whether the events table takes a harmless, valid row of our own, tried in a savepoint and
/// rolled back whatever happens: tells rows the database refuses from a database that refuses
/// everything (a missing privilege, a broken schema, a trigger that raises for any row).
async fn accepts_a_harmless_row(tx: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let canary = EventRow {
        event: event_model::Event {
            // Never committed: an id already stored would still be taken (ON CONFLICT DO NOTHING).
            event_id: "pipeline-canary".to_owned(),
            user_id: 1,
            event_type: event_model::EventType::View,
            product_id: 1,
            price_cents: 100,
            event_time: Utc::now(),
        },
        late: false,
        source: Source {
            file: Arc::from("pipeline-canary"),
            file_id: Arc::from("pipeline-canary"),
            line: 1,
            partition: 0,
            offset: 0,
        },
        landed_ms: Utc::now().timestamp_millis(),
        fixes: None,
    };
    let mut savepoint = tx.begin().await?;
    let accepted = insert_through_staging(&mut savepoint, std::slice::from_ref(&canary))
        .await
        .is_ok();
    savepoint.rollback().await?;
    Ok(accepted)
}
