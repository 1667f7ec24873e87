//! Retention: which backups a policy keeps, decided per source as a plan before anything goes.
//!
//! A repository usually holds backups of several sources (a SQLite file, a PostgreSQL
//! cluster, a few directories), taken on different schedules. A rule such as "keep the last 7"
//! therefore applies to each source on its own, never to the repository as a whole: otherwise
//! a source backed up weekly would lose every backup to a source backed up hourly. This is
//! restic's `forget` (grouped by host and paths) and RocksDB's `PurgeOldBackups` (one engine
//! per database).
//!
//! Planning is a pure function of the backup list ([`RetentionPolicy::plan`]); the engine
//! lists, plans and then deletes exactly the planned backups
//! ([`crate::ReadOnlyEngine::plan_retention`], [`crate::BackupEngine::apply_retention`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::info::{BackupId, BackupInfo};
use crate::{Error, ErrorKind, Result};

/// Which backups to keep of each source group (see [`SourceGroup`]).
///
/// A policy must keep something: [`RetentionPolicy::plan`] refuses one whose rules would keep
/// no backup at all (`keep_last(0)` and no other rule), because deleting every backup is never
/// what a retention schedule means. Delete backups one by one for that.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetentionPolicy {
    /// Keep the newest this many backups of each group (newest: highest backup id, the order
    /// in which backups committed).
    pub keep_last: usize,
    /// Apply the policy only to the groups whose recorded source (path, URL or group name, as
    /// [`BackupInfo::source`]) is one of these; empty: every group. Backups of other sources
    /// are left alone and not part of the plan.
    #[serde(default)]
    pub sources: Vec<String>,
}

impl RetentionPolicy {
    /// See [`RetentionPolicy::keep_last`].
    pub fn keep_last(mut self, count: usize) -> Self {
        self.keep_last = count;
        self
    }

    /// Adds a source the policy applies to (see [`RetentionPolicy::sources`]).
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.sources.push(source.into());
        self
    }

    /// Checks that the policy keeps at least one backup of each group.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when no rule keeps anything.
    pub fn validate(&self) -> Result<()> {
        if self.keep_last == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                RetentionError::KeepsNothing,
            ));
        }
        Ok(())
    }

    /// Splits `backups` into groups by source and decides, per group, which to keep and which
    /// to delete. Pure: the same list gives the same plan, and planning the kept backups again
    /// deletes nothing more.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when the policy keeps nothing ([`RetentionPolicy::validate`]).
    pub fn plan(&self, backups: &[BackupInfo]) -> Result<RetentionPlan> {
        self.validate()?;
        let mut groups: BTreeMap<SourceGroup, Vec<BackupId>> = BTreeMap::new();
        for backup in backups {
            if !self.sources.is_empty() && !self.sources.contains(&backup.source) {
                continue;
            }
            groups
                .entry(SourceGroup::of(backup))
                .or_default()
                .push(backup.id);
        }
        let mut plans: Vec<GroupPlan> = groups
            .into_iter()
            .map(|(group, mut ids)| {
                ids.sort_unstable();
                ids.dedup();
                let split = ids.len().saturating_sub(self.keep_last);
                let keep = ids.split_off(split);
                GroupPlan {
                    group,
                    keep,
                    delete: ids,
                }
            })
            .collect();
        // Two snapshots can share an id for a moment (two backups committing at once, see
        // docs/object-storage.md), and deleting an id deletes both: never delete an id that any
        // group keeps.
        let kept: BTreeSet<BackupId> = plans.iter().flat_map(|g| g.keep.iter().copied()).collect();
        for plan in &mut plans {
            plan.delete.retain(|id| !kept.contains(id));
        }
        Ok(RetentionPlan { groups: plans })
    }
}

/// What retention counts as one source: backups of the same kind of source, with the same
/// recorded identity, taken on the same host.
///
/// The identity is what the source recorded as [`BackupInfo::source`]: a directory's canonical
/// path, a database file's path, a PostgreSQL connection URL without password, a consistent
/// group's name (a consistent-group backup is its own group; its members are not split out).
/// The host is part of the group as in restic: `/etc` of two machines is two sources. A
/// machine that is renamed starts a new group, and its old backups stay until a policy for
/// the old group (or `delete`) removes them: more is kept, never less.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceGroup {
    /// Host that took the backups.
    pub host: String,
    /// Source kind (`dir`, `sqlite`, `postgres`, `group`, …).
    pub source_kind: String,
    /// Source identity (a path, URL or group name).
    pub source: String,
}

impl SourceGroup {
    /// The group `backup` belongs to.
    pub fn of(backup: &BackupInfo) -> Self {
        Self {
            host: backup.host.clone(),
            source_kind: backup.source_kind.clone(),
            source: backup.source.clone(),
        }
    }
}

impl fmt::Display for SourceGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} `{}` on `{}`",
            self.source_kind, self.source, self.host
        )
    }
}

/// The decision for one [`SourceGroup`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlan {
    /// Which source.
    #[serde(flatten)]
    pub group: SourceGroup,
    /// Backups kept, oldest first.
    pub keep: Vec<BackupId>,
    /// Backups to delete, oldest first.
    pub delete: Vec<BackupId>,
}

/// Which backups a [`RetentionPolicy`] keeps and deletes, per source group; computed first and
/// applied second ([`crate::BackupEngine::apply_retention`]), so a dry run shows exactly what
/// applying would do. `Display` renders it a line per group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPlan {
    /// One entry per group the policy applied to, ordered by host, kind and source.
    pub groups: Vec<GroupPlan>,
}

