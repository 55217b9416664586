//! Publishes files row by row and learns, through delivery reports, when a whole file is safe.
//!
//! Guarantee: a [`Completion`] without failure is sent only after the broker acknowledged every row
//! of the file (`acks=all`). Anything else (a failed delivery, a file changed while read, a
//! shutdown mid-file) completes with a failure and the file stays where it is, to be published
//! again in full; the consumer deduplicates the rows that did arrive.

mod delivery;
mod digest;
mod meter;
mod sizes;

use delivery::TooLargeRefusals;
pub use delivery::{Completion, DeliveryTracker, FileFailure};
use digest::{checksum_of, content_id, Digest};
pub use meter::Meter;
pub use sizes::{message_budget, shrink, Shrunk, LEAST_BATCH_BYTES};

use crate::content::{self, Compression, DecodeError};
use crate::identity::FileIdentity;
use event_model::{Defect, FileEnd, Limits, RawRow, RowReader, RowRef, RowView, WireFormat};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// Our producer defaults; `-X` options override them: large batches, a short linger.
///
/// Not idempotent: exactly-once is the consumer's job (event_id and file line are unique in
/// Postgres), so a retry's duplicate costs nothing, while librdkafka's idempotent producer keeps
/// one request in flight per partition and busy-polls while it waits: measured end to end on 200k
/// rows, the bridge used 6.6 CPU-s with it and 0.6 without, and the run took 9.0 s instead of 7.7.
/// A retry may also reorder rows within a partition; lateness is judged in the topic's order,
/// the same on every replay. `-X enable.idempotence=true` turns it back on.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "false"),
    ("acks", "all"),
    ("linger.ms", "50"),
    ("batch.size", "1000000"),
    ("queue.buffering.max.messages", "500000"),
    // Bounds the bridge's memory: what is queued for the broker at most. Measured on 200,000
    // events: 64 MiB peaked at 104 MiB RSS, 8 MiB at 49 MiB, at the same rate (within noise).
    ("queue.buffering.max.kbytes", "8192"),
    ("message.timeout.ms", "300000"),
    // Broker connection states for readiness.
    ("statistics.interval.ms", "5000"),
];

