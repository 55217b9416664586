//! The writer side of the consumer: a batch shared among the writers by partition, each
//! partition positioned from PostgreSQL's checkpoint, written with retries, its continuity checked.

use crate::batch::{classify, Incoming, Rules, WriteBatch};
use crate::kafka::RebalanceWatch;
use crate::log_check::{LogCheck, LogEventKind, LogProbe};
use crate::metrics::ConsumerMetrics;
use crate::partition::{Anchor, PartitionState};
use crate::sink::{Sink, SinkError, StoredCheckpoint};
use crate::{clock, Config, RETRY};
use chrono::TimeDelta;
use process::Attempt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often each held partition's anchor is looked for in its log.
pub(crate) const ANCHOR_CHECK_EVERY: Duration = Duration::from_secs(10);
/// At most this many anchors are looked for between two batches.
const ANCHORS_PER_LOOK: usize = 4;

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

    /// Whether the log of a partition this consumer holds was replaced under it (a topic deleted
    /// and made again, longer than where it stood: nothing else tells). Each partition's anchor,
    /// a message it read, is looked for in the log every [`ANCHOR_CHECK_EVERY`]; one that is not
    /// there any more moves the checkpoint back to the new log's start, recorded, and every
    /// partition is positioned again. What was written from the new log meanwhile is read again
    /// (its events are duplicates by id).
    pub(crate) async fn logs_replaced(&mut self) -> bool {
        let due = self.anchors(ANCHOR_CHECK_EVERY, &[]);
        let mut replaced = Vec::new();
        for (partition, anchor, next) in due.into_iter().take(ANCHORS_PER_LOOK) {
            if self.log_replaced(partition, anchor, next).await {
                replaced.push(partition);
            }
        }
        if replaced.is_empty() {
            return false;
        }
        // Most often the whole topic was made again: every other partition is looked at now,
        // before the positions are taken again from checkpoints that would forget the old log.
        for (partition, anchor, next) in self.anchors(Duration::ZERO, &replaced) {
            self.log_replaced(partition, anchor, next).await;
        }
        true
    }

    /// The anchors due (last looked for `every` ago or more) of the partitions held with a
    /// checkpoint, but `except`; with each partition's checkpoint.
    fn anchors(&mut self, every: Duration, except: &[i32]) -> Vec<(i32, Anchor, i64)> {
        self.states
            .iter_mut()
            .filter(|(partition, _)| !except.contains(partition))
            .filter_map(|(&partition, state)| {
                let next = state.next_offset?;
                Some((partition, state.anchor_due(every)?, next))
            })
            .collect()
    }

    /// Looks for `anchor` in the partition's log; when it is not there any more, moves the
    /// checkpoint (`next`) back to the new log's start and records it. Whether it did.
    async fn log_replaced(&mut self, partition: i32, anchor: Anchor, next: i64) -> bool {
        let probe = self.shared.probe.clone();
        let hash = anchor.hash.clone();
        let checked = tokio::task::spawn_blocking(move || {
            probe.check(partition, anchor.offset + 1, Some(&hash))
        })
        .await;
        match checked {
            Ok(Ok(LogCheck::Restarted { start, reason })) => {
                tracing::error!(partition, checkpoint = next, start, %reason, "the partition's log was replaced under this consumer; reading it again from its start");
                let moved = self.sinks[0]
                    .restart_checkpoint(partition, next, start, &reason)
                    .await;
                if let Err(error) = moved {
                    tracing::warn!(partition, %error, "could not move the checkpoint back yet; will look again");
                    return false;
                }
                self.shared
                    .metrics
                    .log_event(partition, LogEventKind::Restarted);
                self.shared.restarted(partition, start);
                true
            }
            // Still there, or removed by retention since: either way the log goes on.
            Ok(Ok(LogCheck::Continues | LogCheck::Gap { .. })) => {
                if let Some(state) = self.states.get_mut(&partition) {
                    state.anchor_held();
                }
                false
            }
            _ => false,
        }
    }

    /// Starts every assigned partition exactly at PostgreSQL's checkpoint (checked against the
    /// log), or at the log's start where PostgreSQL has none, whatever Kafka's committed offset
    /// says: a database restored from an older backup is behind Kafka, and trusting Kafka would
    /// skip what the backup lost. A rewind is recorded, logged and counted. Messages in hand for
    /// a partition that moves are dropped (they are read again from its new position). False when
    /// shutdown came first.
    pub(crate) async fn position_assigned(
        &mut self,
        consumer: &StreamConsumer<RebalanceWatch>,
        in_hand: &mut Vec<Incoming>,
    ) -> bool {
        let topic = self.shared.settings.topic.clone();
        let Ok(assignment) = consumer.assignment() else {
            return true;
        };
        let partitions: Vec<i32> = assignment
            .elements_for_topic(&topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        if partitions.is_empty() {
            return true;
        }
        self.shared.partitions_held = partitions.len();
        if !self.load_all_states(&partitions).await {
            return false;
        }
        let committed = committed_offsets(consumer, &assignment);
        let mut moved = Vec::new();
        for partition in partitions {
            let checkpoint = self.states.get(&partition).and_then(|s| s.next_offset);
            let start = match checkpoint {
                Some(offset) => offset,
                None => match self.shared.log_start(partition).await {
                    Some(offset) => offset,
                    None => continue,
                },
            };
            let first_in_hand = in_hand
                .iter()
                .find(|m| m.partition == partition)
                .map(|m| m.offset);
            let ahead = committed.get(&partition).filter(|&&c| c > start);
            // Behind Kafka because the log restarted: recorded as that, not as a rewind.
            if let (Some(&ahead), false) = (ahead, self.shared.restarted_at(partition, start)) {
                self.record_rewind(partition, ahead, start).await;
            }
            if first_in_hand == Some(start) {
                continue;
            }
            if !self.shared.seek(consumer, partition, start).await {
                return false;
            }
            moved.push(partition);
        }
        in_hand.retain(|m| !moved.contains(&m.partition));
        true
    }

    /// The checkpoints of every assigned partition, retried until readable. False when shutdown
    /// came first.
    pub(crate) async fn load_all_states(&mut self, partitions: &[i32]) -> bool {
        let states = std::mem::take(&mut self.states);
        let mut writer = self.first_writer(states);
        let shutdown = writer.shared.shutdown.clone();
        let loaded = process::retry(RETRY, &shutdown, async || {
            writer.load_states(partitions).await.map_err(|error| {
                tracing::error!(%error, "checkpoints not readable; will retry before reading");
                writer.sink.reset();
                Attempt::Retry(error)
            })
        })
        .await;
        self.states = writer.states;
        loaded.is_ok()
    }

    pub(crate) async fn record_rewind(&mut self, partition: i32, committed: i64, checkpoint: i64) {
        tracing::error!(partition, committed, checkpoint, "Kafka's committed offset is ahead of PostgreSQL's checkpoint (a restored database?); reading again from the checkpoint");
        self.shared
            .metrics
            .log_event(partition, LogEventKind::Rewound);
        if let Err(error) = self.sinks[0]
            .record_rewind(partition, committed, checkpoint)
            .await
        {
            tracing::warn!(partition, %error, "rewind not recorded");
        }
    }
}

