//! Restore profiles: the fix-ups a restore applies once the files are back, per source kind.
//!
//! A profile is plain data stored in the snapshot (a kind plus recorded facts), so a restore
//! long after the backup applies the procedure of the source that took it. The code for each
//! kind lives in that source's module; this file only dispatches.

use std::collections::BTreeMap;
use std::path::Path;

use crate::SourceError;

/// The fix-up procedure for one backup, as recorded in its snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoreProfile {
    /// Which procedure: `none` (or empty), `eventstore`, `sqlite`, `bdb`, `postgres`,
    /// `rocksdb`, `group`.
    pub kind: String,
    /// Facts the procedure needs (file names, log positions, member profiles), as strings.
    pub params: BTreeMap<String, String>,
}

impl RestoreProfile {
    /// A profile that does nothing after the files are back.
    pub fn none() -> Self {
        Self {
            kind: "none".into(),
            params: BTreeMap::new(),
        }
    }

    /// Whether the backup is of plain files, which need no fix-up (and can be restored in part).
    pub fn is_plain_files(&self) -> bool {
        matches!(self.kind.as_str(), "" | "none" | "dir")
    }

    /// A profile of `kind` with no parameters yet.
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            params: BTreeMap::new(),
        }
    }

    /// Adds a parameter.
    #[must_use]
    pub fn with_param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.insert(key.into(), value.into());
        self
    }
}

/// What the user asked of the fix-ups at restore time.
#[derive(Clone, Debug, Default)]
pub struct RestoreParams {
    /// Restore the raw files only; apply no fix-up.
    pub raw: bool,
    /// Kind-specific options from the command line (`target-time`, `target-lsn`, `db-tools`…).
    pub options: BTreeMap<String, String>,
}

/// Whether applying `profile` may read the restored files' contents: SQLite's integrity check
/// reads every page, Berkeley DB's catastrophic recovery the logs and databases, RocksDB's
/// check its manifest. A restore writes files past the page cache only when nothing reads them
/// right after (they would come back from the device, page by page). Kinds other than a plain
/// directory's count as reading, whatever their fix-up does today.
pub fn reads_restored_files(profile: &RestoreProfile, params: &RestoreParams) -> bool {
    !params.raw && !profile.is_plain_files()
}

/// The lock file of a database that may be running on the files in `target`, which a restore
/// over them (`--force`, `--delta`) would corrupt under it: PostgreSQL's `postmaster.pid` in the
/// data directory (as pgBackRest checks before a delta restore; a stale one, left by a server
/// that crashed, is found too: only who knows no server runs there may delete it), or a RocksDB
/// `LOCK` file another process holds locked (RocksDB locks it while the database is open), or
/// an SQLite database in WAL mode that a connection has open (each holds a lock on its `-shm`
/// file; in rollback-journal mode an idle connection holds none, and is not found). In a
/// group's backup, in each member's directory.
pub fn running_server_lock(profile: &RestoreProfile, target: &Path) -> Option<std::path::PathBuf> {
    match profile.kind.as_str() {
        "postgres" => postmaster_pid(target),
        "rocksdb" => held_rocksdb_lock(target),
        "sqlite" => open_sqlite_wal(profile, target),
        "group" => crate::group::running_server_lock(profile, target),
        _ => None,
    }
}

fn postmaster_pid(dir: &Path) -> Option<std::path::PathBuf> {
    Some(dir.join("postmaster.pid")).filter(|p| p.exists())
}

/// The `-shm` file of the profile's SQLite database in `dir` when a connection holds the lock
/// every connection in WAL mode holds while open (a shared lock on byte 128 of the `-shm`
/// file, SQLite's "DMS" byte of its unix VFS: `(22 + 8) * 4 + 8`).
fn open_sqlite_wal(profile: &RestoreProfile, dir: &Path) -> Option<std::path::PathBuf> {
    let file = profile.params.get("file")?;
    if !crate::restored::is_safe_path(file) {
        return None;
    }
    let shm = dir.join(format!("{file}-shm"));
    held(&shm, 128, 1).then_some(shm)
}

/// `dir/LOCK` when some process holds a lock on it. The query (`F_OFD_GETLK`) takes no lock:
/// taking one and letting it go could drop the lock of a database open in this very process
/// (a traditional `fcntl` lock belongs to the process, and any close releases it).
fn held_rocksdb_lock(dir: &Path) -> Option<std::path::PathBuf> {
    let lock = dir.join("LOCK");
    held(&lock, 0, 0).then_some(lock)
}

