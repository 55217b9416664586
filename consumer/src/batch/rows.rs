//! What one transaction writes, as the classification leaves it: events, quarantined rows,
//! checkpoints and the batch's counts, each row with its source.

use super::{Incoming, SourceNames};
use chrono::{DateTime, Utc};
use event_model::{Event, FileEnd, RejectCode, RowRef};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where a row came from: its file version and line, and its place in the log. Travels with
/// every stored or quarantined row, so each lands with its lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Shared by the rows of one file in a batch: two allocations a row fewer.
    pub file: Arc<str>,
    pub file_id: Arc<str>,
    pub line: i64,
    pub partition: i32,
    pub offset: i64,
}

impl Source {
    pub(super) fn of(row: &RowRef, message: &Incoming, sources: &mut SourceNames) -> Source {
        let (file, file_id) = sources.of(row);
        Source {
            file,
            file_id,
            line: row.line as i64,
            partition: message.partition,
            offset: message.offset,
        }
    }
}

/// Where a quarantined row came from, which decides whose ledger counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of a file the bridge published: counted in that file version's ledger.
    File(Source),
    /// A message kept under its Kafka identity, outside every file's ledger: one that is not a
    /// pipeline row, or the stand-in for a row the database refused to quarantine.
    Kafka(KafkaPlace),
}

/// A message's place in the log, and what tells it from the others at that offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaPlace {
    pub partition: i32,
    pub offset: i64,
    /// Stored as `source_file_id`: `partition-<n>:<hash of the content>` for a foreign message.
    pub identity: String,
    /// Stored as `source_line`: the offset for a foreign message, the row's line for a stand-in.
    pub line: i64,
}

impl Origin {
    /// What `source_file` holds: the file's name, or `kafka:<topic>` for a message.
    pub fn stored_file<'a>(&'a self, topic: &str) -> Cow<'a, str> {
        match self {
            Origin::File(source) => Cow::Borrowed(&source.file),
            Origin::Kafka(_) => Cow::Owned(format!("kafka:{topic}")),
        }
    }

    /// What `source_file_id` holds.
    pub fn stored_file_id(&self) -> &str {
        match self {
            Origin::File(source) => &source.file_id,
            Origin::Kafka(place) => &place.identity,
        }
    }

    pub fn line(&self) -> i64 {
        match self {
            Origin::File(source) => source.line,
            Origin::Kafka(place) => place.line,
        }
    }

    pub fn partition(&self) -> i32 {
        match self {
            Origin::File(source) => source.partition,
            Origin::Kafka(place) => place.partition,
        }
    }

    pub fn offset(&self) -> i64 {
        match self {
            Origin::File(source) => source.offset,
            Origin::Kafka(place) => place.offset,
        }
    }

    /// The file line whose ledger counts this row; none for a message.
    pub fn file(&self) -> Option<&Source> {
        match self {
            Origin::File(source) => Some(source),
            Origin::Kafka(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub event: Event,
    pub late: bool,
    pub source: Source,
    pub landed_ms: i64,
    /// The quarantined row this event fixes, if its file named one.
    pub fixes: Option<i64>,
}

impl EventRow {
    /// The event as one CSV line in canonical column order, for quarantine.
    pub fn canonical_csv(&self) -> Vec<u8> {
        let event = &self.event;
        let (user_id, product_id) = (event.user_id.to_string(), event.product_id.to_string());
        let price = event_model::event::format_price(event.price_cents);
        let time = event
            .event_time
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        event_model::wire::canonical_csv([
            &event.event_id,
            &user_id,
            event.event_type.as_str(),
            &product_id,
            &price,
            &time,
        ])
    }
}

#[derive(Debug, Clone)]
pub struct RejectRow {
    pub origin: Origin,
    pub code: RejectCode,
    pub field: Option<&'static str>,
    pub reason: String,
    pub event_id: Option<String>,
    pub raw: Vec<u8>,
    /// The message's key, kept for messages that are not pipeline rows.
    pub kafka_key: Option<Vec<u8>>,
}

/// A late event under `--late-policy quarantine`: quarantined as `late`, unless it is the fix of
/// a row quarantined before (an exported reject corrected and dropped in again), which is stored
/// (marked late) and resolves that reject, whatever the watermark says now.
#[derive(Debug, Clone)]
pub struct LateRow {
    pub event: EventRow,
    pub reject: RejectRow,
}

/// A valid event whose id the in-memory dedup saw before. Memory only suggests: it is a
/// duplicate once the database confirms its id is stored; if not (the tables were emptied for a
/// backfill, the event deleted), it is stored like a new event, or quarantined as late when the
/// policy says so.
#[derive(Debug, Clone)]
pub struct WindowDuplicate {
    pub event: EventRow,
    pub late_reject: Option<RejectRow>,
}

/// A partition's checkpoint after this batch, and the one it must replace (the fence: a consumer
/// that lost the partition to another finds the checkpoint moved and writes nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub partition: i32,
    pub expected: Option<i64>,
    pub next_offset: i64,
    pub max_event_time: Option<DateTime<Utc>>,
    /// Hash of the message at `next_offset - 1`: what ties the checkpoint to its log.
    pub last_message: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub rows: u64,
    /// Already in Postgres by the checkpoint (a replay after a crash or a rebalance).
    pub replayed: u64,
    /// Dropped by the in-memory dedup set; the database adds its own count on insert.
    pub duplicates: u64,
    pub rejected: u64,
    pub late: u64,
}

#[derive(Debug, Default)]
pub struct WriteBatch {
    pub events: Vec<EventRow>,
    pub rejects: Vec<RejectRow>,
    /// Late events under `--late-policy quarantine`; written only if not already an event.
    pub late_rejects: Vec<LateRow>,
    pub checkpoints: Vec<Checkpoint>,
    /// Valid events the in-memory dedup saw before: duplicates, or the same rows delivered again,
    /// once the database confirms their ids are stored.
    pub duplicates: Vec<WindowDuplicate>,
    /// The bridge's end-of-file messages: how many rows each file had.
    pub file_ends: Vec<FileEnd>,
    /// Per partition, the offset to commit to Kafka once the transaction committed.
    pub commit_offsets: BTreeMap<i32, i64>,
    pub stats: BatchStats,
}
