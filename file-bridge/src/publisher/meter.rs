//! What a publisher sent, and the rate it may send at.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Rows and bytes sent so far, for a progress display; and an optional rate limit in rows per
/// second over the whole run, so a backfill leaves the live pipeline room.
#[derive(Debug, Default)]
pub struct Meter {
    rows: AtomicU64,
    bytes: AtomicU64,
    started: OnceLock<Instant>,
    rows_per_second: Option<f64>,
}

impl Meter {
    pub fn limited_to(rows_per_second: Option<u64>) -> Meter {
        Meter {
            rows_per_second: rows_per_second.filter(|r| *r > 0).map(|r| r as f64),
            ..Meter::default()
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Counts one row of `bytes`; sleeps first while sending it would go over the limit.
    pub(super) fn row_sent(&self, bytes: u64) {
        let started = *self.started.get_or_init(Instant::now);
        if let Some(rate) = self.rows_per_second {
            let due = started + Duration::from_secs_f64(self.rows() as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        self.rows.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}
