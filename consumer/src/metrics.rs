//! The consumer's telemetry: one place per event that both logs and counts. Every metric is
//! declared here once, with its help text, on prometheus-client.

use crate::batch::WriteBatch;
use crate::sink::{WriteOutcome, WritePath};
use chrono::{TimeDelta, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Unit;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use telemetry::Registry;

const LATENCY_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const FRESHNESS_BOUNDS: [f64; 11] = [0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogEventLabels {
    partition: i32,
    kind: &'static str,
}

#[derive(Clone)]
pub struct ConsumerMetrics {
    pub registry: Arc<Registry>,
    /// What `/readyz` answers: database, broker, partitions, nothing stuck.
    pub readiness: telemetry::Readiness,
    rows_consumed: Counter,
    rows_inserted: Counter,
    rows_duplicate: Counter,
    rows_rejected: Family<ReasonLabel, Counter>,
    rows_late: Counter,
    rows_replayed: Counter,
    batches: Family<PathLabel, Counter>,
    batch_duration: Histogram,
    freshness: Histogram,
    lag: Family<PartitionLabel, Gauge>,
    watermark: Family<PartitionLabel, Gauge<f64, AtomicU64>>,
    stuck: Gauge,
    log_events: Family<LogEventLabels, Counter>,
    /// Lag by partition, for the dashboard's total (a family cannot be summed).
    lag_by_partition: Arc<Mutex<BTreeMap<i32, i64>>>,
    /// Per partition, the next offset PostgreSQL holds everything below: what lag is measured
    /// from (librdkafka's own figure trails our asynchronous Kafka commits).
    written_up_to: Arc<Mutex<BTreeMap<i32, i64>>>,
    stuck_partitions: Arc<Mutex<BTreeSet<i32>>>,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsumerMetrics {
    // Long by design: one registration per metric, a list rather than logic.
    pub fn new() -> ConsumerMetrics {
        let mut registry = Registry::with_prefix("pipeline_consumer");
        telemetry::register_build_info(&mut registry);
        let metrics = ConsumerMetrics {
            registry: Arc::default(),
            readiness: telemetry::Readiness::default(),
            rows_consumed: Counter::default(),
            rows_inserted: Counter::default(),
            rows_duplicate: Counter::default(),
            rows_rejected: Family::default(),
            rows_late: Counter::default(),
            rows_replayed: Counter::default(),
            batches: Family::default(),
            batch_duration: Histogram::new(LATENCY_BOUNDS),
            freshness: Histogram::new(FRESHNESS_BOUNDS),
            lag: Family::default(),
            watermark: Family::default(),
            stuck: Gauge::default(),
            log_events: Family::default(),
            lag_by_partition: Arc::default(),
            written_up_to: Arc::default(),
            stuck_partitions: Arc::default(),
        };
        let r = &mut registry;
        r.register(
            "rows_consumed",
            "messages read from the topic",
            metrics.rows_consumed.clone(),
        );
        r.register(
            "rows_inserted",
            "events written to ecommerce_events",
            metrics.rows_inserted.clone(),
        );
        r.register(
            "rows_duplicate",
            "rows dropped as duplicates of an earlier event_id",
            metrics.rows_duplicate.clone(),
        );
        r.register(
            "rows_rejected",
            "rows quarantined in ecommerce_events_rejected, by reason",
            metrics.rows_rejected.clone(),
        );
        r.register(
            "rows_late",
            "events older than their partition's watermark",
            metrics.rows_late.clone(),
        );
        r.register(
            "rows_replayed",
            "messages skipped because Postgres already holds them",
            metrics.rows_replayed.clone(),
        );
        r.register(
            "batches",
            "transactions committed, by how their events went in (copy, staging, row_by_row)",
            metrics.batches.clone(),
        );
        r.register_with_unit(
            "batch_duration",
            "time to write and commit one batch",
            Unit::Seconds,
            metrics.batch_duration.clone(),
        );
        r.register_with_unit(
            "freshness",
            "file landed to row committed",
            Unit::Seconds,
            metrics.freshness.clone(),
        );
        r.register(
            "lag_messages",
            "messages behind the end of the partition",
            metrics.lag.clone(),
        );
        r.register(
            "watermark_timestamp_seconds",
            "event-time watermark per partition, Unix seconds",
            metrics.watermark.clone(),
        );
        r.register(
            "stuck_partitions",
            "partitions whose batch has not been written for longer than --stuck-after",
            metrics.stuck.clone(),
        );
        r.register(
            "log_events",
            "partition logs found restarted (re-read from their start) or with messages removed before they were read",
            metrics.log_events.clone(),
        );
        // Every write path is exported from the start, at 0.
        for path in [WritePath::Copy, WritePath::Staging, WritePath::RowByRow] {
            metrics
                .batches
                .get_or_create(&PathLabel {
                    path: path.as_str(),
                })
                .inc_by(0);
        }
        let readiness = &metrics.readiness;
        readiness.set(telemetry::Check::Progress, Ok(()));
        readiness.set(telemetry::Check::Database, Err("not checked yet".into()));
        readiness.set(telemetry::Check::Broker, Err("not connected yet".into()));
        // Joining the group is a rebalance in progress.
        readiness.set(telemetry::Check::Partitions, Ok(()));
        ConsumerMetrics {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    pub fn batch_committed(
        &self,
        batch: &WriteBatch,
        outcome: &WriteOutcome,
        latency: Duration,
        lateness: TimeDelta,
    ) {
        let stats = batch.stats;
        // Valid rows are events, late rows or window duplicates; what of them was neither stored
        // nor kept as late was a duplicate (some window duplicates are stored after all).
        let valid = batch.events.len() + batch.late_rejects.len() + batch.duplicates.len();
        let duplicates = (valid as u64).saturating_sub(outcome.inserted + outcome.late_quarantined)
            + (batch.rejects.len() as u64).saturating_sub(outcome.rejected);
        tracing::info!(
            rows = stats.rows,
            inserted = outcome.inserted,
            duplicates,
            rejected = outcome.rejected + outcome.late_quarantined,
            late = stats.late,
            replayed = stats.replayed,
            latency_ms = latency.as_millis() as u64,
            "batch committed"
        );
        self.written_up_to
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(&batch.commit_offsets);
        self.rows_consumed.inc_by(stats.rows);
        self.rows_inserted.inc_by(outcome.inserted);
        self.rows_duplicate.inc_by(duplicates);
        self.rows_late.inc_by(stats.late);
        self.rows_replayed.inc_by(stats.replayed);
        self.batches
            .get_or_create(&PathLabel {
                path: outcome.path.as_str(),
            })
            .inc();
        for (reason, rows) in &outcome.rejected_by_reason {
            self.rows_rejected
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str().to_owned(),
                })
                .inc_by(*rows);
        }
        self.batch_duration.observe(latency.as_secs_f64());
        self.observe_freshness(batch);
        self.set_watermarks(batch, lateness);
    }

    fn observe_freshness(&self, batch: &WriteBatch) {
        let now_ms = Utc::now().timestamp_millis();
        for row in &batch.events {
            self.freshness
                .observe((now_ms - row.landed_ms).max(0) as f64 / 1000.0);
        }
    }

    fn set_watermarks(&self, batch: &WriteBatch, lateness: TimeDelta) {
        for checkpoint in &batch.checkpoints {
            if let Some(max) = checkpoint.max_event_time {
                let watermark = max.checked_sub_signed(lateness).unwrap_or(max);
                self.watermark
                    .get_or_create(&PartitionLabel {
                        partition: checkpoint.partition,
                    })
                    .set(watermark.timestamp() as f64);
            }
        }
    }

    /// Marks `partitions` as stuck (or moving again); the gauge counts the stuck ones.
    pub fn stuck(&self, partitions: &[i32], stuck: bool) {
        let mut set = self
            .stuck_partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for partition in partitions {
            if stuck {
                set.insert(*partition);
            } else {
                set.remove(partition);
            }
        }
        self.stuck.set(set.len() as i64);
        let state = if set.is_empty() {
            Ok(())
        } else {
            Err(format!("partitions {set:?} cannot advance"))
        };
        self.readiness.set(telemetry::Check::Progress, state);
    }

    /// Counts a finding about a partition's log: `restarted` or `gap`.
    pub fn log_event(&self, partition: i32, kind: crate::log_check::LogEventKind) {
        let kind = kind.as_str();
        self.log_events
            .get_or_create(&LogEventLabels { partition, kind })
            .inc();
    }

    /// Records a partition's lag from the end of its log (`high_watermark`): measured from what
    /// PostgreSQL holds where this consumer wrote to it, else from librdkafka's `fallback`.
    pub fn partition_end(&self, partition: i32, high_watermark: i64, fallback: i64) {
        let written = self
            .written_up_to
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&partition)
            .copied();
        let lag = match written {
            Some(next) if high_watermark >= 0 => (high_watermark - next).max(0),
            _ if fallback >= 0 => fallback,
            _ => return,
        };
        self.lag(partition, lag);
    }

    pub fn lag(&self, partition: i32, messages: i64) {
        self.lag
            .get_or_create(&PartitionLabel { partition })
            .set(messages);
        self.lag_by_partition
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(partition, messages);
    }

    /// Drops the per-partition series of partitions this consumer no longer has: another
    /// consumer reports them now.
    pub fn forget_partitions(&self, partitions: &[i32]) {
        let mut lag = self
            .lag_by_partition
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for partition in partitions {
            let label = PartitionLabel {
                partition: *partition,
            };
            self.lag.remove(&label);
            self.watermark.remove(&label);
            lag.remove(partition);
            self.written_up_to
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(partition);
        }
    }

    /// Total lag over this consumer's partitions; `None` before the first statistics.
    pub fn lag_total(&self) -> Option<i64> {
        let lag = self
            .lag_by_partition
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (!lag.is_empty()).then(|| lag.values().sum())
    }

    pub fn rows_inserted(&self) -> u64 {
        self.rows_inserted.get()
    }
}

impl operator_tools::dashboard::LiveFigures for ConsumerMetrics {
    fn lag_total(&self) -> Option<i64> {
        ConsumerMetrics::lag_total(self)
    }

    fn rows_inserted(&self) -> u64 {
        ConsumerMetrics::rows_inserted(self)
    }

    fn metrics_text(&self) -> String {
        telemetry::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_that_moves_away_leaves_no_series_behind() {
        let metrics = ConsumerMetrics::new();
        metrics.lag(0, 5);
        metrics.lag(1, 7);
        assert_eq!(metrics.lag_total(), Some(12));
        metrics.forget_partitions(&[1]);
        let text = telemetry::render(&metrics.registry);
        assert!(
            text.contains("pipeline_consumer_lag_messages{partition=\"0\"} 5"),
            "{text}"
        );
        assert!(!text.contains("partition=\"1\""), "{text}");
        assert_eq!(metrics.lag_total(), Some(5));
    }
}
