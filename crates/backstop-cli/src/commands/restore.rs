//! `restore`: write a backup back into a directory and apply its restore procedure.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use backstop::{ErrorKind, ExistingTarget, RestoreOptions};

use crate::cli::RestoreArgs;
use crate::exit;
use crate::interrupt;
use crate::output::{self, quoted};
use crate::password::PasswordSource;
use crate::progress::CliProgress;
use crate::repo::Settings;

pub(super) fn run(settings: &Settings, args: &RestoreArgs) -> Result<()> {
    let engine = settings.open_read_only()?;
    let backup = super::select::resolve(&engine, args.backup, &args.source_path)?;

    let progress = Arc::new(CliProgress::new(settings.show_progress, "restoring"));
    if args.include.is_empty() {
        progress.set_totals(backup.files, backup.size);
    }
    let existing = if args.delta {
        ExistingTarget::Delta
    } else if args.force {
        ExistingTarget::Overwrite
    } else {
        ExistingTarget::Refuse
    };
    let mut options = RestoreOptions::default()
        .with_progress(progress.clone())
        .with_cancel(interrupt::cancel_token())
        .with_existing(existing)
        .with_raw(args.raw)
        .with_include(args.include.clone())
        .with_sparse(args.sparse)
        .with_sync(!args.no_sync);
    let targets = [
        ("target-time", &args.target_time),
        ("target-lsn", &args.target_lsn),
        ("target-xid", &args.target_xid),
        ("target-name", &args.target_name),
        ("target-action", &args.target_action),
    ];
    // Recovery targets mean something only to a procedure that replays a log to a point in
    // time; elsewhere they would be dropped, and the user would get the latest state unawares.
    let pitr = matches!(backup.source_kind.as_str(), "postgres" | "group");
    if let Some((key, _)) = targets.iter().find(|(_, value)| value.is_some()) {
        if !pitr || args.raw {
            return Err(exit::Exit::new(
                exit::Code::Usage,
                format!(
                    "--{key} needs a backup that is replayed to a point in time (a PostgreSQL \
                 backup, or a group's, without --raw); backup {} is {}{}",
                    quoted(backup.id),
                    if args.raw {
                        "restored --raw, as files, from "
                    } else {
                        ""
                    },
                    match backup.source_kind.as_str() {
                        "dir" => "a directory backup".to_owned(),
                        kind => format!("a `{kind}` backup"),
                    }
                ),
            )
            .into());
        }
    }
    for (key, value) in targets {
        if let Some(value) = value {
            options = options.with_fixup_option(key, value.clone());
        }
    }
    if let Some(dir) = &args.db_tools {
        options = options.with_fixup_option("db-tools", dir.display().to_string());
    }
    for (key, value) in &args.fixups {
        options = options.with_fixup_option(key.clone(), value.clone());
    }
    options = options.with_fixup_option("restore-command", restore_command(settings)?);
    if backup.source_kind == "postgres"
        && engine.repository_info().encrypted
        && settings
            .password_source()
            .is_none_or(|source| *source == PasswordSource::Env)
    {
        tracing::warn!(
            "PostgreSQL's restore_command runs `backstop wal-fetch`, which needs the repository \
             password: put BACKSTOP_PASSWORD in the server's environment, or restore with \
             --password-file"
        );
    }

    let target = &args.target;
    let result = engine.restore(backup.id, target, &options);
    progress.finish();
    let info = result.map_err(anyhow::Error::new).map_err(|err| {
        let kind = exit::engine_kind(&err);
        let context = if kind == Some(ErrorKind::Cancelled) {
            format!(
                "restore into {} interrupted; the target holds a partial restore",
                quoted(target.display())
            )
        } else if kind == Some(ErrorKind::StorageFull) {
            format!(
                "restore of backup {} into {} ran out of space (the backup holds {}); the \
                 target holds a partial restore: free space there or restore elsewhere \
                 (`--force` restores over the partial one)",
                quoted(backup.id),
                quoted(target.display()),
                output::size(backup.size)
            )
        } else {
            format!(
                "restoring backup {} into {}",
                quoted(backup.id),
                quoted(target.display())
            )
        };
        err.context(context)
    })?;

    let printer = settings.printer;
    if printer.json {
        return printer.json("restore", &info);
    }
    // A delta restore's files are all there at the end, most of them found in place.
    let restored = info.bytes + info.bytes_kept;
    printer.status(format!(
        "restored backup {} into {}: {}{}, {}, {}, {} in {} ({})",
        printer.good(&quoted(info.id)),
        quoted(target.display()),
        output::count(info.files, "file"),
        if info.hard_links > 0 {
            format!(" ({} of them hard links)", info.hard_links)
        } else {
            String::new()
        },
        output::count(info.dirs, "dir"),
        output::count(info.symlinks, "symlink"),
        output::size(restored),
        output::duration_ms(info.duration_ms),
        output::rate(restored, info.duration_ms)
    ))?;
    if args.delta {
        printer.status(format!(
            "  delta: {} already in place (read and found equal), {} written, {} {} the backup \
             does not have deleted",
            output::size(info.bytes_kept),
            output::size(info.bytes),
            info.removed,
            if info.removed == 1 { "path" } else { "paths" }
        ))?;
    }
    if args.sparse {
        printer.status(format!(
            "  sparse: {} of zeros left as holes",
            output::size(info.bytes_sparse)
        ))?;
    }
    for fixup in &info.fixups {
        printer.status(format!("  fix-up: {fixup}"))?;
    }
    Ok(())
}

