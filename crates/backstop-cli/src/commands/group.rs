//! `backup --group NAME` and `restore --group NAME --target-time T`: several databases backed
//! up as one consistent group, described in the config file under `[groups.NAME]`.
//!
//! ```toml
//! [groups.shop]
//! lease = 30            # seconds an application stays paused without a renewal
//! members = [
//!   { name = "orders", kind = "postgres", location = "host=/run/postgresql dbname=shop", fast_checkpoint = true },
//!   { name = "payments", kind = "sqlite", location = "/var/lib/shop/payments.db" },
//! ]
//! apps = [
//!   { name = "shop", pause_url = "http://127.0.0.1:7411" },
//!   { name = "worker", pause_command = "systemctl kill -s STOP worker", resume_command = "systemctl kill -s CONT worker" },
//! ]
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use backstop::source::group::{
    self, GroupApp, GroupBackup, GroupMember, GroupSource, PauseOptions,
};
use backstop::source::hold::HoldConfig;
use backstop::{BackupSelector, ErrorKind};
use clap::ValueEnum as _;
use serde::Deserialize;

use crate::cli::{BackupArgs, GlobalArgs, RestoreArgs, SourceKind};
use crate::exit::{self, Code, Exit};
use crate::interrupt;
use crate::output::{self, quoted};
use crate::progress::CliProgress;
use crate::repo::Settings;
use crate::sources::{self, SourceSpec};

/// `[groups.NAME]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupConfig {
    /// The databases, backed up together.
    #[serde(default)]
    pub(crate) members: Vec<MemberConfig>,
    /// The applications paused around the snapshot points.
    #[serde(default)]
    pub(crate) apps: Vec<AppConfig>,
    /// Seconds an application stays paused without a renewal (default 30).
    pub(crate) lease: Option<f64>,
    /// Seconds an application may take to drain its requests in flight (default 30).
    pub(crate) drain_timeout: Option<f64>,
    /// Seconds the paused window may last (default 600).
    pub(crate) window_timeout: Option<f64>,
}

/// One database of a group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberConfig {
    /// Directory name inside the backup.
    pub(crate) name: String,
    /// `postgres`, `sqlite`, `dir`, `bdb`, `rocksdb` or `eventstore`.
    pub(crate) kind: String,
    /// A path, or a connection string for PostgreSQL.
    pub(crate) location: String,
    /// PostgreSQL: immediate checkpoint at the start.
    #[serde(default)]
    pub(crate) fast_checkpoint: bool,
    /// PostgreSQL: the data directory as this machine sees it.
    pub(crate) pg_data_dir: Option<PathBuf>,
    /// SQLite: `auto`, `dbpage` or `backup-api`.
    pub(crate) sqlite_method: Option<String>,
    /// Directories: glob patterns to leave out.
    #[serde(default)]
    pub(crate) excludes: Vec<String>,
}

/// One application of a group: `pause_url`, or commands.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppConfig {
    /// A name for messages.
    pub(crate) name: String,
    /// Base URL of the application's `backstop-pause` endpoints.
    pub(crate) pause_url: Option<String>,
    /// Shell command that pauses the application (exits 0 once it is drained).
    pub(crate) pause_command: Option<String>,
    /// Shell command that resumes it (always runs).
    pub(crate) resume_command: Option<String>,
    /// Shell command that keeps it paused while it runs.
    pub(crate) hold_command: Option<String>,
    /// The line the hold command prints once the application is paused.
    pub(crate) ready_line: Option<String>,
}

fn seconds(what: &str, value: Option<f64>, default: Duration) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(secs) => Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Exit::new(Code::Usage, format!("`{what} = {secs}`: give seconds > 0")).into()
            }),
    }
}

