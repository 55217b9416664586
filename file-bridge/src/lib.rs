//! The file bridge: folder in, topic out.
//!
//! Guarantee: a file leaves the input folder only after the broker acknowledged every row of it.
//! Caveat: a crash (or a failed delivery) after some rows were acknowledged publishes the whole
//! file again; the consumer deduplicates by event_id and by file line, so that costs nothing but time.

mod config;
pub mod folder;
pub mod metrics;
pub mod publisher;

pub use config::Config;

use anyhow::Context;
use metrics::BridgeMetrics;
use publisher::{file_name, Completion, Publisher, PRODUCER_DEFAULTS};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct InFlight {
    path: PathBuf,
    started: Instant,
}

/// Files between pick-up and archive, and what to do with those that failed.
struct Files<'a> {
    config: &'a Config,
    metrics: BridgeMetrics,
    in_flight: HashMap<usize, InFlight>,
    retry_after: HashMap<PathBuf, Instant>,
    /// Published files whose archiving failed: retried alone (never published again), with
    /// backoff, until the archive takes them.
    archive_pending: HashMap<PathBuf, (Instant, Duration)>,
    /// Files that could not be published (reported at the end of --once).
    failed: Vec<String>,
    archived: u64,
    /// A delivery failed: the producer's state (connections, and under `-X enable.idempotence=true`
    /// its producer id and sequences) may no longer match the broker's, so it is replaced once
    /// nothing is in flight.
    producer_suspect: bool,
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    for dir in [&config.input_dir, &config.archive_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create folder {}", dir.display()))?;
    }
    // Health and readiness answer from the start, while the broker is awaited.
    let metrics = BridgeMetrics::new();
    if let Some(addr) = config.metrics_addr {
        let handler = telemetry::with_health(
            metrics.readiness.clone(),
            telemetry::metrics_handler(metrics.registry.clone()),
        );
        let bound = telemetry::serve(addr, handler, shutdown.clone())
            .await
            .with_context(|| format!("failed to listen on {addr} for metrics"))?;
        tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
    }
    let kafka = config
        .kafka
        .client_config("file-bridge", PRODUCER_DEFAULTS)?;
    config.kafka.ensure_topic(&kafka).await?;
    let (completions_tx, mut completions) = mpsc::unbounded_channel();
    let limits = event_model::Limits {
        max_row_bytes: config.max_row_bytes,
        max_field_bytes: config.max_field_bytes,
    };
    let mut publisher = Arc::new(Publisher::new(
        &kafka,
        &config.kafka.topic,
        limits,
        completions_tx.clone(),
        metrics.readiness.clone(),
    )?);
    let budget = Publisher::message_budget(&kafka);
    // JSON writes a control character as six bytes: a row within the caps may still not fit.
    if config.max_row_bytes.saturating_mul(6) > budget {
        tracing::info!(
            max_row_bytes = config.max_row_bytes,
            message_budget = budget,
            "rows whose message would exceed the budget are quarantined as too_large by reference"
        );
    }
    let claimed_dir = folder::claim_dir(&config.input_dir).with_context(|| {
        format!(
            "failed to create the claim folder in {}",
            config.input_dir.display()
        )
    })?;
    let writers = folder::Writers::default();
    let (wake_tx, mut wake) = mpsc::channel(1);
    // Events make us quick and tell us when a writer is done; the periodic rescan makes us right
    // even where events are not delivered.
    let _watcher = folder::watch(&config.input_dir, wake_tx, writers.clone())
        .map_err(|error| tracing::warn!(%error, "no file-system events; relying on rescans"))
        .ok();
    tracing::info!(
        input = %config.input_dir.display(),
        archive = %config.archive_dir.display(),
        topic = %config.kafka.topic,
        brokers = %config.kafka.brokers,
        "bridge started"
    );

    let mut files = Files {
        config: &config,
        metrics,
        in_flight: HashMap::new(),
        retry_after: HashMap::new(),
        archive_pending: HashMap::new(),
        failed: Vec::new(),
        archived: 0,
        producer_suspect: false,
    };
    let mut warned = HashSet::new();
    let mut next_seq = 0;
    let mut scanned_once = false;
    let mut last_progress = Instant::now();
    loop {
        // --once scans a single time: what is in the folder now.
        let scan_now = !config.once || !scanned_once;
        if files.producer_suspect && files.in_flight.is_empty() {
            files.producer_suspect = false;
            let fresh = Publisher::new(
                &kafka,
                &config.kafka.topic,
                limits,
                completions_tx.clone(),
                files.metrics.readiness.clone(),
            )?;
            let old = std::mem::replace(&mut publisher, Arc::new(fresh));
            // Dropping a producer may wait on the network: not on the async threads.
            tokio::task::spawn_blocking(move || drop(old));
            tracing::info!("producer replaced after failed deliveries");
        }
        files.retry_archives();
        let mut unsettled = false;
        if scan_now && !shutdown.is_cancelled() {
            let (ready, still_written) =
                folder::ready_files(&config.input_dir, config.settle_time, &writers, &mut warned)
                    .with_context(|| format!("failed to list {}", config.input_dir.display()))?;
            unsettled = still_written;
            files.retry_after.retain(|_, until| *until > Instant::now());
            // Files claimed earlier (by an earlier run, or waiting for a retry) come first.
            let mut candidates = folder::claimed_files(&claimed_dir)
                .with_context(|| format!("failed to list {}", claimed_dir.display()))?;
            for path in ready {
                // The listing is as old as this loop: a file of it may have been claimed since.
                match folder::claim(&path, &claimed_dir) {
                    Ok(Some(claimed)) => {
                        writers.forget(&path);
                        candidates.push(claimed);
                    }
                    // A file of that name is still being published: this one waits its turn.
                    Ok(None) => unsettled = true,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        tracing::warn!(file = %path.display(), %error, "failed to claim a file")
                    }
                }
            }
            candidates.dedup();
            // --once waits for files still being written: they are in the folder now.
            scanned_once = !unsettled;
            for path in candidates {
                let busy = files.in_flight.values().any(|file| file.path == path)
                    || files.archive_pending.contains_key(&path);
                if busy || files.retry_after.contains_key(&path) || shutdown.is_cancelled() {
                    continue;
                }
                if path.symlink_metadata().is_err() {
                    continue;
                }
                let seq = next_seq;
                next_seq += 1;
                files.in_flight.insert(
                    seq,
                    InFlight {
                        path: path.clone(),
                        started: Instant::now(),
                    },
                );
                files.metrics.file_seen(files.in_flight.len());
                let (publisher, token) = (publisher.clone(), shutdown.clone());
                let result =
                    tokio::task::spawn_blocking(move || publisher.publish_file(&path, seq, &token))
                        .await
                        .context("publishing task panicked")?;
                if let Err(error) = result {
                    tracing::warn!(%error, "file not published");
                }
                while let Ok(done) = completions.try_recv() {
                    files.finish(done);
                }
                if config.once && last_progress.elapsed() >= PROGRESS_EVERY {
                    last_progress = Instant::now();
                    tracing::info!(
                        archived = files.archived,
                        in_flight = files.in_flight.len(),
                        rows_published = files.metrics.rows_published(),
                        "progress"
                    );
                }
            }
        }
        if files.in_flight.is_empty() && ((config.once && scanned_once) || shutdown.is_cancelled())
        {
            break;
        }
        if shutdown.is_cancelled() {
            drain_at_shutdown(&publisher, &mut completions, &mut files).await;
            break;
        }
        let pause = if unsettled {
            config.rescan_interval.min(config.settle_time)
        } else {
            config.rescan_interval
        };
        tokio::select! {
            Some(done) = completions.recv() => files.finish(done),
            _ = wake.recv() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    // Published but not archived: left claimed, published again (harmlessly) by the next run.
    files
        .failed
        .extend(files.archive_pending.keys().map(|path| file_name(path)));
    if !files.failed.is_empty() {
        anyhow::bail!(
            "{} file(s) not published, left in {}: {}",
            files.failed.len(),
            config.input_dir.display(),
            files.failed.join(", ")
        );
    }
    tracing::info!(archived = files.archived, "bridge stopped");
    Ok(())
}

