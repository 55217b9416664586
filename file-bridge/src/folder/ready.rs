//! Which files of the input folder are ready: complete, not held open for writing, and the
//! watcher that wakes the bridge when one lands.

use super::open_regular;
use crate::content::Compression;
use crate::identity::{FileIdentity, FileNode};
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a file the bridge saw nothing of, and that does not end in a line end, must stay
/// unchanged before it is taken: its writer may have paused mid-line.
pub const UNTERMINATED_SETTLE: Duration = Duration::from_secs(10);

/// What the file-system events said about a file's writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Created or written, not closed yet.
    Writing,
    /// Closed after writing, or renamed into the folder: complete.
    Done,
}

/// The writers of the input folder's files, as the watcher reports them.
#[derive(Debug, Clone, Default)]
pub struct Writers(Arc<Mutex<HashMap<OsString, Writer>>>);

impl Writers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OsString, Writer>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, event: &notify::Event) {
        let state = match event.kind {
            EventKind::Create(CreateKind::File | CreateKind::Any)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => Some(Writer::Writing),
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Writer::Done),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => None,
            _ => return,
        };
        let mut writers = self.lock();
        for name in event.paths.iter().filter_map(|path| path.file_name()) {
            match state {
                Some(state) => writers.insert(name.to_owned(), state),
                None => writers.remove(name),
            };
        }
    }

    fn of(&self, name: &std::ffi::OsStr) -> Option<Writer> {
        self.lock().get(name).copied()
    }

    /// Forgets a file that left the folder (claimed).
    pub fn forget(&self, path: &Path) {
        if let Some(name) = path.file_name() {
            self.lock().remove(name);
        }
    }
}

/// What an entry of a folder is to the bridge: one rule, shared by the live folder and the
/// backfill, for which names are files to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file named `*.csv`, `*.csv.gz` or `*.csv.zst`, any case: published.
    Data,
    /// A name starting with `.`: a writer's temporary file, the claim folder, a partial archive.
    Hidden,
    /// A regular file whose name does not end in `.csv`, `.csv.gz` or `.csv.zst`.
    NotCsv,
    /// A symlink, a folder, a FIFO or a device, whatever its name (never followed or opened).
    NotRegular(&'static str),
}

impl EntryKind {
    /// The kind of `entry`, by its name and its type (not following a symlink).
    pub fn of(entry: &std::fs::DirEntry) -> std::io::Result<EntryKind> {
        let name = entry.file_name();
        let shown = name.to_string_lossy();
        if shown.starts_with('.') {
            return Ok(EntryKind::Hidden);
        }
        // file_type() does not follow symlinks: a link to a file is not a regular file here.
        let kind = entry.file_type()?;
        if !kind.is_file() {
            let what = if kind.is_symlink() {
                "symlink"
            } else if kind.is_dir() {
                "folder"
            } else {
                "special file"
            };
            return Ok(EntryKind::NotRegular(what));
        }
        Ok(if Compression::of_name(&shown).is_some() {
            EntryKind::Data
        } else {
            EntryKind::NotCsv
        })
    }

    /// Why a file of this kind is skipped, for the one warning it gets; `None` for a data file.
    pub fn skipped_because(self) -> Option<&'static str> {
        match self {
            EntryKind::Data => None,
            EntryKind::Hidden => Some("hidden name (a temporary file)"),
            EntryKind::NotCsv => Some("name does not end in .csv, .csv.gz or .csv.zst"),
            EntryKind::NotRegular(what) => Some(what),
        }
    }
}

/// What the bridge remembers of the input folder between looks.
#[derive(Debug, Default)]
pub struct FolderMemory {
    /// Files skipped (and warned about once), or warned about a clock ahead of ours.
    warned: HashSet<PathBuf>,
    /// Each data file's look (size, modification time, inode) and when the bridge first saw it
    /// so: its quiet time by the bridge's own clock, which a writer's clock cannot skew.
    unchanged_since: HashMap<PathBuf, (FileIdentity, Instant)>,
    /// Files not complete yet: why, and since when the bridge has seen them wait.
    waiting: HashMap<PathBuf, (Wait, Instant)>,
    /// Files whose long wait was reported (once each).
    reported: HashSet<PathBuf>,
    /// How many names the last look skipped as not data files (warned about once each).
    ignored: usize,
}

