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
    let kafka = config
        .kafka
        .client_config("file-bridge-backfill", PRODUCER_DEFAULTS)?;
    config.kafka.ensure_topic(&kafka).await?;
    let meter = Arc::new(Meter::limited_to(Some(config.backfill_rate)));
    let (completions_tx, mut completions) = mpsc::unbounded_channel();
    let publisher = Arc::new(
        Publisher::new(
            &kafka,
            config,
            completions_tx,
            telemetry::Readiness::default(),
        )?
        .for_backfill(meter.clone()),
    );
    tracing::info!(folder = %dir.display(), files = files.len(), bytes = total_bytes, rate_limit = config.backfill_rate, topic = %config.kafka.topic, "backfill started");
    let mut progress = Progress::new(files.len() as u64, total_bytes, meter);
    let mut failed = Vec::new();
    for (seq, (path, _)) in files.iter().enumerate() {
        if shutdown.is_cancelled() {
            anyhow::bail!(
                "backfill stopped by shutdown; run it again to finish (what is stored is kept)"
            );
        }
        publisher
            .publish_file_in_background(path.clone(), seq, &shutdown)
            .await
            .context("publishing task panicked")?;
        while let Ok(done) = completions.try_recv() {
            progress.file_done(&files, done, &mut failed);
        }
        progress.show();
    }
    while progress.files_done < files.len() as u64 {
        tokio::select! {
            Some(done) = completions.recv() => progress.file_done(&files, done, &mut failed),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => anyhow::bail!("backfill stopped by shutdown before every delivery was confirmed"),
        }
        progress.show();
    }
    progress.finish();
    anyhow::ensure!(
        failed.is_empty(),
        "{} file(s) of {} not published in full: {}",
        failed.len(),
        dir.display(),
        failed.join("; ")
    );
    Ok(())
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

    fn file_done(&mut self, files: &[(PathBuf, u64)], done: Completion, failed: &mut Vec<String>) {
        self.files_done += 1;
        if let Some(failure) = done.failure {
            let name = files
                .get(done.seq)
                .map(|(path, _)| file_name(path))
                .unwrap_or_default();
            failed.push(format!("{name}: {failure}"));
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
