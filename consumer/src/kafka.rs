//! The Kafka side of the consumer: settings, and a context that notices rebalances.

use crate::metrics::ConsumerMetrics;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

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

/// What the group did to this consumer's partitions, as the rebalance callback saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    Assigned(Vec<i32>),
    /// Their offsets are no longer ours to commit: another member may have moved them on since.
    Revoked(Vec<i32>),
    /// The rebalance failed; what this consumer holds is uncertain.
    Failed,
}

/// Sends each rebalance to the loop as a [`GroupEvent`], so it reloads the checkpoints of what it
/// holds from Postgres; and reports each partition's lag from librdkafka's statistics.
pub struct RebalanceWatch {
    events: UnboundedSender<GroupEvent>,
    metrics: ConsumerMetrics,
}

impl RebalanceWatch {
    /// The context, and the receiving end of its events for the loop.
    pub fn new(metrics: ConsumerMetrics) -> (RebalanceWatch, GroupEvents) {
        let (events, receiver) = unbounded_channel();
        let events_in = GroupEvents {
            receiver,
            moved: false,
            revoked: Vec::new(),
        };
        (RebalanceWatch { events, metrics }, events_in)
    }

    fn send(&self, event: GroupEvent) {
        // The receiver goes only when the consumer is exiting: nothing is left to tell.
        let _ = self.events.send(event);
    }
}

/// The group's events as the loop takes them: whether partitions moved since it last asked,
/// and which were revoked.
pub struct GroupEvents {
    receiver: UnboundedReceiver<GroupEvent>,
    moved: bool,
    revoked: Vec<i32>,
}

impl GroupEvents {
    fn take_in(&mut self, event: GroupEvent) {
        self.moved = true;
        if let GroupEvent::Revoked(partitions) = event {
            self.revoked.extend(partitions);
        }
    }

    fn drain(&mut self) {
        while let Ok(event) = self.receiver.try_recv() {
            self.take_in(event);
        }
    }

    /// True once after every rebalance.
    pub fn take_moved(&mut self) -> bool {
        self.drain();
        std::mem::take(&mut self.moved)
    }

    /// The partitions revoked since the last call.
    pub fn take_revoked(&mut self) -> Vec<i32> {
        self.drain();
        std::mem::take(&mut self.revoked)
    }

    /// Returns after the next rebalance, at once if one happened since [`Self::take_moved`] was
    /// last asked. Cancel-safe: an event received is kept.
    pub async fn moved(&mut self) {
        self.drain();
        if self.moved {
            return;
        }
        match self.receiver.recv().await {
            Some(event) => self.take_in(event),
            // The context is gone with the consumer: no rebalance will come.
            None => std::future::pending().await,
        }
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
                let numbers = partitions
                    .elements()
                    .iter()
                    .map(|p| p.partition())
                    .collect();
                self.send(GroupEvent::Assigned(numbers));
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
                self.send(GroupEvent::Revoked(numbers));
                // A revoke starts a rebalance: ready while it is in progress.
                self.metrics
                    .readiness
                    .set(telemetry::Check::Partitions, Ok(()));
            }
            Rebalance::Error(error) => {
                tracing::warn!(%error, "rebalance failed");
                self.send(GroupEvent::Failed);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_rebalance_is_one_event_taken_once() {
        let (watch, mut events) = RebalanceWatch::new(ConsumerMetrics::new());
        assert!(!events.take_moved());
        watch.send(GroupEvent::Revoked(vec![1, 2]));
        watch.send(GroupEvent::Assigned(vec![3]));
        // Pending: waiting for the next rebalance returns at once, and keeps it for the loop.
        events.moved().await;
        assert!(events.take_moved());
        assert!(!events.take_moved());
        assert_eq!(events.take_revoked(), [1, 2]);
        assert!(events.take_revoked().is_empty());
        watch.send(GroupEvent::Failed);
        assert!(events.take_moved());
    }

    #[tokio::test]
    async fn waiting_for_a_rebalance_returns_when_one_comes() {
        let (watch, mut events) = RebalanceWatch::new(ConsumerMetrics::new());
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), events.moved());
        assert!(waited.await.is_err(), "returned with no rebalance");
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            watch.send(GroupEvent::Assigned(vec![0]));
            watch
        });
        events.moved().await;
        assert!(events.take_moved());
        drop(sender.join());
    }
}