impl Shared {
    /// Without the seek, reading would go on from Kafka's position: never trust it. False when
    /// shutdown came first.
    pub(crate) async fn seek(
        &self,
        consumer: &StreamConsumer<RebalanceWatch>,
        partition: i32,
        start: i64,
    ) -> bool {
        let topic = &self.settings.topic;
        let seek = async || {
            consumer
                .seek(topic, partition, Offset::Offset(start), SEEK_TIMEOUT)
                .map_err(|error| {
                    tracing::warn!(partition, start, %error, "could not move to the checkpoint yet; will retry");
                    Attempt::Retry(error)
                })
        };
        process::retry(SEEK_RETRY, &self.shutdown, seek)
            .await
            .is_ok()
    }

    pub(crate) fn rewound(&self, partition: i32, checkpoint: i64) {
        self.rewinds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(partition, checkpoint);
    }

    pub(crate) fn restarted(&self, partition: i32, start: i64) {
        self.restarts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(partition, start);
    }

    /// Whether the checkpoint `start` is where the partition's log was found restarted; forgets it.
    pub(crate) fn restarted_at(&self, partition: i32, start: i64) -> bool {
        let mut restarts = self
            .restarts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        restarts.remove(&partition) == Some(start)
    }

    pub(crate) fn rewound_to(&self, partition: i32) -> Option<i64> {
        self.rewinds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&partition)
            .copied()
    }

    /// Where the partition's log starts now, asked of the broker.
    pub(crate) async fn log_start(&self, partition: i32) -> Option<i64> {
        let probe = self.probe.clone();
        match tokio::task::spawn_blocking(move || probe.log_start(partition)).await {
            Ok(Ok(offset)) => Some(offset),
            Ok(Err(error)) => {
                tracing::warn!(partition, %error, "could not ask where the log starts; reading from the group's position");
                None
            }
            Err(_) => None,
        }
    }

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
                    let topic = &shared.settings.topic;
                    let batch = classify(messages, &mut self.states, &shared.rules, topic, now);
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

    /// Whether the messages in hand go on where PostgreSQL's checkpoint says each partition
    /// stands. They start further on when the database moved back under this consumer (a
    /// failover to a replica that missed commits, a restore: nothing reports it but the
    /// checkpoint) or the log lost what lay between (retention, recorded as a gap by the log
    /// check); earlier, under a partition this consumer holds, when the log started again (a
    /// topic made again: the log check records the restart). A partition that disagrees with
    /// what this consumer holds is read again from PostgreSQL and its log checked first; still
    /// behind what was read, with the messages still in the log, it is a move back: recorded,
    /// and every partition is positioned again.
    pub(crate) async fn check_continuity(
        &mut self,
        messages: &[Incoming],
        partitions: &[i32],
        fresh: &[i32],
    ) -> Result<Continuity, SinkError> {
        for &partition in partitions {
            let Some(first) = messages
                .iter()
                .find(|m| m.partition == partition)
                .map(|m| m.offset)
            else {
                continue;
            };
            let expected = self.states.get(&partition).and_then(|s| s.next_offset);
            match expected {
                Some(next) if first == next => continue,
                // Offsets already stored: a replay, right after the checkpoint was read (a
                // restart, a rebalance, a retry). Where this consumer holds the partition, it is
                // the log starting again under it (a topic made again, reset to its start).
                Some(next) if first < next && fresh.contains(&partition) => continue,
                _ => {}
            }
            if expected.is_some() {
                // Read it again: the database may have moved since it was loaded.
                self.states.remove(&partition);
                self.load_states(&[partition]).await?;
            }
            let checkpoint = self.states.get(&partition).and_then(|s| s.next_offset);
            let log_start = self.shared.log_start(partition).await;
            let resume = match (checkpoint, log_start) {
                (Some(next), Some(start)) => next.max(start),
                (Some(next), None) => next,
                (None, Some(start)) => start,
                // Never written and the broker cannot say where the log starts: as before.
                (None, None) => continue,
            };
            if first <= resume || self.shared.rewound_to(partition) == Some(resume) {
                // The log has nothing between (a gap the log check recorded), or this is where
                // the last move back already read from (offsets the log never had).
                continue;
            }
            tracing::error!(
                partition,
                read_from = first,
                checkpoint = resume,
                "PostgreSQL's checkpoint is behind what this consumer read (the database moved back: a failover or a restore); reading again from the checkpoint"
            );
            self.shared
                .metrics
                .log_event(partition, LogEventKind::Rewound);
            self.sink
                .record_moved_back(partition, first, resume)
                .await?;
            self.shared.rewound(partition, resume);
            return Ok(Continuity::MovedBack);
        }
        Ok(Continuity::Continues)
    }

    /// Loads the checkpoint of each partition not known yet, and checks that the partition's log
    /// is still the one it describes.
    pub(crate) async fn load_states(&mut self, partitions: &[i32]) -> Result<(), SinkError> {
        let missing: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.states.contains_key(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let stored = self.sink.load_checkpoints(&missing).await?;
        for partition in missing {
            let (next_offset, max_event_time) = match stored.get(&partition) {
                Some(checkpoint) => (
                    Some(self.check_log(partition, checkpoint).await?),
                    self.shared
                        .sane_watermark(partition, checkpoint.max_event_time),
                ),
                None => (None, None),
            };
            let capacity = self.shared.dedup_capacity_per_partition();
            let mut state = PartitionState::new(next_offset, max_event_time, capacity);
            // The checkpoint's last message, just checked to be in the log.
            if let Some(checkpoint) = stored.get(&partition) {
                if let (Some(hash), true) = (
                    &checkpoint.last_message,
                    next_offset == Some(checkpoint.next_offset),
                ) {
                    state.wrote(Anchor {
                        offset: checkpoint.next_offset - 1,
                        hash: hash.clone(),
                    });
                }
            }
            self.states.insert(partition, state);
        }
        Ok(())
    }

    /// Where reading the partition may resume: the checkpoint, or the start of a log that
    /// restarted (whose checkpoint is moved back, and the restart recorded).
    pub(crate) async fn check_log(
        &mut self,
        partition: i32,
        checkpoint: &StoredCheckpoint,
    ) -> Result<i64, SinkError> {
        let probe = self.shared.probe.clone();
        let metrics = &self.shared.metrics;
        let (next, last) = (checkpoint.next_offset, checkpoint.last_message.clone());
        let checked =
            tokio::task::spawn_blocking(move || probe.check(partition, next, last.as_deref()))
                .await;
        match checked {
            Ok(Ok(LogCheck::Continues)) => Ok(next),
            Ok(Ok(LogCheck::Gap { from, to })) => {
                tracing::error!(
                    partition,
                    from,
                    to,
                    "messages were removed from the log before they were read"
                );
                metrics.log_event(partition, LogEventKind::Gap);
                self.sink.record_gap(partition, from, to).await?;
                Ok(next)
            }
            Ok(Ok(LogCheck::Restarted { start, reason })) => {
                tracing::error!(partition, checkpoint = next, start, %reason, "the partition's log restarted; reading it again from its start");
                self.sink
                    .restart_checkpoint(partition, next, start, &reason)
                    .await?;
                metrics.log_event(partition, LogEventKind::Restarted);
                self.shared.restarted(partition, start);
                Ok(start)
            }
            // The broker cannot be asked now: keep the checkpoint; the next assignment asks again.
            Ok(Err(error)) => {
                tracing::warn!(partition, %error, "could not check the partition's log; trusting the checkpoint");
                Ok(next)
            }
            Err(error) => {
                tracing::warn!(partition, %error, "log check did not finish; trusting the checkpoint");
                Ok(next)
            }
        }
    }
}

