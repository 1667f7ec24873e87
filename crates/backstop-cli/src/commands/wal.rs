//! `wal-push` and `wal-fetch`: PostgreSQL's `archive_command` and `restore_command`.
//!
//! PostgreSQL treats exit code 0 as "done" and anything else as "not archived" or "not
//! available", so these commands print nothing on success and exit 1 for a missing segment.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use backstop::{ArchivePut, ErrorKind};
use serde::Serialize;

use crate::cli::{WalFetchArgs, WalPushArgs};
use crate::exit::{Code, Exit};
use crate::output::quoted;
use crate::repo::Settings;

use backstop::source::postgres::{
    LEGACY_WAL_ARCHIVE, wal_archive_of, wal_segment_system_identifier,
};

/// The system identifier of the cluster whose data directory this runs in, if it runs in one.
/// PostgreSQL runs `archive_command` and `restore_command` in the cluster's data directory, and
/// `global/pg_control` begins with the cluster's system identifier (a `u64`): so each
/// cluster's WAL goes to an archive of its own, without any setting.
fn cluster_here() -> Result<Option<u64>> {
    let path = Path::new("global/pg_control");
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "reading the cluster's system identifier from `{}`",
                    std::env::current_dir()
                        .map(|d| d.join(path))
                        .unwrap_or_else(|_| path.to_path_buf())
                        .display()
                )
            });
        }
    };
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("`{}` is too short to be pg_control", path.display()))?;
    // In the server's byte order; every platform we build for is little-endian.
    Ok(Some(u64::from_le_bytes(head)))
}

/// The `--json` result of `wal-push`.
#[derive(Serialize)]
struct Pushed<'a> {
    name: &'a str,
    bytes: u64,
    outcome: ArchivePut,
}

/// The `--json` result of `wal-fetch`.
#[derive(Serialize)]
struct Fetched<'a> {
    name: &'a str,
    bytes: u64,
    dest: &'a Path,
}

pub(super) fn push(settings: &Settings, args: &WalPushArgs) -> Result<()> {
    let path = &args.path;
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("`{}` has no UTF-8 file name", path.display()))?;
    let bytes =
        std::fs::read(path).with_context(|| format!("reading WAL segment `{}`", path.display()))?;
    let archive = match cluster_here()? {
        Some(cluster) => {
            if let Some(of) = wal_segment_system_identifier(&bytes)
                && of != cluster
            {
                return Err(Exit::new(
                    Code::Failure,
                    format!(
                        "WAL segment {} belongs to the cluster with system identifier {of}, but \
                         this data directory's pg_control says {cluster}: not archived",
                        quoted(name)
                    ),
                )
                .into());
            }
            wal_archive_of(cluster)
        }
        // Not run by PostgreSQL in a data directory: the shared archive of earlier versions.
        None => LEGACY_WAL_ARCHIVE.to_owned(),
    };
    let engine = settings.open()?;
    let outcome = engine
        .archive_put(&archive, name, &bytes)
        .with_context(|| format!("archiving WAL segment {}", quoted(name)))?;
    if settings.printer.json {
        let bytes = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        return settings.printer.json(
            "wal-push",
            &Pushed {
                name,
                bytes,
                outcome,
            },
        );
    }
    Ok(())
}

pub(super) fn fetch(settings: &Settings, args: &WalFetchArgs) -> Result<()> {
    let name = &args.name;
    let engine = settings.open_read_only()?;
    // The cluster's own archive first, then the shared one that versions before 2026-12-06
    // wrote (a segment of another cluster found there is refused by PostgreSQL itself, which
    // checks the system identifier of every segment it reads).
    let mut archives = vec![LEGACY_WAL_ARCHIVE.to_owned()];
    if let Some(cluster) = cluster_here()? {
        archives.insert(0, wal_archive_of(cluster));
    }
    let mut found = None;
    for archive in &archives {
        match engine.archive_get(archive, name) {
            Ok(bytes) => {
                found = Some(Ok(bytes));
                break;
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => {
                found = Some(Err(err));
                break;
            }
        }
    }
    let bytes = match found
        .unwrap_or_else(|| Err(backstop::Error::msg(ErrorKind::NotFound, "not archived")))
    {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == ErrorKind::NotFound => {
            let message = format!(
                "WAL segment {} is not in the archive of repository {}",
                quoted(name),
                quoted(settings.repo()?)
            );
            return Err(Exit::new(Code::Failure, message).into());
        }
        Err(err) => {
            return Err(err).with_context(|| format!("fetching WAL segment {}", quoted(name)));
        }
    };
    write_durably(&args.dest, &bytes)?;
    if settings.printer.json {
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        return settings.printer.json(
            "wal-fetch",
            &Fetched {
                name,
                bytes: size,
                dest: &args.dest,
            },
        );
    }
    Ok(())
}

/// Writes `dest` so that it is either absent or complete, also after a crash: a temporary file
/// in the same directory, fsynced, renamed over `dest`, then the directory fsynced.
fn write_durably(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let context = || format!("writing `{}`", dest.display());
    let mut temp = tempfile::Builder::new()
        .prefix(".backstop-wal-")
        .tempfile_in(dir)
        .with_context(context)?;
    temp.write_all(bytes).with_context(context)?;
    temp.as_file().sync_all().with_context(context)?;
    temp.persist(dest)
        .map_err(|err| err.error)
        .with_context(context)?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing directory `{}`", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_durably_replaces_the_destination_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("000000010000000000000001");
        std::fs::write(&dest, b"old").unwrap();
        write_durably(&dest, b"new bytes").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new bytes");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the destination remains");
    }
}