/// Whether some process holds an `fcntl` lock on `len` bytes of `path` from `start` (0: to the
/// end). The query (`F_OFD_GETLK`, for a write lock, which any lock conflicts with) takes no
/// lock itself.
fn held(path: &Path, start: i64, len: i64) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut query = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as nix::libc::c_short,
        l_whence: nix::libc::SEEK_SET as nix::libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    };
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut query)).is_ok()
        && query.l_type != nix::libc::F_UNLCK as nix::libc::c_short
}

/// The options each kind's restore procedure takes, besides `restore-command` (which every
/// restore is given: the CLI cannot know the kind before it reads the backup, and only
/// PostgreSQL uses it) and PostgreSQL's `tablespace-<oid>`.
fn known_options(kind: &str) -> &'static [&'static str] {
    match kind {
        "postgres" => &[
            "target",
            "target-time",
            "target-lsn",
            "target-xid",
            "target-name",
            "target-action",
            "target-inclusive",
            "target-timeline",
            "archive-mode",
            "tablespaces",
        ],
        "sqlite" => &["integrity-check"],
        "bdb" => &["db-tools", "verify"],
        _ => &[],
    }
}

/// Whether the restore procedure of `kind` takes the option `key`.
pub(crate) fn takes_option(kind: &str, key: &str) -> bool {
    key == "restore-command"
        || known_options(kind).contains(&key)
        || (kind == "postgres" && key.starts_with("tablespace-"))
}

/// Checks, before anything is restored, that the procedure of `profile` takes every option in
/// `params`: a misspelt `--fixup` (or one meant for another kind of database) is refused
/// rather than ignored. A raw restore applies no procedure and takes any.
///
/// # Errors
/// [`SourceError::Procedure`] naming the option and what the procedure takes.
pub fn check_options(profile: &RestoreProfile, params: &RestoreParams) -> Result<(), SourceError> {
    if params.raw {
        return Ok(());
    }
    if profile.kind == "group" {
        return crate::group::check_options(profile, &params.options);
    }
    let kind = if profile.is_plain_files() {
        "directory"
    } else {
        profile.kind.as_str()
    };
    match params.options.keys().find(|key| !takes_option(kind, key)) {
        None => Ok(()),
        Some(key) => {
            let mut takes: Vec<String> = known_options(kind)
                .iter()
                .map(|o| format!("`{o}`"))
                .collect();
            if kind == "postgres" {
                takes.push("`tablespace-<oid>`".into());
            }
            let takes = if takes.is_empty() {
                "none".to_owned()
            } else {
                takes.join(", ")
            };
            Err(SourceError::Procedure(format!(
                "restore option `{key}` is not one the {kind} restore takes (it takes: {takes})"
            )))
        }
    }
}

/// Readies a target that holds an earlier restore of the same database for a delta restore
/// over it, and returns a line per step taken: PostgreSQL's tablespaces, which the earlier
/// restore's fix-up moved out of the data directory and linked back, are moved back to
/// `pg_tblspc/<oid>`, where the delta compares their files (a delta never follows a link) and
/// the fix-up places them again afterwards (a group's PostgreSQL members' too). Nothing for
/// other kinds, or with `raw`.
pub fn prepare_delta(
    profile: &RestoreProfile,
    target: &Path,
    params: &RestoreParams,
) -> Result<Vec<String>, SourceError> {
    if params.raw {
        return Ok(Vec::new());
    }
    match profile.kind.as_str() {
        #[cfg(feature = "postgres")]
        "postgres" => crate::postgres::gather_tablespaces(profile, target, &params.options),
        "group" => crate::group::prepare_delta(profile, target, params),
        _ => Ok(Vec::new()),
    }
}

