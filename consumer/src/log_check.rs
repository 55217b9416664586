//! Whether a partition's log is still the log a checkpoint was taken on.
//!
//! A checkpoint says "everything below offset N is in PostgreSQL". That is only true of the log it
//! was written against: if the topic was deleted and created again, the broker's storage wiped or
//! the log truncated, offsets start over and "below N" now names new, unread messages. Skipping
//! them as replays would lose them silently. So each checkpoint also keeps a hash of the last
//! message it covers, and on every assignment the consumer compares: the log must reach N, and the
//! message at N-1 must be the same one. A log that restarted is re-read from its start (the primary
//! key drops what is already stored); messages removed by retention before they were read are
//! reported as a gap with their offsets.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

pub use pipeline_store::log_events::LogEventKind;

/// What the log says about a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogCheck {
    /// The log continues the checkpoint (or nothing in it contradicts the checkpoint).
    Continues,
    /// Messages `from..to` were removed from the log before this group read them.
    Gap { from: i64, to: i64 },
    /// The log is not the one the checkpoint describes; it must be read again from `start`.
    Restarted { start: i64, reason: String },
}

/// The hash a checkpoint keeps of the last message it covers: key and value, so a different
/// message at a reused offset does not pass for the old one.
pub fn message_hash(key: Option<&[u8]>, payload: Option<&[u8]>) -> String {
    let key = key.unwrap_or_default();
    let content = [
        &(key.len() as u64).to_be_bytes()[..],
        key,
        payload.unwrap_or_default(),
    ]
    .concat();
    crate::storable::short_hash(&content, 32)
}

/// A group-less consumer that looks at single offsets, apart from the group's own consumer.
pub struct LogProbe {
    consumer: BaseConsumer,
    topic: String,
    timeout: Duration,
}

impl LogProbe {
    pub fn new(config: &ClientConfig, topic: &str) -> KafkaResult<LogProbe> {
        let mut config = config.clone();
        // Its own group id, never joined (it only assigns) and never committed to; librdkafka
        // refuses assignment changes of a consumer with none.
        let group = config.get("group.id").unwrap_or("pipeline").to_owned();
        config.set("group.id", format!("{group}.log-probe"));
        config.remove("group.instance.id");
        config.set("enable.auto.commit", "false");
        config.set("enable.partition.eof", "false");
        config.set("auto.offset.reset", "earliest");
        config.remove("statistics.interval.ms");
        // It reads one message at a time: with the group consumer's prefetch (a 4 MiB queue,
        // 2 MiB fetches) each look filled a queue of its own until unassigned, and a drain
        // peaked 10 MiB higher. At least one message is returned whatever these say.
        config.set("queued.min.messages", "1");
        config.set("queued.max.messages.kbytes", "64");
        config.set("max.partition.fetch.bytes", "65536");
        Ok(LogProbe {
            consumer: config.create()?,
            topic: topic.to_owned(),
            timeout: Duration::from_secs(10),
        })
    }

    /// Checks the log of `partition` against a checkpoint at `next_offset` whose last message
    /// hashed to `last_message` (`None` for checkpoints older than this check). Blocking.
    pub fn check(
        &self,
        partition: i32,
        next_offset: i64,
        last_message: Option<&str>,
    ) -> KafkaResult<LogCheck> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.topic, partition, self.timeout)?;
        if high < next_offset {
            return Ok(LogCheck::Restarted {
                start: low,
                reason: format!(
                    "the log ends at offset {high}, before the checkpoint's {next_offset}: the topic was recreated, the broker's storage wiped or the log truncated"
                ),
            });
        }
        let last = next_offset - 1;
        if last < low {
            return Ok(if low > next_offset {
                LogCheck::Gap {
                    from: next_offset,
                    to: low,
                }
            } else {
                LogCheck::Continues
            });
        }
        let Some(expected) = last_message else {
            return Ok(LogCheck::Continues);
        };
        let found = self.read_one(partition, last)?;
        Ok(match found {
            Some((offset, hash)) if offset == last && hash != expected => LogCheck::Restarted {
                start: low,
                reason: format!(
                    "the message at offset {last} is not the one the checkpoint covers: the log was replaced"
                ),
            },
            _ => LogCheck::Continues,
        })
    }

    /// Every partition of the topic with its log's start and end. Blocking.
    pub fn watermarks(&self) -> KafkaResult<Vec<(i32, i64, i64)>> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), self.timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|topic| topic.partitions().iter().map(|p| p.id()))
            .collect();
        partitions
            .into_iter()
            .map(|partition| {
                let (low, high) =
                    self.consumer
                        .fetch_watermarks(&self.topic, partition, self.timeout)?;
                Ok((partition, low, high))
            })
            .collect()
    }

    /// Where the partition's log starts now. Blocking.
    pub fn log_start(&self, partition: i32) -> KafkaResult<i64> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, self.timeout)
            .map(|(low, _)| low)
    }

    /// The offset and hash of the first message at or after `offset`, if one arrives in time.
    fn read_one(&self, partition: i32, offset: i64) -> KafkaResult<Option<(i64, String)>> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        self.consumer.assign(&list)?;
        let deadline = Instant::now() + self.timeout;
        let mut found = None;
        while found.is_none() && Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) if message.partition() == partition => {
                    found = Some((
                        message.offset(),
                        message_hash(message.key(), message.payload()),
                    ));
                }
                Some(Err(error)) => tracing::debug!(%error, "log probe fetch failed"),
                _ => {}
            }
        }
        self.consumer.unassign()?;
        if found.is_none() {
            tracing::warn!(
                partition,
                offset,
                "log probe read nothing in time; trusting the checkpoint"
            );
        }
        Ok(found)
    }
}
