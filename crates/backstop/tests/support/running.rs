//! Checks shared by the database tests: a running database is not restored over, and a plain
//! directory backup of it says that it runs and which source backs it up.

#![allow(dead_code, reason = "each test file uses what it needs")]

use std::path::Path;

use backstop::{BackupEngine, BackupOptions, ErrorKind, ExistingTarget, RestoreOptions};

/// The warnings of a plain directory backup of `dir`.
pub(crate) fn plain_backup_warnings(engine: &BackupEngine, dir: &Path) -> Vec<String> {
    engine
        .create_backup(
            &mut backstop::DirSource::new(dir),
            &BackupOptions::default(),
        )
        .expect("a plain directory backup")
        .warnings
}

/// Asserts that a plain directory backup of `dir` warns of a running `database` (its name for
/// people), says `evidence`, and names `--source kind`.
pub(crate) fn assert_a_plain_backup_warns(
    engine: &BackupEngine,
    dir: &Path,
    database: &str,
    kind: &str,
    evidence: &str,
) {
    let warnings = plain_backup_warnings(engine, dir);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&format!("running {database} database"))
                && w.contains(evidence)
                && w.contains(&format!("--source {kind}"))),
        "{warnings:?}"
    );
}

/// Asserts that restoring backup `id` over `target` (`--force`) is refused as unsafe before
/// anything is written, with `evidence` in the message.
pub(crate) fn assert_restore_over_is_refused(
    engine: &BackupEngine,
    id: u64,
    target: &Path,
    evidence: &str,
) {
    let err = engine
        .restore(
            id,
            target,
            &RestoreOptions::default().with_existing(ExistingTarget::Overwrite),
        )
        .expect_err("a restore over a running database");
    assert_eq!(err.kind(), ErrorKind::Unsafe, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(evidence) && message.contains("nothing was restored"),
        "{message}"
    );
}
