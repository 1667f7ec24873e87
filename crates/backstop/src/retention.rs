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
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::info::{BackupId, BackupInfo};
use crate::{Error, ErrorKind, Result};

/// Which backups to keep of each source group (see [`SourceGroup`]).
///
/// The rules add up, as restic's `forget` rules do (whose meaning these follow): a backup is
/// kept when any rule keeps it. `keep_last` keeps the newest N; `keep_hourly`, `keep_daily`,
/// `keep_weekly`, `keep_monthly` and `keep_yearly` keep, for each of the N most recent hours
/// (days, weeks from Monday, months, years) that have backups, the newest backup of that
/// period; `keep_within` keeps every backup taken within that long before the group's newest.
/// Periods are the local ones of the host that took each backup (the UTC offset it recorded;
/// UTC for backups that recorded none), so every host reading the same repository plans the
/// same, and a nightly backup at 00:30 counts for the day it ran on. Newest means
/// the highest backup id (the order in which backups committed); the periods go by the time
/// each backup started.
///
/// A policy must keep something: [`RetentionPolicy::plan`] refuses one whose rules would keep
/// no backup at all (every count 0 and no `keep_within`), because deleting every backup is
/// never what a retention schedule means. Delete backups one by one for that.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetentionPolicy {
    /// Keep the newest this many backups of each group.
    pub keep_last: usize,
    /// Keep the newest backup of each of this many most recent hours that have backups.
    #[serde(default)]
    pub keep_hourly: usize,
    /// The same for days (the backup host's local days).
    #[serde(default)]
    pub keep_daily: usize,
    /// The same for weeks (local, from Monday).
    #[serde(default)]
    pub keep_weekly: usize,
    /// The same for calendar months (local).
    #[serde(default)]
    pub keep_monthly: usize,
    /// The same for calendar years (local).
    #[serde(default)]
    pub keep_yearly: usize,
    /// Keep every backup taken at most this long before the newest backup of its group.
    #[serde(default)]
    pub keep_within: Option<Duration>,
    /// Keep every backup that carries one of these tags.
    #[serde(default)]
    pub keep_tags: Vec<String>,
    /// Apply the policy only to the groups whose recorded source (path, URL or group name, as
    /// [`BackupInfo::source`]) is one of these; empty: every group. Backups of other sources
    /// are left alone and not part of the plan.
    #[serde(default)]
    pub sources: Vec<String>,
}

/// A period rule: its name in the plan's reasons and how it cuts time into periods.
struct PeriodRule {
    name: &'static str,
    count: usize,
    period: fn(i64) -> i64,
}

impl RetentionPolicy {
    /// See [`RetentionPolicy::keep_last`].
    pub fn keep_last(mut self, count: usize) -> Self {
        self.keep_last = count;
        self
    }

    /// See [`RetentionPolicy::keep_hourly`].
    pub fn keep_hourly(mut self, count: usize) -> Self {
        self.keep_hourly = count;
        self
    }

    /// See [`RetentionPolicy::keep_daily`].
    pub fn keep_daily(mut self, count: usize) -> Self {
        self.keep_daily = count;
        self
    }

    /// See [`RetentionPolicy::keep_weekly`].
    pub fn keep_weekly(mut self, count: usize) -> Self {
        self.keep_weekly = count;
        self
    }

    /// See [`RetentionPolicy::keep_monthly`].
    pub fn keep_monthly(mut self, count: usize) -> Self {
        self.keep_monthly = count;
        self
    }

    /// See [`RetentionPolicy::keep_yearly`].
    pub fn keep_yearly(mut self, count: usize) -> Self {
        self.keep_yearly = count;
        self
    }

    /// See [`RetentionPolicy::keep_within`].
    pub fn keep_within(mut self, within: Duration) -> Self {
        self.keep_within = Some(within);
        self
    }

