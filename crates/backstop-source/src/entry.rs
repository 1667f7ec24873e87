//! The items a session asks the engine to store, and how each may change while it is read.

use std::path::PathBuf;

use crate::SourceError;

/// A group of entries stored completely before the next phase begins.
#[derive(Debug, Default)]
pub struct Phase {
    /// A short name shown in progress and logs ("checkpoints", "data files", "logs").
    pub name: String,
    /// The entries, stored in this order.
    pub entries: Vec<Entry>,
    /// More entries, listed while they are stored, after `entries`: a tree of a million files
    /// need not be held in memory as a list (see [`Phase::streamed`]).
    pub stream: Option<EntryStream>,
    /// Whether the engine may read the phase's files in any order, on several threads (it still
    /// stores them in this order and finishes the phase before the next). Only for entries whose
    /// content is a file on disk or bytes, never [`Content::Session`].
    pub parallel: bool,
}

impl Phase {
    /// A named phase whose files are read one after another, in order.
    pub fn new(name: impl Into<String>, entries: Vec<Entry>) -> Self {
        Self {
            name: name.into(),
            entries,
            stream: None,
            parallel: false,
        }
    }

    /// A named phase whose files may be read in any order and at the same time (see
    /// [`Phase::parallel`]).
    pub fn unordered(name: impl Into<String>, entries: Vec<Entry>) -> Self {
        Self {
            parallel: true,
            ..Self::new(name, entries)
        }
    }

    /// A named phase whose entries are listed as the engine stores them, read in any order and
    /// at the same time like [`Phase::unordered`]. The entries must come in *tree order* (see
    /// [`tree_order`]): the engine matches them against the previous backup's file list in one
    /// pass instead of holding that list in memory. Entries out of that order are stored
    /// correctly, but read again even when unchanged; and an immutable file is recognised as
    /// unchanged by its path, not by its identity alone (a renamed SST is read again).
    pub fn streamed(name: impl Into<String>, entries: EntryStream) -> Self {
        Self {
            stream: Some(entries),
            ..Self::unordered(name, Vec::new())
        }
    }

    /// Every entry, the listed ones first, then the streamed ones as they are listed.
    pub fn into_entries(self) -> impl Iterator<Item = Result<Entry, SourceError>> + Send {
        self.entries
            .into_iter()
            .map(Ok)
            .chain(self.stream.into_iter().flatten())
    }
}

/// Entries listed one by one (a directory walk); an error ends the stream.
pub struct EntryStream {
    // Behind a mutex so that a phase may wait inside a session, which is shared between threads.
    inner: std::sync::Mutex<Box<dyn Iterator<Item = Result<Entry, SourceError>> + Send>>,
    scan: std::sync::Mutex<Option<EntryScan>>,
    done: bool,
}

/// Counts a stream's files ahead of it (see [`EntryStream::with_scan`]).
pub type EntryScan = Box<dyn FnOnce(&mut dyn FnMut(u64, u64) -> bool) + Send>;

impl EntryStream {
    /// Wraps an iterator of entries.
    pub fn new(entries: impl Iterator<Item = Result<Entry, SourceError>> + Send + 'static) -> Self {
        Self {
            inner: std::sync::Mutex::new(Box::new(entries)),
            scan: std::sync::Mutex::new(None),
            done: false,
        }
    }

    /// Adds a cheaper listing of the same entries that only counts them, which the engine may
    /// run on a thread of its own to show totals before the stream gets there (restic's
    /// "scanner" does the same). It calls `found(files, bytes)` for each entry (one file or
    /// none) and stops as soon as `found` returns false; its errors are the stream's to report.
    #[must_use]
    pub fn with_scan(
        self,
        scan: impl FnOnce(&mut dyn FnMut(u64, u64) -> bool) + Send + 'static,
    ) -> Self {
        *self
            .scan
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(scan));
        self
    }

    /// The counting listing, if the stream has one (taken: it runs once).
    pub fn take_scan(&mut self) -> Option<EntryScan> {
        self.scan
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Applies `f` to every entry as it is listed.
    #[must_use]
    pub fn map_entries(
        mut self,
        mut f: impl FnMut(Entry) -> Result<Entry, SourceError> + Send + 'static,
    ) -> Self {
        let scan = self.take_scan();
        let mapped = Self::new(self.map(move |entry| entry.and_then(&mut f)));
        match scan {
            Some(scan) => mapped.with_scan(scan),
            None => mapped,
        }
    }
}

impl Iterator for EntryStream {
    type Item = Result<Entry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self
            .inner
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next();
        // Fused, and nothing after an error: the listing it came from is in an unknown state.
        self.done = matches!(next, None | Some(Err(_)));
        next
    }
}

