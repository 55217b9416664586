//! The file bridge: folder in, topic out.
//!
//! Guarantee: a file leaves the input folder only after the broker acknowledged every row of it.
//! Caveat: a crash (or a failed delivery) after some rows were acknowledged publishes the whole
//! file again; the consumer deduplicates by event_id and by file line, so that costs nothing but time.

mod config;
pub mod folder;
pub mod publisher;

pub use config::Config;

use anyhow::Context;
use publisher::{file_name, Completion, Publisher, PRODUCER_DEFAULTS};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct InFlight {
    path: PathBuf,
    started: Instant,
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    for dir in [&config.input_dir, &config.archive_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create folder {}", dir.display()))?;
    }
    let kafka =
        pipeline_kafka::client_config(&config.brokers, PRODUCER_DEFAULTS, &config.kafka_options);
    pipeline_kafka::ensure_topic(
        &kafka,
        &config.topic,
        config.partitions,
        config.replication_factor,
    )
    .await?;
    let (completions_tx, mut completions) = mpsc::unbounded_channel();
    let publisher = Arc::new(Publisher::new(&kafka, &config.topic, completions_tx)?);
    let (wake_tx, mut wake) = mpsc::channel(1);
    // Events make us quick; the periodic rescan makes us right even where events are not delivered.
    let _watcher = folder::watch(&config.input_dir, wake_tx)
        .map_err(|error| tracing::warn!(%error, "no file-system events; relying on rescans"))
        .ok();
    tracing::info!(
        input = %config.input_dir.display(),
        archive = %config.archive_dir.display(),
        topic = %config.topic,
        brokers = %config.brokers,
        "bridge started"
    );

    let mut in_flight: HashMap<usize, InFlight> = HashMap::new();
    let mut retry_after: HashMap<PathBuf, Instant> = HashMap::new();
    let mut warned = HashSet::new();
    let mut next_seq = 0;
    let mut failed_files = Vec::new();
    let mut scanned_once = false;
    loop {
        // --once scans a single time: what is in the folder now.
        let scan_now = !config.once || !scanned_once;
        let mut unsettled = false;
        if scan_now && !shutdown.is_cancelled() {
            let (ready, still_written) =
                folder::ready_files(&config.input_dir, config.settle_time, &mut warned)
                    .with_context(|| format!("failed to list {}", config.input_dir.display()))?;
            unsettled = still_written;
            // --once waits for files still being written: they are in the folder now.
            scanned_once = !unsettled;
            retry_after.retain(|_, until| *until > Instant::now());
            for path in ready {
                let busy = in_flight.values().any(|file| file.path == path);
                if busy || retry_after.contains_key(&path) || shutdown.is_cancelled() {
                    continue;
                }
                let seq = next_seq;
                next_seq += 1;
                in_flight.insert(
                    seq,
                    InFlight {
                        path: path.clone(),
                        started: Instant::now(),
                    },
                );
                let (publisher, token) = (publisher.clone(), shutdown.clone());
                let result =
                    tokio::task::spawn_blocking(move || publisher.publish_file(&path, seq, &token))
                        .await
                        .context("publishing task panicked")?;
                if let Err(error) = result {
                    tracing::warn!(%error, "file not published");
                }
                while let Ok(done) = completions.try_recv() {
                    finish(
                        &config,
                        done,
                        &mut in_flight,
                        &mut retry_after,
                        &mut failed_files,
                    );
                }
            }
        }
        if in_flight.is_empty() && ((config.once && scanned_once) || shutdown.is_cancelled()) {
            break;
        }
        if shutdown.is_cancelled() {
            drain_at_shutdown(&config, &publisher, &mut completions, &mut in_flight).await;
            break;
        }
        tokio::select! {
            Some(done) = completions.recv() => {
                finish(&config, done, &mut in_flight, &mut retry_after, &mut failed_files);
            }
            _ = wake.recv() => {}
            _ = tokio::time::sleep(if unsettled {
                config.rescan_interval.min(config.settle_time)
            } else {
                config.rescan_interval
            }) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    if !failed_files.is_empty() {
        anyhow::bail!(
            "{} file(s) not published, left in {}: {}",
            failed_files.len(),
            config.input_dir.display(),
            failed_files.join(", ")
        );
    }
    tracing::info!("bridge stopped");
    Ok(())
}

/// Archives a file whose rows were all acknowledged; otherwise leaves it for a later retry.
fn finish(
    config: &Config,
    done: Completion,
    in_flight: &mut HashMap<usize, InFlight>,
    retry_after: &mut HashMap<PathBuf, Instant>,
    failed_files: &mut Vec<String>,
) {
    let Some(file) = in_flight.remove(&done.seq) else {
        return;
    };
    let name = file_name(&file.path);
    if let Some(failure) = done.failure {
        tracing::warn!(file = %name, %failure, retry_in = ?config.retry_interval, "file kept for another try");
        retry_after.insert(file.path, Instant::now() + config.retry_interval);
        if config.once {
            failed_files.push(name);
        }
        return;
    }
    event_model::failpoint::hit("bridge-before-archive");
    match folder::archive(&file.path, &config.archive_dir) {
        Ok(target) => tracing::info!(
            file = %name,
            rows = done.rows,
            elapsed_ms = file.started.elapsed().as_millis() as u64,
            archived = %target.display(),
            "file published"
        ),
        // Left in place it is published again; duplicates are the consumer's to drop.
        Err(error) => tracing::error!(file = %name, %error, "failed to archive a published file"),
    }
}

/// Gives outstanding deliveries until the shutdown timeout, archiving what completes.
async fn drain_at_shutdown(
    config: &Config,
    publisher: &Arc<Publisher>,
    completions: &mut mpsc::UnboundedReceiver<Completion>,
    in_flight: &mut HashMap<usize, InFlight>,
) {
    let flusher = publisher.clone();
    let timeout = config.shutdown_timeout;
    let flushed = tokio::task::spawn_blocking(move || flusher.flush(timeout))
        .await
        .unwrap_or(false);
    let (mut retry_after, mut failed) = (HashMap::new(), Vec::new());
    while let Ok(done) = completions.try_recv() {
        finish(config, done, in_flight, &mut retry_after, &mut failed);
    }
    if !flushed || !in_flight.is_empty() {
        tracing::warn!(
            unconfirmed_messages = publisher.in_flight(),
            files_left = in_flight.len(),
            "shutdown before every delivery was confirmed; those files are published again on restart"
        );
    }
}
