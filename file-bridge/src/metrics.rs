//! The bridge's telemetry: one place per event that both logs and counts.

use std::path::Path;
use telemetry::Registry;

pub const FILES_SEEN: &str = "pipeline_bridge_files_seen_total";
pub const FILES_ARCHIVED: &str = "pipeline_bridge_files_archived_total";
pub const FILES_FAILED: &str = "pipeline_bridge_files_failed_total";
pub const ROWS_PUBLISHED: &str = "pipeline_bridge_rows_published_total";
pub const FILES_IN_FLIGHT: &str = "pipeline_bridge_files_in_flight";

#[derive(Clone, Default)]
pub struct BridgeMetrics {
    pub registry: Registry,
    /// What `/readyz` answers: the broker reachable.
    pub readiness: telemetry::Readiness,
}

impl BridgeMetrics {
    pub fn new() -> BridgeMetrics {
        let metrics = BridgeMetrics::default();
        for (name, help) in [
            (FILES_SEEN, "CSV files picked up from the input folder"),
            (
                FILES_ARCHIVED,
                "files whose every row was acknowledged, moved to the archive",
            ),
            (
                FILES_FAILED,
                "publication attempts that failed; the file stays for a retry",
            ),
            (ROWS_PUBLISHED, "rows acknowledged by the broker"),
        ] {
            metrics.registry.declare_counter(name, help, &[]);
        }
        metrics
            .readiness
            .set("broker", Err("not connected yet".into()));
        metrics
    }

    pub fn file_seen(&self, in_flight: usize) {
        self.registry.add(
            FILES_SEEN,
            "CSV files picked up from the input folder",
            &[],
            1,
        );
        self.in_flight(in_flight);
    }

    pub fn in_flight(&self, files: usize) {
        self.registry.set(
            FILES_IN_FLIGHT,
            "files being published now",
            &[],
            files as f64,
        );
    }

    pub fn archived(&self, name: &str, rows: u64, elapsed_ms: u64, target: &Path) {
        tracing::info!(file = %name, rows, elapsed_ms, archived = %target.display(), "file published");
        self.registry.add(
            FILES_ARCHIVED,
            "files whose every row was acknowledged, moved to the archive",
            &[],
            1,
        );
        self.registry
            .add(ROWS_PUBLISHED, "rows acknowledged by the broker", &[], rows);
    }

    pub fn failed(&self, name: &str, failure: &str, retry_in: std::time::Duration) {
        tracing::warn!(file = %name, %failure, ?retry_in, "file kept for another try");
        self.registry.add(
            FILES_FAILED,
            "publication attempts that failed; the file stays for a retry",
            &[],
            1,
        );
    }
}