/// Why a data file in the input folder is not published yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// It changed within the settle time, or its writer has not closed it (inotify).
    Changing,
    /// A process on this host holds it open for writing.
    HeldOpen,
}

impl Wait {
    fn as_str(self) -> &'static str {
        match self {
            Wait::Changing => "still being written (changed lately, or not closed by its writer)",
            Wait::HeldOpen => "held open for writing by a process on this host",
        }
    }
}

/// A file waiting this long is reported once: waiting is right, waiting silently is not.
pub const LONG_WAIT: Duration = Duration::from_secs(10);

impl FolderMemory {
    /// How long `path` has not changed: by its modification time, or by the bridge's own
    /// sightings when those say longer (a modification time ahead of this host's clock would
    /// otherwise hold a file back until the clock caught up, a day or ten years later).
    fn quiet_time(&mut self, path: &Path, meta: &std::fs::Metadata) -> Duration {
        let modified = meta.modified().ok();
        let look = FileIdentity::of(meta);
        let now = Instant::now();
        let since = match self.unchanged_since.get(path) {
            Some(&(seen, since)) if seen == look => since,
            _ => {
                self.unchanged_since.insert(path.to_owned(), (look, now));
                now
            }
        };
        let by_modification = match modified.map(|at| at.elapsed()) {
            Some(Ok(age)) => age,
            Some(Err(ahead)) => {
                self.warn_of_a_clock_ahead(path, ahead.duration());
                Duration::ZERO
            }
            None => Duration::ZERO,
        };
        by_modification.max(now - since)
    }

    fn warn_of_a_clock_ahead(&mut self, path: &Path, ahead: Duration) {
        if ahead > CLOCK_AHEAD_WARNING && self.warned.insert(path.to_owned()) {
            tracing::warn!(
                file = %path.display(),
                ahead_s = ahead.as_secs(),
                "the file's modification time is ahead of this host's clock (its writer's clock \
                 is ahead?); its quiet time is measured by the bridge"
            );
        }
    }

    /// Forgets the files no longer in the folder.
    fn keep_only(&mut self, listed: &HashSet<PathBuf>) {
        self.unchanged_since.retain(|path, _| listed.contains(path));
        self.waiting.retain(|path, _| listed.contains(path));
        self.reported.retain(|path| listed.contains(path));
    }

    fn waits(&mut self, path: &Path, why: Wait) {
        let now = Instant::now();
        let entry = self.waiting.entry(path.to_owned()).or_insert((why, now));
        entry.0 = why;
    }

    fn ready(&mut self, path: &Path) {
        self.waiting.remove(path);
    }

    /// How many files wait to be complete; each that has waited [`LONG_WAIT`] is reported once,
    /// with why.
    pub fn report_waiting(&mut self) -> usize {
        for (path, (why, since)) in &self.waiting {
            let waited = since.elapsed();
            if waited >= LONG_WAIT && self.reported.insert(path.clone()) {
                tracing::warn!(
                    file = %path.display(),
                    waited_s = waited.as_secs(),
                    why = why.as_str(),
                    "a file in the input folder waits to be complete; it is published once its writer is done"
                );
            }
        }
        self.waiting.len()
    }

    /// How many names in the input folder the last look ignored (not `*.csv`, not a regular file).
    pub fn ignored(&self) -> usize {
        self.ignored
    }

    /// The files waiting to be complete and why (for tests and reports).
    pub fn waiting(&self) -> Vec<(PathBuf, Wait)> {
        let mut waiting: Vec<(PathBuf, Wait)> = self
            .waiting
            .iter()
            .map(|(path, (why, _))| (path.clone(), *why))
            .collect();
        waiting.sort_by(|a, b| a.0.cmp(&b.0));
        waiting
    }
}

/// A modification time this far ahead of the host's clock is worth a warning; less is the
/// ordinary drift between two hosts' clocks.
const CLOCK_AHEAD_WARNING: Duration = Duration::from_secs(5);

