//! The writer side of the consumer: a batch shared among the writers by partition, each
//! partition positioned from PostgreSQL's checkpoint, written with retries, its continuity checked.

mod positioning;
mod shares;

use shares::{partitions_of, shares_by_partition};

use crate::batch::{classify, Incoming, Rules, WriteBatch};
use crate::log_check::LogProbe;
use crate::metrics::ConsumerMetrics;
use crate::partition::{Anchor, PartitionState};
use crate::sink::{Sink, SinkError};
use crate::{clock, Config, RETRY};
use chrono::TimeDelta;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the running consumer needs of its configuration, taken once at start-up.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSettings {
    pub(crate) topic: String,
    /// `--writers`: connections a batch's partitions are shared among.
    pub(crate) writers: usize,
    pub(crate) stuck_after: Duration,
    pub(crate) dedup_capacity: usize,
    pub(crate) batch_size: usize,
    pub(crate) batch_timeout: Duration,
}

impl ConsumerSettings {
    pub(crate) fn of(config: &Config) -> ConsumerSettings {
        ConsumerSettings {
            topic: config.kafka.topic.clone(),
            writers: usize::from(config.writers.max(1)),
            stuck_after: config.stuck_after,
            dedup_capacity: config.dedup_capacity,
            batch_size: config.batch_size,
            batch_timeout: config.batch_timeout,
        }
    }
}

/// What every writer of a batch shares: the settings, the rules, the metrics, the broker probe.
pub(crate) struct Shared {
    pub(crate) settings: ConsumerSettings,
    pub(crate) metrics: ConsumerMetrics,
    pub(crate) probe: Arc<LogProbe>,
    pub(crate) rules: Rules,
    pub(crate) shutdown: CancellationToken,
    /// How many partitions the last assignment gave this consumer: they share the dedup budget.
    pub(crate) partitions_held: usize,
    /// Per partition, the checkpoint the last move back read again from.
    pub(crate) rewinds: std::sync::Mutex<HashMap<i32, i64>>,
    /// Per partition, the start of the new log its checkpoint was last moved back to: Kafka's
    /// committed offset, of the old log, is ahead of it without anything having been lost.
    pub(crate) restarts: std::sync::Mutex<HashMap<i32, i64>>,
}

/// Why a batch was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Interrupted {
    /// PostgreSQL's checkpoint is behind what was read: position every partition again.
    MovedBack,
    /// Shutdown came first; what was not committed is replayed.
    Stopped,
}

/// Shutdown came first: nothing more was done, and what was not committed is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopped;

/// Whether the messages in hand go on from PostgreSQL's checkpoints.
pub(crate) enum Continuity {
    Continues,
    MovedBack,
}

/// The `--writers` writers: turns batches of messages into committed transactions; owns their
/// connections and what it knows of each partition.
pub(crate) struct Writers {
    pub(crate) shared: Shared,
    /// One connection per writer (`--writers`). PostgreSQL's work on a batch runs on one core
    /// per connection, so a batch's partitions are shared among them and written at once.
    pub(crate) sinks: Vec<Sink>,
    pub(crate) states: HashMap<i32, PartitionState>,
}

/// One writer (of `--writers`) at work on its part of a batch: its connection and the states of
/// the partitions it writes. A partition is in one part only, so the parts' transactions never
/// fence each other.
pub(crate) struct Writer<'w> {
    pub(crate) shared: &'w Shared,
    pub(crate) sink: &'w mut Sink,
    pub(crate) states: HashMap<i32, PartitionState>,
}

impl Writers {
    pub(crate) fn new(shared: Shared, sink: Sink) -> Writers {
        let writers = shared.settings.writers;
        let others: Vec<Sink> = (1..writers).map(|_| sink.another()).collect();
        let sinks = std::iter::once(sink).chain(others).collect();
        Writers {
            shared,
            sinks,
            states: HashMap::new(),
        }
    }

    /// The first writer's connection, for what is not part of a batch (checkpoints, findings).
    pub(crate) fn first_writer(&mut self, states: HashMap<i32, PartitionState>) -> Writer<'_> {
        Writer {
            shared: &self.shared,
            sink: &mut self.sinks[0],
            states,
        }
    }

    /// Writes the messages, each writer its share of the partitions, until all of it is in
    /// Postgres; the offsets to commit to Kafka. Interrupted when shutdown came first (what was
    /// not committed is replayed) or PostgreSQL was found behind what was read.
    pub(crate) async fn write_until_done(
        &mut self,
        messages: Vec<Incoming>,
    ) -> Result<BTreeMap<i32, i64>, Interrupted> {
        let shares = shares_by_partition(messages, self.sinks.len());
        let (shared, states) = (&self.shared, &mut self.states);
        let writes = self
            .sinks
            .iter_mut()
            .zip(shares)
            .filter(|(_, share)| !share.is_empty());
        let writes = writes.map(|(sink, share)| {
            let partitions = partitions_of(&share);
            let mut writer = Writer {
                shared,
                sink,
                states: partitions
                    .iter()
                    .filter_map(|p| states.remove_entry(p))
                    .collect(),
            };
            async move {
                let written = writer.write_until_done(&share, &partitions).await;
                (writer.states, written)
            }
        });
        let mut offsets = BTreeMap::new();
        let mut interrupted = None;
        for (lane_states, written) in futures_util::future::join_all(writes).await {
            states.extend(lane_states);
            match written {
                Ok(batch) => offsets.extend(batch.commit_offsets),
                // Stopping outranks moving back: a stopping consumer repositions nothing.
                Err(why) => interrupted = interrupted.max(Some(why)),
            }
        }
        match interrupted {
            Some(why) => Err(why),
            None => Ok(offsets),
        }
    }
}

