//! Atomic hand-off to the bridge: write a hidden temporary file, fsync it, rename it to `*.csv`,
//! fsync the folder. A reader of the folder sees a whole file or none.

use anyhow::Context;
use chrono::{DateTime, Utc};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Names files by UTC time, e.g. `events_20261125T130000_123456Z.csv`, never twice the same.
#[derive(Default)]
pub struct FileNamer {
    last: String,
    repeat: u32,
}

impl FileNamer {
    pub fn next(&mut self, now: DateTime<Utc>) -> String {
        let stem = format!("events_{}Z", now.format("%Y%m%dT%H%M%S_%6f"));
        if stem == self.last {
            self.repeat += 1;
            format!("{stem}_{}.csv", self.repeat)
        } else {
            self.last = stem.clone();
            self.repeat = 0;
            format!("{stem}.csv")
        }
    }
}

pub fn write_atomically(dir: &Path, name: &str, body: &[u8]) -> anyhow::Result<PathBuf> {
    // A leading dot and a non-.csv ending: the bridge never picks a temporary file up.
    let temporary = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut file = File::create(&temporary)
        .with_context(|| format!("failed to create {}", temporary.display()))?;
    file.write_all(body)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write {}", temporary.display()))?;
    std::fs::rename(&temporary, &target)
        .with_context(|| format!("failed to rename {} to {name}", temporary.display()))?;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|folder| folder.sync_all())
        .with_context(|| format!("failed to sync folder {}", dir.display()))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_repeat_within_one_microsecond() {
        let mut namer = FileNamer::default();
        let now = Utc::now();
        let first = namer.next(now);
        let second = namer.next(now);
        assert_ne!(first, second);
        assert!(first.starts_with("events_") && first.ends_with("Z.csv"));
        assert!(second.ends_with("Z_1.csv"));
    }

    #[test]
    fn leaves_only_the_finished_csv() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_atomically(dir.path(), "a.csv", b"x\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["a.csv"]);
    }
}
