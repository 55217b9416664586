//! The claimed files between pick-up and archive, each in one state:
//!
//! ```text
//! publishing ──every row acknowledged──▶ archived
//!     │  │                                   ▲
//!     │  └──archive refused──▶ archiving ────┘ (retried with backoff; never published again)
//!     └──delivery failed, or written after its claim──▶ retry after ──(interval)──▶ publishable
//! ```

use crate::folder;
use crate::metrics::BridgeMetrics;
use crate::publisher::{file_name, Completion};
use process::Backoff;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// First delay and cap between attempts to archive a published file.
const ARCHIVE_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// How long one look at the host's writers serves the files completing after it: looking costs a
/// `stat` of every open descriptor on the host, too much to repeat for every file.
const WRITERS_LOOK_SERVES: Duration = Duration::from_secs(1);

/// What the file states need of the bridge's settings.
#[derive(Debug, Clone)]
pub struct FileSettings {
    pub archive_dir: PathBuf,
    /// How long a file whose publication failed waits before it is published again.
    pub retry_interval: Duration,
    /// Under `--once` a file that could not be published is reported at the end.
    pub mode: RunMode,
}

/// How the bridge runs: following the folder until stopped, or `--once` (what is there now,
/// then exit, an error if any file could not be published).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Follow,
    Once,
}

/// A file being published: which completion is its, and what it was when claimed.
struct InFlight {
    seq: usize,
    started: Instant,
    /// Size and modification time when publishing began: a file that differs by the time its
    /// rows are acknowledged was written after it was claimed.
    claimed_as: Option<(u64, SystemTime)>,
}

