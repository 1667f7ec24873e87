//! `verify`: check backups at a chosen depth; problems found exit with code 3.

use std::sync::Arc;

use anyhow::Result;
use backstop::{VerifyLevel, VerifyOptions, VerifyReport};

use crate::cli::VerifyArgs;
use crate::exit::{Code, Exit};
use crate::interrupt;
use crate::output::{self, quoted};
use crate::progress::CliProgress;
use crate::repo::Settings;

pub(super) fn run(settings: &Settings, args: &VerifyArgs) -> Result<()> {
    let level = match (args.full, args.read_data_subset) {
        (true, _) => VerifyLevel::Full,
        (false, Some(percent)) => VerifyLevel::Subset(percent),
        (false, None) => VerifyLevel::Quick,
    };
    let engine = settings.open_read_only()?;
    // A bar only where packs are read: a quick verify lists objects and is done.
    let reads = level != VerifyLevel::Quick;
    let progress =
        Arc::new(CliProgress::new(settings.show_progress && reads, "verifying").counting("packs"));
    let options = VerifyOptions::new(level)
        .with_progress(progress.clone())
        .with_cancel(interrupt::cancel_token());
    let result = match args.backup {
        Some(which) if !args.all => engine.verify_with(which, &options),
        _ => engine.verify_all_with(&options),
    };
    progress.finish();
    let report = result?;

    let printer = settings.printer;
    if printer.json {
        printer.json("verify", &report)?;
    } else {
        print_report(settings, &report, level)?;
    }
    if report.is_ok() {
        Ok(())
    } else {
        let count = report.problems.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        Err(Exit::new(Code::Corrupt, format!("verify found {count} {noun}")).into())
    }
}

fn print_report(settings: &Settings, report: &VerifyReport, level: VerifyLevel) -> Result<()> {
    let printer = settings.printer;
    let level = match level {
        VerifyLevel::Quick => "quick".to_owned(),
        VerifyLevel::Subset(percent) => format!("{percent}% of the data"),
        VerifyLevel::Full => "full".to_owned(),
    };
    let backups: Vec<String> = report.backups.iter().map(quoted).collect();
    let backups = if backups.is_empty() {
        "none".to_owned()
    } else {
        backups.join(", ")
    };
    printer.status(format!(
        "verified ({level}) {} {backups}: {} in {}, {} read ({})",
        if report.backups.len() == 1 {
            "backup"
        } else {
            "backups"
        },
        output::count(report.blobs, "blob"),
        output::count(report.packs, "pack"),
        output::count(report.packs_read, "pack"),
        output::size(report.bytes_read)
    ))?;
    if report.is_ok() {
        return printer.status(printer.good("no problems found"));
    }
    for problem in &report.problems {
        printer.line(format!("{} {problem}", printer.bad("problem:")))?;
    }
    // What the damage costs, so that the user can decide what to back up again or delete.
    const SHOWN: usize = 5;
    for damaged in &report.damaged_files {
        let shown: Vec<String> = damaged.paths.iter().take(SHOWN).map(quoted).collect();
        let more = damaged.files.saturating_sub(shown.len() as u64);
        printer.line(format!(
            "{} backup {}: {} {} cannot be restored whole: {}{}",
            printer.bad("damaged:"),
            quoted(damaged.backup),
            damaged.files,
            if damaged.files == 1 { "file" } else { "files" },
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more (`--json` lists up to 100)")
            } else {
                String::new()
            }
        ))?;
    }
    Ok(())
}
