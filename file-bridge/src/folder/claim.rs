//! Claiming a file before it is published: a rename into the bridge's own claim folder.

use super::CLAIM_DIR;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a bridge taking its claim folder waits for a lock another bridge holds: one adopting
/// the files of this owner's earlier run holds it only while it moves them.
const ADOPTION_WAIT: Duration = Duration::from_secs(5);

/// One bridge's claim folder, `input/.claimed/<owner>/`, held through an exclusive lock on
/// `input/.claimed/<owner>.lock` for as long as the bridge runs: several bridges share an input
/// folder, each publishing only the files it claimed (a claim is a rename: one bridge wins it).
/// The kernel drops the lock when its process dies, however it dies, so a live bridge adopts
/// the files of a dead one (and those an older version left directly in `.claimed/`).
pub struct ClaimFolder {
    root: PathBuf,
    dir: PathBuf,
    owner: String,
    /// Held while the bridge runs; `None` only for the moment of [`ClaimFolder::renew`].
    _lock: Option<File>,
}

impl ClaimFolder {
    /// Takes `owner`'s claim folder; fails if a live bridge holds it. The lock comes before the
    /// folder, so no other bridge adopts a folder being taken; a lock held a moment by a bridge
    /// adopting the files of this owner's earlier run is waited out. The input folder itself is
    /// never made here: one removed while the bridge looks stays removed.
    pub fn take(input: &Path, owner: &str) -> std::io::Result<ClaimFolder> {
        let root = input.join(CLAIM_DIR);
        let owner = owner_folder_name(owner);
        make_folder_in_place(&root)?;
        let deadline = std::time::Instant::now() + ADOPTION_WAIT;
        let lock = loop {
            match try_lock(&root, &owner)? {
                Some(lock) => break lock,
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!(
                            "another running bridge claims files in {} as {owner:?}; give each \
                             bridge on one input folder its own --instance-id",
                            root.display()
                        ),
                    ))
                }
            }
        };
        make_folder_in_place(&root.join(&owner))?;
        Ok(ClaimFolder {
            dir: root.join(&owner),
            root,
            owner,
            _lock: Some(lock),
        })
    }

    /// Takes the claim folder again in `input` (a folder that was removed and made again, or
    /// replaced): the old lock goes first, since a lock on the same file would refuse the new one.
    pub fn renew(&mut self, input: &Path) -> std::io::Result<()> {
        self._lock = None;
        let renewed = ClaimFolder::take(input, &self.owner)?;
        *self = renewed;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves into this folder the files of claim folders no live bridge holds, and the files an
    /// older version left directly in `.claimed/`; the files moved.
    pub fn adopt_orphans(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut adopted = Vec::new();
        for entry in std::fs::read_dir(&self.root)?.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_file() && !name.ends_with(".lock") {
                adopted.extend(claim(&entry.path(), &self.dir)?);
            } else if kind.is_dir() && name != self.owner {
                // Held by a live bridge: its files are its own.
                let Some(_lock) = try_lock(&self.root, &name)? else {
                    continue;
                };
                for file in claimed_files(&entry.path())? {
                    adopted.extend(claim(&file, &self.dir)?);
                }
            }
        }
        for file in &adopted {
            tracing::info!(file = %file.display(), "adopted a file claimed by a bridge that is gone");
        }
        Ok(adopted)
    }
}

/// An owner's name as a folder name: anything but letters, digits, `.`, `_` and `-` replaced.
fn owner_folder_name(owner: &str) -> String {
    let name: String = owner
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match name.trim_start_matches('.') {
        "" => "bridge".to_owned(),
        name => name.to_owned(),
    }
}

/// Makes `dir` unless it exists; its parent must exist (`NotFound` otherwise).
fn make_folder_in_place(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        made => made,
    }
}

/// The lock of `owner`'s claim folder, if no live process holds it.
fn try_lock(root: &Path, owner: &str) -> std::io::Result<Option<File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(format!("{owner}.lock")))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(error)) => Err(error),
    }
}

/// Claims `path` by renaming it into `claimed` under its own name. `None` when a claimed file of
/// that name is still being published: this one waits its turn in the input folder.
pub fn claim(path: &Path, claimed: &Path) -> std::io::Result<Option<PathBuf>> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("file has no name"))?;
    let target = claimed.join(name);
    if target.symlink_metadata().is_ok() {
        return Ok(None);
    }
    std::fs::rename(path, &target)?;
    Ok(Some(target))
}

/// Claimed files left by an earlier run (published perhaps in part): taken before new ones.
pub fn claimed_files(claimed: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(claimed)?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .map(|entry| entry.path())
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_name_is_claimed_once_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let folder = ClaimFolder::take(dir.path(), "one").unwrap();
        let claimed = folder.dir().to_owned();
        std::fs::write(dir.path().join("a.csv"), "one").unwrap();
        let first = claim(&dir.path().join("a.csv"), &claimed).unwrap().unwrap();
        std::fs::write(dir.path().join("a.csv"), "two").unwrap();
        assert_eq!(claim(&dir.path().join("a.csv"), &claimed).unwrap(), None);
        assert_eq!(std::fs::read_to_string(&first).unwrap(), "one");
        assert_eq!(claimed_files(&claimed).unwrap(), vec![first]);
    }

    #[test]
    fn a_claim_folder_has_one_live_owner_and_a_dead_owners_files_are_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let a = ClaimFolder::take(dir.path(), "a").unwrap();
        let error = ClaimFolder::take(dir.path(), "a").err().unwrap();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
        let b = ClaimFolder::take(dir.path(), "b/../x").unwrap();
        assert!(b.dir().ends_with(".claimed/b_.._x"), "{:?}", b.dir());

        std::fs::write(a.dir().join("of-a.csv"), "a").unwrap();
        std::fs::write(dir.path().join(CLAIM_DIR).join("legacy.csv"), "l").unwrap();
        // a is alive: only the file an older version left is adopted.
        let adopted = b.adopt_orphans().unwrap();
        assert_eq!(adopted, vec![b.dir().join("legacy.csv")]);
        // a is gone (its lock released, as the kernel does when a process dies).
        drop(a);
        let adopted = b.adopt_orphans().unwrap();
        assert_eq!(adopted, vec![b.dir().join("of-a.csv")]);
        assert_eq!(
            std::fs::read_to_string(b.dir().join("of-a.csv")).unwrap(),
            "a"
        );
        assert!(b.adopt_orphans().unwrap().is_empty());
    }

    #[test]
    fn taking_a_claim_folder_waits_out_a_bridge_adopting_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(CLAIM_DIR);
        std::fs::create_dir_all(&root).unwrap();
        // Another bridge adopting this owner's files holds the lock for a moment.
        let adopter = try_lock(&root, "a").unwrap().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(adopter);
        });
        let taken = ClaimFolder::take(dir.path(), "a");
        release.join().unwrap();
        assert!(taken.is_ok(), "{:?}", taken.err());
    }

    #[test]
    fn renewing_the_claim_folder_never_makes_a_removed_input_folder_again() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input");
        std::fs::create_dir(&input).unwrap();
        let mut claims = ClaimFolder::take(&input, "a").unwrap();
        std::fs::remove_dir_all(&input).unwrap();
        let renewed = claims.renew(&input);
        assert_eq!(
            renewed.err().map(|error| error.kind()),
            Some(std::io::ErrorKind::NotFound)
        );
        assert!(!input.exists(), "the removed input folder was made again");
    }
}
