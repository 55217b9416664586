//! The input and archive folders: which files are ready, waking up when one lands, claiming a
//! file before it is published, archiving it after.
//!
//! Guarantees:
//! - A file is taken only when complete. One renamed into the folder, or whose writer closed it
//!   (inotify close-write), is complete. One seen being written (changed, not closed) is not. One
//!   the bridge saw nothing of (it was there before the bridge started) must be unchanged for the
//!   settle time and end in a line end, or be unchanged for [`UNTERMINATED_SETTLE`]. Unchanged
//!   means by its modification time or by the bridge's own sightings, whichever says longer: a
//!   writer's clock ahead of the host's never holds a file back.
//! - The bridge claims a file by renaming it into a private folder on the same file system before
//!   it reads it, so the file it archives is the file it published, whatever is later written or
//!   renamed under the old name.
//! - It opens only regular files, never following a symlink, never blocking on a FIFO.

mod archive;
mod claim;
mod ready;

pub use archive::archive;
pub use claim::{claim, claimed_files, ClaimFolder};
pub use ready::{
    ready_files, watch, EntryKind, FolderMemory, OpenForWriting, Wait, Writers, LONG_WAIT,
    UNTERMINATED_SETTLE,
};

use std::fs::File;
use std::path::Path;

/// Name of the private folder, inside the input folder, that holds claimed files.
pub const CLAIM_DIR: &str = ".claimed";

/// Opens `path` for reading only if it is a regular file: a symlink is not followed, a FIFO does
/// not block the open, and the opened descriptor itself is checked (not the name, which may have
/// been swapped since it was listed).
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open_and_fifos_do_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.csv");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(open_regular(&fifo).is_err());
        std::fs::write(dir.path().join("real.csv"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real.csv"), dir.path().join("link.csv"))
            .unwrap();
        assert!(open_regular(&dir.path().join("link.csv")).is_err());
        assert!(open_regular(&dir.path().join("real.csv")).is_ok());
    }
}
