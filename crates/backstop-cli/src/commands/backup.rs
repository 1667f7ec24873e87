//! `backup`: take a backup of a directory or a live database.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use backstop::{BackupInfo, BackupOptions, ErrorKind};

use crate::cli::{BackupArgs, SourceKind};
use crate::exit;
use crate::interrupt;
use crate::output::{self, Printer, quoted};
use crate::progress::CliProgress;
use crate::repo::Settings;
use crate::sources::{self, SourceSpec};

pub(super) fn run(settings: &Settings, args: &BackupArgs) -> Result<()> {
    let engine = settings.open()?;

    let mut excludes = args.exclude.clone();
    let excludes_from_flags = !excludes.is_empty();
    if args.kind == SourceKind::Dir {
        excludes.extend(settings.config_excludes.iter().cloned());
    }
    let mut source = sources::build(SourceSpec {
        kind: args.kind,
        location: args.location.clone(),
        excludes,
        excludes_from_flags,
        one_file_system: args.one_file_system,
        exclude_caches: args.exclude_caches,
        fast_checkpoint: args.fast_checkpoint,
        pg_data_dir: args.pg_data_dir.clone(),
        label: args.label.clone(),
        sqlite_method: args.sqlite_method.clone(),
        db_tools: args.db_tools.clone(),
        data_dirs: args.data_dir.clone(),
        hold: sources::hold_config(&args.hold),
    })?;

    let progress = Arc::new(CliProgress::new(settings.show_progress, "storing"));
    let options = backup_options(args, progress.clone());
    let result = engine.create_backup(&mut *source, &options);
    progress.finish();
    let info = result.map_err(anyhow::Error::new).map_err(|err| {
        let location = quoted(&args.location);
        let kind = exit::engine_kind(&err);
        let context = if kind == Some(ErrorKind::Cancelled) || interrupt::interrupted() {
            format!(
                "backup of {location} interrupted; no backup was recorded and earlier backups \
                 are intact (`backstop gc` removes the partial data)"
            )
        } else if kind == Some(ErrorKind::StorageFull) {
            format!(
                "backup of {location} ran out of space; no backup \
                 was recorded and earlier backups are intact: free space where the cause \
                 says and run it again (`backstop gc` removes what this attempt stored)"
            )
        } else {
            format!("backing up {location}")
        };
        err.context(context)
    })?;

    let printer = settings.printer;
    if printer.json {
        return printer.json("backup", &info);
    }
    summary(printer, &info).context("printing the backup summary")
}

fn summary(printer: Printer, info: &BackupInfo) -> Result<()> {
    printer.status(format!(
        "backup {} of {} ({}) done in {}",
        printer.good(&quoted(info.id)),
        quoted(&info.source),
        info.source_kind,
        output::duration_ms(info.duration_ms)
    ))?;
    printer.status(format!(
        "  files   {}, {}, {}",
        output::count(info.files, "file"),
        output::count(info.dirs, "dir"),
        output::size(info.size)
    ))?;
    printer.status(format!(
        "  read    {} ({})",
        output::size(info.bytes_read),
        output::rate(info.bytes_read, info.duration_ms)
    ))?;
    printer.status(format!(
        "  added   {} ({} before compression, {})",
        output::size(info.bytes_added),
        output::size(info.bytes_added_raw),
        output::count(info.blobs_added, "blob")
    ))?;
    if let Some(parent) = info.parent {
        printer.status(format!("  parent  backup {}", quoted(parent)))?;
    }
    for warning in &info.warnings {
        printer.warning(warning)?;
    }
    Ok(())
}

/// The engine's backup options from the command line: tags, metadata, message, full read,
/// progress and Ctrl-C.
pub(super) fn backup_options(args: &BackupArgs, progress: Arc<CliProgress>) -> BackupOptions {
    let mut options = BackupOptions::default()
        .with_progress(progress)
        .with_cancel(interrupt::cancel_token())
        .with_full_read(args.full_read);
    for tag in &args.tag {
        options = options.with_tag(tag.clone());
    }
    for (key, value) in &args.meta {
        options = options.with_metadata(key.clone(), value.clone());
    }
    if let Some(message) = &args.message {
        options = options.with_message(message.clone());
    }
    options
}
