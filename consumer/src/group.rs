//! The group side of the consumer: receiving batches, handing them to the writers, committing
//! offsets to Kafka after PostgreSQL, and leaving the group cleanly.

use crate::batch::{Incoming, MessageBuffer};
use crate::kafka::{GroupEvents, RebalanceWatch};
use crate::writer::{ConsumerSettings, Interrupted, Writers};
use crate::LEAVE_TIMEOUT;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The running consumer: its group membership, the writers of its batches, and the offsets it
/// committed to PostgreSQL. The same shape as the bridge: started (`lib.rs`), `run`, `leave`.
pub(crate) struct GroupConsumer {
    consumer: StreamConsumer<RebalanceWatch>,
    /// The rebalances, one event each, as the consumer's context sends them.
    events: GroupEvents,
    writers: Writers,
    /// Per partition still held, the offset PostgreSQL has: what is committed to Kafka on leaving.
    committed: BTreeMap<i32, i64>,
}

impl GroupConsumer {
    pub(crate) fn new(
        consumer: StreamConsumer<RebalanceWatch>,
        events: GroupEvents,
        writers: Writers,
    ) -> Self {
        GroupConsumer {
            consumer,
            events,
            writers,
            committed: BTreeMap::new(),
        }
    }

    /// Receives, writes and commits batches until shutdown.
    pub(crate) async fn run(&mut self) {
        let (consumer, writers) = (&self.consumer, &mut self.writers);
        let (events, committed) = (&mut self.events, &mut self.committed);
        let (settings, shutdown) = (
            writers.shared.settings.clone(),
            writers.shared.shutdown.clone(),
        );
        let mut messages = next_batch(consumer, events, &settings, &shutdown).await;
        while !shutdown.is_cancelled() {
            if events.take_moved() {
                // Partitions may have changed hands: trust only Postgres for where each one
                // stands, and start reading each exactly there.
                writers.states.clear();
                if writers
                    .position_assigned(consumer, &mut messages)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            // A log replaced under us is read again from its start, whether messages came or not.
            if writers.logs_replaced().await {
                writers.states.clear();
                if writers
                    .position_assigned(consumer, &mut messages)
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            if messages.is_empty() {
                messages = next_batch(consumer, events, &settings, &shutdown).await;
                continue;
            }
            // Messages arrived: the broker is demonstrably there (statistics come every 5 s).
            writers
                .shared
                .metrics
                .readiness
                .set(telemetry::Check::Broker, Ok(()));
            // This batch is written while the next one is received: the broker and the
            // database work at the same time. Batches are still classified and committed
            // strictly in order.
            let in_hand = std::mem::take(&mut messages);
            // A batch that was not written stops the receiving too: after a move back nothing
            // more may be read before every partition is positioned again.
            let receiving = shutdown.child_token();
            let write = async {
                let written = writers.write_until_done(in_hand).await;
                if written.is_err() {
                    receiving.cancel();
                }
                let offsets = written?;
                process::failpoint::hit(process::failpoint::Failpoint::ConsumerAfterDbCommit);
                commit_offsets(consumer, &settings.topic, &offsets, CommitMode::Async);
                Ok(offsets)
            };
            let (written, next) =
                tokio::join!(write, next_batch(consumer, events, &settings, &receiving));
            messages = next;
            match written {
                Ok(offsets) => {
                    committed.extend(&offsets);
                    forget_revoked(events, committed);
                }
                Err(Interrupted::Stopped) => break,
                // PostgreSQL is behind what was read: every partition starts again exactly at
                // its checkpoint, as after a rebalance.
                Err(Interrupted::MovedBack) => {
                    writers.states.clear();
                    if writers
                        .position_assigned(consumer, &mut messages)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    }

    /// Leaves cleanly: makes Kafka's committed offsets match Postgres for the partitions still
    /// held, then leaves the group. Each step is bounded, since a broker that is down would hold
    /// us forever; Postgres has the checkpoint regardless.
    pub(crate) async fn leave(mut self) {
        forget_revoked(&mut self.events, &mut self.committed);
        let mut events = self.events;
        let consumer = Arc::new(self.consumer);
        let committer = consumer.clone();
        let topic = self.writers.shared.settings.topic.clone();
        let committed = self.committed;
        let commit = tokio::task::spawn_blocking(move || {
            commit_offsets(&committer, &topic, &committed, CommitMode::Sync);
        });
        if tokio::time::timeout(LEAVE_TIMEOUT, commit).await.is_err() {
            tracing::warn!("the broker did not confirm the final offset commit; exiting anyway");
        }
        consumer.unsubscribe();
        // The revoke that unsubscribing triggers is served through the consumer's queue: keep
        // polling until it has run, so closing does not wait on it.
        let _ = events.take_moved();
        let deadline = tokio::time::Instant::now() + LEAVE_TIMEOUT;
        while !events.take_moved() && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        }
        let close = tokio::task::spawn_blocking(move || drop(consumer));
        if tokio::time::timeout(LEAVE_TIMEOUT, close).await.is_err() {
            tracing::warn!("the broker did not answer while leaving the group; exiting anyway");
        }
        tracing::info!("consumer stopped");
    }
}

/// Revoked partitions are not committed on leaving: another member may own them now.
fn forget_revoked(events: &mut GroupEvents, committed: &mut BTreeMap<i32, i64>) {
    for partition in events.take_revoked() {
        committed.remove(&partition);
    }
}

/// Collects up to `batch_size` messages, returning early `batch_timeout` after the first one.
pub(crate) async fn next_batch(
    consumer: &StreamConsumer<RebalanceWatch>,
    events: &mut GroupEvents,
    settings: &ConsumerSettings,
    shutdown: &CancellationToken,
) -> Vec<Incoming> {
    let mut messages = Vec::with_capacity(settings.batch_size.min(MAX_PREALLOCATED_BATCH));
    let mut buffer = MessageBuffer::default();
    // One timer for the whole batch, moved once when the first message arrives: a timer made
    // per message cost more than the rest of receiving it.
    let wait = tokio::time::sleep(IDLE_WAKEUP);
    tokio::pin!(wait);
    let mut started = false;
    while messages.len() < settings.batch_size {
        // recv() takes a message off the queue only in the poll that returns it, so dropping
        // it on a timeout loses nothing.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            received = consumer.recv() => match received {
                Ok(message) => {
                    messages.push(Incoming {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(|key| buffer.keep(key)),
                        payload: message.payload().map(|payload| buffer.keep(payload)),
                        fixes: crate::kafka::fixes_of(&message),
                    });
                    if !started {
                        started = true;
                        wait.as_mut().reset(tokio::time::Instant::now() + settings.batch_timeout);
                    }
                }
                Err(error) => tracing::warn!(%error, "kafka error"),
            },
            // Partitions moved: the caller positions them before anything is read.
            _ = events.moved(), if !started => break,
            // Idle, it returns empty every IDLE_WAKEUP: the caller has checks of its own to run.
            _ = &mut wait => break,
        }
    }
    messages
}

/// How often an idle receive loop returns (the logs' anchors are checked between batches); and
/// the most messages a batch reserves room for before any arrive.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
const MAX_PREALLOCATED_BATCH: usize = 16_384;

pub(crate) fn commit_offsets(
    consumer: &StreamConsumer<RebalanceWatch>,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
    mode: CommitMode,
) {
    if offsets.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in offsets {
        // Cannot fail for a fresh list and a valid offset.
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    // A partition no longer assigned refuses the commit; another consumer redoes it from the
    // Postgres checkpoint, so this is not an error.
    if let Err(error) = consumer.commit(&list, mode) {
        tracing::debug!(%error, "offset commit refused");
    }
}