impl RetentionPlan {
    /// Every backup to delete, oldest first.
    pub fn delete_ids(&self) -> Vec<BackupId> {
        let ids: BTreeSet<BackupId> = self
            .groups
            .iter()
            .flat_map(|g| g.delete.iter().copied())
            .collect();
        ids.into_iter().collect()
    }

    /// Every backup kept, oldest first.
    pub fn keep_ids(&self) -> Vec<BackupId> {
        let ids: BTreeSet<BackupId> = self
            .groups
            .iter()
            .flat_map(|g| g.keep.iter().copied())
            .collect();
        ids.into_iter().collect()
    }
}

impl fmt::Display for RetentionPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn ids(list: &[BackupId]) -> String {
            if list.is_empty() {
                return "none".to_owned();
            }
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
        if self.groups.is_empty() {
            return f.write_str("no backups to consider");
        }
        for (i, group) in self.groups.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}: keep {}; delete {}",
                group.group,
                ids(&group.keep),
                ids(&group.delete)
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum RetentionError {
    #[error(
        "the retention policy keeps no backup (keep-last 0 and no other rule); delete backups one by one to remove them all"
    )]
    KeepsNothing,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(id: BackupId, kind: &str, source: &str) -> BackupInfo {
        BackupInfo {
            id,
            time_unix: 0,
            duration_ms: 0,
            host: "h".into(),
            source_kind: kind.into(),
            source: source.into(),
            tags: Vec::new(),
            message: None,
            metadata: BTreeMap::new(),
            files: 0,
            dirs: 0,
            size: 0,
            bytes_read: 0,
            bytes_added: 0,
            bytes_added_raw: 0,
            blobs_added: 0,
            parent: None,
            source_meta: BTreeMap::new(),
            pause_window: None,
            warnings: Vec::new(),
            restore_kind: String::new(),
        }
    }

    /// An hourly directory and a weekly database: the database keeps its own newest.
    fn mixed() -> Vec<BackupInfo> {
        vec![
            backup(1, "sqlite", "/db"),
            backup(2, "dir", "/files"),
            backup(3, "dir", "/files"),
            backup(4, "dir", "/files"),
            backup(5, "group", "shop"),
            backup(6, "dir", "/files"),
            backup(7, "dir", "/other"),
        ]
    }

    #[test]
    fn keep_last_applies_to_each_source() {
        let plan = RetentionPolicy::default()
            .keep_last(2)
            .plan(&mixed())
            .unwrap();
        assert_eq!(plan.delete_ids(), [2, 3]);
        assert_eq!(plan.keep_ids(), [1, 4, 5, 6, 7]);
        let files: Vec<&GroupPlan> = plan
            .groups
            .iter()
            .filter(|g| g.group.source == "/files")
            .collect();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].keep, [4, 6]);
        assert_eq!(files[0].delete, [2, 3]);
        assert_eq!(plan.groups.len(), 4);
    }

    #[test]
    fn same_path_of_another_kind_or_host_is_another_group() {
        let mut backups = vec![backup(1, "dir", "/x"), backup(2, "sqlite", "/x")];
        let mut elsewhere = backup(3, "dir", "/x");
        elsewhere.host = "other".into();
        backups.push(elsewhere);
        let plan = RetentionPolicy::default()
            .keep_last(1)
            .plan(&backups)
            .unwrap();
        assert_eq!(plan.groups.len(), 3);
        assert!(plan.delete_ids().is_empty(), "{plan}");
    }

    #[test]
    fn a_policy_that_keeps_nothing_is_refused() {
        let err = RetentionPolicy::default().plan(&mixed()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("keeps no backup"), "{err}");
    }

    #[test]
    fn a_source_filter_leaves_other_sources_out_of_the_plan() {
        let plan = RetentionPolicy::default()
            .keep_last(1)
            .with_source("/files")
            .plan(&mixed())
            .unwrap();
        assert_eq!(plan.groups.len(), 1);
        assert_eq!(plan.delete_ids(), [2, 3, 4]);
        assert_eq!(plan.keep_ids(), [6]);
    }

    #[test]
    fn planning_the_kept_backups_again_deletes_nothing() {
        let policy = RetentionPolicy::default().keep_last(2);
        let backups = mixed();
        let plan = policy.plan(&backups).unwrap();
        let kept: Vec<BackupInfo> = backups
            .into_iter()
            .filter(|b| plan.keep_ids().contains(&b.id))
            .collect();
        let again = policy.plan(&kept).unwrap();
        assert!(again.delete_ids().is_empty(), "{again}");
        assert_eq!(again.keep_ids(), plan.keep_ids());
    }

    #[test]
    fn an_id_kept_by_one_group_is_never_deleted_for_another() {
        // A transient duplicate id (two backups committing at once).
        let backups = vec![
            backup(1, "dir", "/a"),
            backup(2, "dir", "/a"),
            backup(2, "dir", "/b"),
            backup(3, "dir", "/b"),
        ];
        let plan = RetentionPolicy::default()
            .keep_last(1)
            .plan(&backups)
            .unwrap();
        assert_eq!(plan.delete_ids(), [1]);
    }

    #[test]
    fn display_lists_each_group() {
        let plan = RetentionPolicy::default()
            .keep_last(3)
            .plan(&mixed())
            .unwrap();
        let text = plan.to_string();
        assert!(
            text.contains("dir `/files` on `h`: keep 3, 4, 6; delete 2"),
            "{text}"
        );
        assert!(
            text.contains("sqlite `/db` on `h`: keep 1; delete none"),
            "{text}"
        );
    }
}