const PROGRESS_EVERY: Duration = Duration::from_secs(5);
const ARCHIVE_RETRY_FIRST: Duration = Duration::from_secs(1);
const ARCHIVE_RETRY_MAX: Duration = Duration::from_secs(60);

impl Files<'_> {
    /// Archives a file whose rows were all acknowledged; otherwise leaves it for a later retry.
    fn finish(&mut self, done: Completion) {
        let Some(file) = self.in_flight.remove(&done.seq) else {
            return;
        };
        self.metrics.in_flight(self.in_flight.len());
        let name = file_name(&file.path);
        if let Some(failure) = done.failure {
            self.metrics
                .failed(&name, &failure, self.config.retry_interval);
            self.producer_suspect = true;
            // A file deleted from the folder meanwhile is not left to anyone to publish again.
            if self.config.once && file.path.symlink_metadata().is_ok() {
                self.failed.push(name);
            }
            self.retry_after
                .insert(file.path, Instant::now() + self.config.retry_interval);
            return;
        }
        event_model::failpoint::hit("bridge-before-archive");
        match folder::archive(&file.path, &self.config.archive_dir) {
            Ok(target) => {
                self.archived += 1;
                let elapsed_ms = file.started.elapsed().as_millis() as u64;
                self.metrics.archived(&name, done.rows, elapsed_ms, &target);
            }
            // Published in full: only the archiving is retried, never the publishing.
            Err(error) => {
                let backoff = ARCHIVE_RETRY_FIRST;
                tracing::error!(file = %name, %error, retry_in_ms = backoff.as_millis() as u64, "failed to archive a published file; will retry");
                self.archive_pending
                    .insert(file.path, (Instant::now() + backoff, backoff));
            }
        }
    }

    /// Tries again to archive published files whose archiving failed, each when its backoff ends.
    fn retry_archives(&mut self) {
        let now = Instant::now();
        let due: Vec<PathBuf> = self
            .archive_pending
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(path, _)| path.clone())
            .collect();
        for path in due {
            let name = file_name(&path);
            match folder::archive(&path, &self.config.archive_dir) {
                Ok(target) => {
                    self.archive_pending.remove(&path);
                    self.archived += 1;
                    tracing::info!(file = %name, archive = %target.display(), "archived after retrying");
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    self.archive_pending.remove(&path);
                }
                Err(error) => {
                    let backoff = self.archive_pending[&path].1 * 2;
                    let backoff = backoff.min(ARCHIVE_RETRY_MAX);
                    tracing::error!(file = %name, %error, retry_in_ms = backoff.as_millis() as u64, "failed to archive a published file; will retry");
                    self.archive_pending.insert(path, (now + backoff, backoff));
                }
            }
        }
    }
}

/// Gives outstanding deliveries until the shutdown timeout, archiving what completes.
async fn drain_at_shutdown(
    publisher: &Arc<Publisher>,
    completions: &mut mpsc::UnboundedReceiver<Completion>,
    files: &mut Files<'_>,
) {
    let flusher = publisher.clone();
    let timeout = files.config.shutdown_timeout;
    let flushed = tokio::task::spawn_blocking(move || flusher.flush(timeout))
        .await
        .unwrap_or(false);
    while let Ok(done) = completions.try_recv() {
        files.finish(done);
    }
    if !flushed || !files.in_flight.is_empty() {
        tracing::warn!(
            unconfirmed_messages = publisher.in_flight(),
            files_left = files.in_flight.len(),
            "shutdown before every delivery was confirmed; those files are published again on restart"
        );
    }
}
