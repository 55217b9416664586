//! The input folder as it changes under a running bridge: removed, made again, replaced by a
//! mount or a symlink, or no longer listable. The bridge follows it rather than exit.

use super::{watch_input, Bridge, RunMode, CLAIM_FOLDER_GRACE};
use crate::identity::FileNode;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Instant;

impl Bridge {
    /// Notices the input folder vanish, come back or be replaced (re-mounted, a symlink to another
    /// folder): while it is missing the bridge waits and readiness says why; when it is another
    /// folder than before, the claim folder and its lock are taken there and the watch renewed.
    /// False while there is no folder to scan.
    pub(super) fn follow_input_folder(&mut self) -> bool {
        let input = &self.settings.input_dir;
        let readiness = &self.files.metrics.readiness;
        let Some(now) = folder_identity(input) else {
            self.lose_input_folder();
            return false;
        };
        let same_folder = self.input_folder == Some(now);
        if same_folder && self.claims.dir().is_dir() {
            self.claims_missing_since = None;
            return true;
        }
        // `rm -rf` of the input folder takes the claim folder first: made again at once, it
        // would leave the operator's removal failing on a folder that is not empty.
        let missing_since = *self.claims_missing_since.get_or_insert_with(Instant::now);
        if same_folder && missing_since.elapsed() < CLAIM_FOLDER_GRACE {
            return false;
        }
        match self.claims.renew(input) {
            Ok(()) => self.claims_missing_since = None,
            // Removed between the look above and now.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.lose_input_folder();
                return false;
            }
            Err(error) => {
                tracing::warn!(folder = %input.display(), %error, "cannot take the claim folder yet; will retry");
                readiness.set(
                    telemetry::Check::InputFolder,
                    Err(format!(
                        "claim folder in {} not taken: {error}",
                        input.display()
                    )),
                );
                return false;
            }
        }
        self.watcher = watch_input(&self.settings.input_dir, &self.wake_tx, &self.writers);
        tracing::warn!(folder = %input.display(), "the input folder is back or was replaced; claim folder and watch renewed");
        self.input_folder = Some(now);
        readiness.set(telemetry::Check::InputFolder, Ok(()));
        true
    }

    /// A folder the bridge cannot list (its permissions changed, a network share gone stale): not
    /// a reason to exit, since an operator or the share mends it. Said once, readiness says why,
    /// and the next turn looks again: nothing to publish this turn. Under `--once`, an error.
    pub(super) fn cannot_list(
        &mut self,
        folder: PathBuf,
        error: std::io::Error,
    ) -> anyhow::Result<(Vec<PathBuf>, bool)> {
        if self.mode == RunMode::Once {
            return Err(error).with_context(|| format!("failed to list {}", folder.display()));
        }
        if self.unlistable.replace(folder.clone()).as_ref() != Some(&folder) {
            tracing::error!(folder = %folder.display(), %error, "cannot list the folder; waiting for it to be readable");
        }
        self.files.metrics.readiness.set(
            telemetry::Check::InputFolder,
            Err(format!("cannot list {}: {error}", folder.display())),
        );
        Ok((Vec::new(), false))
    }

    /// Both folders listed: what [`Bridge::cannot_list`] said is over.
    pub(super) fn listed_again(&mut self) {
        if let Some(folder) = self.unlistable.take() {
            tracing::warn!(folder = %folder.display(), "the folder can be listed again");
            let readiness = &self.files.metrics.readiness;
            readiness.set(telemetry::Check::InputFolder, Ok(()));
        }
    }

    /// The input folder is gone: said once, then waited for; readiness says why meanwhile.
    pub(super) fn lose_input_folder(&mut self) {
        let folder = self.settings.input_dir.display();
        if self.input_folder.take().is_some() {
            tracing::error!(%folder, "the input folder is gone; waiting for it to come back");
        }
        self.files.metrics.readiness.set(
            telemetry::Check::InputFolder,
            Err(format!("input folder {folder} is missing")),
        );
    }
}

/// The folder's node, following symlinks; `None` when it is not a folder now.
pub(super) fn folder_identity(dir: &Path) -> Option<FileNode> {
    std::fs::metadata(dir)
        .ok()
        .filter(std::fs::Metadata::is_dir)
        .map(|meta| FileNode::of(&meta))
}
