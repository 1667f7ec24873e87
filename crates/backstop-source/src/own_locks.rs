//! Reading a file that this process also has open without dropping its POSIX locks on it.
//!
//! A traditional (`fcntl`) record lock belongs to a process and an inode, and closing *any*
//! descriptor of that inode drops every such lock the process holds on it. An application
//! that embeds the engine and backs up a directory holding its own open SQLite database (whose
//! locks are these, on the database file and its `-shm`) or RocksDB directory (its `LOCK`)
//! would lose its locks the moment the backup closed the file it had read, and another
//! process could then write at the same time as the application: the database's corruption.
//! SQLite's unix VFS meets the same rule by keeping such descriptors open until the last lock
//! is gone (its `unixInodeInfo`'s unused list); this does the same for the engine's readers.
//!
//! At the start of a backup, [`OpenElsewhere::now`] notes the inodes of every regular file
//! this process has open (through `/proc/self/fd`). A file the backup reads that is one of them
//! is not closed when read but kept in a process-wide list, and read through that same
//! descriptor by later backups. The end of each backup ([`OpenElsewhere::close_unneeded`])
//! and the next [`OpenElsewhere::now`] close the kept descriptors whose inode no other
//! descriptor of the process has open any more: the application has closed its own, so it
//! holds no lock there that closing could drop. Without `/proc` nothing is noted and files are
//! closed as before.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek as _, SeekFrom};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::Mutex;

/// A device and inode number.
pub type Inode = (u64, u64);

/// Descriptors kept open because closing them would have dropped this process's locks.
static KEPT: Mutex<Vec<(Inode, File)>> = Mutex::new(Vec::new());

/// The regular files (by inode) this process had open when a backup started, other than the
/// descriptors this module keeps.
#[derive(Debug, Default)]
pub struct OpenElsewhere {
    inodes: HashSet<Inode>,
}

impl OpenElsewhere {
    /// Notes what the process has open now, and closes the kept descriptors that no longer
    /// protect anything.
    pub fn now() -> Self {
        let mut kept = KEPT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let kept_fds: HashSet<i32> = kept.iter().map(|(_, f)| f.as_raw_fd()).collect();
        let mut inodes = HashSet::new();
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
            return Self::default();
        };
        for fd in fds.flatten() {
            let name = fd.file_name();
            let Some(number) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if kept_fds.contains(&number) {
                continue;
            }
            // Follows the link to the open file itself; the listing's own descriptor is gone
            // by then and fails, which is fine.
            if let Ok(meta) = std::fs::metadata(fd.path())
                && meta.is_file()
            {
                inodes.insert((meta.dev(), meta.ino()));
            }
        }
        kept.retain(|(inode, _)| inodes.contains(inode));
        Self { inodes }
    }

    /// Closes the kept descriptors that no longer protect anything (what [`OpenElsewhere::now`]
    /// does first): for the end of a backup, whose source session held files of its own.
    pub fn close_unneeded() {
        let _ = Self::now();
    }

    /// Whether nothing is open here that a close could hurt.
    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
    }

    /// Opens `path` for reading. `inode` is what the walk saw there, if known. A file the
    /// process had open elsewhere is read through a kept descriptor (from the start) and kept
    /// again when the reader is dropped.
    ///
    /// # Errors
    /// Opening or rewinding the file failed.
    pub fn open(&self, path: &Path, inode: Option<Inode>) -> std::io::Result<KeepingReader> {
        // The walk's inode is not one of them: the common case costs no more than an open.
        if self.is_empty() || inode.is_some_and(|i| !self.inodes.contains(&i)) {
            return File::open(path).map(KeepingReader::closing);
        }
        if let Some(inode) = inode
            && let Some(mut file) = take_kept(inode)
        {
            if let Err(e) = file.seek(SeekFrom::Start(0)) {
                keep(inode, file);
                return Err(e);
            }
            return Ok(KeepingReader {
                file: Some(file),
                keep_as: Some(inode),
            });
        }
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let opened = (meta.dev(), meta.ino());
        let keep_as = self.inodes.contains(&opened).then_some(opened);
        Ok(KeepingReader {
            file: Some(file),
            keep_as,
        })
    }
}

