//! Turns a batch of messages into what one Postgres transaction writes: events, quarantined rows
//! and the new checkpoint of each partition. Synchronous and free of I/O.

mod incoming;
mod rows;

pub use incoming::{Incoming, MessageBuffer};
pub use rows::{
    BatchStats, Checkpoint, EventRow, KafkaPlace, LateRow, Origin, RejectRow, Source,
    WindowDuplicate, WriteBatch,
};

use crate::config::LatePolicy;
use crate::partition::PartitionState;
use chrono::{DateTime, TimeDelta, Utc};
use event_model::validate::parse_event_id;
use event_model::wire::from_hex;
use event_model::{
    decode_pipeline_message, validate, Column, Event, FileEnd, PipelineMessage, RejectCode,
    Rejection, RowRef,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub lateness: TimeDelta,
    pub late_policy: LatePolicy,
    /// How far ahead of the consumer's clock an event_time may be; further is quarantined as
    /// `future` and never moves the watermark (one event dated 9999 would make all others late).
    pub max_future: TimeDelta,
}

/// Classifies `messages`, moving each partition's state forward as if the batch commits; `now` is
/// the consumer's clock, for `max_future`. Every partition of `messages` must have a state in
/// `states`.
pub fn classify(
    messages: &[Incoming],
    states: &mut HashMap<i32, PartitionState>,
    rules: &Rules,
    now: DateTime<Utc>,
) -> WriteBatch {
    let mut batch = WriteBatch {
        // Nearly every message is an event: no growing and moving of the list as it fills.
        events: Vec::with_capacity(messages.len()),
        ..WriteBatch::default()
    };
    let mut checkpoints: BTreeMap<i32, Checkpoint> = BTreeMap::new();
    let mut last_of_partition: HashMap<i32, &Incoming> = HashMap::new();
    let mut sources = SourceNames::default();
    let context = Context { rules, now };
    for message in messages {
        batch.stats.rows += 1;
        let next = message.offset + 1;
        let commit = batch
            .commit_offsets
            .entry(message.partition)
            .or_insert(next);
        *commit = (*commit).max(next);
        let Some(state) = states.get_mut(&message.partition) else {
            continue;
        };
        if state.already_written(message.offset) {
            batch.stats.replayed += 1;
            continue;
        }
        checkpoints
            .entry(message.partition)
            .or_insert_with(|| Checkpoint {
                partition: message.partition,
                expected: state.next_offset,
                next_offset: next,
                max_event_time: None,
                last_message: String::new(),
            })
            .next_offset = next;
        last_of_partition.insert(message.partition, message);
        state.next_offset = Some(next);
        classify_message(message, state, &context, &mut sources, &mut batch);
    }
    for (partition, mut checkpoint) in checkpoints {
        checkpoint.max_event_time = states.get(&partition).and_then(|s| s.max_event_time);
        if let Some(last) = last_of_partition.get(&partition) {
            checkpoint.last_message =
                crate::log_check::message_hash(last.key.as_deref(), last.payload.as_deref());
        }
        batch.checkpoints.push(checkpoint);
    }
    batch
}

/// What every message of a batch is judged by.
struct Context<'a> {
    rules: &'a Rules,
    now: DateTime<Utc>,
}

/// The file name and identity of the last row, shared with the next rows of the same file.
#[derive(Default)]
struct SourceNames {
    last: Option<(Arc<str>, Arc<str>)>,
}

impl SourceNames {
    fn of(&mut self, row: &RowRef) -> (Arc<str>, Arc<str>) {
        match &self.last {
            Some((file, id)) if **file == *row.file && **id == *row.file_id => {
                (file.clone(), id.clone())
            }
            _ => self
                .last
                .insert((row.file.into(), row.file_id.into()))
                .clone(),
        }
    }
}

/// What a message is when it is not a row to judge.
enum Decoded {
    FileEnd(FileEnd),
    /// Not a row a bridge wrote, and why.
    Foreign(String),
}