/// Builds the group `name` from the config file.
fn build(name: &str, config: GroupConfig) -> Result<GroupSource> {
    if config.members.is_empty() {
        bail!(Exit::new(
            Code::Usage,
            format!("group `{name}` in the config file has no members")
        ));
    }
    let defaults = PauseOptions::default();
    let options = PauseOptions {
        lease: seconds("lease", config.lease, defaults.lease)?,
        drain_timeout: seconds(
            "drain_timeout",
            config.drain_timeout,
            defaults.drain_timeout,
        )?,
        window_timeout: seconds(
            "window_timeout",
            config.window_timeout,
            defaults.window_timeout,
        )?,
    };
    let window_timeout = options.window_timeout;
    let mut source = GroupSource::new(name)?.with_pause_options(options);
    for member in config.members {
        let kind = SourceKind::from_str(&member.kind, true).map_err(|_| {
            Exit::new(
                Code::Usage,
                format!(
                    "member `{}` of group `{name}`: `{}` is not a source kind (postgres, sqlite, \
                     dir, bdb, rocksdb, eventstore)",
                    member.name, member.kind
                ),
            )
        })?;
        let built = sources::build(SourceSpec {
            kind,
            location: member.location,
            excludes: member.excludes,
            excludes_from_flags: false,
            one_file_system: false,
            exclude_caches: false,
            fast_checkpoint: member.fast_checkpoint,
            pg_data_dir: member.pg_data_dir,
            label: None,
            sqlite_method: member.sqlite_method,
            db_tools: None,
            data_dirs: Vec::new(),
            hold: HoldConfig::default(),
        })
        .with_context(|| format!("member `{}` of group `{name}`", member.name))?;
        source = source.with_member(GroupMember::new(member.name, built)?)?;
    }
    for app in config.apps {
        let commands = app.pause_command.is_some()
            || app.resume_command.is_some()
            || app.hold_command.is_some();
        let app = match (app.pause_url, commands) {
            (Some(url), false) => GroupApp::http(app.name, url),
            (None, true) => GroupApp::command(
                app.name,
                HoldConfig {
                    pause_command: app.pause_command,
                    resume_command: app.resume_command,
                    hold_command: app.hold_command,
                    ready_line: app.ready_line,
                    window_timeout,
                    ..HoldConfig::default()
                },
            ),
            _ => bail!(Exit::new(
                Code::Usage,
                format!(
                    "application `{}` of group `{name}`: give either `pause_url` or pause/resume \
                     (or hold) commands",
                    app.name
                )
            )),
        };
        source = source.with_app(app);
    }
    Ok(source)
}

fn group_config(global: &GlobalArgs, name: &str) -> Result<GroupConfig> {
    let mut config = crate::config::load(global.config.as_deref())?;
    config.groups.remove(name).ok_or_else(|| {
        let known: Vec<&str> = config.groups.keys().map(String::as_str).collect();
        Exit::new(
            Code::Usage,
            format!(
                "no group `{name}` in the config file (groups: {}); describe it under \
                 `[groups.{name}]`",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ),
        )
        .into()
    })
}

/// `backup --group NAME` (the name is the positional argument).
pub(super) fn backup(settings: &Settings, global: &GlobalArgs, args: &BackupArgs) -> Result<()> {
    let name = &args.location;
    let mut source = build(name, group_config(global, name)?)?;
    let engine = settings.open()?;
    let progress = Arc::new(CliProgress::new(settings.show_progress, "storing"));
    let options = super::backup::backup_options(args, progress.clone());
    let result = engine.create_backup(&mut source, &options);
    progress.finish();
    let info = result.map_err(anyhow::Error::new).map_err(|err| {
        let context =
            if exit::engine_kind(&err) == Some(ErrorKind::Cancelled) || interrupt::interrupted() {
                format!(
                    "backup of group {} interrupted; every application was resumed and no \
                     backup was recorded",
                    quoted(name)
                )
            } else {
                format!("backing up group {}", quoted(name))
            };
        err.context(context)
    })?;
    let printer = settings.printer;
    if printer.json {
        return printer.json("backup", &info);
    }
    printer.status(format!(
        "backup {} of group {} ({}) done in {}",
        printer.good(&quoted(info.id)),
        quoted(name),
        info.source_meta.get("members").map_or("", String::as_str),
        output::duration_ms(info.duration_ms)
    ))?;
    match (
        info.source_meta.get("pause.ms"),
        info.source_meta.get("pause.drain_ms"),
    ) {
        (Some(ms), drain) => printer.status(format!(
            "  paused  {ms} ms (applications drained in {} ms before)",
            drain.map_or("?", String::as_str)
        ))?,
        (None, _) => printer.status("  paused  nothing (no applications configured)")?,
    }
    printer.status(format!(
        "  added   {} of {} read",
        output::size(info.bytes_added),
        output::size(info.bytes_read)
    ))?;
    for warning in &info.warnings {
        printer.warning(warning)?;
    }
    Ok(())
}

