//! Which processes have files under a directory open or mapped: the evidence, besides a
//! database's own lock files, that a database is running on the files a restore would
//! overwrite.
//!
//! Not every database leaves a lock that can be queried: a Berkeley DB environment keeps its
//! state in shared-memory regions (`__db.001`…) mapped by every process that opens it, an
//! SQLite connection in rollback-journal mode holds no lock while idle, and EventStore keeps
//! its chunk files open. All of them do have the files open or mapped, which `/proc` shows
//! (as `fuser` and `lsof` find them). Only the processes this one may inspect are seen: all of
//! them for root, one's own otherwise; a database run by another user, or in another PID
//! namespace, is found only by its lock files.

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
            let path = held_under(&process, &dir)?;
            let name = process.stat().map(|s| s.comm).unwrap_or_default();
            Some(Holder {
                pid: process.pid(),
                name,
                path,
            })
        })
        .collect()
}

/// The first file under `dir` that `process` has open or mapped.
fn held_under(process: &procfs::process::Process, dir: &Path) -> Option<PathBuf> {
    let open = process.fd().ok().and_then(|fds| {
        fds.flatten().find_map(|fd| match fd.target {
            procfs::process::FDTarget::Path(path) if path.starts_with(dir) => Some(path),
            _ => None,
        })
    });
    open.or_else(|| {
        process.maps().ok().and_then(|maps| {
            maps.into_iter().find_map(|map| match map.pathname {
                procfs::process::MMapPath::Path(path) if path.starts_with(dir) => Some(path),
                _ => None,
            })
        })
    })
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

    #[test]
    fn a_directory_that_does_not_exist_has_no_holders() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holders(&dir.path().join("missing")), Vec::new());
    }
}
