//! `copy`: copy backups from another repository (created with `init --from-repo`) into this one.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use backstop::CopyOptions;

use crate::cli::CopyArgs;
use crate::interrupt;
use crate::output::{quoted, size};
use crate::password;
use crate::progress::CliProgress;
use crate::repo::Settings;

pub(super) fn run(settings: &Settings, args: &CopyArgs) -> Result<()> {
    let password = password::from_repo_source(args.from_password.from_password_file.as_deref());
    let source = settings.open_other(&args.from_repo, password.as_ref())?;
    let engine = settings.open()?;
    let progress = Arc::new(
        CliProgress::from_first_phase(settings.show_progress, "copying").counting("packs"),
    );
    let options = CopyOptions::default()
        .backups(args.backups.iter().copied())
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
        "{} backups copied: {} blobs the destination lacked, {} in {} packs",
        report.copied.len(),
        report.blobs_copied,
        size(report.bytes_written),
        report.packs_written
    );
    if report.archive_objects_copied > 0 {
        summary.push_str(&format!(
            "; {} archive objects",
            report.archive_objects_copied
        ));
    }
    printer.status(summary)
}
