//! `list`, `info`, `diff` and `dump`: what the repository holds.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use backstop::{BackupInfo, ChangeKind, FileInfo};
use serde::Serialize;

use crate::cli::{DiffArgs, DumpArgs, InfoArgs};
use crate::exit::{Code, Exit};
use crate::output::{self, Align, Printer, Table, quoted};
use crate::repo::Settings;

pub(super) fn list(settings: &Settings) -> Result<()> {
    let engine = settings.open_read_only()?;
    let backups = engine.list_backups()?;
    let printer = settings.printer;
    if printer.json {
        return printer.json("list", &backups);
    }
    if backups.is_empty() {
        return printer.status("no backups yet");
    }
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("TIME", Align::Left),
        ("HOST", Align::Left),
        ("KIND", Align::Left),
        ("FILES", Align::Right),
        ("SIZE", Align::Right),
        ("ADDED", Align::Right),
        ("TAGS", Align::Left),
        ("SOURCE", Align::Left),
    ]);
    for backup in &backups {
        table.row(vec![
            backup.id.to_string(),
            output::local_time(backup.time_unix, backup.utc_offset_secs),
            backup.host.clone(),
            backup.source_kind.clone(),
            backup.files.to_string(),
            output::size(backup.size),
            output::size(backup.bytes_added),
            backup.tags.join(","),
            backup.source.clone(),
        ]);
    }
    printer.table(&table)?;
    let noun = if backups.len() == 1 {
        "backup"
    } else {
        "backups"
    };
    printer.status(format!("{} {noun}", backups.len()))
}

/// The `--json` result of `info`: `files` is present only with `--files`.
#[derive(Serialize)]
struct InfoResult {
    backup: BackupInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<FileInfo>>,
}

pub(super) fn info(settings: &Settings, args: &InfoArgs) -> Result<()> {
    let engine = settings.open_read_only()?;
    let backup = super::select::resolve(&engine, args.backup, &args.source_path)?;
    let files = if args.files {
        Some(engine.backup_files(backup.id)?)
    } else {
        None
    };
    let printer = settings.printer;
    if printer.json {
        return printer.json("info", &InfoResult { backup, files });
    }
    describe(printer, &backup)?;
    if let Some(files) = &files {
        printer.line("")?;
        file_table(printer, files)?;
    }
    Ok(())
}

pub(super) fn dump(settings: &Settings, args: &DumpArgs) -> Result<()> {
    if settings.printer.json {
        return Err(Exit::new(
            Code::Usage,
            "dump writes the file itself to stdout; --json has no place there",
        )
        .into());
    }
    let engine = settings.open_read_only()?;
    let backup = super::select::resolve(&engine, args.backup, &args.source_path)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    engine
        .dump(backup.id, &args.path, &mut out)
        .with_context(|| format!("writing `{}` of backup {}", args.path, quoted(backup.id)))?;
    out.flush().context("writing to stdout")?;
    Ok(())
}

pub(super) fn diff(settings: &Settings, args: &DiffArgs) -> Result<()> {
    let engine = settings.open_read_only()?;
    let diff = engine.diff(args.from, args.to)?;
    let printer = settings.printer;
    if printer.json {
        return printer.json("diff", &diff);
    }
    for change in &diff.changes {
        let (mark, detail) = match change.change {
            ChangeKind::Added => ("+", String::new()),
            ChangeKind::Removed => ("-", String::new()),
            ChangeKind::Modified => (
                "M",
                match (change.size_before, change.size_after) {
                    (Some(before), Some(after)) if before != after => {
                        format!("  ({} → {})", output::size(before), output::size(after))
                    }
                    _ => String::new(),
                },
            ),
            ChangeKind::TypeChanged => ("T", format!("  (now a {})", change.kind)),
            ChangeKind::Metadata if args.metadata => ("m", String::new()),
            ChangeKind::Metadata => continue,
        };
        printer.line(format!("{mark} {}{detail}", change.path))?;
    }
    printer.status(format!(
        "backup {} → {}: {} added, {} removed, {} modified, {} with other metadata only",
        quoted(diff.from),
        quoted(diff.to),
        diff.added,
        diff.removed,
        diff.modified,
        diff.metadata
    ))
}

fn describe(printer: Printer, backup: &BackupInfo) -> Result<()> {
    let mut rows: Vec<(&str, String)> = vec![
        ("backup", quoted(backup.id)),
        (
            "time",
            output::local_time(backup.time_unix, backup.utc_offset_secs),
        ),
        ("duration", output::duration_ms(backup.duration_ms)),
        ("host", backup.host.clone()),
        (
            "source",
            format!("{} ({})", quoted(&backup.source), backup.source_kind),
        ),
        (
            "files",
            format!(
                "{}, {}, {}",
                output::count(backup.files, "file"),
                output::count(backup.dirs, "dir"),
                output::size(backup.size)
            ),
        ),
        ("read", output::size(backup.bytes_read)),
        (
            "added",
            format!(
                "{} ({} before compression, {})",
                output::size(backup.bytes_added),
                output::size(backup.bytes_added_raw),
                output::count(backup.blobs_added, "blob")
            ),
        ),
        ("restore", backup.restore_kind.clone()),
    ];
    if let Some(parent) = backup.parent {
        rows.push(("parent", quoted(parent)));
    }
    if !backup.tags.is_empty() {
        rows.push(("tags", backup.tags.join(", ")));
    }
    if let Some(message) = &backup.message {
        rows.push(("message", message.clone()));
    }
    for (key, value) in &backup.metadata {
        rows.push(("metadata", format!("{key} = {value}")));
    }
    for (key, value) in &backup.source_meta {
        rows.push(("source meta", format!("{key} = {value}")));
    }
    if let Some((start, end)) = backup.pause_window {
        rows.push(("paused", format!("{:.3} s", end - start)));
    }
    for warning in &backup.warnings {
        rows.push(("warning", warning.clone()));
    }
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    for (label, value) in rows {
        printer.line(format!(
            "{}  {value}",
            printer.bold(&format!("{label:width$}"))
        ))?;
    }
    Ok(())
}

fn file_table(printer: Printer, files: &[FileInfo]) -> Result<()> {
    let mut table = Table::new(&[
        ("MODE", Align::Left),
        ("KIND", Align::Left),
        ("SIZE", Align::Right),
        ("MODIFIED", Align::Left),
        ("PATH", Align::Left),
    ]);
    for file in files {
        let path = match &file.target {
            Some(target) => format!("{} -> {target}", file.path),
            None => file.path.clone(),
        };
        table.row(vec![
            format!("{:04o}", file.mode & 0o7777),
            file.kind.clone(),
            output::size(file.size),
            output::time(file.mtime_ns.div_euclid(1_000_000_000)),
            path,
        ]);
    }
    printer.table(&table)
}
