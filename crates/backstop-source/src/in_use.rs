//! Whether a database is running on the files of a directory: the processes that have them open
//! or mapped, and the locks databases hold. A restore refuses to overwrite such files, and a
//! plain directory backup warns that its copy of them is not consistent.
//!
//! Not every database leaves a lock that can be queried: a Berkeley DB environment keeps its
//! state in shared-memory regions (`__db.001`…) mapped by every process that opens it, an
//! SQLite connection in rollback-journal mode holds no lock while idle, and EventStore keeps
//! its chunk files open. All of them do have the files open or mapped, which `/proc` shows
//! (as `fuser` and `lsof` find them). Only the processes this one may inspect are seen: all of
//! them for root, one's own otherwise; a database run by another user, or in another PID
//! namespace, is found only by its lock files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A process that has a file under the directory open or mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its process id.
    pub pid: i32,
    /// Its command name (`/proc/<pid>/comm`).
    pub name: String,
    /// The first file of the directory it was found holding.
    pub path: PathBuf,
}

/// The processes other than this one that have a file under `dir` open (any descriptor) or
/// mapped (`mmap`), each with the first such file found; empty when `dir` does not exist or
/// `/proc` cannot be read. This process is left out: what it has open it opened itself, and
/// a database it has open holds that database's own locks, which the kinds' checks find.
/// Processes that go away while they are looked at are skipped.
pub fn holders(dir: &Path) -> Vec<Holder> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let own = std::process::id();
    processes
        .flatten()
        .filter(|process| u32::try_from(process.pid()).ok() != Some(own))
        .filter_map(|process| {
            let path = paths_under(&process, &dir).next()?;
            Some(holder(&process, path))
        })
        .collect()
}

/// Every file under `dir` that a process other than this one has open, each with the first such
/// process found: [`holders`] turned around, for looking up many files with one pass over
/// `/proc`. Keys are canonical paths. Descriptors only, not mappings (reading every process's
/// `maps` is the costly part of a pass): the database files this is for are kept open by
/// whoever uses them, and the Berkeley DB regions that are only mapped are [`holders`]' job.
pub fn held_files(dir: &Path) -> HashMap<PathBuf, Holder> {
    let mut held = HashMap::new();
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return held;
    };
    let Ok(processes) = procfs::process::all_processes() else {
        return held;
    };
    let own = std::process::id();
    for process in processes.flatten() {
        if u32::try_from(process.pid()).ok() == Some(own) {
            continue;
        }
        for path in open_under(&process, &dir) {
            if !held.contains_key(&path) {
                held.insert(path.clone(), holder(&process, path));
            }
        }
    }
    held
}

fn holder(process: &procfs::process::Process, path: PathBuf) -> Holder {
    Holder {
        pid: process.pid(),
        name: process.stat().map(|s| s.comm).unwrap_or_default(),
        path,
    }
}

/// The files under `dir` that `process` has open.
fn open_under<'a>(
    process: &'a procfs::process::Process,
    dir: &'a Path,
) -> impl Iterator<Item = PathBuf> + 'a {
    process
        .fd()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |fd| match fd.target {
            procfs::process::FDTarget::Path(path) if path.starts_with(dir) => Some(path),
            _ => None,
        })
}

/// The files under `dir` that `process` has open, then those it has mapped (`maps` read only
/// when asked for beyond the open ones).
fn paths_under<'a>(
    process: &'a procfs::process::Process,
    dir: &'a Path,
) -> impl Iterator<Item = PathBuf> + 'a {
    let open = open_under(process, dir);
    let mapped = std::iter::once(()).flat_map(move |()| {
        process
            .maps()
            .into_iter()
            .flatten()
            .filter_map(move |map| match map.pathname {
                procfs::process::MMapPath::Path(path) if path.starts_with(dir) => Some(path),
                _ => None,
            })
    });
    open.chain(mapped)
}

