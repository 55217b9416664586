//! The consumer's telemetry: one place per event that both logs and counts.

use crate::batch::WriteBatch;
use crate::sink::{WriteOutcome, WritePath};
use chrono::{TimeDelta, Utc};
use std::time::Duration;
use telemetry::Registry;

pub const ROWS_CONSUMED: &str = "pipeline_consumer_rows_consumed_total";
pub const ROWS_INSERTED: &str = "pipeline_consumer_rows_inserted_total";
pub const ROWS_DUPLICATE: &str = "pipeline_consumer_rows_duplicate_total";
pub const ROWS_REJECTED: &str = "pipeline_consumer_rows_rejected_total";
pub const ROWS_LATE: &str = "pipeline_consumer_rows_late_total";
pub const ROWS_REPLAYED: &str = "pipeline_consumer_rows_replayed_total";
pub const BATCHES: &str = "pipeline_consumer_batches_total";
pub const BATCH_LATENCY: &str = "pipeline_consumer_batch_latency_seconds";
pub const FRESHNESS: &str = "pipeline_consumer_freshness_seconds";
pub const LAG: &str = "pipeline_consumer_lag_messages";
pub const LOG_EVENTS: &str = "pipeline_consumer_log_events_total";
pub const STUCK: &str = "pipeline_consumer_stuck_partitions";
const STUCK_HELP: &str =
    "partitions whose batch has not been written for longer than --stuck-after";
pub const WATERMARK: &str = "pipeline_consumer_watermark_seconds";

const BATCHES_HELP: &str =
    "transactions committed, by how their events went in (copy, staging, row_by_row)";

const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const FRESHNESS_BOUNDS: &[f64] = &[0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Clone, Default)]
pub struct ConsumerMetrics {
    pub registry: Registry,
    /// What `/readyz` answers: database, broker, partitions, nothing stuck.
    pub readiness: telemetry::Readiness,
    stuck_partitions: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<i32>>>,
}

impl ConsumerMetrics {
    pub fn new() -> ConsumerMetrics {
        let metrics = ConsumerMetrics::default();
        for (name, help) in [
            (ROWS_CONSUMED, "messages read from the topic"),
            (ROWS_INSERTED, "events written to ecommerce_events"),
            (
                ROWS_DUPLICATE,
                "rows dropped as duplicates of an earlier event_id",
            ),
            (ROWS_LATE, "events older than their partition's watermark"),
            (
                ROWS_REPLAYED,
                "messages skipped because Postgres already holds them",
            ),
        ] {
            metrics.registry.declare_counter(name, help, &[]);
        }
        metrics.registry.set(STUCK, STUCK_HELP, &[], 0.0);
        let readiness = &metrics.readiness;
        readiness.set("progress", Ok(()));
        readiness.set("database", Err("not checked yet".into()));
        readiness.set("broker", Err("not connected yet".into()));
        // Joining the group is a rebalance in progress.
        readiness.set("partitions", Ok(()));
        for path in [WritePath::Copy, WritePath::Staging, WritePath::RowByRow] {
            metrics
                .registry
                .declare_counter(BATCHES, BATCHES_HELP, &[("path", path.as_str())]);
        }
        metrics
    }

    pub fn batch_committed(
        &self,
        batch: &WriteBatch,
        outcome: &WriteOutcome,
        latency: Duration,
        lateness: TimeDelta,
    ) {
        let stats = batch.stats;
        let duplicates = stats.duplicates
            + (batch.events.len() as u64 - outcome.inserted)
            + (batch.late_rejects.len() as u64 - outcome.late_quarantined)
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
        let registry = &self.registry;
        registry.add(
            ROWS_CONSUMED,
            "messages read from the topic",
            &[],
            stats.rows,
        );
        registry.add(
            ROWS_INSERTED,
            "events written to ecommerce_events",
            &[],
            outcome.inserted,
        );
        registry.add(
            ROWS_DUPLICATE,
            "rows dropped as duplicates of an earlier event_id",
            &[],
            duplicates,
        );
        registry.add(
            ROWS_LATE,
            "events older than their partition's watermark",
            &[],
            stats.late,
        );
        registry.add(
            ROWS_REPLAYED,
            "messages skipped because Postgres already holds them",
            &[],
            stats.replayed,
        );
        registry.add(BATCHES, BATCHES_HELP, &[("path", outcome.path.as_str())], 1);
        for (reason, rows) in &outcome.rejected_by_reason {
            registry.add(
                ROWS_REJECTED,
                "rows quarantined in ecommerce_events_rejected, by reason",
                &[("reason", reason)],
                *rows,
            );
        }
        registry.observe(
            BATCH_LATENCY,
            "time to write and commit one batch",
            LATENCY_BOUNDS,
            latency.as_secs_f64(),
        );
        let now_ms = Utc::now().timestamp_millis();
        registry.observe_many(
            FRESHNESS,
            "file landed (its mtime) to row committed",
            FRESHNESS_BOUNDS,
            batch
                .events
                .iter()
                .map(|row| (now_ms - row.landed_ms).max(0) as f64 / 1000.0),
        );
        for checkpoint in &batch.checkpoints {
            if let Some(max) = checkpoint.max_event_time {
                let watermark = max.checked_sub_signed(lateness).unwrap_or(max);
                let partition = checkpoint.partition.to_string();
                registry.set(
                    WATERMARK,
                    "event-time watermark per partition, Unix seconds",
                    &[("partition", &partition)],
                    watermark.timestamp() as f64,
                );
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
        self.registry.set(STUCK, STUCK_HELP, &[], set.len() as f64);
        let state = if set.is_empty() {
            Ok(())
        } else {
            Err(format!("partitions {set:?} cannot advance"))
        };
        self.readiness.set("progress", state);
    }

    pub fn stuck_count(&self) -> usize {
        self.stuck_partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Counts a finding about a partition's log: `restarted` or `gap`.
    pub fn log_event(&self, partition: i32, kind: &str) {
        let partition = partition.to_string();
        self.registry.add(
            LOG_EVENTS,
            "partition logs found restarted (re-read from their start) or with messages removed before they were read",
            &[("partition", &partition), ("kind", kind)],
            1,
        );
    }

    pub fn lag(&self, partition: i32, messages: i64) {
        let partition = partition.to_string();
        self.registry.set(
            LAG,
            "messages behind the end of the partition",
            &[("partition", &partition)],
            messages as f64,
        );
    }
}
