//! Which backup a command means: an id, or `latest`, of every source or of those given with
//! `--source-path`.

use std::collections::BTreeSet;

use anyhow::Result;
use backstop::{BackupInfo, BackupSelector, ReadOnlyEngine, SourceGroup};

use crate::exit::{Code, Exit};
use crate::output::quoted;

/// The names a backup of each of `paths` records as its source: the path as typed and, for a
/// directory, its canonical path (what a directory backup records).
pub(super) fn source_names(paths: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    for path in paths {
        names.push(path.clone());
        if let Ok(canonical) = std::fs::canonicalize(path) {
            let canonical = canonical.to_string_lossy().into_owned();
            if &canonical != path {
                names.push(canonical);
            }
        }
    }
    names
}

/// The backup `which` names. With `sources`, `latest` is the newest backup of those sources,
/// and an id must be one of theirs. Without, `latest` is the newest of the repository, and a
/// repository of several sources gets a warning naming whose it is.
pub(super) fn resolve(
    engine: &ReadOnlyEngine,
    which: BackupSelector,
    sources: &[String],
) -> Result<BackupInfo> {
    if sources.is_empty() {
        if which != BackupSelector::Latest {
            return Ok(engine.backup_info(which)?);
        }
        // One listing both picks the newest and counts the sources (it leaves out, with a
        // warning, a backup that cannot be read, as `latest` does).
        let all = engine.list_backups()?;
        let Some(backup) = all.iter().max_by_key(|b| b.id).cloned() else {
            // No backup, or none that reads: the engine says which.
            return Ok(engine.backup_info(which)?);
        };
        let groups: BTreeSet<SourceGroup> = all.iter().map(SourceGroup::of).collect();
        if groups.len() > 1 {
            tracing::warn!(
                "`latest` is backup {} of {}, the newest of the {} sources in the repository; \
                 `--source-path` picks the newest of one",
                backup.id,
                SourceGroup::of(&backup),
                groups.len()
            );
        }
        return Ok(backup);
    }
    let names = source_names(sources);
    let listed = quoted_list(sources);
    let theirs: Vec<BackupInfo> = engine
        .list_backups()?
        .into_iter()
        .filter(|b| names.contains(&b.source))
        .collect();
    let found = match which {
        BackupSelector::Latest => theirs.into_iter().max_by_key(|b| b.id),
        BackupSelector::Id(id) => {
            let backup = engine.backup_info(which)?;
            if !names.contains(&backup.source) {
                return Err(Exit::new(
                    Code::NotFound,
                    format!(
                        "backup {} is of {} `{}`, not of {listed}",
                        quoted(id),
                        backup.source_kind,
                        backup.source
                    ),
                )
                .into());
            }
            Some(backup)
        }
    };
    found.ok_or_else(|| {
        Exit::new(
            Code::NotFound,
            format!(
                "no backups of {listed} in the repository (`backstop list` shows each backup's \
                 source)"
            ),
        )
        .into()
    })
}

/// `a`, `b` for a message.
pub(super) fn quoted_list(items: &[String]) -> String {
    items.iter().map(quoted).collect::<Vec<_>>().join(", ")
}