/// Whether a connection has the SQLite database whose `-shm` file is `shm` open in WAL mode:
/// every such connection holds a shared lock on byte 128 of the `-shm` file while open
/// (SQLite's "DMS" byte of its unix VFS: `(22 + 8) * 4 + 8`).
pub(crate) fn sqlite_wal_open(shm: &Path) -> bool {
    locked(shm, 128, 1)
}

/// Whether RocksDB has the database in `dir` open: it locks `dir/LOCK` while it is.
pub(crate) fn rocksdb_open(dir: &Path) -> bool {
    locked(&dir.join("LOCK"), 0, 0)
}

/// Whether some process holds an `fcntl` lock on `len` bytes of `path` from `start` (0: to the
/// end), as `/proc/locks` lists them. Read there, not queried through a descriptor of the file:
/// closing any descriptor of a file drops every traditional (POSIX) lock this very process
/// holds on it, so a query through one would take the locks of a database open in this process
/// from under it. Where `/proc/locks` cannot be read, the query (`F_OFD_GETLK`) is the way.
fn locked(path: &Path, start: u64, len: u64) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(md) = std::fs::metadata(path) else {
        return false;
    };
    let Ok(locks) = procfs::locks() else {
        return locked_by_query(path, start, len);
    };
    let (major, minor) = (
        nix::sys::stat::major(md.dev()),
        nix::sys::stat::minor(md.dev()),
    );
    let last = if len == 0 {
        u64::MAX
    } else {
        start.saturating_add(len - 1)
    };
    locks.iter().any(|lock| {
        // `/proc/locks` names the file system's device, which for a btrfs subvolume (an
        // anonymous device, major 0) is not the one `stat` gives: the inode decides there.
        let same_device =
            (u64::from(lock.devmaj), u64::from(lock.devmin)) == (major, minor) || major == 0;
        lock.inode == md.ino()
            && same_device
            && lock.offset_first <= last
            && lock.offset_last.is_none_or(|end| end >= start)
    })
}

/// [`locked`] by asking the kernel through a descriptor of `path` (`F_OFD_GETLK`, for a write
/// lock, which any lock conflicts with), for systems without `/proc/locks`.
fn locked_by_query(path: &Path, start: u64, len: u64) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else {
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

/// A database running on the files of one directory that a plain directory backup lists: the
/// copy it takes of them is not consistent (pages torn mid-write, commits half there), and the
/// database's own source is what backs it up. Judged from the directory's names, and only where
/// they say which database it is, from that database's evidence: PostgreSQL's `postmaster.pid`
/// beside `PG_VERSION`, a held RocksDB `LOCK` beside `CURRENT`, a held SQLite `-shm` (WAL mode)
/// or a `-journal` beside its database (rollback mode, a write in progress), a process with a
/// Berkeley DB environment's (`__db.001`) or an EventStore database's (`writer.chk`) files
/// open. An SQLite database in rollback-journal mode between writes shows nothing by name; the
/// directory walk finds it by its header and a process that has it open
/// ([`held_files`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveDatabase {
    /// The source kind that backs it up (`--source`).
    pub kind: &'static str,
    /// The database's name, for people.
    pub name: &'static str,
    /// What shows it running.
    pub evidence: String,
}

/// [`LiveDatabase`] of the directory `dir`, whose entries are `names` (sorted).
pub fn live_database(dir: &Path, names: &[String]) -> Option<LiveDatabase> {
    let has = |name: &str| names.binary_search_by(|n| n.as_str().cmp(name)).is_ok();
    let live = |kind, name, evidence: String| {
        Some(LiveDatabase {
            kind,
            name,
            evidence,
        })
    };
    if has("PG_VERSION") && has("postmaster.pid") {
        return live(
            "postgres",
            "PostgreSQL",
            "`postmaster.pid` exists".to_owned(),
        );
    }
    if has("CURRENT") && has("LOCK") && rocksdb_open(dir) {
        return live(
            "rocksdb",
            "RocksDB",
            "a process holds its `LOCK`".to_owned(),
        );
    }
    for name in names {
        if let Some(db) = name.strip_suffix("-shm").filter(|db| has(db)) {
            if sqlite_wal_open(&dir.join(name)) {
                return live(
                    "sqlite",
                    "SQLite",
                    format!("a connection has `{db}` open: its `{name}` is locked"),
                );
            }
        }
        if let Some(db) = name.strip_suffix("-journal").filter(|db| has(db)) {
            return live(
                "sqlite",
                "SQLite",
                format!("`{db}` is being written: its `{name}` exists"),
            );
        }
    }
    let (kind, name) = if has("__db.001") {
        ("bdb", "Berkeley DB")
    } else if has("writer.chk") && has("chaser.chk") {
        ("eventstore", "EventStore")
    } else {
        return None;
    };
    let holder = holders(dir).into_iter().next()?;
    live(
        kind,
        name,
        format!(
            "process {} (`{}`) has `{}` open",
            holder.pid,
            holder.name,
            holder.path.display()
        ),
    )
}

