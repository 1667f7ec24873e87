//! Restore profiles: the fix-ups a restore applies once the files are back, per source kind.
//!
//! A profile is plain data stored in the snapshot (a kind plus recorded facts), so a restore
//! long after the backup applies the procedure of the source that took it. The code for each
//! kind lives in that source's module; this file only dispatches.

use std::collections::BTreeMap;
use std::path::Path;

use crate::SourceError;

/// The fix-up procedure for one backup, as recorded in its snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoreProfile {
    /// Which procedure: `none` (or empty), `eventstore`, `sqlite`, `bdb`, `postgres`,
    /// `rocksdb`, `group`.
    pub kind: String,
    /// Facts the procedure needs (file names, log positions, member profiles), as strings.
    pub params: BTreeMap<String, String>,
}

impl RestoreProfile {
    /// A profile that does nothing after the files are back.
    pub fn none() -> Self {
        Self {
            kind: "none".into(),
            params: BTreeMap::new(),
        }
    }

    /// Whether the backup is of plain files, which need no fix-up (and can be restored in part).
    pub fn is_plain_files(&self) -> bool {
        matches!(self.kind.as_str(), "" | "none" | "dir")
    }

    /// A profile of `kind` with no parameters yet.
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            params: BTreeMap::new(),
        }
    }

    /// Adds a parameter.
    #[must_use]
    pub fn with_param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.insert(key.into(), value.into());
        self
    }
}

/// What the user asked of the fix-ups at restore time.
#[derive(Clone, Debug, Default)]
pub struct RestoreParams {
    /// Restore the raw files only; apply no fix-up.
    pub raw: bool,
    /// Kind-specific options from the command line (`target-time`, `target-lsn`, `db-tools`…).
    pub options: BTreeMap<String, String>,
}

/// Whether applying `profile` may read the restored files' contents: SQLite's integrity check
/// reads every page, Berkeley DB's catastrophic recovery the logs and databases, RocksDB's
/// check its manifest. A restore writes files past the page cache only when nothing reads them
/// right after (they would come back from the device, page by page). Kinds other than a plain
/// directory's count as reading, whatever their fix-up does today.
pub fn reads_restored_files(profile: &RestoreProfile, params: &RestoreParams) -> bool {
    !params.raw && !profile.is_plain_files()
}

/// Applies `profile` to the restored tree at `target` and returns a line per step taken.
pub fn apply(
    profile: &RestoreProfile,
    target: &Path,
    params: &RestoreParams,
) -> Result<Vec<String>, SourceError> {
    if params.raw {
        return Ok(vec![format!(
            "raw restore: `{}` fix-ups skipped",
            profile.kind
        )]);
    }
    if profile.is_plain_files() {
        return Ok(Vec::new());
    }
    match profile.kind.as_str() {
        "eventstore" => crate::eventstore::restore_fixup(profile, target, params),
        "group" => crate::group::restore_fixup(profile, target, params),
        #[cfg(feature = "sqlite")]
        "sqlite" => crate::sqlite::restore_fixup(profile, target, params),
        #[cfg(feature = "postgres")]
        "postgres" => crate::postgres::restore_fixup(profile, target, params),
        #[cfg(feature = "bdb")]
        "bdb" => crate::bdb::restore_fixup(profile, target, params),
        #[cfg(feature = "rocksdb-dir")]
        "rocksdb" => crate::rocksdb::restore_fixup(profile, target, params),
        other => Err(SourceError::Procedure(format!(
            "this build of backstop cannot apply the `{other}` restore procedure; rebuild with \
             that source's feature, or restore the raw files with `--raw`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_directories_and_raw_restores_leave_the_files_unread() {
        let read = RestoreParams::default();
        let raw = RestoreParams {
            raw: true,
            ..RestoreParams::default()
        };
        for kind in ["", "none", "dir"] {
            assert!(
                !reads_restored_files(&RestoreProfile::new(kind), &read),
                "{kind}"
            );
        }
        for kind in [
            "sqlite",
            "bdb",
            "postgres",
            "rocksdb",
            "eventstore",
            "group",
            "new",
        ] {
            let profile = RestoreProfile::new(kind);
            assert!(reads_restored_files(&profile, &read), "{kind}");
            assert!(!reads_restored_files(&profile, &raw), "{kind} raw");
        }
    }
}