/// Lists the data files of `dir` (see [`EntryKind`]) that are complete (see the module's rules),
/// oldest name first, and says whether others are still being written. Hidden files (temporary
/// files of writers, the claim folder) are skipped silently; every other file skipped gets one
/// warning naming it and why.
pub fn ready_files(
    dir: &Path,
    settle: Duration,
    writers: &Writers,
    memory: &mut FolderMemory,
) -> std::io::Result<(Vec<PathBuf>, bool)> {
    let mut unsettled = false;
    let mut files = Vec::new();
    let mut listed = HashSet::new();
    memory.ignored = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        match EntryKind::of(&entry) {
            Ok(EntryKind::Data) => {}
            Ok(EntryKind::Hidden) | Err(_) => continue,
            Ok(kind) => {
                memory.ignored += 1;
                if memory.warned.insert(path.clone()) {
                    let why = kind.skipped_because().unwrap_or_default();
                    tracing::warn!(file = %path.display(), why, "ignoring a file in the input folder");
                }
                continue;
            }
        }
        // Gone between listing and looking: nothing to do.
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        let quiet = memory.quiet_time(&path, &meta);
        listed.insert(path.clone());
        match is_complete(&path, quiet, settle, writers.of(&entry.file_name())) {
            Ok(true) => files.push(path),
            Ok(false) => {
                memory.waits(&path, Wait::Changing);
                unsettled = true;
            }
            Err(_) => {}
        }
    }
    memory.keep_only(&listed);
    // Complete by age and events is not enough: a process that holds a file open for writing
    // is still its writer, however long it paused.
    let held = OpenForWriting::of(files.iter().map(PathBuf::as_path));
    files.retain(|path| {
        if held.holds(path) {
            memory.waits(path, Wait::HeldOpen);
            unsettled = true;
            false
        } else {
            memory.ready(path);
            true
        }
    });
    files.sort();
    Ok((files, unsettled))
}

/// Which of some files a process on this host holds open for writing, as `/proc/*/fd` shows
/// them. Processes of other users (unless we are root), of other PID namespaces (another
/// container) or of other hosts (a network share) are not seen: for them the bridge relies on
/// the settle rules and on noticing a claimed file that changed.
#[derive(Debug, Default)]
pub struct OpenForWriting {
    asked: HashSet<FileNode>,
    held: HashSet<FileNode>,
}

impl OpenForWriting {
    /// Looks for writers of `paths` only: every descriptor is looked at (one `stat`), and only
    /// one open on a file asked about has its mode read. Measured with a Kafka node beside it
    /// (1,200 descriptors), reading every descriptor's mode cost ~10 ms a look, 2 µs per row.
    pub fn of<'p>(paths: impl IntoIterator<Item = &'p Path>) -> OpenForWriting {
        let asked: HashSet<FileNode> = paths
            .into_iter()
            .filter_map(|path| path.symlink_metadata().ok())
            .map(|meta| FileNode::of(&meta))
            .collect();
        let mut held = HashSet::new();
        let Ok(processes) = std::fs::read_dir("/proc") else {
            return OpenForWriting { asked, held };
        };
        if asked.is_empty() {
            return OpenForWriting { asked, held };
        }
        let own = std::process::id().to_string();
        for process in processes.filter_map(Result::ok) {
            let pid = process.file_name();
            let pid = pid.to_string_lossy();
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == own {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
                continue;
            };
            for fd in fds.filter_map(Result::ok) {
                // metadata() follows the descriptor's link to the open file itself.
                let Ok(meta) = std::fs::metadata(fd.path()) else {
                    continue;
                };
                let file = FileNode::of(&meta);
                if asked.contains(&file)
                    && opened_for_writing(&process.path().join("fdinfo").join(fd.file_name()))
                {
                    held.insert(file);
                }
            }
        }
        OpenForWriting { asked, held }
    }

    /// Whether a process holds `path` open for writing; `None` when `path` was not asked about.
    pub fn knows(&self, path: &Path) -> Option<bool> {
        let file = FileNode::of(&path.symlink_metadata().ok()?);
        self.asked
            .contains(&file)
            .then(|| self.held.contains(&file))
    }

    pub fn holds(&self, path: &Path) -> bool {
        self.knows(path).unwrap_or(false)
    }
}

/// Whether `/proc/PID/fdinfo/FD` says the descriptor was opened write-only or read-write.
fn opened_for_writing(fdinfo: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(fdinfo) else {
        return false;
    };
    text.lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .and_then(|flags| u32::from_str_radix(flags.trim(), 8).ok())
        .is_some_and(|flags| flags & (libc::O_WRONLY | libc::O_RDWR) as u32 != 0)
}