impl Shared {
    /// Each held partition's share of the one dedup budget: memory stays bounded however many
    /// partitions this consumer takes over (the states are made again on every rebalance).
    pub(crate) fn dedup_capacity_per_partition(&self) -> usize {
        (self.settings.dedup_capacity / self.partitions_held.max(1)).max(1)
    }

    /// A watermark more than a year beyond --max-future was left by a version without that rule (one event dated
    /// 9999 would keep every later event late for good): forgotten; the next events build it.
    pub(crate) fn sane_watermark(
        &self,
        partition: i32,
        max_event_time: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        // Far beyond any clock skew: a consumer whose clock is hours behind must not forget a
        // watermark its peers keep (classification depends on the log alone).
        let horizon = clock::now()
            .checked_add_signed(self.rules.max_future)?
            .checked_add_signed(TimeDelta::days(365))?;
        match max_event_time {
            Some(max) if max > horizon => {
                tracing::warn!(partition, max_event_time = %max, "checkpointed event time is beyond --max-future; watermark reset");
                None
            }
            other => other,
        }
    }
}

impl Writer<'_> {
    /// Writes the share, retrying through database outages and fencing, until it is in Postgres.
    /// Returns `None` when shutdown came first (nothing committed, nothing lost: it is replayed).
    /// A share that takes longer than `--stuck-after` (failing, or blocked on a lock) marks its
    /// partitions stuck until it is written: nothing waits silently.
    pub(crate) async fn write_until_done(
        &mut self,
        messages: &[Incoming],
        partitions: &[i32],
    ) -> Result<WriteBatch, Interrupted> {
        let (metrics, stuck_after) = (
            self.shared.metrics.clone(),
            self.shared.settings.stuck_after,
        );
        let write = self.write_with_retry(messages, partitions);
        tokio::pin!(write);
        tokio::select! {
            written = &mut write => return written,
            _ = tokio::time::sleep(stuck_after) => {}
        }
        tracing::error!(
            ?partitions,
            stuck_after_s = stuck_after.as_secs(),
            "partitions cannot advance: their batch is not written yet"
        );
        metrics.stuck(partitions, true);
        let written = write.await;
        metrics.stuck(partitions, false);
        if written.is_ok() {
            tracing::info!(?partitions, "partitions moving again");
        }
        written
    }

    pub(crate) async fn write_with_retry(
        &mut self,
        messages: &[Incoming],
        partitions: &[i32],
    ) -> Result<WriteBatch, Interrupted> {
        let started = Instant::now();
        let shared = self.shared;
        let mut backoff = RETRY;
        loop {
            let fresh: Vec<i32> = partitions
                .iter()
                .copied()
                .filter(|p| !self.states.contains_key(p))
                .collect();
            let loaded = match self.load_states(partitions).await {
                Ok(()) => self.check_continuity(messages, partitions, &fresh).await,
                Err(error) => Err(error),
            };
            let result = match loaded {
                Ok(Continuity::MovedBack) => return Err(Interrupted::MovedBack),
                Ok(Continuity::Continues) => {
                    let now = clock::now();
                    let batch = classify(messages, &mut self.states, &shared.rules, now);
                    self.sink
                        .write(&batch)
                        .await
                        .map(|outcome| (batch, outcome))
                }
                Err(error) => Err(error),
            };
            match result {
                Ok((batch, outcome)) => {
                    for checkpoint in &batch.checkpoints {
                        let state = self.states.get_mut(&checkpoint.partition);
                        if let (Some(state), false) = (state, checkpoint.last_message.is_empty()) {
                            state.wrote(Anchor {
                                offset: checkpoint.next_offset - 1,
                                hash: checkpoint.last_message.clone(),
                            });
                        }
                    }
                    let lateness = shared.rules.lateness;
                    shared
                        .metrics
                        .batch_committed(&batch, &outcome, started.elapsed(), lateness);
                    return Ok(batch);
                }
                Err(SinkError::Fenced { partition }) => {
                    tracing::warn!(
                        partition,
                        "partition was written by another consumer; reloading its checkpoint"
                    );
                }
                Err(error) => {
                    tracing::error!(%error, fault = ?error.fault(), "batch not written; will retry");
                    self.sink.reset();
                    if !backoff.wait(&shared.shutdown).await {
                        return Err(Interrupted::Stopped);
                    }
                }
            }
            // The failed attempt moved the in-memory states as if it had committed: start over
            // from Postgres.
            for partition in partitions {
                self.states.remove(partition);
            }
        }
    }
}