/// How many rows are read between two checks for shutdown.
const SHUTDOWN_CHECK_ROWS: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("failed to open {file}: {source}")]
    Open {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Read(#[from] event_model::ReadError),
    #[error("failed to publish {file} line {line}: {source}")]
    Send {
        file: String,
        line: u64,
        #[source]
        source: KafkaError,
    },
    #[error("{file} changed while it was read; it will be published again")]
    Changed { file: String },
    #[error("shutdown while publishing {file}; it will be published again on restart")]
    Abandoned { file: String },
    #[error("failed to create the Kafka producer: {0}")]
    Producer(#[source] KafkaError),
}

pub struct Publisher {
    producer: ThreadedProducer<DeliveryTracker>,
    topic: String,
    limits: Limits,
    /// The largest payload plus key this producer sends; see [`message_budget`].
    max_message_bytes: usize,
    /// How rows are encoded on the topic.
    wire_format: WireFormat,
    /// Files are published again from an archive (`--backfill`).
    backfill: bool,
    /// Counts what was sent and, when limited, holds the rate down.
    meter: Option<Arc<Meter>>,
}

/// What a publisher needs of the bridge's settings.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    pub topic: String,
    pub limits: Limits,
    pub wire_format: WireFormat,
}

impl Publisher {
    /// A producer made from `kafka`, publishing to the topic, under the row limits and in the
    /// wire format of `settings`.
    pub fn new(
        kafka: &ClientConfig,
        settings: &PublisherSettings,
        completions: UnboundedSender<Completion>,
        readiness: telemetry::Readiness,
    ) -> Result<Publisher, PublishError> {
        let tracker = DeliveryTracker {
            files: Mutex::new(HashMap::new()),
            completions,
            readiness,
            too_large: TooLargeRefusals {
                any: AtomicBool::new(false),
                smallest_alone: AtomicUsize::new(usize::MAX),
            },
            batch_bytes: sizes::batch_bytes(kafka),
        };
        let producer = kafka
            .create_with_context(tracker)
            .map_err(PublishError::Producer)?;
        Ok(Publisher {
            producer,
            topic: settings.topic.clone(),
            limits: settings.limits,
            max_message_bytes: message_budget(kafka),
            wire_format: settings.wire_format,
            backfill: false,
            meter: None,
        })
    }

    /// Marks every file this publisher sends as a backfill in its end message, counting (and
    /// pacing) what it sends with `meter`.
    pub fn for_backfill(mut self, meter: Arc<Meter>) -> Publisher {
        self.backfill = true;
        self.meter = Some(meter);
        self
    }

    /// Whether the broker refused one of this producer's record batches as too large for the
    /// topic (its `max.message.bytes` below what we sent).
    pub fn refused_as_too_large(&self) -> bool {
        self.producer
            .context()
            .too_large
            .any
            .load(Ordering::Relaxed)
    }

    /// The next producer's sizes after this one's batches were refused as too large; see
    /// [`shrink`].
    pub fn shrink_for(&self, kafka: &mut ClientConfig) -> Option<Shrunk> {
        let smallest = &self.producer.context().too_large.smallest_alone;
        shrink(
            kafka,
            Some(smallest.load(Ordering::Relaxed)).filter(|&b| b < usize::MAX),
        )
    }

    /// Reads `path` and enqueues every row; the outcome arrives later as a [`Completion`] for `seq`.
    /// Blocking: call it from a blocking thread.
    pub fn publish_file(
        &self,
        path: &Path,
        seq: usize,
        shutdown: &CancellationToken,
    ) -> Result<u64, Arc<PublishError>> {
        let tracker = self.producer.context();
        let result = self.enqueue_rows(path, seq, shutdown).map_err(Arc::new);
        tracker.update(seq, |progress| {
            progress.sealed = true;
            match &result {
                Ok(rows) => progress.rows = *rows,
                Err(error) => DeliveryTracker::fail(progress, FileFailure::Publish(error.clone())),
            }
        });
        result
    }

    /// [`Publisher::publish_file`] on a blocking thread (reading a file is blocking I/O); a
    /// failure is logged here and reaches the caller as the file's [`Completion`].
    pub async fn publish_file_in_background(
        self: &Arc<Self>,
        path: PathBuf,
        seq: usize,
        shutdown: &CancellationToken,
    ) -> Result<(), tokio::task::JoinError> {
        let (publisher, token) = (self.clone(), shutdown.clone());
        let published =
            tokio::task::spawn_blocking(move || publisher.publish_file(&path, seq, &token)).await?;
        if let Err(error) = published {
            tracing::warn!(%error, "file not published");
        }
        Ok(())
    }

    fn enqueue_rows(
        &self,
        path: &Path,
        seq: usize,
        shutdown: &CancellationToken,
    ) -> Result<u64, PublishError> {
        let name = file_name(path);
        let open_error = |source| PublishError::Open {
            file: path.display().to_string(),
            source,
        };
        let compression = Compression::of_name(&name).unwrap_or(Compression::Plain);
        let mut file = crate::folder::open_regular(path).map_err(open_error)?;
        let before = identity_of(&file).map_err(open_error)?;
        // When the file appeared in the folder: its change time, which a rename sets. The
        // bridge's own claim is such a rename, within the settle time of the landing, so this is
        // the host's clock, never the writer's: a modification time from a clock years ahead must
        // not let events years ahead pass as not `future` and move the watermark. A backfill takes
        // the earlier of this and the modification time: copying or restoring an archive, or a
        // chmod, renews the change time, while `cp -a`, `rsync -a` and `tar x` keep the
        // modification time from before the file landed, so the same rows are `future` again.
        let landed_ms = if self.backfill {
            before.changed_ms().min(before.modified_ms())
        } else {
            before.changed_ms()
        };
        // A file version is its content: the same rows under another name, dropped again or
        // compressed, are the same file to the consumer (its bad rows are recorded once). The
        // content is decoded whole once before any row is sent, so a stream that does not
        // decode is found before anything of it is published.
        let decoded = content::reader(file.try_clone().map_err(open_error)?, compression)
            .and_then(Digest::of);
        file.rewind().map_err(open_error)?;
        let (digest, rows) = match decoded {
            Ok(digest) => {
                let content_id = content_id(&digest.sha256);
                let content = content::reader(file, compression).map_err(open_error)?;
                let rows = self.send_rows(path, content, &content_id, landed_ms, seq, shutdown)?;
                (digest, rows)
            }
            Err(error) => match DecodeError::from_io(&error) {
                Some(undecodable) => {
                    let digest = Digest::of(Box::new(file)).map_err(open_error)?;
                    let content_id = content_id(&digest.sha256);
                    tracing::warn!(file = %name, error = %undecodable, "the file does not decode; rejected whole");
                    let reject = undecodable_file(&name, &content_id, landed_ms, undecodable);
                    self.send_reject(reject, seq)?;
                    (digest, 1)
                }
                None => return Err(open_error(error)),
            },
        };
        // Re-open by path: a file replaced or rewritten while we read it must be read again.
        let after = crate::folder::open_regular(path).and_then(|file| identity_of(&file));
        let changed = after.ok().as_ref() != Some(&before);
        // Last, and part of the file's completion like every row: what the consumer reconciles
        // the file's ledger against. A file published again sends the same numbers again; a
        // file that changed still accounts for the rows of it that were sent.
        let content_id = content_id(&digest.sha256);
        let end = FileEnd {
            file: name.clone(),
            file_id: content_id.clone(),
            content_sha256: digest.sha256,
            size_bytes: digest.size,
            landed_ms,
            rows_read: rows,
            backfill: self.backfill,
            changed_while_read: changed,
        };
        self.send_tracked(&content_id, &end.encode(), seq)
            .map_err(|source| PublishError::Send {
                file: name.clone(),
                line: 0,
                source,
            })?;
        if changed {
            return Err(PublishError::Changed { file: name });
        }
        Ok(rows)
    }

    /// Sends every row of `content` (the file `seq`); how many.
    fn send_rows(
        &self,
        path: &Path,
        content: Box<dyn Read + Send>,
        content_id: &str,
        landed_ms: i64,
        seq: usize,
        shutdown: &CancellationToken,
    ) -> Result<u64, PublishError> {
        let name = file_name(path);
        let mut reader = RowReader::with_limits(content, &name, content_id, landed_ms, self.limits);
        let mut rows: u64 = 0;
        while let Some(view) = reader.next_view()? {
            if rows.is_multiple_of(SHUTDOWN_CHECK_ROWS) && shutdown.is_cancelled() {
                return Err(PublishError::Abandoned { file: name });
            }
            self.send_row(path, view, seq)?;
            rows += 1;
            process::failpoint::hit_then(process::failpoint::Failpoint::BridgeMidFile, || {
                self.flush(Duration::from_secs(10));
            });
        }
        warn_of_a_bad_header(&reader, &name, rows);
        Ok(rows)
    }

    /// Sends a whole file's reject in place of its rows.
    fn send_reject(&self, reject: RawRow, seq: usize) -> Result<(), PublishError> {
        let key = format!("{}:{}", reject.file, reject.line);
        self.send_tracked(&key, &reject.encode(self.wire_format), seq)
            .map_err(|source| PublishError::Send {
                file: reject.file.clone(),
                line: reject.line,
                source,
            })
    }

    /// Sends one row of the file `seq`: as it is, or, when its message would be larger than the
    /// broker takes, as a `too_large` reference to its bytes.
    fn send_row(&self, path: &Path, view: RowView<'_>, seq: usize) -> Result<(), PublishError> {
        let line = view.row.line;
        let mut key = view.key;
        let mut payload = view.row.encode(self.wire_format);
        if payload.len() + key.len() > self.max_message_bytes {
            let reference = too_large_reference(
                path,
                &view.row,
                &view.bytes,
                payload.len(),
                self.max_message_bytes,
            );
            tracing::warn!(file = %view.row.file, line, encoded_bytes = payload.len(), "row too large for one message; sent by reference");
            key = format!("{}:{line}", view.row.file).into();
            payload = reference.encode(self.wire_format);
        }
        if let Some(meter) = &self.meter {
            meter.row_sent(view.bytes.end - view.bytes.start);
        }
        let fixes = view.fixes.map(|id| id.to_string());
        self.send_tracked_with(&key, &payload, fixes.as_deref(), seq)
            .map_err(|source| PublishError::Send {
                file: view.row.file.to_owned(),
                line,
                source,
            })
    }

    /// Sends a message of the file `seq`, counted as pending until its delivery report.
    fn send_tracked(&self, key: &str, payload: &[u8], seq: usize) -> Result<(), KafkaError> {
        self.send_tracked_with(key, payload, None, seq)
    }

    /// [`Publisher::send_tracked`], with the reject the row fixes, if any, as a header.
    fn send_tracked_with(
        &self,
        key: &str,
        payload: &[u8],
        fixes: Option<&str>,
        seq: usize,
    ) -> Result<(), KafkaError> {
        let tracker = self.producer.context();
        tracker.update(seq, |progress| progress.pending += 1);
        self.send(key, payload, fixes, seq).inspect_err(|_| {
            tracker.update(seq, |progress| progress.pending -= 1);
        })
    }

    fn send(
        &self,
        key: &str,
        payload: &[u8],
        fixes: Option<&str>,
        seq: usize,
    ) -> Result<(), KafkaError> {
        let mut record = BaseRecord::with_opaque_to(&self.topic, seq)
            .key(key)
            .payload(payload);
        if let Some(id) = fixes {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: event_model::wire::FIXES_HEADER,
                value: Some(id),
            }));
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // The background thread drains the queue; wait for room rather than fail.
                    record = returned;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// Waits up to `timeout` for outstanding deliveries. Blocking.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.producer.flush(Timeout::After(timeout)).is_ok()
    }

    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