impl std::fmt::Debug for EntryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Compares two entry paths in tree order: a directory's entries, names in byte order, come
/// before the entries of its subdirectories, and the subdirectories follow one another (each
/// with everything below it) in name order. It is the order of a walk that lists a directory,
/// then descends into its subdirectories one by one; "a-b" comes before "a/x", because "a-b"
/// is listed with the root and "a/x" only when `a` is entered.
pub fn tree_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (dir_a, name_a) = a.rsplit_once('/').unwrap_or(("", a));
    let (dir_b, name_b) = b.rsplit_once('/').unwrap_or(("", b));
    // The root's "" splits into [""], which sorts before any named directory.
    dir_a
        .split('/')
        .cmp(dir_b.split('/'))
        .then_with(|| name_a.cmp(name_b))
}

/// What kind of tree node an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link with its target, stored as is (never followed).
    Symlink {
        /// The link's target.
        target: String,
    },
}

/// How a file may change while the engine reads it; the engine picks chunking and re-read rules
/// from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeModel {
    /// Never changes once it exists (RocksDB SSTs, sealed EventStore chunks, archived WAL). With
    /// an `identity` (name + size + the database's own checksum or id), a file stored before under
    /// the same identity is never read again. Stored in large fixed blocks.
    Immutable {
        /// The database's identity for the file, if it has one.
        identity: Option<String>,
    },
    /// Only appended to: the engine stores exactly `Entry::size` bytes, the length seen at a
    /// consistent moment, and ignores anything written after it.
    AppendOnly,
    /// Updated in place in pages of `page_size` bytes: stored in page-aligned fixed blocks so an
    /// incremental backup stores about the pages that changed.
    Pages {
        /// The database's page size in bytes.
        page_size: u32,
    },
    /// Anything may happen: content-defined chunking.
    Any,
}

/// Filesystem identity of a file, used to skip reading a file unchanged since the parent backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsIdentity {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
}

/// Where an entry's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// No content (directories, symlinks).
    None,
    /// Read from this file on disk, at most `Entry::size` bytes for append-only files.
    File(PathBuf),
    /// Bytes the source supplies (a backup label, a position file).
    Bytes(Vec<u8>),
    /// Read through [`crate::Session::open`] with this handle (pages read inside a database
    /// transaction, say).
    Session(u64),
}

/// One item to store.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Path inside the backup: relative, `/`-separated, no `.` or `..` segments.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Unix permission bits (and file type bits are ignored).
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// For files: the size to store (the exact length for append-only files, the size seen when
    /// listed otherwise; the stored size is what was actually read).
    pub size: u64,
    /// How the file may change while it is read.
    pub change: ChangeModel,
    /// Where the bytes come from.
    pub content: Content,
    /// Filesystem identity when the content is a file on disk, for the unchanged-file shortcut.
    pub fs_identity: Option<FsIdentity>,
}

impl Entry {
    /// An entry for a directory.
    pub fn dir(path: impl Into<String>, mode: u32, mtime_ns: i64) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::Dir,
            mode,
            mtime_ns,
            uid: 0,
            gid: 0,
            size: 0,
            change: ChangeModel::Any,
            content: Content::None,
            fs_identity: None,
        }
    }

    /// An entry for a file whose bytes the source supplies.
    pub fn bytes(path: impl Into<String>, bytes: Vec<u8>, mode: u32, mtime_ns: i64) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::File,
            mode,
            mtime_ns,
            uid: 0,
            gid: 0,
            size: bytes.len() as u64,
            change: ChangeModel::Any,
            content: Content::Bytes(bytes),
            fs_identity: None,
        }
    }

    /// Builds an entry from a file on disk as `lstat` sees it now. Directories and symlinks get
    /// their kind; other file types (sockets, fifos, devices) give `Ok(None)`.
    pub fn from_path(
        path_in_backup: impl Into<String>,
        disk_path: &std::path::Path,
        change: ChangeModel,
    ) -> Result<Option<Self>, crate::SourceError> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(disk_path)
            .map_err(|e| crate::SourceError::io("reading metadata of", disk_path, e))?;
        let ft = md.file_type();
        let kind = if ft.is_file() {
            EntryKind::File
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            let target = std::fs::read_link(disk_path)
                .map_err(|e| crate::SourceError::io("reading symlink", disk_path, e))?;
            EntryKind::Symlink {
                target: target.to_string_lossy().into_owned(),
            }
        } else {
            return Ok(None);
        };
        let mtime_ns = md
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.mtime_nsec());
        let ctime_ns = md
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.ctime_nsec());
        let is_file = kind == EntryKind::File;
        Ok(Some(Self {
            path: path_in_backup.into(),
            kind,
            mode: md.mode() & 0o7777,
            mtime_ns,
            uid: md.uid(),
            gid: md.gid(),
            size: if is_file { md.len() } else { 0 },
            change,
            content: if is_file {
                Content::File(disk_path.to_path_buf())
            } else {
                Content::None
            },
            fs_identity: is_file.then_some(FsIdentity {
                dev: md.dev(),
                ino: md.ino(),
                size: md.len(),
                mtime_ns,
                ctime_ns,
            }),
        }))
    }
}