    /// Keeps every backup tagged `tag` (see [`RetentionPolicy::keep_tags`]).
    pub fn keep_tag(mut self, tag: impl Into<String>) -> Self {
        self.keep_tags.push(tag.into());
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
        // keep_within keeps at least the newest backup, even at zero.
        // A tag rule alone keeps only the tagged: the group's other backups would all go, and
        // a group without the tag would lose everything.
        if self.keep_last == 0
            && self.period_rules().iter().all(|r| r.count == 0)
            && self.keep_within.is_none()
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                RetentionError::KeepsNothing,
            ));
        }
        Ok(())
    }

    fn period_rules(&self) -> [PeriodRule; 5] {
        [
            PeriodRule {
                name: "hourly",
                count: self.keep_hourly,
                period: |t| t.div_euclid(3600),
            },
            PeriodRule {
                name: "daily",
                count: self.keep_daily,
                period: |t| t.div_euclid(86_400),
            },
            PeriodRule {
                name: "weekly",
                count: self.keep_weekly,
                // 1970-01-01 was a Thursday: day 4 is the first Monday.
                period: |t| (t.div_euclid(86_400) + 3).div_euclid(7),
            },
            PeriodRule {
                name: "monthly",
                count: self.keep_monthly,
                period: |t| {
                    let (year, month) = civil_year_month(t.div_euclid(86_400));
                    year * 12 + i64::from(month)
                },
            },
            PeriodRule {
                name: "yearly",
                count: self.keep_yearly,
                period: |t| civil_year_month(t.div_euclid(86_400)).0,
            },
        ]
    }

    /// Splits `backups` into groups by source and decides, per group, which to keep and which
    /// to delete. Pure: the same list gives the same plan, and planning the kept backups again
    /// deletes nothing more.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when the policy keeps nothing ([`RetentionPolicy::validate`]).
    pub fn plan(&self, backups: &[BackupInfo]) -> Result<RetentionPlan> {
        self.validate()?;
        let mut groups: BTreeMap<SourceGroup, Vec<&BackupInfo>> = BTreeMap::new();
        for backup in backups {
            if !self.sources.is_empty() && !self.sources.contains(&backup.source) {
                continue;
            }
            groups
                .entry(SourceGroup::of(backup))
                .or_default()
                .push(backup);
        }
        let mut plans: Vec<GroupPlan> = groups
            .into_iter()
            .map(|(group, members)| self.plan_group(group, members))
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

    /// The decision for one group's backups.
    fn plan_group(&self, group: SourceGroup, mut members: Vec<&BackupInfo>) -> GroupPlan {
        // Newest first; one entry per id.
        members.sort_unstable_by_key(|b| std::cmp::Reverse(b.id));
        members.dedup_by_key(|b| b.id);
        let mut reasons: BTreeMap<BackupId, Vec<String>> = BTreeMap::new();
        let mut keep = |id: BackupId, why: &str| reasons.entry(id).or_default().push(why.into());
        for backup in members.iter().take(self.keep_last) {
            keep(backup.id, "last");
        }
        for rule in self.period_rules() {
            let mut left = rule.count;
            let mut last_period = None;
            for backup in &members {
                if left == 0 {
                    break;
                }
                let period = (rule.period)(local_time(backup));
                if last_period != Some(period) {
                    keep(backup.id, rule.name);
                    last_period = Some(period);
                    left -= 1;
                }
            }
        }
        for backup in &members {
            if backup.tags.iter().any(|t| self.keep_tags.contains(t)) {
                keep(backup.id, "tag");
            }
        }
        if let (Some(within), Some(newest)) = (self.keep_within, members.first()) {
            let within = i64::try_from(within.as_secs()).unwrap_or(i64::MAX);
            for backup in &members {
                if newest.time_unix.saturating_sub(backup.time_unix) <= within {
                    keep(backup.id, "within");
                }
            }
        }
        let (mut kept, mut deleted): (Vec<BackupId>, Vec<BackupId>) = members
            .iter()
            .map(|b| b.id)
            .partition(|id| reasons.contains_key(id));
        kept.reverse();
        deleted.reverse();
        GroupPlan {
            group,
            keep: kept,
            delete: deleted,
            reasons,
        }
    }
}

