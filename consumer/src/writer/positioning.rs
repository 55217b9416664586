//! Where each partition starts reading and whether its log goes on: checkpoints loaded and
//! checked against the log, positions taken from PostgreSQL never from Kafka, and a database or
//! a log that moved under the consumer found and recorded.

use super::{Continuity, Shared, Stopped, Writer, Writers};
use crate::batch::Incoming;
use crate::kafka::RebalanceWatch;
use crate::log_check::{LogCheck, LogEventKind};
use crate::partition::{Anchor, PartitionState};
use crate::sink::{Rewind, SinkError, StoredCheckpoint};
use crate::RETRY;
use process::Attempt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;

/// How often each held partition's anchor is looked for in its log.
pub(crate) const ANCHOR_CHECK_EVERY: Duration = Duration::from_secs(10);
/// At most this many anchors are looked for between two batches.
const ANCHORS_PER_LOOK: usize = 4;

impl Writers {
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
    /// a partition that moves are dropped (they are read again from its new position).
    pub(crate) async fn position_assigned(
        &mut self,
        consumer: &StreamConsumer<RebalanceWatch>,
        in_hand: &mut Vec<Incoming>,
    ) -> Result<(), Stopped> {
        let topic = self.shared.settings.topic.clone();
        let Ok(assignment) = consumer.assignment() else {
            return Ok(());
        };
        let partitions: Vec<i32> = assignment
            .elements_for_topic(&topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        if partitions.is_empty() {
            return Ok(());
        }
        self.shared.partitions_held = partitions.len();
        self.load_all_states(&partitions).await?;
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
            self.shared.seek(consumer, partition, start).await?;
            moved.push(partition);
        }
        in_hand.retain(|m| !moved.contains(&m.partition));
        Ok(())
    }

    /// The checkpoints of every assigned partition, retried until readable.
    pub(crate) async fn load_all_states(&mut self, partitions: &[i32]) -> Result<(), Stopped> {
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
        loaded.map_err(|_| Stopped)
    }

    pub(crate) async fn record_rewind(&mut self, partition: i32, committed: i64, checkpoint: i64) {
        tracing::error!(partition, committed, checkpoint, "Kafka's committed offset is ahead of PostgreSQL's checkpoint (a restored database?); reading again from the checkpoint");
        self.shared
            .metrics
            .log_event(partition, LogEventKind::Rewound);
        let rewind = Rewind::CommittedAhead {
            committed,
            checkpoint,
        };
        if let Err(error) = self.sinks[0].record_rewind(partition, rewind).await {
            tracing::warn!(partition, %error, "rewind not recorded");
        }
    }
}

impl Shared {
    /// Without the seek, reading would go on from Kafka's position: never trust it.
    pub(crate) async fn seek(
        &self,
        consumer: &StreamConsumer<RebalanceWatch>,
        partition: i32,
        start: i64,
    ) -> Result<(), Stopped> {
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
            .map(drop)
            .map_err(|_| Stopped)
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
}

impl Writer<'_> {
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
            let rewind = Rewind::MovedBack {
                read_from: first,
                checkpoint: resume,
            };
            self.sink.record_rewind(partition, rewind).await?;
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