/// The shell command PostgreSQL runs to fetch archived WAL during recovery: this same program
/// as `wal-fetch %f %p`, with the repository and a re-readable password source spelled out,
/// because the server runs it in its data directory with its own environment.
fn restore_command(settings: &Settings) -> Result<String> {
    let exe = std::env::current_exe()
        .context("finding this program's path for PostgreSQL's restore_command")?;
    restore_command_line(&exe, settings.repo()?, settings.password_source())
}

fn restore_command_line(
    exe: &std::path::Path,
    repo: &str,
    password: Option<&PasswordSource>,
) -> Result<String> {
    let repo = if repo.contains("://") {
        repo.to_owned()
    } else {
        absolute(repo.as_ref())?
    };
    let mut words = vec![
        exe.to_string_lossy().into_owned(),
        "--repo".to_owned(),
        repo,
    ];
    match password {
        Some(PasswordSource::File(path)) => {
            words.push("--password-file".to_owned());
            words.push(absolute(path)?);
        }
        Some(PasswordSource::Command(command)) => {
            words.push("--password-command".to_owned());
            words.push(command.clone());
        }
        Some(PasswordSource::Env | PasswordSource::NewEnv | PasswordSource::FromEnv) | None => {}
    }
    let mut line = Vec::with_capacity(words.len() + 3);
    for word in &words {
        let quoted = shlex::try_quote(word)
            .with_context(|| format!("`{word}` cannot be quoted for a shell command line"))?;
        line.push(quoted.into_owned());
    }
    line.extend(["wal-fetch", "%f", "%p"].map(str::to_owned));
    Ok(line.join(" "))
}

fn absolute(path: &std::path::Path) -> Result<String> {
    let path = std::path::absolute(path)
        .with_context(|| format!("making `{}` an absolute path", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn restore_command_quotes_paths_and_leaves_placeholders_to_postgres() {
        let line = restore_command_line(
            Path::new("/opt/back stop/backstop"),
            "/srv/my repo",
            Some(&PasswordSource::File(PathBuf::from("/etc/backstop/pw"))),
        )
        .unwrap();
        assert_eq!(
            line,
            "'/opt/back stop/backstop' --repo '/srv/my repo' --password-file /etc/backstop/pw \
             wal-fetch %f %p"
        );
        let words = shlex::split(&line).unwrap();
        assert_eq!(words[0], "/opt/back stop/backstop");
        assert_eq!(words[2], "/srv/my repo");
    }

    #[test]
    fn restore_command_makes_a_relative_repository_absolute_and_keeps_urls() {
        let line = restore_command_line(Path::new("/bin/backstop"), "repo", None).unwrap();
        let words = shlex::split(&line).unwrap();
        assert!(Path::new(&words[2]).is_absolute(), "{line}");
        let line = restore_command_line(Path::new("/bin/backstop"), "s3://bucket/p", None).unwrap();
        assert_eq!(line, "/bin/backstop --repo s3://bucket/p wal-fetch %f %p");
    }
}
