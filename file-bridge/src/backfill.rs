//! `--backfill DIR`: every file of an archive published again, in place, with progress and an
//! optional rate limit. The consumer drops what is already stored (by event_id, file and line);
//! the ledger marks each file as backfilled.

use crate::folder::EntryKind;
use crate::publisher::{file_name, Completion, Meter, Publisher, PRODUCER_DEFAULTS};
use crate::Config;
use anyhow::Context;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often progress is logged when stderr is not a terminal (no bar to draw).
const LOG_EVERY: Duration = Duration::from_secs(5);

pub async fn run(config: &Config, dir: &Path, shutdown: CancellationToken) -> anyhow::Result<()> {
    let files = archive_files(dir)?;
    let total_bytes: u64 = files.iter().map(|(_, len)| len).sum();
    let mut kafka = config
        .kafka
        .client_config("file-bridge-backfill", PRODUCER_DEFAULTS)?;
    config.kafka.ensure_topic(&kafka).await?;
    let meter = Arc::new(Meter::limited_to(Some(config.backfill_rate)));
    tracing::info!(folder = %dir.display(), files = files.len(), bytes = total_bytes, rate_limit = config.backfill_rate, topic = %config.kafka.topic, "backfill started");
    let mut progress = Progress::new(files.len() as u64, total_bytes, meter.clone());
    let mut todo: Vec<usize> = (0..files.len()).collect();
    // As the live bridge does: a topic that refuses our record batches as too large gets the
    // refused files again from a producer sending smaller ones, down to librdkafka's floor.
    let failed = loop {
        let mut round = Round::new(&kafka, config, &meter)?;
        let failed = round
            .publish(&files, &todo, &mut progress, &shutdown)
            .await?;
        if failed.is_empty() || !round.publisher.refused_as_too_large() {
            break failed;
        }
        match round.publisher.shrink_for(&mut kafka) {
            Some(step) => {
                tracing::warn!(?step, files = failed.len(), "the broker refused record batches as larger than the topic takes; publishing those files again in smaller ones");
                todo = failed.iter().map(|(seq, _)| *seq).collect();
                progress.files_done -= todo.len() as u64;
            }
            None => break failed,
        }
    };
    progress.finish();
    anyhow::ensure!(
        failed.is_empty(),
        "{} file(s) of {} not published in full: {}",
        failed.len(),
        dir.display(),
        failed
            .iter()
            .map(|(seq, failure)| format!("{}: {failure}", file_name(&files[*seq].0)))
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(())
}

/// One producer publishing a set of the archive's files.
struct Round {
    publisher: Arc<Publisher>,
    completions: mpsc::UnboundedReceiver<Completion>,
}

impl Round {
    fn new(
        kafka: &rdkafka::ClientConfig,
        config: &Config,
        meter: &Arc<Meter>,
    ) -> anyhow::Result<Round> {
        let (completions_tx, completions) = mpsc::unbounded_channel();
        let publisher = Publisher::new(
            kafka,
            &config.publisher_settings(),
            completions_tx,
            telemetry::Readiness::default(),
        )?
        .for_backfill(meter.clone());
        Ok(Round {
            publisher: Arc::new(publisher),
            completions,
        })
    }

    /// Publishes `todo` (indexes into `files`) and waits for every delivery; the files that
    /// failed, with why.
    async fn publish(
        &mut self,
        files: &[(PathBuf, u64)],
        todo: &[usize],
        progress: &mut Progress,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<(usize, String)>> {
        let mut failed = Vec::new();
        let mut done = 0;
        for &seq in todo {
            if shutdown.is_cancelled() {
                anyhow::bail!(
                    "backfill stopped by shutdown; run it again to finish (what is stored is kept)"
                );
            }
            self.publisher
                .publish_file_in_background(files[seq].0.clone(), seq, shutdown)
                .await
                .context("publishing task panicked")?;
            while let Ok(completion) = self.completions.try_recv() {
                done += 1;
                progress.file_done(completion, &mut failed);
            }
            progress.show();
        }
        while done < todo.len() {
            tokio::select! {
                Some(completion) = self.completions.recv() => {
                    done += 1;
                    progress.file_done(completion, &mut failed);
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => anyhow::bail!("backfill stopped by shutdown before every delivery was confirmed"),
            }
            progress.show();
        }
        Ok(failed)
    }
}

/// The archive's data files by the live bridge's own rule ([`EntryKind`]: `*.csv` in any case,
/// regular files only), oldest name first, with their sizes; every other entry is named in a
/// warning, so nothing is left out unsaid.
fn archive_files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("failed to list {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
        let kind = EntryKind::of(&entry)
            .with_context(|| format!("failed to look at {}", entry.path().display()))?;
        match kind.skipped_because() {
            None => files.push((entry.path(), entry.metadata()?.len())),
            Some(why) => {
                tracing::warn!(file = %entry.path().display(), why, "not backfilled");
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Files, rows, rate and time left: a bar on a terminal, log lines elsewhere.
struct Progress {
    files: u64,
    files_done: u64,
    total_bytes: u64,
    meter: Arc<Meter>,
    started: Instant,
    last_log: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(files: u64, total_bytes: u64, meter: Arc<Meter>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total_bytes);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} · {msg} · {elapsed} elapsed, {eta} left",
                )
                .expect("a valid template"),
            );
            bar
        });
        Progress {
            files,
            files_done: 0,
            total_bytes,
            meter,
            started: Instant::now(),
            last_log: Instant::now(),
            bar,
        }
    }

    fn file_done(&mut self, done: Completion, failed: &mut Vec<(usize, String)>) {
        self.files_done += 1;
        if let Some(failure) = done.failure {
            failed.push((done.seq, failure.to_string()));
        }
    }

    fn rate(&self) -> f64 {
        self.meter.rows() as f64 / self.started.elapsed().as_secs_f64().max(0.001)
    }

    fn summary(&self) -> String {
        format!(
            "{}/{} files · {} rows · {:.0} rows/s",
            self.files_done,
            self.files,
            self.meter.rows(),
            self.rate()
        )
    }

    fn show(&mut self) {
        let bytes = self.meter.bytes().min(self.total_bytes);
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            bar.set_message(self.summary());
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let per_byte = self.started.elapsed().as_secs_f64() / bytes.max(1) as f64;
            let left = Duration::from_secs_f64(per_byte * (self.total_bytes - bytes) as f64);
            tracing::info!(
                files_done = self.files_done,
                files = self.files,
                rows = self.meter.rows(),
                rows_per_second = self.rate() as u64,
                eta_seconds = left.as_secs(),
                "backfill progress"
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(self.summary());
        }
        tracing::info!(
            files = self.files_done,
            rows = self.meter.rows(),
            rows_per_second = self.rate() as u64,
            seconds = self.started.elapsed().as_secs_f64(),
            "backfill done"
        );
    }
}
