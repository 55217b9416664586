//! What the in-memory rules held back, decided by the database in the batch's transaction, and
//! the retention horizon the batch is judged by.

use super::ids_matching;
use crate::batch::{EventRow, Origin, RejectRow, WriteBatch};
use chrono::{DateTime, Utc};
use event_model::RejectCode;
use sqlx::PgConnection;

/// What the in-memory rules held back, decided by the database in the batch's transaction:
/// memory only suggests. A window duplicate whose id is not stored (nor in this batch, nor kept
/// as late) is stored after all, or quarantined as late under that policy; a late row whose id
/// has an open reject is that reject's fix, and stored (marked late).
pub(super) struct HeldBack {
    /// Events to store besides the batch's own.
    events: Vec<EventRow>,
    /// The late rows to quarantine.
    pub(super) late_rejects: Vec<RejectRow>,
    /// Events dated before it are quarantined `expired`; none before any retention ran.
    horizon: Option<DateTime<Utc>>,
    /// The events dated before the horizon, as their rejects.
    pub(super) expired: Vec<RejectRow>,
}

const STORED_OR_KEPT_LATE: &str = "SELECT e.event_id::text FROM UNNEST($1::text[]) AS u(id)
         JOIN ecommerce_events e ON e.event_key = event_key_of(u.id) AND e.event_id = u.id
    UNION SELECT event_id FROM ecommerce_events_rejected
          WHERE reason_code = 'late' AND event_id = ANY($1::text[])";

const OPEN_REJECTS: &str = "SELECT DISTINCT event_id FROM ecommerce_events_rejected
    WHERE event_id = ANY($1::text[]) AND resolved_at IS NULL AND reason_code <> 'late'";

impl HeldBack {
    pub(super) async fn decide(
        tx: &mut PgConnection,
        batch: &WriteBatch,
    ) -> Result<HeldBack, sqlx::Error> {
        // First: the horizon holds until this transaction commits.
        let horizon = sqlx::query_scalar("SELECT retention_horizon_held()")
            .fetch_one(&mut *tx)
            .await?;
        let mut held = HeldBack {
            events: Vec::new(),
            late_rejects: Vec::with_capacity(batch.late_rejects.len()),
            horizon,
            expired: Vec::new(),
        };
        held.sort_late_rows(tx, batch).await?;
        held.store_unconfirmed_duplicates(tx, batch).await?;
        held.expire(&batch.events);
        Ok(held)
    }

    /// Whether retention dropped the events of this one's time.
    fn is_expired(&self, row: &EventRow) -> bool {
        self.horizon
            .is_some_and(|horizon| row.event.event_time < horizon)
    }

    /// The events dated before the horizon, the batch's and those decided here, as rejects.
    fn expire(&mut self, events: &[EventRow]) {
        let Some(horizon) = self.horizon else {
            return;
        };
        self.expired = events
            .iter()
            .chain(&self.events)
            .filter(|row| self.is_expired(row))
            .map(|row| expired_row(row, horizon))
            .collect();
    }

    /// Late rows whose id has an open reject are its fix, stored; the others are quarantined.
    async fn sort_late_rows(
        &mut self,
        tx: &mut PgConnection,
        batch: &WriteBatch,
    ) -> Result<(), sqlx::Error> {
        if batch.late_rejects.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = batch
            .late_rejects
            .iter()
            .map(|late| late.event.event.event_id.as_str())
            .collect();
        let fixes = ids_matching(tx, OPEN_REJECTS, &ids).await?;
        for late in &batch.late_rejects {
            if fixes.contains(&late.event.event.event_id) {
                self.events.push(late.event.clone());
            } else {
                self.late_rejects.push(late.reject.clone());
            }
        }
        Ok(())
    }

    /// Window duplicates whose id is neither stored, kept as late, nor in this batch: stored (or
    /// quarantined as late), the first of several rows with one id.
    async fn store_unconfirmed_duplicates(
        &mut self,
        tx: &mut PgConnection,
        batch: &WriteBatch,
    ) -> Result<(), sqlx::Error> {
        if batch.duplicates.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = batch
            .duplicates
            .iter()
            .map(|d| d.event.event.event_id.as_str())
            .collect();
        let mut known = ids_matching(tx, STORED_OR_KEPT_LATE, &ids).await?;
        let in_batch = batch.events.iter().map(|row| &row.event.event_id).chain(
            batch
                .late_rejects
                .iter()
                .map(|late| &late.event.event.event_id),
        );
        known.extend(in_batch.cloned());
        let mut not_stored = 0;
        for duplicate in &batch.duplicates {
            if !known.insert(duplicate.event.event.event_id.clone()) {
                continue;
            }
            not_stored += 1;
            match &duplicate.late_reject {
                Some(reject) => self.late_rejects.push(reject.clone()),
                None => self.events.push(duplicate.event.clone()),
            }
        }
        if not_stored > 0 {
            tracing::warn!(rows = not_stored, "the dedup window remembered ids the database does not hold (its tables emptied, events deleted): stored as new");
        }
        Ok(())
    }

    /// The batch's events and those decided here, but the expired; borrowed when nothing was
    /// decided or expired.
    pub(super) fn events_with<'a>(
        &self,
        events: &'a [EventRow],
    ) -> std::borrow::Cow<'a, [EventRow]> {
        if self.events.is_empty() && self.expired.is_empty() {
            return std::borrow::Cow::Borrowed(events);
        }
        let all = events.iter().chain(&self.events);
        std::borrow::Cow::Owned(all.filter(|row| !self.is_expired(row)).cloned().collect())
    }
}

/// An event dated before the retention horizon, as its `expired` reject.
fn expired_row(row: &EventRow, horizon: DateTime<Utc>) -> RejectRow {
    RejectRow {
        origin: Origin::File(row.source.clone()),
        code: RejectCode::Expired,
        field: Some("event_time"),
        reason: format!(
            "field `event_time`: {} is before the retention horizon {}: events dated before it were dropped",
            row.event.event_time.to_rfc3339(),
            horizon.to_rfc3339()
        ),
        event_id: Some(row.event.event_id.clone()),
        raw: row.canonical_csv(),
        kafka_key: None,
    }
}
