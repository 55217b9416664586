use clap::Parser;
use process::duration::parse_duration;
use std::path::PathBuf;
use std::time::Duration;

/// Writes CSV files of synthetic ecommerce events into the input folder, atomically.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Config {
    #[command(flatten)]
    pub log: process::LogArgs,
    /// Folder the CSV files are written to (created if missing).
    #[arg(long, env = "INPUT_DIR", default_value = "data/input")]
    pub output_dir: PathBuf,
    /// Events (data rows) per file.
    #[arg(long, env = "EVENTS_PER_FILE", default_value_t = 100)]
    pub events_per_file: usize,
    /// Pause between two files: 250ms, 5s, 10m. 0s writes as fast as possible.
    #[arg(long, env = "GENERATOR_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Stop after this many files (default: run until interrupted).
    #[arg(long, env = "GENERATOR_FILES")]
    pub files: Option<u64>,
    /// Seed for reproducible output (default: random).
    #[arg(long, env = "GENERATOR_SEED")]
    pub seed: Option<u64>,
    /// Share of rows that re-emit an earlier event verbatim, sometimes from an earlier file.
    #[arg(long, env = "DUPLICATE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub duplicate_rate: f64,
    /// Share of rows whose event_time is hours older than the rest.
    #[arg(long, env = "LATE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub late_rate: f64,
    /// Share of rows that break the data rules (bad values, wrong field counts).
    #[arg(long, env = "MALFORMED_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub malformed_rate: f64,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("`{text}` is not a rate between 0 and 1")),
    }
}
