//! The input and archive folders: which files are ready, waking up when one lands, archiving.

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Lists the `*.csv` regular files of `dir` that nobody wrote to for `settle`, oldest name first,
/// and says whether others are still being written. Hidden files (temporary files of writers) are
/// skipped silently; symlinks, FIFOs and folders are skipped with one warning each.
pub fn ready_files(
    dir: &Path,
    settle: Duration,
    warned: &mut HashSet<PathBuf>,
) -> std::io::Result<(Vec<PathBuf>, bool)> {
    let mut unsettled = false;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_csv = Path::new(&*name)
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("csv"));
        if name.starts_with('.') || !is_csv {
            continue;
        }
        let path = entry.path();
        // file_type() does not follow symlinks: a link to a file is not a regular file here.
        match entry.file_type() {
            Ok(kind) if kind.is_file() => {
                // A file written in place (no rename) is taken once it has been still for a while.
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|modified| modified.elapsed().unwrap_or_default());
                match age {
                    Ok(age) if age >= settle => files.push(path),
                    Ok(_) => unsettled = true,
                    Err(_) => {}
                }
            }
            Ok(kind) => {
                if warned.insert(path.clone()) {
                    let kind = if kind.is_symlink() {
                        "symlink"
                    } else if kind.is_dir() {
                        "folder"
                    } else {
                        "special file"
                    };
                    tracing::warn!(file = %path.display(), kind, "ignoring: not a regular file");
                }
            }
            // Gone between listing and looking: nothing to do.
            Err(_) => {}
        }
    }
    files.sort();
    Ok((files, unsettled))
}

/// Moves a published file to the archive folder, never overwriting an earlier file of that name.
pub fn archive(file: &Path, archive_dir: &Path) -> std::io::Result<PathBuf> {
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("file has no name"))?;
    let mut target = archive_dir.join(name);
    let stem = Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut copy = 0;
    while target.symlink_metadata().is_ok() {
        copy += 1;
        target = archive_dir.join(format!("{stem}.{copy}.csv"));
    }
    match std::fs::rename(file, &target) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::CrossesDevices => {
            std::fs::copy(file, &target)?;
            std::fs::File::open(&target)?.sync_all()?;
            std::fs::remove_file(file)?;
        }
        Err(error) => return Err(error),
    }
    std::fs::File::open(archive_dir)?.sync_all()?;
    Ok(target)
}

/// Sends a wake-up whenever a file in `dir` appears, changes or goes. Wake-ups coalesce: one
/// pending is enough, since each leads to a full rescan.
pub fn watch(dir: &Path, wake: mpsc::Sender<()>) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| is_read_only(&event.kind)) {
            return;
        }
        let _ = wake.try_send(());
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

    #[test]
    fn only_visible_regular_csv_files_are_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        for name in ["b.csv", "a.CSV", ".a.csv.tmp", ".hidden.csv", "notes.txt"] {
            std::fs::write(path(name), "x").unwrap();
        }
        std::fs::create_dir(path("folder.csv")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(path("b.csv"), path("link.csv")).unwrap();
        let mut warned = HashSet::new();
        let (ready, unsettled) = ready_files(dir.path(), Duration::ZERO, &mut warned).unwrap();
        assert_eq!(ready, vec![path("a.CSV"), path("b.csv")]);
        assert!(!unsettled);
        assert!(warned.contains(&path("folder.csv")));
    }

    #[test]
    fn files_still_being_written_wait_for_the_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), "x").unwrap();
        let mut warned = HashSet::new();
        let (ready, unsettled) =
            ready_files(dir.path(), Duration::from_secs(60), &mut warned).unwrap();
        assert!(ready.is_empty() && unsettled);
    }

    #[tokio::test]
    async fn listing_and_reading_do_not_wake_the_watcher_but_new_files_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.csv"), "x").unwrap();
        let (wake_tx, mut wake) = mpsc::channel(1);
        let _watcher = watch(dir.path(), wake_tx).unwrap();
        let quiet = Duration::from_millis(300);
        for _ in 0..3 {
            ready_files(dir.path(), Duration::ZERO, &mut HashSet::new()).unwrap();
            std::fs::read(dir.path().join("old.csv")).unwrap();
            let woken = tokio::time::timeout(quiet, wake.recv()).await;
            assert!(woken.is_err(), "woken by our own listing or reading");
        }
        std::fs::write(dir.path().join("new.csv"), "y").unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(5), wake.recv()).await;
        assert!(woken.is_ok(), "not woken by a new file");
    }

    #[test]
    fn archiving_never_overwrites() {
        let input = tempfile::tempdir().unwrap();
        let archive_dir = tempfile::tempdir().unwrap();
        let file = input.path().join("e.csv");
        std::fs::write(&file, "one").unwrap();
        let first = archive(&file, archive_dir.path()).unwrap();
        std::fs::write(&file, "two").unwrap();
        let second = archive(&file, archive_dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(first).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(&second).unwrap(), "two");
        assert!(second.ends_with("e.1.csv"));
        assert!(!file.exists());
    }
}
