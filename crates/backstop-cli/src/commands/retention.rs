//! `purge`, `delete` and `gc`: removing backups and the data only they used.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use backstop::{BackupId, GcOptions, RetentionPlan, RetentionPolicy};
use serde::Serialize;

use crate::cli::{DeleteArgs, GcArgs, PurgeArgs};
use crate::exit::{Code, Exit};
use crate::interrupt;
use crate::output::{self, quoted};
use crate::progress::CliProgress;
use crate::repo::Settings;

/// The `--json` result of `delete` (and the fields `purge` shares).
#[derive(Serialize)]
struct Deleted {
    deleted: Vec<BackupId>,
    /// Archived PostgreSQL WAL files deleted because no kept backup needs them.
    wal_deleted: Vec<String>,
}

/// The `--json` result of `purge`: what `delete` reports, plus the decision per source.
#[derive(Serialize)]
struct Purged {
    /// Every backup deleted (with `dry_run`: that would be), oldest first.
    deleted: Vec<BackupId>,
    /// Archived PostgreSQL WAL files deleted (would be) because no kept backup needs them.
    wal_deleted: Vec<String>,
    dry_run: bool,
    groups: Vec<PurgedGroup>,
}

#[derive(Serialize)]
struct PurgedGroup {
    host: String,
    source_kind: String,
    source: String,
    kept: Vec<BackupId>,
    deleted: Vec<BackupId>,
    /// Why each kept backup stays: the rules that keep it.
    reasons: std::collections::BTreeMap<BackupId, Vec<String>>,
}

/// The policy `purge` asks for; a usage error when it would keep nothing.
fn policy(args: &PurgeArgs) -> Result<RetentionPolicy> {
    let mut policy = RetentionPolicy::default()
        .keep_last(args.keep_last.unwrap_or(0))
        .keep_hourly(args.keep_hourly.unwrap_or(0))
        .keep_daily(args.keep_daily.unwrap_or(0))
        .keep_weekly(args.keep_weekly.unwrap_or(0))
        .keep_monthly(args.keep_monthly.unwrap_or(0))
        .keep_yearly(args.keep_yearly.unwrap_or(0));
    if let Some(within) = args.keep_within {
        policy = policy.keep_within(within);
    }
    for tag in &args.keep_tag {
        policy = policy.keep_tag(tag);
    }
    // A directory's backups record its canonical path; the path as typed counts too.
    for source in super::select::source_names(&args.source_path) {
        policy = policy.with_source(source);
    }
    policy.validate().map_err(|e| {
        let rules = rules(args);
        let given = if rules.is_empty() {
            "no --keep rule given".to_owned()
        } else {
            rules
        };
        Exit::new(Code::Usage, format!("{given}: {e}"))
    })?;
    Ok(policy)
}

/// The rules as given on the command line, for messages.
fn rules(args: &PurgeArgs) -> String {
    let counts = [
        ("last", args.keep_last),
        ("hourly", args.keep_hourly),
        ("daily", args.keep_daily),
        ("weekly", args.keep_weekly),
        ("monthly", args.keep_monthly),
        ("yearly", args.keep_yearly),
    ];
    let mut given: Vec<String> = counts
        .iter()
        .filter_map(|(name, count)| count.map(|n| format!("--keep-{name} {n}")))
        .collect();
    if let Some(within) = args.keep_within {
        given.push(format!(
            "--keep-within {}",
            humantime::format_duration(within)
        ));
    }
    given.extend(args.keep_tag.iter().map(|t| format!("--keep-tag {t}")));
    given.join(" ")
}

pub(super) fn purge(settings: &Settings, args: &PurgeArgs) -> Result<()> {
    let policy = policy(args)?;
    let engine = settings.open()?;
    let plan = engine
        .plan_retention(&policy)
        .with_context(|| format!("planning retention ({})", rules(args)))?;
    if plan.groups.is_empty() && !args.source_path.is_empty() {
        return Err(Exit::new(
            Code::NotFound,
            format!(
                "no backups of {} in the repository (`backstop list` shows each backup's source)",
                super::select::quoted_list(&args.source_path)
            ),
        )
        .into());
    }
    let (deleted, wal_deleted) = if args.dry_run {
        let wal = engine
            .plan_wal_prune(&plan)
            .context("listing the WAL archive")?;
        (plan.delete_ids(), wal)
    } else {
        let deleted = engine
            .apply_retention(&plan)
            .with_context(|| format!("applying retention ({})", rules(args)))?;
        // PostgreSQL WAL the kept backups no longer need goes with them.
        let wal = engine
            .prune_wal_archive()
            .context("pruning the WAL archive")?;
        (deleted, wal)
    };
    report_purged(settings, args.dry_run, &plan, deleted, wal_deleted)
}

