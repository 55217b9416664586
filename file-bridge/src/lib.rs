//! The file bridge: folder in, topic out.
//!
//! Guarantee: a file leaves the input folder only after the broker acknowledged every row of it.
//! Caveat: a crash (or a failed delivery) after some rows were acknowledged publishes the whole
//! file again; the consumer deduplicates by event_id and by file line, so that costs nothing but time.

mod backfill;
mod config;
pub mod content;
mod files;
pub mod folder;
mod identity;
mod input_folder;
pub mod metrics;
pub mod publisher;

pub use config::Config;

use anyhow::Context;
use files::{FileSettings, Files, RunMode};
use identity::FileNode;
use metrics::BridgeMetrics;
use publisher::{Completion, Publisher, PRODUCER_DEFAULTS};
use rdkafka::config::ClientConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(dir) = &config.backfill {
        return backfill::run(&config, dir, shutdown).await;
    }
    Bridge::start(&config, shutdown).await?.run().await
}

const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long a claim folder may be missing from a present input folder before it is made again:
/// longer than an `rm -rf` of the input folder takes between the two.
const CLAIM_FOLDER_GRACE: Duration = Duration::from_millis(500);

/// The running bridge: its producer, its view of the folder, and the files between claim and
/// archive. `run` is the loop; each step is a method.
struct Bridge {
    settings: BridgeSettings,
    shutdown: CancellationToken,
    kafka: ClientConfig,
    publisher: Arc<Publisher>,
    completions_tx: mpsc::UnboundedSender<Completion>,
    completions: mpsc::UnboundedReceiver<Completion>,
    wake_tx: mpsc::Sender<()>,
    wake: mpsc::Receiver<()>,
    /// Kept for its events; made again when the input folder is.
    watcher: Option<notify::RecommendedWatcher>,
    writers: folder::Writers,
    claims: folder::ClaimFolder,
    /// The input folder as last seen (device and inode), `None` while it is missing: a folder
    /// removed and made again, re-mounted or replaced by a symlink is another folder.
    input_folder: Option<FileNode>,
    /// Since when the claim folder has been missing from a present input folder.
    claims_missing_since: Option<Instant>,
    /// A folder that could not be listed at the last look.
    unlistable: Option<PathBuf>,
    folder_memory: folder::FolderMemory,
    next_seq: usize,
    mode: RunMode,
    scanned_once: bool,
    last_progress: Instant,
    files: Files,
}

/// What the running bridge needs of its configuration, taken once at start-up.
#[derive(Debug, Clone)]
struct BridgeSettings {
    input_dir: PathBuf,
    settle_time: Duration,
    rescan_interval: Duration,
    shutdown_timeout: Duration,
    publisher: publisher::PublisherSettings,
}

impl BridgeSettings {
    fn of(config: &Config) -> BridgeSettings {
        BridgeSettings {
            input_dir: config.input_dir.clone(),
            settle_time: config.settle_time,
            rescan_interval: config.rescan_interval,
            shutdown_timeout: config.shutdown_timeout,
            publisher: config.publisher_settings(),
        }
    }
}