/// The messages split among `writers` by partition, balancing rows: each partition whole, its
/// order kept. The partitions with the most rows are placed first, each with the least loaded.
pub(crate) fn shares_by_partition(messages: Vec<Incoming>, writers: usize) -> Vec<Vec<Incoming>> {
    let mut rows: HashMap<i32, usize> = HashMap::new();
    for message in &messages {
        *rows.entry(message.partition).or_default() += 1;
    }
    if writers <= 1 || rows.len() <= 1 {
        return vec![messages];
    }
    let mut by_rows: Vec<(i32, usize)> = rows.into_iter().collect();
    by_rows.sort_unstable_by_key(|&(partition, rows)| (std::cmp::Reverse(rows), partition));
    let mut load = vec![0usize; writers];
    let mut writer_of: HashMap<i32, usize> = HashMap::new();
    for (partition, rows) in by_rows {
        let least = (0..writers).min_by_key(|&w| load[w]).unwrap_or(0);
        load[least] += rows;
        writer_of.insert(partition, least);
    }
    let mut shares: Vec<Vec<Incoming>> = load.iter().map(|&n| Vec::with_capacity(n)).collect();
    for message in messages {
        shares[writer_of[&message.partition]].push(message);
    }
    shares
}

pub(crate) fn partitions_of(messages: &[Incoming]) -> Vec<i32> {
    let mut partitions: Vec<i32> = messages.iter().map(|m| m.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    partitions
}

pub(crate) const SEEK_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const SEEK_RETRY: process::Backoff =
    process::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Kafka's committed offset of each assigned partition that has one (for the record only).
pub(crate) fn committed_offsets(
    consumer: &StreamConsumer<RebalanceWatch>,
    assignment: &TopicPartitionList,
) -> BTreeMap<i32, i64> {
    match consumer.committed_offsets(assignment.clone(), Duration::from_secs(5)) {
        Ok(list) => list
            .elements()
            .iter()
            .filter_map(|element| match element.offset() {
                Offset::Offset(offset) => Some((element.partition(), offset)),
                _ => None,
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "could not read Kafka's committed offsets");
            BTreeMap::new()
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn messages(partitions: &[(i32, usize)]) -> Vec<Incoming> {
        let mut messages = Vec::new();
        // Interleaved, as a batch arrives: one of each partition in turn.
        let longest = partitions.iter().map(|&(_, n)| n).max().unwrap_or(0);
        for offset in 0..longest {
            for &(partition, rows) in partitions {
                if offset < rows {
                    messages.push(Incoming {
                        partition,
                        offset: offset as i64,
                        key: None,
                        payload: None,
                        fixes: None,
                    });
                }
            }
        }
        messages
    }

    fn layout(shares: &[Vec<Incoming>]) -> Vec<Vec<(i32, usize)>> {
        shares
            .iter()
            .map(|share| {
                let mut rows: BTreeMap<i32, usize> = BTreeMap::new();
                for message in share {
                    *rows.entry(message.partition).or_default() += 1;
                }
                rows.into_iter().collect()
            })
            .collect()
    }

    #[test]
    fn each_partition_goes_whole_and_in_order_to_the_least_loaded_writer() {
        let shares = shares_by_partition(messages(&[(0, 50), (1, 30), (2, 25), (3, 10)]), 2);
        assert_eq!(
            layout(&shares),
            vec![vec![(0, 50), (3, 10)], vec![(1, 30), (2, 25)]]
        );
        for share in &shares {
            for partition in partitions_of(share) {
                let offsets: Vec<i64> = share
                    .iter()
                    .filter(|m| m.partition == partition)
                    .map(|m| m.offset)
                    .collect();
                assert!(offsets.windows(2).all(|pair| pair[0] + 1 == pair[1]));
            }
        }
    }

    #[test]
    fn one_writer_or_one_partition_takes_the_batch_as_it_is() {
        assert_eq!(
            layout(&shares_by_partition(messages(&[(0, 5), (1, 5)]), 1)),
            vec![vec![(0, 5), (1, 5)]]
        );
        assert_eq!(
            layout(&shares_by_partition(messages(&[(4, 7)]), 3)),
            vec![vec![(4, 7)]]
        );
        let shares = shares_by_partition(messages(&[(0, 3), (1, 3)]), 4);
        assert_eq!(shares.iter().filter(|share| !share.is_empty()).count(), 2);
    }
}