/// `restore ID TARGET --group NAME --target-time T`: with `latest`, the backup of the group
/// whose paused window holds T; with an ID, that backup recovered forward to T (PostgreSQL
/// members only). Then an ordinary restore with the group's later windows as `group-windows`.
pub(super) fn restore(settings: &Settings, args: &RestoreArgs) -> Result<()> {
    let Some(name) = &args.group else {
        return super::restore::run(settings, args);
    };
    let Some(time) = &args.target_time else {
        bail!(Exit::new(Code::Usage, "--group needs --target-time"));
    };
    let t_ms = group::parse_time_ms(time).map_err(|e| Exit::new(Code::Usage, e.to_string()))?;
    let engine = settings.open_read_only()?;
    let backups: Vec<GroupBackup> = engine
        .list_backups()?
        .into_iter()
        .filter(|b| b.source_kind == "group" && &b.source == name)
        .map(|b| GroupBackup {
            id: b.id,
            window: group::PauseWindow::from_meta(&b.source_meta),
        })
        .collect();
    if backups.is_empty() {
        bail!(Exit::new(
            Code::NotFound,
            format!("the repository has no backup of group `{name}`")
        ));
    }
    let id = match args.backup {
        BackupSelector::Latest => group::choose_backup_for_time(&backups, t_ms)?,
        BackupSelector::Id(id) => {
            if !backups.iter().any(|b| b.id == id) {
                bail!(Exit::new(
                    Code::Usage,
                    format!("backup {id} is not a backup of group `{name}`")
                ));
            }
            id
        }
    };
    let later: Vec<group::PauseWindow> = backups
        .iter()
        .filter(|b| b.id > id)
        .filter_map(|b| b.window)
        .collect();
    let mut fixups = args.fixups.clone();
    if !later.is_empty() {
        fixups.push(("group-windows".to_owned(), group::format_windows(&later)));
    }
    tracing::info!(backup = id, group = %name, "restoring the group backup");
    super::restore::run(
        settings,
        &RestoreArgs {
            backup: BackupSelector::Id(id),
            target: args.target.clone(),
            force: args.force,
            delta: args.delta,
            sparse: args.sparse,
            raw: args.raw,
            include: Vec::new(),
            source_path: Vec::new(),
            no_sync: args.no_sync,
            target_time: args.target_time.clone(),
            target_lsn: args.target_lsn.clone(),
            target_xid: args.target_xid.clone(),
            target_name: args.target_name.clone(),
            target_action: args.target_action.clone(),
            db_tools: args.db_tools.clone(),
            fixups,
            group: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_config_parses_and_builds() {
        let config: crate::config::ConfigFile = toml::from_str(
            r#"
            [groups.shop]
            lease = 5
            members = [
              { name = "orders", kind = "postgres", location = "host=/tmp dbname=x", fast_checkpoint = true },
              { name = "payments", kind = "sqlite", location = "/tmp/payments.db" },
            ]
            apps = [
              { name = "shop", pause_url = "http://127.0.0.1:7411" },
              { name = "worker", pause_command = "true", resume_command = "true" },
            ]
            "#,
        )
        .unwrap();
        let mut groups = config.groups;
        let group = build("shop", groups.remove("shop").unwrap()).unwrap();
        let names: Vec<&str> = group.members().iter().map(GroupMember::name).collect();
        assert_eq!(names, ["orders", "payments"]);
    }

    #[test]
    fn bad_group_configs_are_refused() {
        let both = GroupConfig {
            members: vec![MemberConfig {
                name: "a".into(),
                kind: "sqlite".into(),
                location: "/tmp/a.db".into(),
                fast_checkpoint: false,
                pg_data_dir: None,
                sqlite_method: None,
                excludes: Vec::new(),
            }],
            apps: vec![AppConfig {
                name: "x".into(),
                pause_url: Some("http://127.0.0.1:1".into()),
                pause_command: Some("true".into()),
                resume_command: None,
                hold_command: None,
                ready_line: None,
            }],
            ..GroupConfig::default()
        };
        let err = build("g", both).unwrap_err();
        assert!(format!("{err:#}").contains("either `pause_url`"), "{err:#}");
        let err = build("g", GroupConfig::default()).unwrap_err();
        assert!(format!("{err:#}").contains("no members"), "{err:#}");
    }
}