#[cfg(test)]
pub(crate) mod tests {

    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// Spawns `command` with its stdin and stdout piped and returns it once it has printed
    /// `ready`; it runs until its stdin gets a line.
    pub(crate) fn holding(mut command: Command) -> (Child, BufReader<std::process::ChildStdout>) {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        (child, out)
    }

    /// A shell that holds `file` open for reading, until [`release`]d.
    pub(crate) fn holding_open(file: &Path) -> (Child, BufReader<std::process::ChildStdout>) {
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg("exec 3<\"$0\"; echo ready; read line")
            .arg(file);
        holding(shell)
    }

    pub(crate) fn release(mut child: Child) {
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn a_process_with_a_file_open_below_the_directory_is_found_until_it_closes_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let file = dir.path().join("sub/chunk-000000.000000");
        std::fs::write(&file, b"data").unwrap();
        assert_eq!(holders(dir.path()), Vec::new());

        let (child, _out) = holding_open(&file);
        let found = holders(dir.path());
        assert_eq!(
            found,
            vec![Holder {
                pid: i32::try_from(child.id()).unwrap(),
                name: "sh".into(),
                path: std::fs::canonicalize(&file).unwrap(),
            }]
        );
        // A directory beside it, whose name the held one's starts with, is not "under" it.
        let sibling = PathBuf::from(format!("{}-other", dir.path().display()));
        std::fs::create_dir(&sibling).unwrap();
        assert_eq!(holders(&sibling), Vec::new());
        std::fs::remove_dir(&sibling).unwrap();
        release(child);
        assert_eq!(holders(dir.path()), Vec::new());
    }

