//! Archiving a published file, never replacing one already there.

use crate::content::Compression;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Moves a published file to the archive folder, never replacing a file there, whoever else
/// archives into it at the same moment (another bridge, a file of the same name): each name is
/// taken by an atomic rename that fails if it exists, and the next free `STEM.N.csv` (keeping a
/// compressed file's suffix, `STEM.N.csv.gz`) is tried.
/// Across file systems it copies to a temporary name of its own, syncs, and moves that the same
/// way: a failure at any step leaves no partial file under an archive name.
pub fn archive(file: &Path, archive_dir: &Path) -> std::io::Result<PathBuf> {
    // The archive folder may have been removed while the bridge ran (a volume re-mounted, an
    // operator clearing it): made again, as at start-up.
    std::fs::create_dir_all(archive_dir)?;
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("file has no name"))?;
    let target = match move_to_a_free_name(file, archive_dir, name) {
        Err(error) if error.kind() == std::io::ErrorKind::CrossesDevices => {
            let copied = copy_beside(file, archive_dir, name)?;
            let target = move_to_a_free_name(&copied, archive_dir, name).inspect_err(|_| {
                let _ = std::fs::remove_file(&copied);
            })?;
            std::fs::remove_file(file)?;
            target
        }
        moved => moved?,
    };
    File::open(archive_dir)?.sync_all()?;
    Ok(target)
}

/// Renames `source` into `dir` as `name`, or the first free `STEM.N.SUFFIX`, never replacing.
fn move_to_a_free_name(
    source: &Path,
    dir: &Path,
    name: &std::ffi::OsStr,
) -> std::io::Result<PathBuf> {
    let shown = name.to_string_lossy();
    let (stem, suffix) = match Compression::split_name(&shown) {
        Some((stem, suffix, _)) => (stem, suffix),
        None => (&*shown, ".csv"),
    };
    for copy in 0u64.. {
        let target = match copy {
            0 => dir.join(name),
            n => dir.join(format!("{stem}.{n}{suffix}")),
        };
        match rename_without_replacing(source, &target) {
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            moved => return moved.map(|()| target),
        }
    }
    unreachable!("names run out after u64::MAX copies")
}

/// Copies `file` into `dir` under a hidden name no other process uses, synced.
fn copy_beside(file: &Path, dir: &Path, name: &std::ffi::OsStr) -> std::io::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let partial = dir.join(format!(
        ".{}.{}-{nanos}.partial",
        name.to_string_lossy(),
        std::process::id()
    ));
    let copied = std::fs::copy(file, &partial).and_then(|_| File::open(&partial)?.sync_all());
    if let Err(error) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    Ok(partial)
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists` then), atomically: Linux's
/// `renameat2(RENAME_NOREPLACE)`, or where a file system lacks it, a hard link (which never
/// replaces) and the removal of the old name.
fn rename_without_replacing(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::NOTSUP) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A compressed file's copy keeps its suffix, so it is read as what it is.
        for _ in 0..2 {
            std::fs::write(input.path().join("f.CSV.gz"), "x").unwrap();
            archive(&input.path().join("f.CSV.gz"), archive_dir.path()).unwrap();
        }
        assert!(archive_dir.path().join("f.1.CSV.gz").exists());
    }

    #[test]
    fn two_archivers_of_one_name_at_once_never_replace_each_others_files() {
        let archive_dir = tempfile::tempdir().unwrap();
        let inputs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        const ROUNDS: usize = 300;
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            for (who, input) in inputs.iter().enumerate() {
                let (barrier, archive_dir) = (&barrier, archive_dir.path());
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        let file = input.path().join("same.csv");
                        std::fs::write(&file, format!("{who}-{round}")).unwrap();
                        barrier.wait();
                        archive(&file, archive_dir).unwrap();
                    }
                });
            }
        });
        let mut contents: Vec<String> = std::fs::read_dir(archive_dir.path())
            .unwrap()
            .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
            .collect();
        contents.sort();
        contents.dedup();
        assert_eq!(contents.len(), 2 * ROUNDS, "an archived file was replaced");
    }
}