/// Applies `profile` to the restored tree at `target` and returns a line per step taken.
pub fn apply(
    profile: &RestoreProfile,
    target: &Path,
    params: &RestoreParams,
) -> Result<Vec<String>, SourceError> {
    check_options(profile, params)?;
    if params.raw {
        return Ok(vec![format!(
            "raw restore: `{}` fix-ups skipped",
            profile.kind
        )]);
    }
    if profile.is_plain_files() {
        return Ok(Vec::new());
    }
    match profile.kind.as_str() {
        "eventstore" => crate::eventstore::restore_fixup(profile, target, params),
        "group" => crate::group::restore_fixup(profile, target, params),
        #[cfg(feature = "sqlite")]
        "sqlite" => crate::sqlite::restore_fixup(profile, target, params),
        #[cfg(feature = "postgres")]
        "postgres" => crate::postgres::restore_fixup(profile, target, params),
        #[cfg(feature = "bdb")]
        "bdb" => crate::bdb::restore_fixup(profile, target, params),
        #[cfg(feature = "rocksdb-dir")]
        "rocksdb" => crate::rocksdb::restore_fixup(profile, target, params),
        other => Err(SourceError::Procedure(format!(
            "this build of backstop cannot apply the `{other}` restore procedure; rebuild with \
             that source's feature, or restore the raw files with `--raw`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed RocksDB directory keeps its `LOCK` file, unlocked: that is no running database
    /// (a held one is the RocksDB test's, with a live writer process).
    #[test]
    fn an_unlocked_rocksdb_lock_file_is_no_running_database() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("LOCK"), b"").unwrap();
        let profile = RestoreProfile {
            kind: "rocksdb".into(),
            params: BTreeMap::new(),
        };
        assert_eq!(running_server_lock(&profile, dir.path()), None);
    }

    #[test]
    fn a_postmaster_pid_in_the_data_directory_or_a_members_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let profile = |kind: &str| RestoreProfile {
            kind: kind.into(),
            params: BTreeMap::new(),
        };
        let group = RestoreProfile::new("group")
            .with_param("members", "pg")
            .with_param("member.pg", r#"{"kind": "postgres", "params": {}}"#);
        std::fs::create_dir(dir.path().join("pg")).unwrap();
        for kind in ["postgres", "sqlite", "none"] {
            assert_eq!(
                running_server_lock(&profile(kind), dir.path()),
                None,
                "{kind}"
            );
        }
        assert_eq!(running_server_lock(&group, dir.path()), None);
        let member_lock = dir.path().join("pg/postmaster.pid");
        std::fs::write(&member_lock, "4242\n").unwrap();
        assert_eq!(running_server_lock(&group, dir.path()), Some(member_lock));
        // A group profile that lists no members names no directory to look in.
        assert_eq!(running_server_lock(&profile("group"), dir.path()), None);
        assert_eq!(running_server_lock(&profile("postgres"), dir.path()), None);
        let lock = dir.path().join("postmaster.pid");
        std::fs::write(&lock, "4242\n").unwrap();
        assert_eq!(
            running_server_lock(&profile("postgres"), dir.path()),
            Some(lock)
        );
        assert_eq!(running_server_lock(&profile("sqlite"), dir.path()), None);
    }

    #[test]
    fn only_plain_directories_and_raw_restores_leave_the_files_unread() {
        let read = RestoreParams::default();
        let raw = RestoreParams {
            raw: true,
            ..RestoreParams::default()
        };
        for kind in ["", "none", "dir"] {
            assert!(
                !reads_restored_files(&RestoreProfile::new(kind), &read),
                "{kind}"
            );
        }
        for kind in [
            "sqlite",
            "bdb",
            "postgres",
            "rocksdb",
            "eventstore",
            "group",
            "new",
        ] {
            let profile = RestoreProfile::new(kind);
            assert!(reads_restored_files(&profile, &read), "{kind}");
            assert!(!reads_restored_files(&profile, &raw), "{kind} raw");
        }
    }

    fn options(pairs: &[(&str, &str)], raw: bool) -> RestoreParams {
        RestoreParams {
            raw,
            options: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn an_option_the_procedure_does_not_take_is_refused_and_named() {
        // Kind, options, whether they pass.
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("dir", &[("restore-command", "x")], true),
            ("dir", &[("verify", "true")], false),
            ("sqlite", &[("integrity-check", "quick")], true),
            ("sqlite", &[("integrity_check", "quick")], false),
            ("sqlite", &[("db-tools", "/usr/bin")], false),
            ("bdb", &[("db-tools", "/usr/bin"), ("verify", "1")], true),
            (
                "postgres",
                &[("target-time", "t"), ("tablespace-16400", "/x")],
                true,
            ),
            ("postgres", &[("target-tme", "t")], false),
            ("rocksdb", &[("integrity-check", "full")], false),
            ("eventstore", &[("restore-command", "x")], true),
        ];
        for (kind, pairs, ok) in cases {
            let profile = RestoreProfile::new(*kind);
            let result = check_options(&profile, &options(pairs, false));
            assert_eq!(result.is_ok(), *ok, "{kind} {pairs:?}: {result:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains(pairs[0].0), "{e}");
            }
            // A raw restore applies no procedure, so takes anything.
            assert!(check_options(&profile, &options(pairs, true)).is_ok());
        }
    }

    #[test]
    fn a_group_member_option_must_be_one_the_members_kind_takes() {
        let member = serde_json::to_string(&RestoreProfile::new("sqlite")).unwrap();
        let group = RestoreProfile::new("group")
            .with_param("members", "app")
            .with_param("member.app", member);
        for (key, ok) in [
            ("app.integrity-check", true),
            ("integrity-check", true),
            ("target-time", true),
            ("app.db-tools", false),
            ("other.thing", false),
        ] {
            let result = check_options(&group, &options(&[(key, "v")], false));
            assert_eq!(result.is_ok(), ok, "{key}: {result:?}");
        }
    }
}
