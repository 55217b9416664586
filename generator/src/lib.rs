//! The event generator: realistic shoppers written as CSV files, one file at a time, atomically.

mod config;
pub mod funnel;
pub mod rows;
pub mod writer;

pub use config::Config;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Writes files until `--files` is reached or `shutdown` fires; never leaves a partial `.csv`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(&config, &shutdown))
        .await
        .context("generator task panicked")?
}

fn run_blocking(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.output_dir).with_context(|| {
        format!(
            "failed to create output folder {}",
            config.output_dir.display()
        )
    })?;
    let seed = config.seed.unwrap_or_else(rand::random);
    tracing::info!(
        seed,
        dir = %config.output_dir.display(),
        events_per_file = config.events_per_file,
        "generator started"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows = rows::RowMaker::new(&mut rng, config);
    let mut namer = writer::FileNamer::default();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let (mut files, mut events) = (0u64, 0u64);
    while config.files.is_none_or(|limit| files < limit) && !shutdown.is_cancelled() {
        let now = chrono::Utc::now();
        let body = rows.file_body(&mut rng, now, config.events_per_file);
        let path = writer::write_atomically(&config.output_dir, &namer.next(now), &body)?;
        files += 1;
        events += config.events_per_file as u64;
        if config.interval >= Duration::from_secs(1) {
            tracing::info!(file = %path.display(), rows = config.events_per_file, "file written");
        } else if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            report_progress(files, events, started);
        }
        sleep_unless_cancelled(config.interval, shutdown);
    }
    report_progress(files, events, started);
    Ok(())
}

fn report_progress(files: u64, events: u64, started: Instant) {
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    tracing::info!(
        files,
        events,
        events_per_second = (events as f64 / seconds) as u64,
        "generator progress"
    );
}

fn sleep_unless_cancelled(duration: Duration, shutdown: &CancellationToken) {
    let deadline = Instant::now() + duration;
    while !shutdown.is_cancelled() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}