/// The row a message carries. A row may carry only the defects a reader finds in a file: one
/// that claims a consumer's finding (`late`, say) is foreign, kept under its Kafka identity (its
/// claimed file and line are not trusted either), and decides no row's fate.
fn decode_row(message: &Incoming) -> Result<event_model::DecodedRow<'_>, Decoded> {
    let payload = message
        .payload
        .as_deref()
        .ok_or_else(|| Decoded::Foreign("message has no payload".to_owned()))?;
    let row = match decode_pipeline_message(payload).map_err(Decoded::Foreign)? {
        PipelineMessage::Row(row) => row,
        PipelineMessage::FileEnd(end) => return Err(Decoded::FileEnd(end)),
    };
    match row.view().defect.as_ref().map(|defect| defect.code) {
        Some(code) if !code.is_found_by_reader() => Err(Decoded::Foreign(format!(
            "the row claims the defect `{}`, which no reader finds in a file (a consumer's finding, not a bridge's)",
            code.as_str()
        ))),
        _ => Ok(row),
    }
}

/// One new message: a foreign message, an invalid or future row, a duplicate, a late event, or
/// an event; counted and put where it belongs in `batch`.
fn classify_message(
    message: &Incoming,
    state: &mut PartitionState,
    context: &Context,
    sources: &mut SourceNames,
    batch: &mut WriteBatch,
) {
    let (rules, now) = (context.rules, context.now);
    let decoded_row = match decode_row(message) {
        Ok(row) => row,
        Err(Decoded::FileEnd(end)) => {
            batch.file_ends.push(end);
            return;
        }
        Err(Decoded::Foreign(reason)) => {
            batch.stats.rejected += 1;
            batch.rejects.push(undecodable(message, reason));
            return;
        }
    };
    let row = decoded_row.view();
    let reference = FutureReference::of(row.landed_ms, now);
    let event = match validate(&row).and_then(|event| not_in_the_future(event, rules, reference)) {
        Ok(event) => event,
        Err(rejection) => {
            batch.stats.rejected += 1;
            batch.rejects.push(reject_row(&row, message, rejection));
            return;
        }
    };
    let watermark = state.watermark(rules.lateness);
    let quarantine_late = rules.late_policy == LatePolicy::Quarantine;
    if state.seen_before(&event.event_id, event.event_time, rules.lateness) {
        batch.stats.duplicates += 1;
        // Judged as it would be if new, without moving the watermark: what it becomes should the
        // database not hold its id after all.
        let late = watermark.is_some_and(|watermark| event.event_time < watermark);
        let late_reject = (late && quarantine_late)
            .then(|| reject_row(&row, message, late_rejection(&event, watermark)));
        let event = event_row(event, late, &row, message, sources);
        batch
            .duplicates
            .push(WindowDuplicate { event, late_reject });
        return;
    }
    let late = state.observe(event.event_time, rules.lateness);
    if late {
        batch.stats.late += 1;
    }
    if late && quarantine_late {
        let reject = reject_row(&row, message, late_rejection(&event, watermark));
        let event = event_row(event, late, &row, message, sources);
        batch.late_rejects.push(LateRow { event, reject });
        return;
    }
    let event = event_row(event, late, &row, message, sources);
    batch.events.push(event);
}

fn event_row(
    event: Event,
    late: bool,
    row: &RowRef,
    message: &Incoming,
    sources: &mut SourceNames,
) -> EventRow {
    EventRow {
        event,
        late,
        source: Source::of(row, message, sources),
        landed_ms: row.landed_ms,
        fixes: message.fixes,
    }
}

fn late_rejection(event: &Event, watermark: Option<DateTime<Utc>>) -> Rejection {
    event_time_rejection(
        RejectCode::Late,
        event,
        format!(
            "is older than the partition watermark {}",
            watermark.map(|w| w.to_rfc3339()).unwrap_or_default()
        ),
    )
}

/// What `future` is judged against: the landing time of the row's file, carried in the message,
/// so every consumer, with any clock, now or in a year, classifies the message the same way. A
/// row without one (written by a producer that sends none) falls back to the consumer's clock.
#[derive(Debug, Clone, Copy)]
enum FutureReference {
    Landed(DateTime<Utc>),
    ConsumerClock(DateTime<Utc>),
}

