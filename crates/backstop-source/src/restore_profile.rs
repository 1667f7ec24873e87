//! Restore profiles: the fix-ups a restore applies once the files are back, per source kind.
//!
//! A profile is plain data stored in the snapshot (a kind plus recorded facts), so a restore
//! long after the backup applies the procedure of the source that took it. The code for each
//! kind lives in that source's module; this file only dispatches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// What shows that a database may be running on the files a restore would overwrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Running {
    /// A database's pid file exists (PostgreSQL's `postmaster.pid`). A server that crashed
    /// leaves it behind, so it may be stale; only who knows no server runs there may delete it.
    PidFile(PathBuf),
    /// A process holds a lock on a database's lock file (RocksDB's `LOCK`, an SQLite database's
    /// `-shm` in WAL mode): the database is open.
    Locked(PathBuf),
    /// A process has a file of the target open or mapped.
    Process(crate::in_use::Holder),
}

impl std::fmt::Display for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PidFile(path) => {
                write!(
                    f,
                    "`{}` exists: a database server may be running on the files in the restore \
                     target",
                    path.display()
                )?;
                if let Some(pid) = stale_pid(path) {
                    write!(
                        f,
                        " (it names process {pid}, which does not run on this machine: the \
                         server may have crashed, or run in another container or on another host)"
                    )?;
                }
                write!(
                    f,
                    "; stop the server first, or delete that file if you know none runs there"
                )
            }
            Self::Locked(path) => write!(
                f,
                "a process holds the lock on `{}`: a database is open on the files in the restore \
                 target; close it first",
                path.display()
            ),
            Self::Process(holder) => write!(
                f,
                "process {} (`{}`) has `{}` open: a database may be running on the files in the \
                 restore target; stop that process first",
                holder.pid,
                holder.name,
                holder.path.display()
            ),
        }
    }
}

/// The process id a pid file names when no such process runs here (a crashed server's file,
/// or one from another PID namespace).
fn stale_pid(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    (!Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// Whether a database may be running on the files in `target`, which a restore over them
/// (`--force`, `--delta`) would corrupt under it. First the kind's own lock files: PostgreSQL's
/// `postmaster.pid` in the data directory (as pgBackRest checks before a delta restore), a
/// RocksDB `LOCK` file another process holds locked (RocksDB locks it while the database is
/// open), an SQLite database in WAL mode that a connection has open (each holds a lock on its
/// `-shm` file); in a group's backup, in each member's directory. Then, for every kind but
/// plain files, any other process that has a file of the target open or mapped
/// ([`crate::in_use::holders`]): what finds a Berkeley DB environment in use (its processes
/// map its regions), an SQLite database in rollback-journal mode (an idle connection holds no
/// lock but has the file open), a running EventStore (its chunks are open).
pub fn running_server(profile: &RestoreProfile, target: &Path) -> Option<Running> {
    if profile.is_plain_files() {
        return None;
    }
    lock_file(profile, target).or_else(|| {
        crate::in_use::holders(target)
            .into_iter()
            .next()
            .map(Running::Process)
    })
}

/// The kind's own lock files that show its database running on `target` (see
/// [`running_server`]).
pub(crate) fn lock_file(profile: &RestoreProfile, target: &Path) -> Option<Running> {
    match profile.kind.as_str() {
        "postgres" => postmaster_pid(target).map(Running::PidFile),
        "rocksdb" => held_rocksdb_lock(target).map(Running::Locked),
        "sqlite" => open_sqlite_wal(profile, target).map(Running::Locked),
        "group" => crate::group::lock_file(profile, target),
        _ => None,
    }
}

fn postmaster_pid(dir: &Path) -> Option<PathBuf> {
    Some(dir.join("postmaster.pid")).filter(|p| p.exists())
}

/// The `-shm` file of the profile's SQLite database in `dir` when a connection has it open in
/// WAL mode ([`crate::in_use::sqlite_wal_open`]).
fn open_sqlite_wal(profile: &RestoreProfile, dir: &Path) -> Option<PathBuf> {
    let file = profile.params.get("file")?;
    if !crate::restored::is_safe_path(file) {
        return None;
    }
    let shm = dir.join(format!("{file}-shm"));
    crate::in_use::sqlite_wal_open(&shm).then_some(shm)
}

/// `dir/LOCK` when RocksDB has the database in `dir` open ([`crate::in_use::rocksdb_open`]).
fn held_rocksdb_lock(dir: &Path) -> Option<PathBuf> {
    crate::in_use::rocksdb_open(dir).then(|| dir.join("LOCK"))
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
        assert_eq!(running_server(&profile, dir.path()), None);
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
            assert_eq!(running_server(&profile(kind), dir.path()), None, "{kind}");
        }
        assert_eq!(running_server(&group, dir.path()), None);
        let member_lock = dir.path().join("pg/postmaster.pid");
        std::fs::write(&member_lock, "4242\n").unwrap();
        assert_eq!(
            running_server(&group, dir.path()),
            Some(Running::PidFile(member_lock))
        );
        // A group profile that lists no members names no directory to look in.
        assert_eq!(running_server(&profile("group"), dir.path()), None);
        assert_eq!(running_server(&profile("postgres"), dir.path()), None);
        let lock = dir.path().join("postmaster.pid");
        std::fs::write(&lock, "4242\n").unwrap();
        assert_eq!(
            running_server(&profile("postgres"), dir.path()),
            Some(Running::PidFile(lock.clone()))
        );
        assert_eq!(running_server(&profile("sqlite"), dir.path()), None);
    }

    #[test]
    fn a_pid_file_naming_no_process_here_is_called_so_and_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("postmaster.pid");
        let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let postgres = RestoreProfile::new("postgres");
        std::fs::write(&lock, format!("{}\n/data\n", pid_max + 1)).unwrap();
        let stale = running_server(&postgres, dir.path()).unwrap().to_string();
        assert!(
            stale.contains(&format!(
                "names process {}, which does not run",
                pid_max + 1
            )),
            "{stale}"
        );
        std::fs::write(&lock, format!("{}\n/data\n", std::process::id())).unwrap();
        let live = running_server(&postgres, dir.path()).unwrap().to_string();
        assert!(live.contains("postmaster.pid` exists"), "{live}");
        assert!(!live.contains("does not run"), "{live}");
    }

    #[test]
    fn a_process_holding_a_file_of_a_database_kind_is_found_but_not_of_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = dir.path().join("chunk-000000.000000");
        std::fs::write(&chunk, b"data").unwrap();
        let (child, _out) = crate::in_use::tests::holding_open(&chunk);
        let pid = i32::try_from(child.id()).unwrap();
        for kind in [
            "eventstore",
            "bdb",
            "sqlite",
            "postgres",
            "rocksdb",
            "group",
        ] {
            let found = running_server(&RestoreProfile::new(kind), dir.path());
            let Some(Running::Process(holder)) = &found else {
                panic!("{kind}: {found:?}");
            };
            assert_eq!(holder.pid, pid, "{kind}");
            let message = found.as_ref().unwrap().to_string();
            assert!(
                message.contains(&format!("process {pid} (`sh`) has `")),
                "{message}"
            );
        }
        for kind in ["", "none", "dir"] {
            assert_eq!(
                running_server(&RestoreProfile::new(kind), dir.path()),
                None,
                "{kind}"
            );
        }
        crate::in_use::tests::release(child);
        assert_eq!(
            running_server(&RestoreProfile::new("eventstore"), dir.path()),
            None
        );
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
