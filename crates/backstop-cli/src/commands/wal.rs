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

/// The archive that holds WAL segments.
const WAL_ARCHIVE: &str = "wal";

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
    let engine = settings.open()?;
    let outcome = engine
        .archive_put(WAL_ARCHIVE, name, &bytes)
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
    let bytes = match engine.archive_get(WAL_ARCHIVE, name) {
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
