//! The group's lag where nothing is consumed (`--dashboard-only`): each partition's log end from
//! the broker against PostgreSQL's checkpoint, every few seconds, so the dashboard shows the whole
//! group's lag whichever consumers hold the partitions.

use crate::log_check::LogProbe;
use crate::metrics::ConsumerMetrics;
use pipeline_store::checkpoints;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(5);

pub struct LagWatch {
    probe: Arc<LogProbe>,
    pool: PgPool,
    group: String,
    topic: String,
    metrics: ConsumerMetrics,
}

impl LagWatch {
    pub fn new(
        probe: LogProbe,
        pool: PgPool,
        group: &str,
        topic: &str,
        metrics: ConsumerMetrics,
    ) -> LagWatch {
        LagWatch {
            probe: Arc::new(probe),
            pool,
            group: group.to_owned(),
            topic: topic.to_owned(),
            metrics,
        }
    }

    /// Measures until shutdown. A broker or database that does not answer leaves the lag unknown
    /// (`n/a` on the page), never a stale figure.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut known: Vec<i32> = Vec::new();
        loop {
            match self.measure().await {
                Ok(lag) => {
                    let gone: Vec<i32> = known
                        .iter()
                        .copied()
                        .filter(|partition| !lag.contains_key(partition))
                        .collect();
                    self.metrics.forget_partitions(&gone);
                    for (partition, messages) in &lag {
                        self.metrics.lag(*partition, *messages);
                    }
                    known = lag.into_keys().collect();
                }
                Err(error) => {
                    tracing::debug!(%error, "the group's lag could not be measured");
                    self.metrics.forget_partitions(&known);
                    known.clear();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Per partition: the log's end less PostgreSQL's checkpoint (the log's start where there is
    /// none yet).
    async fn measure(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        let checkpoints: BTreeMap<i32, i64> =
            checkpoints::of_group(&self.pool, &self.group, &self.topic)
                .await?
                .into_iter()
                .map(|c| (c.kafka_partition, c.next_offset))
                .collect();
        let probe = self.probe.clone();
        let ends = tokio::task::spawn_blocking(move || probe.watermarks()).await??;
        Ok(ends
            .into_iter()
            .map(|(partition, low, high)| {
                let done = checkpoints.get(&partition).copied().unwrap_or(low);
                (partition, (high - done).max(0))
            })
            .collect())
    }
}
