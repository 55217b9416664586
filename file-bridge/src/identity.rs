//! Which file a path is, and which version of it: one spelling for the input folder, the check
//! for writers, the wait for a file to be complete and the publisher's check that a file did not
//! change while it was read.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

/// A file on this host whatever its name (device and inode): two paths to it are one file, and
/// a file replaced under the same name is another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileNode {
    dev: u64,
    ino: u64,
}

impl FileNode {
    pub fn of(meta: &Metadata) -> FileNode {
        FileNode {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// One version of a file: its node, size, and modification and change times. Any write, a
/// replacement or a rename into place gives another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    node: FileNode,
    len: u64,
    modified_ns: i128,
    changed_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &Metadata) -> FileIdentity {
        let nanos =
            |seconds: i64, nanos: i64| i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
        FileIdentity {
            node: FileNode::of(meta),
            len: meta.len(),
            modified_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            changed_ns: nanos(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The modification time in milliseconds; a time before 1970 counts as 1970.
    pub fn modified_ms(&self) -> i64 {
        millis(self.modified_ns)
    }

    /// When the file last changed in the folder (its inode change time, which a rename sets), in
    /// milliseconds: the host's clock, never the writer's.
    pub fn changed_ms(&self) -> i64 {
        millis(self.changed_ns)
    }
}

fn millis(nanos: i128) -> i64 {
    i64::try_from(nanos.max(0) / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_write_or_a_replacement_is_another_version_a_second_name_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.csv");
        std::fs::write(&path, "one\n").unwrap();
        let first = FileIdentity::of(&std::fs::metadata(&path).unwrap());
        assert_eq!(first, FileIdentity::of(&std::fs::metadata(&path).unwrap()));

        let link = dir.path().join("b.csv");
        std::fs::hard_link(&path, &link).unwrap();
        let node = FileNode::of(&std::fs::metadata(&path).unwrap());
        assert_eq!(node, FileNode::of(&std::fs::metadata(&link).unwrap()));

        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"two\n").unwrap();
        let written = FileIdentity::of(&std::fs::metadata(&path).unwrap());
        assert_ne!(written, first);
        assert_eq!(written.node, first.node);

        let other = dir.path().join("c.csv");
        std::fs::write(&other, "one\n").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let replaced = FileIdentity::of(&std::fs::metadata(&path).unwrap());
        assert_ne!(replaced.node, first.node);
    }

    #[test]
    fn times_before_1970_count_as_1970() {
        assert_eq!(millis(-5_000_000_000), 0);
        assert_eq!(millis(1_500_000_000), 1_500);
    }
}
