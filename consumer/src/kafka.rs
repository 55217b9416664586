//! The Kafka side of the consumer: settings, and a context that notices rebalances.

use crate::metrics::ConsumerMetrics;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};

/// Offsets are ours to commit, after Postgres: nothing automatic. A new group reads from the start.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
    // Freshness: an idle fetch returns within 100 ms instead of librdkafka's 500 ms.
    ("fetch.wait.max.ms", "100"),
    // Lag per partition for the metrics, from librdkafka's own bookkeeping.
    ("statistics.interval.ms", "5000"),
    // Bounds the prefetch queue (one queue for all partitions), and so memory, whatever the
    // backlog. On Kafka, which fills it as fast as it drains: 32 MiB peaked at 105-109 MiB RSS
    // (500,000 events, 3 to 96 partitions), 8 MiB at 65-72 MiB. The bound counts payload bytes
    // only: librdkafka's own record of each queued message costs twice as much again (heaptrack:
    // 19 MiB of them at 8 MiB). 4 MiB peaked at 50-53 MiB, 2 MiB at 42-44 MiB but drained 15-20%
    // slower (1,000,000 events, runs interleaved).
    ("queued.max.messages.kbytes", "4096"),
    // Bounds one fetch response, held until its last message is gone: librdkafka's 50 MiB
    // default let a broker answer with 15 MiB at once; at 4 MiB, 17 MiB of responses were held.
    ("fetch.max.bytes", "2097152"),
    // A full queue holds the next fetch back this long: librdkafka's 1 s starved a queue this
    // small (40,000 rows/s instead of 80,000); 10 ms drained no faster than 100 and cost more CPU.
    ("fetch.queue.backoff.ms", "100"),
];

/// Remembers that partitions moved, so the loop reloads their checkpoints from Postgres; and
/// reports each partition's lag from librdkafka's statistics.
pub struct RebalanceWatch {
    moved: AtomicBool,
    /// Partitions revoked since the loop last asked: their offsets are no longer ours to commit
    /// (another member may have moved them on since).
    revoked: std::sync::Mutex<Vec<i32>>,
    /// Wakes a receive loop that waits for messages, so new partitions are positioned at once
    /// (a partition whose group offset is at the log's end would otherwise bring none).
    moved_signal: tokio::sync::Notify,
    metrics: ConsumerMetrics,
}

impl RebalanceWatch {
    pub fn new(metrics: ConsumerMetrics) -> RebalanceWatch {
        RebalanceWatch {
            moved: AtomicBool::new(false),
            revoked: std::sync::Mutex::new(Vec::new()),
            moved_signal: tokio::sync::Notify::new(),
            metrics,
        }
    }

    /// True once after every rebalance.
    pub fn take_moved(&self) -> bool {
        self.moved.swap(false, Ordering::AcqRel)
    }

    /// The partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(
            &mut *self
                .revoked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Returns after the next rebalance (at once if one happened since the last call).
    pub async fn moved(&self) {
        self.moved_signal.notified().await;
    }
}

impl ClientContext for RebalanceWatch {
    fn stats(&self, statistics: Statistics) {
        self.metrics.readiness.set(
            telemetry::Check::Broker,
            pipeline_kafka::broker_reachable(&statistics),
        );
        for topic in statistics.topics.values() {
            for (partition, stats) in &topic.partitions {
                // -1 marks the internal UA partition.
                if *partition >= 0 {
                    self.metrics
                        .partition_end(*partition, stats.hi_offset, stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for RebalanceWatch {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.moved.store(true, Ordering::Release);
        self.moved_signal.notify_one();
        match rebalance {
            Rebalance::Assign(partitions) => {
                // An assignment is the group coordinator answering: the broker is there.
                self.metrics.readiness.set(telemetry::Check::Broker, Ok(()));
                tracing::info!(partitions = %describe(partitions), "partitions assigned");
                // Under cooperative rebalancing an assignment is an increment (often empty after
                // a revoke): what this consumer holds is its whole assignment, asked for here.
                let held = consumer
                    .assignment()
                    .map_or(partitions.count(), |assignment| assignment.count());
                let state = if held > 0 {
                    Ok(())
                } else {
                    Err("the group assigned this consumer no partition".to_owned())
                };
                self.metrics
                    .readiness
                    .set(telemetry::Check::Partitions, state);
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions revoked");
                let numbers: Vec<i32> = partitions
                    .elements()
                    .iter()
                    .map(|p| p.partition())
                    .collect();
                self.metrics.forget_partitions(&numbers);
                self.revoked
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .extend(&numbers);
                // A revoke starts a rebalance: ready while it is in progress.
                self.metrics
                    .readiness
                    .set(telemetry::Check::Partitions, Ok(()));
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        // Harmless: Postgres holds the checkpoint; a late Kafka commit only means more skipping.
        if let Err(error) = result {
            tracing::debug!(%error, "offset commit failed");
        }
    }
}

fn describe(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|p| format!("{}/{}", p.topic(), p.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The reject a row's message says it fixes (its `event_model::wire::FIXES_HEADER`), if any.
pub fn fixes_of(message: &impl rdkafka::Message) -> Option<i64> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|header| header.key == event_model::wire::FIXES_HEADER)
        .and_then(|header| std::str::from_utf8(header.value?).ok()?.parse().ok())
}
