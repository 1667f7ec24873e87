//! `standby` and `archive-logs`: the Berkeley DB procedures that run beside backups (a hot
//! standby kept in sync, and log removal that never outruns the backups).

use anyhow::{Context as _, Result, bail};
use backstop::source::bdb::{self, BdbSource};
use backstop::{BackupSelector, ExistingTarget, RestoreOptions, Source as _};

use crate::cli::{ArchiveLogsArgs, StandbyArgs};
use crate::output::quoted;
use crate::repo::Settings;
use crate::sources::bdb_tools;

pub(super) fn standby(settings: &Settings, args: &StandbyArgs) -> Result<()> {
    let printer = &settings.printer;
    if args.promote {
        bdb::promote_standby(&args.standby)
            .with_context(|| format!("promoting the standby {}", quoted(args.standby.display())))?;
        if printer.is_json() {
            return printer.json("standby", &serde_json::json!({ "promoted": true }));
        }
        return printer.line(format!(
            "standby {} is now the primary: start the application on it with DB_RECOVER; later \
             refreshes will refuse to touch it",
            quoted(args.standby.display())
        ));
    }
    if args.from_repo {
        // The repository path: the latest backup restored over the standby, whose own logs
        // must go first so recovery replays only the backup's.
        let engine = settings.open_read_only()?;
        let removed = bdb::remove_standby_logs(&args.standby)?;
        let mut options = RestoreOptions::default().with_existing(ExistingTarget::Overwrite);
        if let Some(dir) = &args.db_tools {
            options = options.with_fixup_option("db-tools", dir.display().to_string());
        }
        let info = engine
            .restore(BackupSelector::Latest, &args.standby, &options)
            .with_context(|| {
                format!(
                    "refreshing {} from the repository",
                    quoted(args.standby.display())
                )
            })?;
        if printer.is_json() {
            return printer.json(
                "standby",
                &serde_json::json!({ "from_repo": true, "logs_removed": removed.len(), "restore": info }),
            );
        }
        return printer.line(format!(
            "standby {} refreshed from backup {} ({} files, recovery: {})",
            quoted(args.standby.display()),
            info.id,
            info.files,
            info.fixups.join("; ")
        ));
    }
    let Some(env_home) = &args.env_home else {
        bail!("give the live environment's home directory (or --promote)");
    };
    let report = bdb::refresh_standby(
        env_home,
        &args.standby,
        &bdb_tools(args.db_tools.as_deref()),
    )
    .with_context(|| format!("refreshing the standby {}", quoted(args.standby.display())))?;
    if printer.is_json() {
        return printer.json("standby", &report);
    }
    printer.line(format!(
        "standby {} holds logs {}..{}: {} log file(s) copied, {} data file(s) copied{}",
        quoted(args.standby.display()),
        report.first_log,
        report.last_log,
        report.logs_copied.len(),
        report.data_files_copied,
        report
            .reseed_reason
            .as_deref()
            .map(|r| format!(" (reseeded: {r})"))
            .unwrap_or_default()
    ))
}

pub(super) fn archive_logs(settings: &Settings, args: &ArchiveLogsArgs) -> Result<()> {
    let printer = &settings.printer;
    let engine = settings.open_read_only()?;
    let identity = BdbSource::new(&args.env_home).identity();
    let latest = engine
        .list_backups()?
        .into_iter()
        .rev()
        .find(|b| b.source_kind == "bdb" && b.source == identity)
        .with_context(|| {
            format!(
                "no backup of the environment {} in this repository: back it up first; no log was removed",
                quoted(args.env_home.display())
            )
        })?;
    let tools = bdb_tools(args.db_tools.as_deref());
    let logs = if args.dry_run {
        bdb::archivable_logs(&args.env_home, &latest.source_meta, &tools)?
    } else {
        bdb::remove_archived_logs(&args.env_home, &latest.source_meta, &tools)?
    };
    if printer.is_json() {
        let names: Vec<String> = logs.iter().map(|p| p.display().to_string()).collect();
        return printer.json(
            "archive-logs",
            &serde_json::json!({ "backup": latest.id, "dry_run": args.dry_run, "logs": names }),
        );
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    printer.line(format!(
        "{verb} {} log file(s) held by backup {}",
        logs.len(),
        latest.id
    ))?;
    for log in &logs {
        printer.line(format!("  {}", log.display()))?;
    }
    Ok(())
}
