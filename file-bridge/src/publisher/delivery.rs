//! Delivery reports, counted per file: a file completes when each of its rows has an outcome,
//! with the first failure among them.

use super::PublishError;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// A file whose every row has a delivery outcome.
#[derive(Debug)]
pub struct Completion {
    pub seq: usize,
    pub rows: u64,
    /// Why the file must not be archived; `None` when every row was acknowledged.
    pub failure: Option<FileFailure>,
}

/// Why a file was not published whole: the first of its failures, as it was.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FileFailure {
    /// The broker did not take a row (the rows after it may have gone).
    #[error("delivery failed: {0}")]
    Delivery(KafkaError),
    /// Reading or sending stopped (shared: the error is not `Clone`).
    #[error(transparent)]
    Publish(Arc<PublishError>),
}

#[derive(Default)]
pub(super) struct Progress {
    pub(super) pending: u64,
    pub(super) rows: u64,
    pub(super) sealed: bool,
    pub(super) failure: Option<FileFailure>,
}

pub struct DeliveryTracker {
    pub(super) files: Mutex<HashMap<usize, Progress>>,
    pub(super) completions: UnboundedSender<Completion>,
    pub(super) readiness: telemetry::Readiness,
    /// What the broker refused as larger than the topic takes.
    pub(super) too_large: TooLargeRefusals,
    /// This producer's `batch.size`.
    pub(super) batch_bytes: usize,
}

/// The broker's refusals of record batches as larger than the topic takes (`max.message.bytes`).
#[derive(Debug, Default)]
pub(super) struct TooLargeRefusals {
    pub(super) any: AtomicBool,
    /// The smallest refused message larger than `batch.size`: librdkafka sends such a message in
    /// a batch of its own, so the topic takes nothing that large.
    pub(super) smallest_alone: AtomicUsize,
}

impl DeliveryTracker {
    pub(super) fn update(&self, seq: usize, change: impl FnOnce(&mut Progress)) {
        let mut files = self
            .files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let progress = files.entry(seq).or_default();
        change(progress);
        if progress.sealed && progress.pending == 0 {
            let progress = files.remove(&seq).unwrap_or_default();
            // The receiver only goes away when the bridge is exiting; nothing is left to tell.
            let _ = self.completions.send(Completion {
                seq,
                rows: progress.rows,
                failure: progress.failure,
            });
        }
    }

    pub(super) fn record_too_large(&self, bytes: usize) {
        self.too_large.any.store(true, Ordering::Relaxed);
        if bytes > self.batch_bytes {
            let smallest = &self.too_large.smallest_alone;
            smallest.fetch_min(bytes, Ordering::Relaxed);
        }
    }

    pub(super) fn fail(progress: &mut Progress, failure: FileFailure) {
        progress.failure.get_or_insert(failure);
    }
}

impl ClientContext for DeliveryTracker {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.readiness.set(
            telemetry::Check::Broker,
            pipeline_kafka::broker_reachable(&statistics),
        );
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        self.update(seq, |progress| {
            progress.pending = progress.pending.saturating_sub(1);
            if let Err((error, message)) = result {
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
                    self.record_too_large(message.payload_len() + message.key_len());
                }
                Self::fail(progress, FileFailure::Delivery(error.clone()));
            }
        });
    }
}