/// Health and readiness answer from the start, while the broker is awaited.
async fn serve_health(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<BridgeMetrics> {
    let metrics = BridgeMetrics::new();
    telemetry::serve_metrics(
        config.metrics_addr,
        metrics.registry.clone(),
        metrics.readiness.clone(),
        shutdown.clone(),
    )
    .await?;
    Ok(metrics)
}

/// The producer's settings, once the topic exists; its metadata coming back is a working broker
/// connection, so readiness says so at once.
async fn connect_to_topic(
    config: &Config,
    metrics: &BridgeMetrics,
) -> anyhow::Result<rdkafka::ClientConfig> {
    let kafka = config
        .kafka
        .client_config("file-bridge", PRODUCER_DEFAULTS)?;
    config.kafka.ensure_topic(&kafka).await?;
    metrics.readiness.set(telemetry::Check::Broker, Ok(()));
    Ok(kafka)
}

fn log_start(config: &Config) {
    tracing::info!(
        input = %config.input_dir.display(),
        archive = %config.archive_dir.display(),
        topic = %config.kafka.topic,
        brokers = %config.kafka.brokers,
        "bridge started"
    );
}

impl Bridge {
    /// Folders, metrics and health, the topic, the producer and the folder watcher: set-up in
    /// the order it must happen, read top to bottom.
    async fn start(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Bridge> {
        make_folders(config)?;
        let metrics = serve_health(config, &shutdown).await?;
        let mode = if config.once {
            RunMode::Once
        } else {
            RunMode::Follow
        };
        let kafka = connect_to_topic(config, &metrics).await?;
        let (completions_tx, completions) = mpsc::unbounded_channel();
        let publisher = Publisher::new(
            &kafka,
            &config.publisher_settings(),
            completions_tx.clone(),
            metrics.readiness.clone(),
        )?;
        report_message_budget(config, &kafka);
        let claims = take_claim_folder(config)?;
        let writers = folder::Writers::default();
        let (wake_tx, wake) = mpsc::channel(1);
        // Events make us quick and tell us when a writer is done; the periodic rescan makes us
        // right even where events are not delivered.
        let watcher = watch_input(&config.input_dir, &wake_tx, &writers);
        log_start(config);
        Ok(Bridge {
            settings: BridgeSettings::of(config),
            shutdown,
            kafka,
            publisher: Arc::new(publisher),
            completions_tx,
            completions,
            input_folder: input_folder::folder_identity(&config.input_dir),
            claims_missing_since: None,
            unlistable: None,
            wake_tx,
            wake,
            watcher,
            writers,
            claims,
            folder_memory: folder::FolderMemory::default(),
            next_seq: 0,
            mode,
            scanned_once: false,
            last_progress: Instant::now(),
            files: Files::new(
                FileSettings {
                    archive_dir: config.archive_dir.clone(),
                    retry_interval: config.retry_interval,
                    mode,
                },
                metrics,
            ),
        })
    }

    async fn run(mut self) -> anyhow::Result<()> {
        loop {
            self.replace_suspect_producer()?;
            self.files.retry_archives();
            // --once scans a single time: what is in the folder now.
            let scan = !self.scanned_everything() && self.follow_input_folder();
            let unsettled = if scan && !self.shutdown.is_cancelled() {
                self.scan_and_publish().await?
            } else {
                false
            };
            if self.should_exit() {
                break;
            }
            if self.shutdown.is_cancelled() {
                self.drain().await;
                break;
            }
            self.wait(unsettled).await;
        }
        self.stop()
    }

    /// Whether the bridge is done: nothing in flight, and stopped or, under `--once`, everything
    /// in the folder at its one look published.
    fn should_exit(&self) -> bool {
        self.files.publishing() == 0 && (self.scanned_everything() || self.shutdown.is_cancelled())
    }

    /// Under `--once`, whether its one look found every file complete and took them.
    fn scanned_everything(&self) -> bool {
        self.mode == RunMode::Once && self.scanned_once
    }

    /// The topic takes smaller record batches than we sent (its `max.message.bytes`, which the
    /// bridge may not be allowed to read): the next producer sends smaller ones, and so on until
    /// the topic takes them. Kept for the rest of the run.
    fn shrink_batches(&mut self) {
        match self.publisher.shrink_for(&mut self.kafka) {
            Some(publisher::Shrunk::Batches(bytes)) => tracing::warn!(
                batch_bytes = bytes,
                "the broker refused a record batch as larger than the topic takes; sending smaller ones"
            ),
            Some(publisher::Shrunk::Messages(bytes)) => tracing::warn!(
                row_message_bytes = bytes,
                "the broker refused a row's message as larger than the topic takes; rows that large \
                 are quarantined as too_large"
            ),
            None => tracing::error!(
                least_batch_bytes = publisher::LEAST_BATCH_BYTES,
                "the broker refuses record batches of the least size as too large; raise the \
                 topic's max.message.bytes"
            ),
        }
    }

    /// After a failed delivery, a fresh producer once nothing is in flight.
    fn replace_suspect_producer(&mut self) -> anyhow::Result<()> {
        if !self.files.producer_suspect || self.files.publishing() > 0 {
            return Ok(());
        }
        self.files.producer_suspect = false;
        if self.publisher.refused_as_too_large() {
            self.shrink_batches();
        }
        let fresh = Publisher::new(
            &self.kafka,
            &self.settings.publisher,
            self.completions_tx.clone(),
            self.files.metrics.readiness.clone(),
        )?;
        let old = std::mem::replace(&mut self.publisher, Arc::new(fresh));
        // Dropping a producer may wait on the network: not on the async threads.
        tokio::task::spawn_blocking(move || drop(old));
        tracing::info!("producer replaced after failed deliveries");
        Ok(())
    }

    /// Claims what is ready and publishes it; whether files are still being written.
    async fn scan_and_publish(&mut self) -> anyhow::Result<bool> {
        let (candidates, unsettled) = self.claim_ready()?;
        // --once waits for files still being written: they are in the folder now.
        self.scanned_once = !unsettled;
        for path in candidates {
            let busy = self.files.holds(&path);
            if busy || self.shutdown.is_cancelled() || path.symlink_metadata().is_err() {
                continue;
            }
            self.publish(path).await?;
            self.report_progress();
        }
        Ok(unsettled)
    }

    /// Files to publish: those claimed earlier (by an earlier run, or waiting for a retry) first,
    /// then the complete files of the input folder, claimed now.
    fn claim_ready(&mut self) -> anyhow::Result<(Vec<PathBuf>, bool)> {
        let input = &self.settings.input_dir;
        let listed = folder::ready_files(
            input,
            self.settings.settle_time,
            &self.writers,
            &mut self.folder_memory,
        );
        let (ready, mut unsettled) = match listed {
            Ok(listed) => {
                let waiting = self.folder_memory.report_waiting();
                let ignored = self.folder_memory.ignored();
                self.files.metrics.input_folder(waiting, ignored);
                listed
            }
            // Gone since it was checked: noticed and waited for at the next turn.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.lose_input_folder();
                return Ok((Vec::new(), false));
            }
            Err(error) => return self.cannot_list(input.clone(), error),
        };
        self.files.retries_due();
        let claimed = self.claims.dir();
        if let Err(error) = self.claims.adopt_orphans() {
            tracing::warn!(%error, "failed to adopt the files of a bridge that is gone");
        }
        let mut candidates = match folder::claimed_files(claimed) {
            Ok(files) => files,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.lose_input_folder();
                return Ok((Vec::new(), false));
            }
            Err(error) => return self.cannot_list(claimed.to_owned(), error),
        };
        self.listed_again();
        for path in ready {
            // The listing is as old as this loop: a file of it may have been claimed since.
            match folder::claim(&path, self.claims.dir()) {
                Ok(Some(claimed)) => {
                    self.writers.forget(&path);
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
        Ok((candidates, unsettled))
    }

    /// Reads the claimed file and enqueues its rows; the outcome arrives as a completion.
    async fn publish(&mut self, path: PathBuf) -> anyhow::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.files.publishing_as(path.clone(), seq);
        self.publisher
            .publish_file_in_background(path, seq, &self.shutdown)
            .await
            .context("publishing task panicked")?;
        while let Ok(done) = self.completions.try_recv() {
            self.files.finish(done);
        }
        Ok(())
    }

    fn report_progress(&mut self) {
        if self.mode == RunMode::Once && self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            tracing::info!(
                archived = self.files.archived,
                in_flight = self.files.publishing(),
                rows_published = self.files.metrics.rows_published(),
                "progress"
            );
        }
    }

    /// Until a delivery completes, the folder changes, the rescan is due or shutdown.
    async fn wait(&mut self, unsettled: bool) {
        let pause = if unsettled {
            self.settings.rescan_interval.min(self.settings.settle_time)
        } else {
            self.settings.rescan_interval
        };
        tokio::select! {
            Some(done) = self.completions.recv() => self.files.finish(done),
            _ = self.wake.recv() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Gives outstanding deliveries until the shutdown timeout, archiving what completes.
    async fn drain(&mut self) {
        let flusher = self.publisher.clone();
        let timeout = self.settings.shutdown_timeout;
        let flushed = tokio::task::spawn_blocking(move || flusher.flush(timeout))
            .await
            .unwrap_or(false);
        while let Ok(done) = self.completions.try_recv() {
            self.files.finish(done);
        }
        if !flushed || self.files.publishing() > 0 {
            tracing::warn!(
                unconfirmed_messages = self.publisher.in_flight(),
                files_left = self.files.publishing(),
                "shutdown before every delivery was confirmed; those files are published again on restart"
            );
        }
    }

    /// The end: what could not be published (or archived) is an error under --once.
    fn stop(mut self) -> anyhow::Result<()> {
        // Published but not archived: left claimed, published again (harmlessly) by the next run.
        let pending = self.files.not_archived();
        self.files.failed.extend(pending);
        if !self.files.failed.is_empty() {
            anyhow::bail!(
                "{} file(s) not published, left in {}: {}",
                self.files.failed.len(),
                self.settings.input_dir.display(),
                self.files.failed.join(", ")
            );
        }
        tracing::info!(archived = self.files.archived, "bridge stopped");
        Ok(())
    }
}

/// The input and archive folders, made where missing.
fn make_folders(config: &Config) -> anyhow::Result<()> {
    for dir in [&config.input_dir, &config.archive_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create folder {}", dir.display()))?;
    }
    Ok(())
}

/// This bridge's claim folder in the input folder, under its instance id (the host name when
/// none is given).
fn take_claim_folder(config: &Config) -> anyhow::Result<folder::ClaimFolder> {
    let owner = config
        .instance_id
        .clone()
        .unwrap_or_else(pipeline_kafka::host_name);
    folder::ClaimFolder::take(&config.input_dir, &owner).with_context(|| {
        format!(
            "failed to take the claim folder in {}",
            config.input_dir.display()
        )
    })
}

/// Events make us quick and tell us when a writer is done; the periodic rescan makes us right
/// even where events are not delivered.
fn watch_input(
    input_dir: &Path,
    wake: &mpsc::Sender<()>,
    writers: &folder::Writers,
) -> Option<notify::RecommendedWatcher> {
    folder::watch(input_dir, wake.clone(), writers.clone())
        .map_err(|error| tracing::warn!(%error, "no file-system events; relying on rescans"))
        .ok()
}

/// JSON writes a control character as six bytes: a row within the caps may still not fit in one
/// message. Such rows are sent by reference; say so when the caps allow them.
fn report_message_budget(config: &Config, kafka: &ClientConfig) {
    let budget = publisher::message_budget(kafka);
    if config.max_row_bytes.saturating_mul(6) > budget {
        tracing::info!(
            max_row_bytes = config.max_row_bytes,
            message_budget = budget,
            "rows whose message would exceed the budget are quarantined as too_large by reference"
        );
    }
}