    /// Maps the file named by its argument shared, closes the descriptor, prints `ready` and
    /// waits for a line on stdin.
    const MAP_AND_CLOSE: &str = "
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDWR)
address = libc.mmap(None, 8192, 3, 1, fd, 0)  # PROT_READ | PROT_WRITE, MAP_SHARED
assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
os.close(fd)
print('ready', flush=True)
sys.stdin.readline()
";

    #[test]
    fn a_process_that_only_maps_a_file_below_the_directory_is_found() {
        // The way a Berkeley DB process holds its environment's regions: mapped, and the
        // descriptor closed (Python's own mmap keeps a duplicate open, so libc's is called).
        if Command::new("python3")
            .arg("-c")
            .arg("import ctypes")
            .status()
            .map_or(true, |s| !s.success())
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "python3 is missing, which this test needs under CI"
            );
            eprintln!("SKIPPED: python3 is missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("__db.001");
        std::fs::write(&file, vec![0u8; 8192]).unwrap();
        let mut python = Command::new("python3");
        python.arg("-c").arg(MAP_AND_CLOSE).arg(&file);
        let (child, _out) = holding(python);
        let pid = i32::try_from(child.id()).unwrap();
        let process = procfs::process::Process::new(pid).unwrap();
        let open: Vec<_> = process
            .fd()
            .unwrap()
            .flatten()
            .filter(|fd| matches!(&fd.target, procfs::process::FDTarget::Path(p) if p.starts_with(dir.path())))
            .collect();
        assert!(open.is_empty(), "the file is still open: {open:?}");
        let found = holders(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, pid);
        assert_eq!(found[0].path, std::fs::canonicalize(&file).unwrap());
        release(child);
        assert_eq!(holders(dir.path()), Vec::new());
    }

    /// The sorted names of `dir`, as the directory walk hands them to [`live_database`].
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn files(dir: &Path, names: &[&str]) {
        for name in names {
            std::fs::write(dir.join(name), b"").unwrap();
        }
    }

    #[test]
    fn stopped_databases_are_not_live() {
        let root = tempfile::tempdir().unwrap();
        let layouts: [&[&str]; 5] = [
            &["PG_VERSION", "postgresql.conf"],
            &["CURRENT", "LOCK", "MANIFEST-000001", "000004.log"],
            &["app.db", "app.db-shm", "app.db-wal"],
            &["__db.001", "__db.002", "log.0000000001", "bank.db"],
            &["writer.chk", "chaser.chk", "chunk-000000.000000"],
        ];
        for (i, layout) in layouts.iter().enumerate() {
            let dir = root.path().join(i.to_string());
            std::fs::create_dir(&dir).unwrap();
            files(&dir, layout);
            assert_eq!(live_database(&dir, &names(&dir)), None, "{layout:?}");
        }
        // A `postmaster.pid` without `PG_VERSION` beside it is some other program's.
        files(root.path(), &["postmaster.pid"]);
        assert_eq!(live_database(root.path(), &names(root.path())), None);
    }

    #[test]
    fn running_databases_are_named_with_their_evidence() {
        let root = tempfile::tempdir().unwrap();
        let pg = root.path().join("pg");
        std::fs::create_dir(&pg).unwrap();
        files(&pg, &["PG_VERSION", "postmaster.pid"]);
        assert_eq!(live_database(&pg, &names(&pg)).unwrap().kind, "postgres");

        let sqlite = root.path().join("sqlite");
        std::fs::create_dir(&sqlite).unwrap();
        files(&sqlite, &["app.db", "app.db-journal"]);
        let live = live_database(&sqlite, &names(&sqlite)).unwrap();
        assert_eq!(live.kind, "sqlite");
        assert!(
            live.evidence.contains("`app.db-journal` exists"),
            "{live:?}"
        );

        for (kind, layout) in [
            ("bdb", ["__db.001", "log.0000000001"]),
            ("eventstore", ["writer.chk", "chaser.chk"]),
        ] {
            let dir = root.path().join(kind);
            std::fs::create_dir(&dir).unwrap();
            files(&dir, &layout);
            let (child, _out) = holding_open(&dir.join(layout[1]));
            let live = live_database(&dir, &names(&dir)).unwrap();
            assert_eq!(live.kind, kind);
            assert!(
                live.evidence
                    .starts_with(&format!("process {} (`sh`) has `", child.id())),
                "{live:?}"
            );
            release(child);
            assert_eq!(live_database(&dir, &names(&dir)), None, "{kind}");
        }
    }

    /// The lock query reads `/proc/locks`: asking through a descriptor of the file and closing
    /// it would drop the locks this process holds on it, here an SQLite connection's.
    #[cfg(feature = "sqlite")]
    #[test]
    fn a_lock_held_by_this_process_is_seen_and_kept() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let shm = dir.path().join("app.db-shm");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        let ours = || {
            let inode = std::fs::metadata(&shm).unwrap().ino();
            let pid = i32::try_from(std::process::id()).unwrap();
            procfs::locks()
                .unwrap()
                .iter()
                .filter(|l| l.inode == inode && l.pid == Some(pid))
                .count()
        };
        let before = ours();
        assert!(before > 0, "the connection holds no lock on its -shm");
        assert!(sqlite_wal_open(&shm));
        assert_eq!(ours(), before, "asking dropped this process's locks");
        drop(conn);
        assert!(!sqlite_wal_open(&shm));
    }

    #[test]
    fn a_directory_that_does_not_exist_has_no_holders() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holders(&dir.path().join("missing")), Vec::new());
    }
}