/// One warning for a file whose every row will be rejected for its header.
fn warn_of_a_bad_header<R: std::io::Read>(reader: &RowReader<R>, name: &str, rows: u64) {
    let missing = reader.missing_columns();
    if reader.is_headerless() {
        tracing::warn!(file = %name, "the file has no header; every line will be rejected as missing_header");
    } else if !missing.is_empty() && rows > 0 {
        tracing::warn!(file = %name, ?missing, "header lacks columns; every row will be rejected");
    }
}

/// A file whose compressed stream does not decode, as its one reject: where decoding stopped.
fn undecodable_file(name: &str, content_id: &str, landed_ms: i64, error: &DecodeError) -> RawRow {
    RawRow {
        v: event_model::wire::WIRE_VERSION,
        file: name.to_owned(),
        file_id: content_id.to_owned(),
        line: error.line,
        landed_ms,
        values: [const { None }; 6],
        defect: Some(Defect {
            code: event_model::RejectCode::UndecodableFile,
            reason: format!("{error}; no row of the file was published"),
            raw_hex: String::new(),
        }),
    }
}

/// The row as a `too_large` reject that names where its bytes are: file, line, byte range of
/// its content and the SHA-256 of those bytes (read again from the file, archived as it is).
fn too_large_reference(
    path: &Path,
    row: &RowRef,
    range: &Range<u64>,
    encoded: usize,
    budget: usize,
) -> RawRow {
    let checksum =
        checksum_of(path, range.clone()).unwrap_or_else(|error| format!("unavailable ({error})"));
    RawRow {
        values: [const { None }; 6],
        defect: Some(Defect {
            code: event_model::RejectCode::TooLarge,
            reason: format!(
                "row encodes to a {encoded}-byte message, more than the {budget} bytes the broker takes; \
                 its bytes are {}..{} of the file (sha256 {checksum})",
                range.start, range.end
            ),
            raw_hex: String::new(),
        }),
        ..row.to_raw_row()
    }
}

/// The version of the open `file`: what tells whether it changed while it was read.
fn identity_of(file: &File) -> std::io::Result<FileIdentity> {
    file.metadata().map(|meta| FileIdentity::of(&meta))
}

pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_by_quarters_then_messages_below_the_smallest_refused_alone() {
        let mut kafka = ClientConfig::new();
        kafka.set("batch.size", "1000000");
        let mut steps = Vec::new();
        while let Some(step) = shrink(&mut kafka, Some(20_050)) {
            steps.push(step);
        }
        assert_eq!(
            steps,
            [
                Shrunk::Batches(250_000),
                Shrunk::Batches(62_500),
                Shrunk::Batches(15_625),
                Shrunk::Batches(LEAST_BATCH_BYTES),
                Shrunk::Messages(20_049),
            ]
        );
        // Rows of 20,050 bytes and more are now `too_large`; smaller ones are sent.
        assert_eq!(message_budget(&kafka), 20_049);
        // Nothing refused alone: nothing more to lower once batches are at the least.
        let mut kafka = ClientConfig::new();
        kafka.set("batch.size", "4096");
        assert_eq!(shrink(&mut kafka, None), None);
        assert_eq!(kafka.get("message.max.bytes"), None);
    }
}