/// A backup's start as seconds since 1970-01-01 00:00 of its host's local time: what its
/// days, weeks, months and years go by (UTC for a backup that recorded no offset).
fn local_time(backup: &BackupInfo) -> i64 {
    backup
        .time_unix
        .saturating_add(i64::from(backup.utc_offset_secs.unwrap_or(0)))
}

/// The civil (proleptic Gregorian) year and month (1–12) of a day counted from 1970-01-01.
/// Howard Hinnant's `civil_from_days` (public domain), so that no date crate is needed for
/// two numbers.
fn civil_year_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, u32::try_from(month).unwrap_or(1))
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
    /// Why each kept backup is kept: the rules that keep it (`last`, `hourly`, `daily`,
    /// `weekly`, `monthly`, `yearly`, `tag`, `within`).
    #[serde(default)]
    pub reasons: BTreeMap<BackupId, Vec<String>>,
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
        "the retention policy keeps no backup (no keep rule above 0); delete backups one by one to remove them all"
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
            utc_offset_secs: None,
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

    /// Backups of one source every `step` seconds, the newest at `newest`, ids in time order.
    fn every(step: i64, count: u64, newest: i64) -> Vec<BackupInfo> {
        (1..=count)
            .map(|id| {
                let mut b = backup(id, "dir", "/files");
                b.time_unix = newest - step * (count - id) as i64;
                b
            })
            .collect()
    }

    /// 2026-12-06 23:00 UTC, a Sunday.
    const SUNDAY_NIGHT: i64 = 20_793 * 86_400 + 23 * 3600;

    /// Days are the backup host's local days: at UTC+2, backups at 23:30 and at 00:30 the
    /// next night are on two days, though both fall on one UTC day.
    #[test]
    fn days_are_the_local_days_of_the_host_that_took_the_backup() {
        let day = 20_793 * 86_400; // 2026-12-06 00:00 UTC
        let at = |id, utc: i64, offset| {
            let mut b = backup(id, "dir", "/files");
            b.time_unix = utc;
            b.utc_offset_secs = offset;
            b
        };
        let plus_two = Some(2 * 3600);
        let backups = [
            // 12-05 23:30 local, 21:30 UTC.
            at(1, day - 2 * 3600 - 1800, plus_two),
            // 12-06 00:30 local, still 12-05 in UTC (22:30).
            at(2, day - 3600 - 1800, plus_two),
            // 12-06 23:30 local.
            at(3, day + 21 * 3600 + 1800, plus_two),
        ];
        let plan = RetentionPolicy::default()
            .keep_daily(2)
            .plan(&backups)
            .unwrap();
        // Local: 12-06 keeps 3 (the newest of 2 and 3), 12-05 keeps 1.
        assert_eq!(plan.keep_ids(), [1, 3]);
        assert_eq!(plan.delete_ids(), [2]);
        // Without a recorded offset the days are UTC's: 12-05 holds 1 and 2, and keeps 2.
        let utc: Vec<BackupInfo> = backups
            .iter()
            .map(|b| at(b.id, b.time_unix, None))
            .collect();
        let plan = RetentionPolicy::default().keep_daily(2).plan(&utc).unwrap();
        assert_eq!(plan.keep_ids(), [2, 3]);
    }

    #[test]
    fn civil_months_and_years_are_those_of_the_calendar() {
        for (days, expected) in [
            (0, (1970, 1)),
            (-1, (1969, 12)),
            (11_016, (2000, 2)), // 2000-02-29
            (11_017, (2000, 3)),
            (20_088, (2024, 12)), // 2024-12-31
            (20_089, (2025, 1)),
            (20_793, (2026, 12)),
        ] {
            assert_eq!(civil_year_month(days), expected, "day {days}");
        }
    }

    #[test]
    fn period_rules_keep_the_newest_backup_of_each_recent_period() {
        // Every 6 hours for 100 days: 400 backups, the newest on a Sunday night.
        let backups = every(6 * 3600, 400, SUNDAY_NIGHT);
        let newest_of_day = |days_back: i64| {
            let day = SUNDAY_NIGHT.div_euclid(86_400) - days_back;
            backups
                .iter()
                .filter(|b| b.time_unix.div_euclid(86_400) == day)
                .map(|b| b.id)
                .max()
                .unwrap()
        };
        let daily = RetentionPolicy::default()
            .keep_daily(3)
            .plan(&backups)
            .unwrap();
        assert_eq!(
            daily.keep_ids(),
            [newest_of_day(2), newest_of_day(1), newest_of_day(0)]
        );
        // Weeks start on Monday: the newest of this week is Sunday's, of the week before the
        // Sunday a week earlier.
        let weekly = RetentionPolicy::default()
            .keep_weekly(2)
            .plan(&backups)
            .unwrap();
        assert_eq!(weekly.keep_ids(), [newest_of_day(7), newest_of_day(0)]);
        // Months: December (the newest), and November's last (the 30th).
        let monthly = RetentionPolicy::default()
            .keep_monthly(2)
            .plan(&backups)
            .unwrap();
        assert_eq!(monthly.keep_ids(), [newest_of_day(6), newest_of_day(0)]);
        // Rules add up, and a backup two rules keep is kept once, with both reasons.
        let both = RetentionPolicy::default()
            .keep_last(2)
            .keep_daily(2)
            .keep_yearly(5)
            .plan(&backups)
            .unwrap();
        assert_eq!(both.keep_ids(), [newest_of_day(1), 399, 400]);
        assert_eq!(both.groups[0].reasons[&400], ["last", "daily", "yearly"]);
        assert_eq!(both.groups[0].reasons[&399], ["last"]);
        assert_eq!(both.delete_ids().len(), 397);
    }

    #[test]
    fn a_tagged_backup_is_kept_beside_the_other_rules_and_a_tag_alone_keeps_nothing_else() {
        let mut backups = every(86_400, 10, SUNDAY_NIGHT);
        backups[2].tags = vec!["release".into()];
        backups[5].tags = vec!["other".into()];
        let plan = RetentionPolicy::default()
            .keep_last(2)
            .keep_tag("release")
            .plan(&backups)
            .unwrap();
        assert_eq!(plan.keep_ids(), [3, 9, 10]);
        assert_eq!(plan.groups[0].reasons[&3], ["tag"]);
        // Without a rule that keeps untagged backups, the policy is refused.
        let err = RetentionPolicy::default()
            .keep_tag("release")
            .plan(&backups)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn keep_within_counts_back_from_the_newest_backup_of_the_group() {
        // Hourly for two days, the newest a day old by the wall clock: the window is
        // measured from the newest backup, not from now.
        let backups = every(3600, 48, SUNDAY_NIGHT - 86_400);
        let plan = RetentionPolicy::default()
            .keep_within(Duration::from_secs(5 * 3600))
            .plan(&backups)
            .unwrap();
        assert_eq!(plan.keep_ids(), [43, 44, 45, 46, 47, 48]);
    }

    #[test]
    fn period_plans_are_stable_when_applied_again() {
        // Irregular times (xorshift steps of up to 3 days).
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut time = SUNDAY_NIGHT - 400 * 86_400;
        let mut backups = Vec::new();
        for id in 1..=300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            time += (x % (3 * 86_400)) as i64;
            let mut b = backup(id, "dir", "/files");
            b.time_unix = time;
            backups.push(b);
        }
        let policy = RetentionPolicy::default()
            .keep_last(3)
            .keep_daily(7)
            .keep_weekly(5)
            .keep_monthly(12)
            .keep_yearly(3)
            .keep_within(Duration::from_secs(10 * 86_400));
        let plan = policy.plan(&backups).unwrap();
        assert!(plan.delete_ids().len() > 200, "{plan}");
        let kept: Vec<BackupInfo> = backups
            .into_iter()
            .filter(|b| plan.keep_ids().contains(&b.id))
            .collect();
        let again = policy.plan(&kept).unwrap();
        assert!(again.delete_ids().is_empty(), "{again}");
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
