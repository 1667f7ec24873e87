//! `purge`, `delete` and `gc`: removing backups and the data only they used.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use backstop::{BackupId, GcOptions};
use serde::Serialize;

use crate::cli::{DeleteArgs, GcArgs, PurgeArgs};
use crate::interrupt;
use crate::output::{self, quoted};
use crate::progress::CliProgress;
use crate::repo::Settings;

/// The `--json` result of `purge` and `delete`.
#[derive(Serialize)]
struct Deleted {
    deleted: Vec<BackupId>,
    /// Archived PostgreSQL WAL files deleted because no kept backup needs them.
    wal_deleted: Vec<String>,
}

pub(super) fn purge(settings: &Settings, args: &PurgeArgs) -> Result<()> {
    let engine = settings.open()?;
    let deleted = engine
        .purge_old(args.keep_last)
        .with_context(|| format!("keeping the newest {} backups", args.keep_last))?;
    // PostgreSQL WAL the kept backups no longer need goes with them.
    let wal_deleted = engine
        .prune_wal_archive()
        .context("pruning the WAL archive")?;
    if !wal_deleted.is_empty() && !settings.printer.json {
        settings.printer.status(format!(
            "deleted {} archived WAL file(s) older than the oldest kept PostgreSQL backup",
            wal_deleted.len()
        ))?;
    }
    report_deleted(settings, "purge", deleted, wal_deleted)
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
        "{delete} {} packs ({}), kept {} packs, {} indexes rewritten{extra}",
        report.packs_deleted,
        output::size(report.bytes_freed),
        report.packs_kept,
        report.indexes_rewritten
    ))
}