impl FutureReference {
    fn of(landed_ms: i64, now: DateTime<Utc>) -> FutureReference {
        match DateTime::from_timestamp_millis(landed_ms) {
            Some(landed) if landed_ms > 0 => FutureReference::Landed(landed),
            _ => FutureReference::ConsumerClock(now),
        }
    }

    fn time(self) -> DateTime<Utc> {
        match self {
            FutureReference::Landed(time) | FutureReference::ConsumerClock(time) => time,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            FutureReference::Landed(_) => "its file's landing time",
            FutureReference::ConsumerClock(_) => "the consumer's clock",
        }
    }
}

/// The event, unless it is dated further ahead of its reference time than `max_future` allows;
/// such an event must not move the watermark, so it is rejected before the watermark sees it.
fn not_in_the_future(
    event: Event,
    rules: &Rules,
    reference: FutureReference,
) -> Result<Event, Rejection> {
    match reference.time().checked_add_signed(rules.max_future) {
        Some(horizon) if event.event_time > horizon => Err(event_time_rejection(
            RejectCode::Future,
            &event,
            format!(
                "is more than {}s ahead of {} ({})",
                rules.max_future.num_seconds(),
                reference.describe(),
                reference
                    .time()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        )),
        _ => Ok(event),
    }
}

fn event_time_rejection(code: RejectCode, event: &Event, problem: String) -> Rejection {
    Rejection {
        code,
        field: Some(Column::EventTime),
        reason: format!(
            "field `event_time`: {} {problem}",
            event.event_time.to_rfc3339()
        ),
    }
}

fn reject_row(row: &RowRef, message: &Incoming, rejection: Rejection) -> RejectRow {
    let raw = row
        .defect
        .as_ref()
        .and_then(|defect| from_hex(&defect.raw_hex))
        .unwrap_or_else(|| row.canonical_csv());
    let event_id = row
        .value(Column::EventId)
        .and_then(|id| parse_event_id(id.trim()).ok());
    RejectRow {
        origin: Origin::File(Source {
            file: row.file.into(),
            file_id: row.file_id.into(),
            line: row.line as i64,
            partition: message.partition,
            offset: message.offset,
        }),
        code: rejection.code,
        field: rejection.field.map(Column::name),
        reason: rejection.reason,
        event_id,
        raw,
        kafka_key: None,
    }
}

/// A message that is not a pipeline row, whoever produced it: kept whole (key and value) under its
/// Kafka identity. The identity includes a hash of the content, so the same message read again is
/// recorded once, and a different message at a reused offset (a log that restarted) is not lost.
fn undecodable(message: &Incoming, reason: String) -> RejectRow {
    let key = message.key.as_deref().unwrap_or_default();
    let payload = message.payload.as_deref().unwrap_or_default();
    let content = [&(key.len() as u64).to_be_bytes()[..], key, payload].concat();
    let identity = format!(
        "partition-{}:{}",
        message.partition,
        crate::storable::short_hash(&content, 16)
    );
    RejectRow {
        origin: Origin::Kafka(KafkaPlace {
            partition: message.partition,
            offset: message.offset,
            identity,
            line: message.offset,
        }),
        code: RejectCode::Undecodable,
        field: None,
        reason,
        event_id: None,
        raw: payload.to_vec(),
        kafka_key: message.key.as_deref().map(<[u8]>::to_vec),
    }
}

#[cfg(test)]
mod tests {
    use super::incoming::BLOCK_BYTES;
    use super::*;
    use bytes::Bytes;
    use event_model::wire::WIRE_VERSION;
    use event_model::{RawRow, WireFormat};

    const RULES: Rules = Rules {
        lateness: TimeDelta::minutes(10),
        late_policy: LatePolicy::Accept,
        max_future: TimeDelta::minutes(15),
    };

    fn now() -> DateTime<Utc> {
        "2026-11-25T12:40:00Z".parse().unwrap()
    }

    fn message(partition: i32, offset: i64, id: &str, time: &str) -> Incoming {
        landed_message(partition, offset, id, time, 0)
    }

    fn landed_message(
        partition: i32,
        offset: i64,
        id: &str,
        time: &str,
        landed_ms: i64,
    ) -> Incoming {
        let row = RawRow {
            v: WIRE_VERSION,
            file: "f.csv".into(),
            file_id: "1".into(),
            line: offset as u64 + 2,
            landed_ms,
            values: [id, "1", "view", "2", "3.00", time].map(|v| Some(v.to_owned())),
            defect: None,
        };
        Incoming {
            partition,
            offset,
            key: Some(Bytes::copy_from_slice(id.as_bytes())),
            payload: Some(row.encode(WireFormat::Binary).into()),
            fixes: None,
        }
    }

    fn fresh_states(partitions: &[i32]) -> HashMap<i32, PartitionState> {
        partitions
            .iter()
            .map(|p| (*p, PartitionState::new(None, None, 100)))
            .collect()
    }

    #[test]
    fn kept_messages_are_exact_copies_whatever_their_size() {
        let mut buffer = MessageBuffer::default();
        let big = vec![7u8; BLOCK_BYTES * 2 + 1];
        let small: Vec<Vec<u8>> = (0..5_000u32).map(|n| n.to_be_bytes().repeat(60)).collect();
        let mut kept: Vec<Bytes> = small.iter().map(|bytes| buffer.keep(bytes)).collect();
        kept.push(buffer.keep(&big));
        kept.push(buffer.keep(b""));
        kept.push(buffer.keep(b"last"));
        drop(buffer);
        for (view, original) in kept.iter().zip(&small) {
            assert_eq!(&view[..], &original[..]);
        }
        assert_eq!(kept[5_000], big);
        assert!(kept[5_001].is_empty());
        assert_eq!(&kept[5_002][..], b"last");
    }

    #[test]
    fn sorts_rows_into_events_rejects_and_duplicates() {
        let messages = vec![
            message(0, 0, "a", "2026-11-25T12:00:00Z"),
            message(0, 1, "a", "2026-11-25T12:00:00Z"),
            message(0, 2, "b", "2026-13-25T12:00:00Z"),
            Incoming {
                partition: 1,
                offset: 7,
                key: Some(Bytes::from_static(b"k\0")),
                payload: Some(Bytes::from_static(b"\xffnot json")),
                fixes: None,
            },
        ];
        let mut states = fresh_states(&[0, 1]);
        let batch = classify(&messages, &mut states, &RULES, now());
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.rejects.len(), 2);
        assert_eq!(batch.rejects[0].field, Some("event_time"));
        assert_eq!(batch.rejects[0].event_id.as_deref(), Some("b"));
        assert_eq!(batch.rejects[1].code, RejectCode::Undecodable);
        assert_eq!(batch.rejects[1].raw, b"\xffnot json");
        assert_eq!(batch.rejects[1].kafka_key.as_deref(), Some(&b"k\0"[..]));
        assert_eq!(
            batch.stats,
            BatchStats {
                rows: 4,
                replayed: 0,
                duplicates: 1,
                rejected: 2,
                late: 0
            }
        );
        assert_eq!(batch.commit_offsets, BTreeMap::from([(0, 3), (1, 8)]));
        assert_eq!(batch.checkpoints[0].expected, None);
        assert_eq!(batch.checkpoints[0].next_offset, 3);
        // The dropped copy keeps its source, for the ledger.
        assert_eq!(batch.duplicates.len(), 1);
        assert_eq!(
            (
                batch.duplicates[0].event.event.event_id.as_str(),
                batch.duplicates[0].event.source.offset
            ),
            ("a", 1)
        );
    }

    #[test]
    fn a_file_end_is_collected_for_the_ledger_not_judged_as_a_row() {
        let end = event_model::FileEnd {
            file: "a.csv".into(),
            file_id: "ab".into(),
            content_sha256: "ab00".into(),
            size_bytes: 10,
            landed_ms: 1,
            rows_read: 2,
            backfill: false,
            changed_while_read: false,
        };
        let messages = vec![
            message(0, 0, "a", "2026-11-25T12:00:00Z"),
            Incoming {
                partition: 0,
                offset: 1,
                key: Some(Bytes::from_static(b"ab")),
                payload: Some(end.encode().into()),
                fixes: None,
            },
        ];
        let mut states = fresh_states(&[0]);
        let batch = classify(&messages, &mut states, &RULES, now());
        assert_eq!(batch.file_ends, vec![end]);
        assert_eq!((batch.events.len(), batch.rejects.len()), (1, 0));
        assert_eq!(batch.checkpoints[0].next_offset, 2);
    }

    #[test]
    fn replayed_offsets_are_skipped_entirely() {
        let mut states = HashMap::from([(0, PartitionState::new(Some(2), None, 100))]);
        let messages = vec![
            message(0, 0, "a", "2026-11-25T12:00:00Z"),
            message(0, 1, "b", "2026-11-25T12:00:00Z"),
            message(0, 2, "c", "2026-11-25T12:00:00Z"),
        ];
        let batch = classify(&messages, &mut states, &RULES, now());
        assert_eq!(batch.stats.replayed, 2);
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].event.event_id, "c");
        assert_eq!(batch.checkpoints[0].expected, Some(2));
        assert_eq!(batch.checkpoints[0].next_offset, 3);
    }

    #[test]
    fn late_events_follow_the_policy() {
        let messages = vec![
            message(0, 0, "new", "2026-11-25T12:30:00Z"),
            message(0, 1, "old", "2026-11-25T12:00:00Z"),
        ];
        let batch = classify(&messages, &mut fresh_states(&[0]), &RULES, now());
        assert_eq!(batch.events.len(), 2);
        assert!(batch.events[1].late);
        assert_eq!(batch.stats.late, 1);

        let quarantine = Rules {
            late_policy: LatePolicy::Quarantine,
            ..RULES
        };
        let batch = classify(&messages, &mut fresh_states(&[0]), &quarantine, now());
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.late_rejects.len(), 1);
        assert_eq!(batch.late_rejects[0].reject.code, RejectCode::Late);
        assert_eq!(
            batch.late_rejects[0].reject.event_id.as_deref(),
            Some("old")
        );
        assert!(batch.late_rejects[0].reject.reason.contains("watermark"));
    }

    #[test]
    fn future_is_judged_against_the_landing_time_whatever_the_consumer_clock() {
        let landed = "2026-11-25T12:40:00Z"
            .parse::<DateTime<Utc>>()
            .unwrap()
            .timestamp_millis();
        let messages = vec![
            landed_message(0, 0, "fine", "2026-11-25T12:50:00Z", landed),
            landed_message(0, 1, "ahead", "2026-11-25T13:00:00Z", landed),
        ];
        for clock in [
            "2026-11-25T09:40:00Z",
            "2026-11-25T12:40:00Z",
            "2026-11-25T18:00:00Z",
        ] {
            let batch = classify(
                &messages,
                &mut fresh_states(&[0]),
                &RULES,
                clock.parse().unwrap(),
            );
            let stored: Vec<&str> = batch
                .events
                .iter()
                .map(|e| e.event.event_id.as_str())
                .collect();
            assert_eq!(stored, ["fine"], "clock {clock}");
            assert_eq!(batch.rejects[0].code, RejectCode::Future, "clock {clock}");
            assert!(batch.rejects[0].reason.contains("its file's landing time"));
        }
    }

    #[test]
    fn far_future_events_are_quarantined_and_leave_the_watermark_alone() {
        let messages = vec![
            message(0, 0, "now", "2026-11-25T12:30:00Z"),
            message(0, 1, "y9999", "9999-12-31T23:59:59Z"),
            message(0, 2, "soon", "2026-11-25T12:54:59Z"),
            message(0, 3, "after", "2026-11-25T12:45:00Z"),
        ];
        let quarantine = Rules {
            late_policy: LatePolicy::Quarantine,
            ..RULES
        };
        let mut states = fresh_states(&[0]);
        let batch = classify(&messages, &mut states, &quarantine, now());
        let ids: Vec<&str> = batch
            .events
            .iter()
            .map(|e| e.event.event_id.as_str())
            .collect();
        assert_eq!(ids, ["now", "soon", "after"]);
        assert_eq!(batch.rejects.len(), 1);
        assert_eq!(batch.rejects[0].code, RejectCode::Future);
        assert_eq!(batch.rejects[0].event_id.as_deref(), Some("y9999"));
        assert!(batch.late_rejects.is_empty());
        assert_eq!(
            batch.checkpoints[0].max_event_time,
            Some("2026-11-25T12:54:59Z".parse().unwrap())
        );
    }

    #[test]
    fn foreign_messages_are_quarantined_by_their_kafka_identity() {
        let mut wrong_version: serde_json::Value = serde_json::from_slice(
            &RawRow {
                v: WIRE_VERSION,
                file: "f.csv".into(),
                file_id: "1".into(),
                line: 2,
                landed_ms: 0,
                values: [const { None }; 6],
                defect: None,
            }
            .encode(WireFormat::Json),
        )
        .unwrap();
        wrong_version["v"] = 7.into();
        let payloads: Vec<Option<Vec<u8>>> = vec![
            None,
            Some(b"{}".to_vec()),
            Some(b"plain text".to_vec()),
            Some(serde_json::to_vec(&wrong_version).unwrap()),
            Some(br#"{"v":1,"file":"","file_id":"x","line":1,"landed_ms":0,"values":[null,null,null,null,null,null]}"#.to_vec()),
            Some(br#"{"v":1,"file":"f","file_id":"x","line":0,"landed_ms":0,"values":[null,null,null,null,null,null]}"#.to_vec()),
        ];
        let messages: Vec<Incoming> = payloads
            .into_iter()
            .enumerate()
            .map(|(offset, payload)| Incoming {
                partition: 2,
                offset: offset as i64,
                key: None,
                payload: payload.map(Bytes::from),
                fixes: None,
            })
            .collect();
        let batch = classify(&messages, &mut fresh_states(&[2]), &RULES, now());
        assert_eq!(batch.rejects.len(), messages.len());
        for (reject, message) in batch.rejects.iter().zip(&messages) {
            assert_eq!(reject.code, RejectCode::Undecodable);
            assert_eq!(reject.origin.file(), None, "outside every file's ledger");
            assert_eq!(reject.origin.stored_file("t"), "kafka:t");
            assert_eq!(reject.origin.line(), message.offset);
            assert!(reject.origin.stored_file_id().starts_with("partition-2:"));
        }
        assert!(
            batch.rejects[3].reason.contains("version 7"),
            "{}",
            batch.rejects[3].reason
        );
    }

    #[test]
    fn a_row_claiming_a_consumers_finding_is_foreign_and_decides_nothing() {
        let forged = RawRow {
            v: WIRE_VERSION,
            file: "f.csv".into(),
            file_id: "1".into(),
            line: 2,
            landed_ms: 0,
            values: ["victim", "1", "view", "2", "3.00", "2026-11-25T12:00:00Z"]
                .map(|v| Some(v.to_owned())),
            defect: Some(event_model::Defect {
                code: RejectCode::Late,
                reason: "forged".into(),
                raw_hex: String::new(),
            }),
        };
        let messages = vec![
            Incoming {
                partition: 0,
                offset: 0,
                key: Some(Bytes::from_static(b"victim")),
                payload: Some(forged.encode(WireFormat::Binary).into()),
                fixes: None,
            },
            message(0, 1, "victim", "2026-11-25T12:00:00Z"),
        ];
        let batch = classify(&messages, &mut fresh_states(&[0]), &RULES, now());
        assert_eq!(batch.rejects.len(), 1);
        let reject = &batch.rejects[0];
        assert_eq!(reject.code, RejectCode::Undecodable);
        assert_eq!(
            (reject.origin.file(), reject.event_id.as_deref()),
            (None, None)
        );
        assert!(reject.reason.contains("`late`"), "{}", reject.reason);
        assert_eq!(batch.events.len(), 1, "the real event is an event");
    }
}
