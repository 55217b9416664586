//! The bridge's telemetry: one place per event that both logs and counts. Every metric is
//! declared here once, with its help text, on prometheus-client.

use crate::publisher::FileFailure;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::path::Path;
use std::sync::Arc;
use telemetry::Registry;

#[derive(Clone)]
pub struct BridgeMetrics {
    pub registry: Arc<Registry>,
    /// What `/readyz` answers: the broker reachable.
    pub readiness: telemetry::Readiness,
    files_seen: Counter,
    files_archived: Counter,
    files_failed: Counter,
    rows_published: Counter,
    files_in_flight: Gauge,
    files_waiting: Gauge,
    files_ignored: Gauge,
}

impl Default for BridgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl BridgeMetrics {
    pub fn new() -> BridgeMetrics {
        let mut registry = Registry::with_prefix("pipeline_bridge");
        telemetry::register_build_info(&mut registry);
        let (files_seen, files_archived, files_failed, rows_published, files_in_flight) = (
            Counter::default(),
            Counter::default(),
            Counter::default(),
            Counter::default(),
            Gauge::default(),
        );
        registry.register(
            "files_seen",
            "CSV files picked up from the input folder",
            files_seen.clone(),
        );
        registry.register(
            "files_archived",
            "files whose every row was acknowledged, moved to the archive",
            files_archived.clone(),
        );
        registry.register(
            "files_failed",
            "publication attempts that failed; the file stays for a retry",
            files_failed.clone(),
        );
        registry.register(
            "rows_published",
            "rows acknowledged by the broker",
            rows_published.clone(),
        );
        registry.register(
            "files_in_flight",
            "files being published now",
            files_in_flight.clone(),
        );
        let files_waiting = Gauge::default();
        registry.register(
            "files_waiting",
            "files in the input folder not complete yet: being written, or held open for writing",
            files_waiting.clone(),
        );
        let files_ignored = Gauge::default();
        registry.register(
            "files_ignored",
            "names in the input folder that are not data files (not *.csv, not a regular file), each warned about once",
            files_ignored.clone(),
        );
        let readiness = telemetry::Readiness::default();
        readiness.set(telemetry::Check::Broker, Err("not connected yet".into()));
        BridgeMetrics {
            registry: Arc::new(registry),
            readiness,
            files_seen,
            files_archived,
            files_failed,
            rows_published,
            files_in_flight,
            files_waiting,
            files_ignored,
        }
    }

    /// How many files of the input folder wait to be complete, and how many names it ignores.
    pub fn input_folder(&self, waiting: usize, ignored: usize) {
        self.files_waiting.set(waiting as i64);
        self.files_ignored.set(ignored as i64);
    }

    pub fn file_seen(&self, in_flight: usize) {
        self.files_seen.inc();
        self.in_flight(in_flight);
    }

    pub fn in_flight(&self, files: usize) {
        self.files_in_flight.set(files as i64);
    }

    pub fn archived(&self, name: &str, rows: u64, elapsed_ms: u64, target: &Path) {
        tracing::info!(file = %name, rows, elapsed_ms, archived = %target.display(), "file published");
        self.files_archived.inc();
        self.rows_published.inc_by(rows);
    }

    pub fn failed(&self, name: &str, failure: &FileFailure, retry_in: std::time::Duration) {
        tracing::warn!(file = %name, %failure, ?retry_in, "file kept for another try");
        self.files_failed.inc();
    }

    pub fn rows_published(&self) -> u64 {
        self.rows_published.get()
    }
}