fn take_kept(inode: Inode) -> Option<File> {
    let mut kept = KEPT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let at = kept.iter().position(|(i, _)| *i == inode)?;
    Some(kept.swap_remove(at).1)
}

fn keep(inode: Inode, file: File) {
    KEPT.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((inode, file));
}

/// A file being read for a backup; dropping it closes the file, or keeps it open (see the
/// module) when the process had that file open elsewhere.
#[derive(Debug)]
pub struct KeepingReader {
    file: Option<File>,
    keep_as: Option<Inode>,
}

impl KeepingReader {
    fn closing(file: File) -> Self {
        Self {
            file: Some(file),
            keep_as: None,
        }
    }
}

impl Read for KeepingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.file.as_mut() {
            Some(file) => file.read(buf),
            None => Ok(0),
        }
    }
}

impl Drop for KeepingReader {
    fn drop(&mut self) {
        if let (Some(inode), Some(file)) = (self.keep_as, self.file.take()) {
            keep(inode, file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `/proc/locks` shows a lock of this process on `path`'s inode.
    fn locked_here(path: &Path) -> bool {
        let inode = std::fs::metadata(path).unwrap().ino();
        let pid = i32::try_from(std::process::id()).unwrap();
        procfs::locks()
            .unwrap()
            .iter()
            .any(|l| l.inode == inode && l.pid == Some(pid))
    }

    /// A POSIX record lock on the file's first byte, as SQLite and RocksDB take theirs.
    fn lock(file: &File) {
        let lock = nix::libc::flock {
            l_type: nix::libc::F_WRLCK as nix::libc::c_short,
            l_whence: nix::libc::SEEK_SET as nix::libc::c_short,
            l_start: 0,
            l_len: 1,
            l_pid: 0,
        };
        nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_SETLK(&lock)).unwrap();
    }

    #[test]
    fn reading_a_file_this_process_holds_a_lock_on_keeps_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        std::fs::write(&path, b"database bytes").unwrap();
        let app = File::options().read(true).write(true).open(&path).unwrap();
        lock(&app);
        assert!(locked_here(&path), "the test's lock is not visible");

        let open = OpenElsewhere::now();
        let meta = std::fs::metadata(&path).unwrap();
        for _ in 0..3 {
            let mut reader = open.open(&path, Some((meta.dev(), meta.ino()))).unwrap();
            let mut read = Vec::new();
            reader.read_to_end(&mut read).unwrap();
            assert_eq!(read, b"database bytes");
            drop(reader);
            assert!(locked_here(&path), "reading the file dropped the lock");
        }
        // Read three times, through one kept descriptor.
        let kept = |inode| {
            KEPT.lock()
                .unwrap()
                .iter()
                .filter(|(i, _)| *i == inode)
                .count()
        };
        assert_eq!(kept((meta.dev(), meta.ino())), 1);

        // Once the application has closed the file, the end of a backup closes the kept one.
        drop(app);
        OpenElsewhere::close_unneeded();
        assert_eq!(kept((meta.dev(), meta.ino())), 0);
    }

    #[test]
    fn a_file_open_nowhere_else_is_closed_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        std::fs::write(&path, b"plain bytes").unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"x").unwrap();
        // Something else open, so that the notes are not empty.
        let _held = File::open(&other).unwrap();
        let open = OpenElsewhere::now();
        assert!(!open.is_empty());
        let mut reader = open.open(&path, None).unwrap();
        let mut read = Vec::new();
        reader.read_to_end(&mut read).unwrap();
        assert_eq!(read, b"plain bytes");
        assert!(reader.keep_as.is_none());
    }
}