fn report_purged(
    settings: &Settings,
    dry_run: bool,
    plan: &RetentionPlan,
    deleted: Vec<BackupId>,
    wal_deleted: Vec<String>,
) -> Result<()> {
    let printer = settings.printer;
    if printer.json {
        let groups = plan
            .groups
            .iter()
            .map(|g| PurgedGroup {
                host: g.group.host.clone(),
                source_kind: g.group.source_kind.clone(),
                source: g.group.source.clone(),
                kept: g.keep.clone(),
                reasons: g.reasons.clone(),
                // A backup another purge deleted meanwhile is not this one's.
                deleted: g
                    .delete
                    .iter()
                    .copied()
                    .filter(|id| deleted.contains(id))
                    .collect(),
            })
            .collect();
        return printer.json(
            "purge",
            &Purged {
                deleted,
                wal_deleted,
                dry_run,
                groups,
            },
        );
    }
    if dry_run {
        // The plan is what a dry run exists to show: printed even with `-q`.
        printer.line(plan)?;
        return printer.status(format!(
            "would delete {}{}; nothing changed (dry run)",
            output::count(deleted.len() as u64, "backup"),
            if wal_deleted.is_empty() {
                String::new()
            } else {
                format!(" and {} archived WAL file(s)", wal_deleted.len())
            }
        ));
    }
    if !wal_deleted.is_empty() {
        printer.status(format!(
            "deleted {} archived WAL file(s) older than the oldest kept PostgreSQL backup",
            wal_deleted.len()
        ))?;
    }
    if !deleted.is_empty() {
        printer.status(plan)?;
    }
    report_deleted(settings, "purge", deleted, Vec::new())
}

pub(super) fn delete(settings: &Settings, args: &DeleteArgs) -> Result<()> {
    let engine = settings.open()?;
    engine
        .delete_backup(args.backup)
        .with_context(|| format!("deleting backup {}", quoted(args.backup)))?;
    report_deleted(settings, "delete", vec![args.backup], Vec::new())
}

fn report_deleted(
    settings: &Settings,
    command: &str,
    deleted: Vec<BackupId>,
    wal_deleted: Vec<String>,
) -> Result<()> {
    let printer = settings.printer;
    if printer.json {
        return printer.json(
            command,
            &Deleted {
                deleted,
                wal_deleted,
            },
        );
    }
    if deleted.is_empty() {
        return printer.status("no backups deleted");
    }
    let ids: Vec<String> = deleted.iter().map(quoted).collect();
    printer.status(format!(
        "deleted backups {}; run `backstop gc` to free their space",
        ids.join(", ")
    ))
}

pub(super) fn gc(settings: &Settings, args: &GcArgs) -> Result<()> {
    let engine = settings.open()?;
    // A bar only once packs are rewritten: the rest of a gc is short, or deletions.
    let progress = Arc::new(
        CliProgress::from_first_phase(settings.show_progress && !args.dry_run, "rewriting")
            .counting("packs"),
    );
    let options = GcOptions::default()
        .dry_run(args.dry_run)
        .with_repack_unused_percent(args.repack_unused)
        .with_superseded_grace(args.grace)
        .with_progress(progress.clone())
        .with_cancel(interrupt::cancel_token());
    let result = engine.gc_with(&options);
    progress.finish();
    let report = result.context("collecting garbage")?;
    let printer = settings.printer;
    if report.packs_missing > 0 {
        // Said even with --json (on stderr): backups are damaged, and only the user can mend them.
        tracing::warn!(
            "{} packs the index listed are gone from the repository; {} out of the index. {} \
             blobs that backups use were in them: back up the same data again with \
             `--full-read` to store them anew, then run `backstop verify`; delete the backups \
             whose data is gone for good",
            report.packs_missing,
            if report.dry_run {
                "gc would take them"
            } else {
                "they were taken"
            },
            report.blobs_lost
        );
    }
    if report.blobs_unindexed > 0 {
        tracing::warn!(
            "{} blobs that backups use are in no index (an index object or a pack is missing); \
             gc kept the {} packs no index lists, which may hold them. Run `backstop repair \
             index`, then `backstop verify --all`",
            report.blobs_unindexed,
            report.packs_unindexed_kept
        );
    }
    if printer.json {
        return printer.json("gc", &report);
    }
    let (delete, rewrite) = if report.dry_run {
        ("would delete", "would rewrite")
    } else {
        ("deleted", "rewrote")
    };
    let mut extra = String::new();
    if report.packs_repacked > 0 {
        extra.push_str(&format!(
            ", {rewrite} {} mostly unused packs (copying {} in use{})",
            report.packs_repacked,
            output::size(report.bytes_repacked),
            if args.grace.is_zero() {
                String::new()
            } else {
                format!(
                    "; the old ones go in a gc after {}",
                    humantime::format_duration(args.grace)
                )
            }
        ));
    }
    if report.packs_in_grace > 0 {
        extra.push_str(&format!(
            ", {} rewritten packs kept until their grace period is over",
            report.packs_in_grace
        ));
    }
    if report.temp_files_removed > 0 {
        extra.push_str(&format!(
            ", {} temp files of interrupted writes removed",
            report.temp_files_removed
        ));
    }
    printer.status(format!(
        "{delete} {} ({}), kept {}, {} rewritten{extra}",
        output::count(report.packs_deleted, "pack"),
        output::size(report.bytes_freed),
        output::count(report.packs_kept, "pack"),
        if report.indexes_rewritten == 1 {
            "1 index".to_owned()
        } else {
            format!("{} indexes", report.indexes_rewritten)
        }
    ))
}
