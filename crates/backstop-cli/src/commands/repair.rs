//! `repair index`: rebuild the index from the packs, and say what is still missing after.

use std::sync::Arc;

use anyhow::{Context, Result};
use backstop::{RepairOptions, RepairReport};

use crate::cli::RepairIndexArgs;
use crate::interrupt;
use crate::progress::CliProgress;
use crate::repo::Settings;

pub(super) fn index(settings: &Settings, args: &RepairIndexArgs) -> Result<()> {
    let engine = settings.open_for_repair()?;
    let progress = Arc::new(
        CliProgress::from_first_phase(settings.show_progress, "reading").counting("packs"),
    );
    let options = RepairOptions::default()
        .dry_run(args.dry_run)
        .read_all_packs(args.read_all_packs)
        .with_progress(progress.clone())
        .with_cancel(interrupt::cancel_token());
    let result = engine.repair_index(&options);
    progress.finish();
    let report = result.context("repairing the index")?;
    warn_about_damage(&report);
    let printer = settings.printer;
    if printer.json {
        return printer.json("repair index", &report);
    }
    let sound = report.index_objects_damaged.is_empty()
        && report.packs_added == 0
        && report.packs_corrected == 0
        && report.packs_missing == 0
        && report.packs_damaged.is_empty();
    if sound {
        return printer.status(format!(
            "the index is whole: {} blobs in {} packs ({} read); nothing to mend",
            report.blobs_indexed, report.packs_in_store, report.packs_read
        ));
    }
    let verb = if report.dry_run {
        "would index"
    } else {
        "indexed"
    };
    let mut extra = String::new();
    if !report.index_objects_damaged.is_empty() {
        extra.push_str(&format!(
            ", {} damaged index objects {}",
            report.index_objects_damaged.len(),
            if report.dry_run {
                "would be replaced"
            } else {
                "replaced"
            }
        ));
    }
    if report.packs_corrected > 0 {
        extra.push_str(&format!(
            ", {} packs the index listed otherwise than they are corrected",
            report.packs_corrected
        ));
    }
    if report.packs_missing > 0 {
        extra.push_str(&format!(
            ", {} packs gone from the store left out",
            report.packs_missing
        ));
    }
    if report.blobs_salvaged > 0 {
        extra.push_str(&format!(
            ", {} intact blobs of damaged packs {}",
            report.blobs_salvaged,
            if report.dry_run {
                "would be copied"
            } else {
                "copied into new packs"
            }
        ));
    }
    printer.status(format!(
        "{verb} {} blobs ({} of {} packs read, {} that no index listed){extra}",
        report.blobs_indexed, report.packs_read, report.packs_in_store, report.packs_added,
    ))?;
    if !report.dry_run {
        printer.status(
            "run `backstop verify --all` to see whether every backup is whole again; a backup \
             of the same data with `--full-read` stores what is still missing",
        )?;
    }
    Ok(())
}

/// What the repair could not mend is said even with `--json` (on stderr): only the user can
/// mend it.
fn warn_about_damage(report: &RepairReport) {
    for pack in &report.packs_unreadable {
        tracing::warn!(
            "pack {pack}: left out of the index; the blobs in it are lost unless the pack can be \
             mended from a copy"
        );
    }
    for pack in &report.packs_damaged {
        tracing::warn!(
            "pack {pack}: its intact blobs {} into new packs, and it is left out of the index \
             (gc deletes it once no backup misses a blob)",
            if report.dry_run {
                "would be copied"
            } else {
                "were copied"
            }
        );
    }
}