/// The size and modification time of `path`, if it is there.
fn size_and_time(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = path.symlink_metadata().ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Where a claimed file stands between pick-up and archive.
enum FileState {
    /// Its rows are being sent; the completion of its `seq` tells how it went.
    Publishing(InFlight),
    /// Its publication failed (or it changed after its claim): published again after this.
    RetryAfter(Instant),
    /// Published in full, its archiving failed: retried alone (never published again), with
    /// backoff, until the archive takes it.
    Archiving(PendingArchive),
}

/// A published file to archive: when to try next, and what its metrics will say.
struct PendingArchive {
    at: Instant,
    backoff: Backoff,
    rows: u64,
    started: Instant,
    /// Tried before (and failed).
    retried: bool,
}

/// Files between pick-up and archive, each in one state, and what to do with those that failed.
pub struct Files {
    settings: FileSettings,
    pub metrics: BridgeMetrics,
    states: HashMap<PathBuf, FileState>,
    /// The last look at which files being published some process holds open for writing.
    writers_seen: Option<(Instant, folder::OpenForWriting)>,
    /// Files that could not be published (reported at the end of --once).
    pub failed: Vec<String>,
    pub archived: u64,
    /// A delivery failed: the producer's state (connections, and under `-X enable.idempotence=true`
    /// its producer id and sequences) may no longer match the broker's, so it is replaced once
    /// nothing is in flight.
    pub producer_suspect: bool,
}

impl Files {
    pub fn new(settings: FileSettings, metrics: BridgeMetrics) -> Files {
        Files {
            settings,
            metrics,
            states: HashMap::new(),
            writers_seen: None,
            failed: Vec::new(),
            archived: 0,
            producer_suspect: false,
        }
    }

    /// Whether `path` is between pick-up and archive (so not to be published now).
    pub fn holds(&self, path: &Path) -> bool {
        self.states.contains_key(path)
    }

    /// `path` is being published as `seq`.
    pub fn publishing_as(&mut self, path: PathBuf, seq: usize) {
        let in_flight = InFlight {
            seq,
            claimed_as: size_and_time(&path),
            started: Instant::now(),
        };
        self.states.insert(path, FileState::Publishing(in_flight));
        self.metrics.file_seen(self.publishing());
    }

    /// How many files are being published.
    pub fn publishing(&self) -> usize {
        self.states
            .values()
            .filter(|state| matches!(state, FileState::Publishing(_)))
            .count()
    }

    /// The names of files published in full whose archiving has not succeeded yet.
    pub fn not_archived(&self) -> Vec<String> {
        self.states
            .iter()
            .filter(|(_, state)| matches!(state, FileState::Archiving(_)))
            .map(|(path, _)| file_name(path))
            .collect()
    }

    /// Forgets the retry delays that ended: those files may be published again.
    pub fn retries_due(&mut self) {
        let now = Instant::now();
        self.states
            .retain(|_, state| !matches!(state, FileState::RetryAfter(until) if *until <= now));
    }

    /// Archives a file whose rows were all acknowledged; otherwise leaves it for a later retry.
    pub fn finish(&mut self, done: Completion) {
        let Some((path, file)) = self.take_published(done.seq) else {
            return;
        };
        self.metrics.in_flight(self.publishing());
        let name = file_name(&path);
        if let Some(failure) = done.failure {
            self.metrics
                .failed(&name, &failure, self.settings.retry_interval);
            self.producer_suspect = true;
            // A file deleted from the folder meanwhile is not left to anyone to publish again.
            if self.settings.mode == RunMode::Once && path.symlink_metadata().is_ok() {
                self.failed.push(name);
            }
            self.retry_later(path);
            return;
        }
        // Every row acknowledged: the broker is demonstrably there.
        self.metrics.readiness.set(telemetry::Check::Broker, Ok(()));
        if self.written_since_claimed(&path, &file) {
            // A writer the claim did not see (another host, another container) went on writing:
            // what it wrote is published as a new version of the file once it settles, never
            // archived unread. The rows already sent are duplicates to the consumer.
            tracing::warn!(file = %name, "the file was written to after it was claimed; publishing it again");
            if self.settings.mode == RunMode::Once {
                self.failed.push(name);
            }
            self.retry_later(path);
            return;
        }
        process::failpoint::hit(process::failpoint::Failpoint::BridgeBeforeArchive);
        let pending = PendingArchive {
            at: Instant::now(),
            backoff: ARCHIVE_RETRY,
            rows: done.rows,
            started: file.started,
            retried: false,
        };
        self.archive_published(path, pending);
    }

    /// Tries again to archive published files whose archiving failed, each when its backoff ends.
    pub fn retry_archives(&mut self) {
        let now = Instant::now();
        let due: Vec<PathBuf> = self
            .states
            .iter()
            .filter(
                |(_, state)| matches!(state, FileState::Archiving(pending) if pending.at <= now),
            )
            .map(|(path, _)| path.clone())
            .collect();
        for path in due {
            if let Some(FileState::Archiving(pending)) = self.states.remove(&path) {
                self.archive_published(path, pending);
            }
        }
    }

    /// Archives a file published in full, first time or again: counted in the metrics like any
    /// other once the archive takes it, kept for a retry with backoff while it refuses. Only the
    /// archiving is retried, never the publishing.
    fn archive_published(&mut self, path: PathBuf, mut pending: PendingArchive) {
        let name = file_name(&path);
        match folder::archive(&path, &self.settings.archive_dir) {
            Ok(target) => {
                self.archived += 1;
                let elapsed_ms = pending.started.elapsed().as_millis() as u64;
                self.metrics
                    .archived(&name, pending.rows, elapsed_ms, &target);
                if pending.retried {
                    tracing::info!(file = %name, archive = %target.display(), "archived after retrying");
                }
            }
            // The claimed file is gone (its folder removed): published in full, nothing left.
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    && path.symlink_metadata().is_err() =>
            {
                tracing::warn!(file = %name, "a published file vanished before it was archived");
            }
            Err(error) => {
                let delay = pending.backoff.next_delay();
                tracing::error!(file = %name, %error, retry_in_ms = delay.as_millis() as u64, "failed to archive a published file; will retry");
                pending.at = Instant::now() + delay;
                pending.retried = true;
                self.states.insert(path, FileState::Archiving(pending));
            }
        }
    }

    /// Publishes `path` again once the retry interval is over.
    fn retry_later(&mut self, path: PathBuf) {
        let until = Instant::now() + self.settings.retry_interval;
        self.states.insert(path, FileState::RetryAfter(until));
    }

    /// The file whose publication is `seq`, taken out of its state.
    fn take_published(&mut self, seq: usize) -> Option<(PathBuf, InFlight)> {
        let path = self.states.iter().find_map(|(path, state)| match state {
            FileState::Publishing(file) if file.seq == seq => Some(path.clone()),
            _ => None,
        })?;
        match self.states.remove(&path) {
            Some(FileState::Publishing(file)) => Some((path, file)),
            _ => None,
        }
    }

    /// Whether a claimed file changed while it was published, or is held open for writing now.
    fn written_since_claimed(&mut self, path: &Path, file: &InFlight) -> bool {
        if size_and_time(path) != file.claimed_as {
            return true;
        }
        let fresh = self.writers_seen.as_ref().and_then(|(at, seen)| {
            (at.elapsed() < WRITERS_LOOK_SERVES)
                .then(|| seen.knows(path))
                .flatten()
        });
        if let Some(held) = fresh {
            return held;
        }
        // One look for this file and every other being published: they complete soon too.
        let publishing = self
            .states
            .iter()
            .filter(|(_, state)| matches!(state, FileState::Publishing(_)))
            .map(|(other, _)| other.as_path());
        let seen = folder::OpenForWriting::of(publishing.chain([path]));
        let held = seen.holds(path);
        self.writers_seen = Some((Instant::now(), seen));
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::FileFailure;

    struct Folders {
        _dir: tempfile::TempDir,
        claimed: PathBuf,
        archive: PathBuf,
    }

    fn folders() -> Folders {
        let dir = tempfile::tempdir().unwrap();
        let (claimed, archive) = (dir.path().join("claimed"), dir.path().join("archive"));
        std::fs::create_dir(&claimed).unwrap();
        Folders {
            _dir: dir,
            claimed,
            archive,
        }
    }

    fn files(folders: &Folders, once: bool) -> Files {
        let settings = FileSettings {
            archive_dir: folders.archive.clone(),
            retry_interval: Duration::ZERO,
            mode: if once { RunMode::Once } else { RunMode::Follow },
        };
        Files::new(settings, BridgeMetrics::new())
    }

    fn published(seq: usize, failure: Option<FileFailure>) -> Completion {
        Completion {
            seq,
            rows: 3,
            failure,
        }
    }

    fn broker_down() -> FileFailure {
        let code = rdkafka::error::RDKafkaErrorCode::BrokerTransportFailure;
        FileFailure::Delivery(rdkafka::error::KafkaError::MessageProduction(code))
    }

    fn claimed_file(folders: &Folders, name: &str) -> PathBuf {
        let path = folders.claimed.join(name);
        std::fs::write(&path, "event_id\n1\n").unwrap();
        path
    }

    #[test]
    fn a_file_acknowledged_in_full_is_archived() {
        let folders = folders();
        let mut files = files(&folders, false);
        let path = claimed_file(&folders, "a.csv");
        files.publishing_as(path.clone(), 7);
        assert!(files.holds(&path) && files.publishing() == 1);
        files.finish(published(7, None));
        assert_eq!((files.archived, files.publishing()), (1, 0));
        assert!(!files.holds(&path) && folders.archive.join("a.csv").exists());
        // A completion of no file in flight changes nothing.
        files.finish(published(8, None));
        assert_eq!(files.archived, 1);
    }

    #[test]
    fn a_failed_publication_waits_for_a_retry_and_is_reported_under_once() {
        let folders = folders();
        let mut files = files(&folders, true);
        let path = claimed_file(&folders, "b.csv");
        files.publishing_as(path.clone(), 1);
        files.finish(published(1, Some(broker_down())));
        assert!(files.holds(&path) && files.producer_suspect);
        assert_eq!(files.failed, ["b.csv"]);
        assert!(path.exists() && !folders.archive.join("b.csv").exists());
        files.retries_due();
        assert!(
            !files.holds(&path),
            "publishable again once the interval is over"
        );
    }

    #[test]
    fn a_file_written_after_its_claim_is_published_again_not_archived() {
        let folders = folders();
        let mut files = files(&folders, false);
        let path = claimed_file(&folders, "c.csv");
        files.publishing_as(path.clone(), 2);
        std::fs::write(&path, "event_id\n1\n2\n").unwrap();
        files.finish(published(2, None));
        assert_eq!(files.archived, 0);
        assert!(files.holds(&path) && path.exists());
    }

    #[test]
    fn an_archive_refused_is_retried_alone_and_a_vanished_file_is_let_go() {
        let folders = folders();
        let mut files = files(&folders, false);
        // The archive "folder" is a file: archiving is refused.
        std::fs::write(&folders.archive, "in the way").unwrap();
        let (kept, vanishing) = (
            claimed_file(&folders, "d.csv"),
            claimed_file(&folders, "e.csv"),
        );
        files.publishing_as(kept.clone(), 3);
        files.publishing_as(vanishing.clone(), 4);
        files.finish(published(3, None));
        files.finish(published(4, None));
        assert_eq!(files.archived, 0);
        assert!(files.holds(&kept) && files.holds(&vanishing));
        assert_eq!(files.publishing(), 0, "archiving, not publishing again");

        std::fs::remove_file(&folders.archive).unwrap();
        std::fs::remove_file(&vanishing).unwrap();
        for state in files.states.values_mut() {
            if let FileState::Archiving(pending) = state {
                pending.at = Instant::now();
            }
        }
        files.retry_archives();
        assert_eq!(files.archived, 1);
        assert!(folders.archive.join("d.csv").exists());
        assert!(!files.holds(&kept) && !files.holds(&vanishing));
    }
}