/// Whether a file unchanged for `age` is complete, by the module's rules.
fn is_complete(
    path: &Path,
    age: Duration,
    settle: Duration,
    writer: Option<Writer>,
) -> std::io::Result<bool> {
    // A compressed file's last byte says nothing of its last line: without a close seen, it
    // waits the long settle.
    let plain = file_name_of(path)
        .and_then(|name| Compression::of_name(&name))
        .is_some_and(Compression::shows_line_ends);
    Ok(match writer {
        Some(Writer::Done) => age >= settle,
        // A writer that never closes (or whose close event was lost) is waited out like an
        // unknown one, but never less than the long settle.
        Some(Writer::Writing) => {
            age >= UNTERMINATED_SETTLE.max(settle) && (!plain || ends_with_line_end(path)?)
        }
        None => {
            (age >= settle && plain && ends_with_line_end(path)?)
                || age >= UNTERMINATED_SETTLE.max(settle)
        }
    })
}

fn file_name_of(path: &Path) -> Option<String> {
    Some(path.file_name()?.to_string_lossy().into_owned())
}

fn ends_with_line_end(path: &Path) -> std::io::Result<bool> {
    let mut file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(matches!(last[0], b'\n' | b'\r'))
}

/// Sends a wake-up whenever a file in `dir` appears, changes or goes, and keeps `writers` up to
/// date. Wake-ups coalesce: one pending is enough, since each leads to a full rescan.
pub fn watch(
    dir: &Path,
    wake: mpsc::Sender<()>,
    writers: Writers,
) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            let _ = wake.try_send(());
            return;
        };
        writers.record(&event);
        if !is_read_only(&event.kind) {
            let _ = wake.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Opening or reading a file (or listing the folder) changes nothing; but every rescan lists the
/// folder and every publish opens a file, so waking on these would rescan in a loop forever.
fn is_read_only(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_)
                | AccessKind::Read
                | AccessKind::Close(AccessMode::Read | AccessMode::Execute)
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn only_visible_regular_csv_files_are_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        for name in [
            "b.csv",
            "a.CSV",
            ".a.csv.tmp",
            ".hidden.csv",
            "notes.txt",
            "c.csv.GZ",
            "d.gz",
        ] {
            std::fs::write(path(name), "x\n").unwrap();
        }
        std::fs::create_dir(path("folder.csv")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(path("b.csv"), path("link.csv")).unwrap();
        let mut memory = FolderMemory::default();
        let (ready, unsettled) =
            ready_files(dir.path(), Duration::ZERO, &Writers::default(), &mut memory).unwrap();
        assert_eq!(ready, vec![path("a.CSV"), path("b.csv")]);
        // A compressed file with no close seen waits the long settle; other names are ignored.
        assert!(unsettled);
        assert!(memory.warned.contains(&path("folder.csv")));
        assert!(memory.warned.contains(&path("d.gz")));
        assert!(!memory.warned.contains(&path("c.csv.GZ")));
    }

    #[test]
    fn files_still_being_written_wait_for_the_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), "x").unwrap();
        let (ready, unsettled) = ready_files(
            dir.path(),
            Duration::from_secs(60),
            &Writers::default(),
            &mut FolderMemory::default(),
        )
        .unwrap();
        assert!(ready.is_empty() && unsettled);
    }

    #[test]
    fn a_file_stamped_in_the_future_settles_by_the_bridges_own_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ahead.csv");
        std::fs::write(&path, "h\nrow\n").unwrap();
        let day = Duration::from_secs(24 * 3600);
        let file = File::options().write(true).open(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() + day)
            .unwrap();
        let settle = Duration::from_millis(100);
        let mut memory = FolderMemory::default();
        let mut look = || ready_files(dir.path(), settle, &Writers::default(), &mut memory);
        let (ready, unsettled) = look().unwrap();
        assert!(
            ready.is_empty() && unsettled,
            "taken before it was seen quiet"
        );
        std::thread::sleep(settle * 2);
        let (ready, _) = look().unwrap();
        assert_eq!(
            ready,
            vec![path.clone()],
            "held back until the clock catches up"
        );
        // A change restarts the quiet time, whatever the modification time says.
        std::fs::write(&path, "h\nrow\nrow\n").unwrap();
        file.set_modified(std::time::SystemTime::now() + day)
            .unwrap();
        let (ready, unsettled) = look().unwrap();
        assert!(ready.is_empty() && unsettled, "taken while it changed");
    }

    #[tokio::test]
    async fn listing_and_reading_do_not_wake_the_watcher_but_new_files_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.csv"), "x").unwrap();
        // Under `relatime` the first read after a write may move the access time, once (when the
        // write's mtime fell in a later clock tick than the file's creation): a kernel change
        // event of its own, not one of ours. Taken here, before watching; later reads move
        // nothing.
        std::fs::read(dir.path().join("old.csv")).unwrap();
        let (wake_tx, mut wake) = mpsc::channel(1);
        let _watcher = watch(dir.path(), wake_tx, Writers::default()).unwrap();
        let quiet = Duration::from_millis(300);
        for _ in 0..3 {
            ready_files(
                dir.path(),
                Duration::ZERO,
                &Writers::default(),
                &mut FolderMemory::default(),
            )
            .unwrap();
            std::fs::read(dir.path().join("old.csv")).unwrap();
            let woken = tokio::time::timeout(quiet, wake.recv()).await;
            assert!(woken.is_err(), "woken by our own listing or reading");
        }
        std::fs::write(dir.path().join("new.csv"), "y").unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(5), wake.recv()).await;
        assert!(woken.is_ok(), "not woken by a new file");
    }

    /// The ready files as a bridge that just started sees them: no sightings of its own.
    fn ready_at_start(dir: &Path, writers: &Writers) -> (Vec<PathBuf>, bool) {
        ready_files(dir, Duration::ZERO, writers, &mut FolderMemory::default()).unwrap()
    }

    #[test]
    fn a_file_cut_mid_line_waits_unless_its_writer_is_known_to_be_done() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cut.csv"), "h\nrow,2026-11-25T12:00:00").unwrap();
        let writers = Writers::default();
        let look = || ready_at_start(dir.path(), &writers);
        let (ready, unsettled) = look();
        assert!(
            ready.is_empty() && unsettled,
            "unterminated and unknown: waits"
        );
        writers.lock().insert("cut.csv".into(), Writer::Done);
        let (ready, _) = look();
        assert_eq!(ready.len(), 1, "closed by its writer: complete");
        std::fs::write(dir.path().join("cut.csv"), "h\nrow\n").unwrap();
        writers.lock().insert("cut.csv".into(), Writer::Writing);
        let (ready, _) = look();
        assert!(
            ready.is_empty(),
            "still open for writing: waits, line end or not"
        );
    }

    #[tokio::test]
    async fn the_watcher_tells_writes_in_place_from_closed_and_renamed_files() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (wake_tx, _wake) = mpsc::channel(1);
        let writers = Writers::default();
        let _watcher = watch(dir.path(), wake_tx, writers.clone()).unwrap();
        let mut open = File::create(dir.path().join("open.csv")).unwrap();
        open.write_all(b"h\nrow\n").unwrap();
        std::fs::write(dir.path().join(".t"), "h\n").unwrap();
        std::fs::rename(dir.path().join(".t"), dir.path().join("renamed.csv")).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(writers.of("open.csv".as_ref()), Some(Writer::Writing));
        assert_eq!(writers.of("renamed.csv".as_ref()), Some(Writer::Done));
        drop(open);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(writers.of("open.csv".as_ref()), Some(Writer::Done));
    }

    #[test]
    fn a_file_held_open_for_writing_is_not_ready_however_long_it_was_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open.csv");
        // Another process holds it (our own descriptors are not looked at).
        let mut writer = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 3>>'{}'; printf 'h\\nrow\\n' >&3; exec sleep 30",
                path.display()
            ))
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(20));
        }
        let writers = Writers::default();
        writers.lock().insert("open.csv".into(), Writer::Done);
        let mut memory = FolderMemory::default();
        let (ready, unsettled) =
            ready_files(dir.path(), Duration::ZERO, &writers, &mut memory).unwrap();
        assert!(ready.is_empty() && unsettled, "taken while held open");
        assert_eq!(memory.waiting(), vec![(path.clone(), Wait::HeldOpen)]);
        assert_eq!(memory.report_waiting(), 1);
        writer.kill().unwrap();
        writer.wait().unwrap();
        let (ready, _) = ready_at_start(dir.path(), &writers);
        assert_eq!(ready, vec![path], "its writer is gone: complete");
    }
}
