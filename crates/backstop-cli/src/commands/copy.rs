//! `copy`: copy backups from another repository (created with `init --from-repo`) into this one.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use backstop::{BackupSelector, CopyOptions, ReadOnlyEngine};

use crate::cli::CopyArgs;
use crate::exit::{Code, Exit};
use crate::interrupt;
use crate::output::{count, quoted, size};
use crate::password;
use crate::progress::CliProgress;
use crate::repo::Settings;

use super::select;

pub(super) fn run(settings: &Settings, args: &CopyArgs) -> Result<()> {
    let password = password::from_repo_source(args.from_password.from_password_file.as_deref());
    let source = settings.open_other(&args.from_repo, password.as_ref())?;
    let backups = chosen(&source, args)?;
    let engine = settings.open()?;
    let progress = Arc::new(
        CliProgress::from_first_phase(settings.show_progress, "copying").counting("packs"),
    );
    let options = CopyOptions::default()
        .backups(backups)
        .with_archives(!args.no_archives)
        .with_progress(progress.clone())
        .with_cancel(interrupt::cancel_token());
    let result = engine.copy_from(&source, &options);
    progress.finish();
    let report = result.with_context(|| format!("copying from {}", quoted(&args.from_repo)))?;
    let printer = settings.printer;
    if printer.json {
        return printer.json("copy", &report);
    }
    for (from, to) in &report.copied {
        printer.status(format!("copied backup {from} as {to}"))?;
    }
    if !report.already_there.is_empty() {
        let ids: Vec<String> = report
            .already_there
            .iter()
            .map(|(from, to)| format!("{from} (as {to})"))
            .collect();
        printer.status(format!("already here: {}", ids.join(", ")))?;
    }
    let mut summary = format!(
        "{} copied: {} the destination lacked, {} in {}",
        count(report.copied.len() as u64, "backup"),
        count(report.blobs_copied, "blob"),
        size(report.bytes_written),
        count(report.packs_written, "pack")
    );
    if report.archive_objects_copied > 0 {
        summary.push_str(&format!(
            "; {} archive objects",
            report.archive_objects_copied
        ));
    }
    printer.status(summary)
}

/// The source's backups to copy: those named (each checked to be of `--source-path`'s
/// sources, when given), else every backup of those sources, else all (an empty list).
fn chosen(source: &ReadOnlyEngine, args: &CopyArgs) -> Result<Vec<BackupSelector>> {
    if args.source_path.is_empty() {
        return Ok(args.backups.clone());
    }
    if !args.backups.is_empty() {
        return args
            .backups
            .iter()
            .map(|which| {
                select::resolve(source, *which, &args.source_path).map(|b| BackupSelector::Id(b.id))
            })
            .collect();
    }
    let names = select::source_names(&args.source_path);
    let theirs: Vec<BackupSelector> = source
        .list_backups()?
        .into_iter()
        .filter(|b| names.contains(&b.source))
        .map(|b| BackupSelector::Id(b.id))
        .collect();
    if theirs.is_empty() {
        return Err(Exit::new(
            Code::NotFound,
            format!(
                "no backups of {} in {} (`backstop --repo {} list` shows each backup's source)",
                select::quoted_list(&args.source_path),
                quoted(&args.from_repo),
                args.from_repo
            ),
        )
        .into());
    }
    Ok(theirs)
}
