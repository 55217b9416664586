//! How large the producer's batches and messages may be, and how they shrink when a topic
//! refuses them.

use rdkafka::config::ClientConfig;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// librdkafka's default `batch.size`.
const DEFAULT_BATCH_BYTES: usize = 1_000_000;
/// The smallest batches the bridge shrinks to for a topic that refuses larger ones: a few rows.
pub const LEAST_BATCH_BYTES: usize = 4_096;

/// The next producer's sizes after a topic refused a batch as too large: first smaller
/// batches, a quarter each time, down to [`LEAST_BATCH_BYTES`]; then, if a message sent in a
/// batch of its own was refused (`smallest_alone` bytes, the smallest such), messages smaller
/// than that, so a row that large is quarantined as `too_large` by reference. A row the topic
/// took before is never `too_large` later: it was smaller than every message refused alone.
/// What changed, or `None` when nothing is left to lower.
pub fn shrink(kafka: &mut ClientConfig, smallest_alone: Option<usize>) -> Option<Shrunk> {
    let batch = batch_bytes(kafka);
    if batch > LEAST_BATCH_BYTES {
        let smaller = (batch / 4).max(LEAST_BATCH_BYTES);
        kafka.set("batch.size", smaller.to_string());
        return Some(Shrunk::Batches(smaller));
    }
    let budget = smallest_alone?.checked_sub(1)?;
    if budget >= message_budget(kafka) {
        return None;
    }
    kafka.set(
        "message.max.bytes",
        (budget + RECORD_OVERHEAD_BYTES).to_string(),
    );
    Some(Shrunk::Messages(budget))
}

/// A size in bytes set in `kafka` under `key`, or librdkafka's `default` for it.
fn byte_setting(kafka: &ClientConfig, key: &str, default: usize) -> usize {
    kafka
        .get(key)
        .and_then(|value| value.trim().parse::<usize>().ok())
        .unwrap_or(default)
}

/// What [`shrink`] lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shrunk {
    /// `batch.size`, to this many bytes.
    Batches(usize),
    /// The largest row message, to this many bytes.
    Messages(usize),
}
/// Room for a record's framing (headers, timestamps, lengths) within `message.max.bytes`.
const RECORD_OVERHEAD_BYTES: usize = 1_024;

pub(super) fn batch_bytes(kafka: &ClientConfig) -> usize {
    byte_setting(kafka, "batch.size", DEFAULT_BATCH_BYTES)
}

/// What one row's message may take: the producer's `message.max.bytes` less framing. A row
/// whose message would be larger is sent as a `too_large` reference instead, so no row is
/// ever refused by the broker and holds its file back.
pub fn message_budget(config: &ClientConfig) -> usize {
    byte_setting(config, "message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES)
        .saturating_sub(RECORD_OVERHEAD_BYTES)
}
