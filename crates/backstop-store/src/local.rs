//! A store in a local directory: one file per object, written atomically with temp file + rename.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::memory::check_range;
use crate::{
    ObjectMeta, PendingObject, PutMode, Store, StoreError, StoreErrorKind, split_prefix,
    validate_key,
};

/// Names of files being written start with this; they are never listed and never keys.
const TEMP_PREFIX: &str = ".tmp-";
/// How many files ranged reads keep open: a restore's workers each read a few packs at a time.
const OPEN_FILES: usize = 16;

/// How a [`LocalStore`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalStoreOptions {
    /// fsync every object and the directory entries that lead to it before `put` returns.
    /// Off only for tests and scratch repositories: a power loss may then lose acknowledged
    /// objects.
    pub sync: bool,
}

impl Default for LocalStoreOptions {
    fn default() -> Self {
        Self { sync: true }
    }
}

/// Objects as files under a root directory; the key `packs/ab/ab12…` is the file
/// `<root>/packs/ab/ab12…`.
///
/// A put writes `.tmp-<random>` in the object's directory, fsyncs it, then renames it into place
/// (`Overwrite`) or hard-links it (`Create`, which fails atomically if the name exists), and
/// fsyncs the directory. A crash leaves at most a temp file, which [`Store::list`] never shows;
/// [`LocalStore::remove_temp_files`] cleans them up.
///
/// The root and the directories under it are created on demand. Key segments that start with
/// `.tmp-` are rejected, and a key cannot be both an object and a directory of other objects
/// (`a` and `a/b`), which object stores allow but a file system does not.
///
/// [`Store::get_range`] keeps the last few files it read open (shared by clones), and reads
/// them with `pread`. A restore reads each pack in a few thousand ranges; opening, checking and
/// closing the file for each was five system calls where one does. The repository reads
/// ranges only of packs, which are never rewritten in place; a put or delete through this
/// store closes the key's file. A file another process replaces or removes stays readable
/// as it was, which for a pack (named by its contents) is the same bytes.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
    options: LocalStoreOptions,
    open: Arc<Mutex<OpenFiles>>,
    /// Directories whose entries (up to the root) are known durable in this process.
    durable: Arc<Mutex<HashSet<PathBuf>>>,
}

/// Files kept open for ranged reads, least recently used first out.
#[derive(Debug, Default)]
struct OpenFiles {
    /// Key, the open file, its size when opened, and when it was last used.
    files: Vec<(String, Arc<File>, u64, u64)>,
    clock: u64,
    /// Counts puts and deletes: a file opened before one of them may hold the bytes it
    /// replaced, and is not kept.
    changes: u64,
}

impl OpenFiles {
    fn get(&mut self, key: &str) -> Option<(Arc<File>, u64)> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.files.iter_mut().find(|(k, ..)| k == key)?;
        entry.3 = clock;
        Some((Arc::clone(&entry.1), entry.2))
    }

    fn insert(&mut self, key: &str, file: Arc<File>, size: u64) {
        self.files.retain(|(k, ..)| k != key);
        if self.files.len() >= OPEN_FILES {
            if let Some(oldest) = (0..self.files.len()).min_by_key(|&i| self.files[i].3) {
                self.files.swap_remove(oldest);
            }
        }
        self.clock += 1;
        self.files.push((key.to_owned(), file, size, self.clock));
    }

    fn forget(&mut self, key: &str) {
        self.changes += 1;
        self.files.retain(|(k, ..)| k != key);
    }
}

impl LocalStore {
    /// A store rooted at `root`, fsyncing every put.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_options(root, LocalStoreOptions::default())
    }

    /// A store rooted at `root` with explicit options.
    pub fn with_options(root: impl Into<PathBuf>, options: LocalStoreOptions) -> Self {
        Self {
            root: root.into(),
            options,
            open: Arc::default(),
            durable: Arc::default(),
        }
    }

    fn open_files(&self) -> std::sync::MutexGuard<'_, OpenFiles> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The file of `key` for ranged reads, and its size: kept open from an earlier read, or
    /// opened now (and kept).
    fn open_for_range(&self, key: &str, path: &Path) -> Result<(Arc<File>, u64), StoreError> {
        let changes = {
            let mut open = self.open_files();
            if let Some(kept) = open.get(key) {
                return Ok(kept);
            }
            open.changes
        };
        let file = File::open(path).map_err(|err| {
            StoreError::from_io(key, format!("cannot open `{}`", path.display()), err)
        })?;
        let meta = file.metadata().map_err(|err| {
            StoreError::from_io(key, format!("cannot stat `{}`", path.display()), err)
        })?;
        if !meta.is_file() {
            return Err(not_a_file(key, path));
        }
        let file = Arc::new(file);
        let mut open = self.open_files();
        if open.changes == changes {
            open.insert(key, Arc::clone(&file), meta.len());
        }
        Ok((file, meta.len()))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The options in force.
    pub fn options(&self) -> LocalStoreOptions {
        self.options
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        if key
            .split('/')
            .any(|segment| segment.starts_with(TEMP_PREFIX))
        {
            return Err(StoreError::new(
                StoreErrorKind::InvalidKey,
                key,
                format!("key segments starting with `{TEMP_PREFIX}` are reserved for temp files"),
            ));
        }
        Ok(self.root.join(key))
    }

    /// Creates `dir` and any missing parents, and makes sure each one's entry in its parent is
    /// durable before an object in it is acknowledged: by fsyncing the parent after creating
    /// it, and, for a directory that already existed (another writer may have created it a
    /// moment ago and not yet synced its entry), once per store before first use.
    fn ensure_dir(&self, key: &str, dir: &Path) -> Result<(), StoreError> {
        if self.durable_dirs().contains(dir) {
            return Ok(());
        }
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::new(
                    StoreErrorKind::Other,
                    key,
                    format!(
                        "`{}` is a file, so it cannot hold objects; a key cannot be both an \
                         object and a prefix of other objects in a local store",
                        dir.display()
                    ),
                ));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.create_dir(key, dir)?;
            }
            Err(err) => {
                return Err(StoreError::from_io(
                    key,
                    format!("cannot inspect directory `{}`", dir.display()),
                    err,
                ));
            }
        }
        // The root's own entry is the business of whoever made it (`init`).
        if dir != self.root {
            if let Some(parent) = dir.parent() {
                self.ensure_dir(key, parent)?;
                self.sync_dir(key, parent)?;
            }
        }
        self.durable_dirs().insert(dir.to_path_buf());
        Ok(())
    }

    /// Creates `dir` (and missing parents); another writer creating it meanwhile is fine.
    fn create_dir(&self, key: &str, dir: &Path) -> Result<(), StoreError> {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            if !parent.exists() {
                self.create_dir(key, parent)?;
            }
        }
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(StoreError::from_io(
                    key,
                    format!("cannot create directory `{}`", dir.display()),
                    err,
                ));
            }
        }
        // The root has no durable-dirs walk above it: sync its parent when it is made here.
        if dir == self.root {
            if let Some(parent) = parent {
                self.sync_dir(key, parent)?;
            }
        }
        Ok(())
    }

    fn durable_dirs(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        self.durable.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sync_dir(&self, key: &str, dir: &Path) -> Result<(), StoreError> {
        if !self.options.sync {
            return Ok(());
        }
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(|err| {
            StoreError::from_io(
                key,
                format!("cannot fsync directory `{}`", dir.display()),
                err,
            )
        })
    }

    /// Creates a new temp file in `dir`.
    fn create_temp(&self, key: &str, dir: &Path) -> Result<(PathBuf, File), StoreError> {
        loop {
            let temp = dir.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()));
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => return Ok((temp, file)),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => {
                    return Err(StoreError::from_io(
                        key,
                        format!("cannot create temp file `{}`", temp.display()),
                        err,
                    ));
                }
            }
        }
    }

    /// Writes `bytes` to a new temp file in `dir` (fsynced if the store syncs) and returns its
    /// path.
    fn write_temp(&self, key: &str, dir: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let (temp, mut file) = self.create_temp(key, dir)?;
        let written = file.write_all(bytes).and_then(|()| self.sync_file(&file));
        if let Err(err) = written {
            remove_quietly(&temp);
            return Err(StoreError::from_io(
                key,
                format!("cannot write temp file `{}`", temp.display()),
                err,
            ));
        }
        Ok(temp)
    }

    fn sync_file(&self, file: &File) -> io::Result<()> {
        if self.options.sync {
            file.sync_all()
        } else {
            Ok(())
        }
    }

    /// Copies the temp file `temp` to a new temp file in `dir` (fsynced if the store syncs) and
    /// removes it; returns the new one. For a pieced put whose object's directory is on
    /// another file system than the root.
    fn copy_temp_into(&self, key: &str, temp: PathBuf, dir: &Path) -> Result<PathBuf, StoreError> {
        let copied = self.create_temp(key, dir).and_then(|(copy, mut file)| {
            let written = File::open(&temp)
                .and_then(|mut from| io::copy(&mut from, &mut file))
                .and_then(|_| self.sync_file(&file));
            match written {
                Ok(()) => Ok(copy),
                Err(err) => {
                    remove_quietly(&copy);
                    Err(StoreError::from_io(
                        key,
                        format!(
                            "cannot copy temp file `{}` to `{}`",
                            temp.display(),
                            copy.display()
                        ),
                        err,
                    ))
                }
            }
        });
        remove_quietly(&temp);
        copied
    }

    /// Moves the written temp file `temp` into place at `path` (`key`), by rename or, for
    /// `Create`, by hard link, and fsyncs `dir`: the second half of a put. The temp file is
    /// gone afterwards, whatever happened.
    fn place(
        &self,
        key: &str,
        temp: &Path,
        path: &Path,
        dir: &Path,
        mode: PutMode,
    ) -> Result<(), StoreError> {
        self.open_files().forget(key);
        let placed = match mode {
            PutMode::Overwrite => fs::rename(temp, path),
            // link() fails with EEXIST if the name exists, which makes create-if-absent atomic;
            // the temp name is removed either way.
            PutMode::Create => {
                let linked = fs::hard_link(temp, path);
                remove_quietly(temp);
                linked
            }
        };
        if let Err(err) = placed {
            if mode == PutMode::Overwrite {
                remove_quietly(temp);
            }
            if err.kind() == io::ErrorKind::AlreadyExists {
                return Err(StoreError::with_source(
                    StoreErrorKind::AlreadyExists,
                    key,
                    "object already exists and the put asked to create it",
                    err,
                ));
            }
            if err.kind() == io::ErrorKind::IsADirectory {
                return Err(StoreError::with_source(
                    StoreErrorKind::Other,
                    key,
                    format!(
                        "`{}` is a directory of other objects; a key cannot be both an object \
                         and a prefix of other objects in a local store",
                        path.display()
                    ),
                    err,
                ));
            }
            return Err(StoreError::from_io(
                key,
                format!("cannot move temp file into place at `{}`", path.display()),
                err,
            ));
        }
        self.sync_dir(key, dir)
    }

    /// Removes temp files left by interrupted puts that are older than `min_age`; returns how
    /// many were removed. Call it when no other process writes to the store, or with a `min_age`
    /// longer than any put can take.
    pub fn remove_temp_files(&self, min_age: std::time::Duration) -> Result<u64, StoreError> {
        let mut removed = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(StoreError::from_io(
                        "",
                        format!("cannot read directory `{}`", dir.display()),
                        err,
                    ));
                }
            };
            for entry in entries.flatten() {
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                let name = entry.file_name();
                if file_type.is_dir() {
                    stack.push(entry.path());
                } else if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                    let old_enough = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age >= min_age);
                    if old_enough && fs::remove_file(entry.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    fn meta_of(&self, key: &str, path: &Path) -> Result<ObjectMeta, StoreError> {
        let meta = fs::metadata(path).map_err(|err| {
            StoreError::from_io(key, format!("cannot read `{}`", path.display()), err)
        })?;
        if !meta.is_file() {
            return Err(not_a_file(key, path));
        }
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: meta.len(),
            modified_unix: modified_unix(&meta),
        })
    }

    fn walk(
        &self,
        dir: &Path,
        key_prefix: &str,
        name_filter: &str,
        out: &mut Vec<ObjectMeta>,
    ) -> Result<(), StoreError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            // A missing directory is an empty listing; one that vanished mid-walk too.
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            // A prefix whose directory part names a file (`a/b/` where `a/b` is an object).
            Err(err) if err.kind() == io::ErrorKind::NotADirectory => return Ok(()),
            Err(err) => {
                return Err(StoreError::from_io(
                    key_prefix,
                    format!("cannot list directory `{}`", dir.display()),
                    err,
                ));
            }
        };
        for entry in entries {
            let entry = entry.map_err(|err| {
                StoreError::from_io(
                    key_prefix,
                    format!("cannot list directory `{}`", dir.display()),
                    err,
                )
            })?;
            let name = entry.file_name();
            // Keys are ASCII, so a name that is not UTF-8 is not an object of this store.
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) || !name.starts_with(name_filter) {
                continue;
            }
            let key = format!("{key_prefix}{name}");
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(StoreError::from_io(
                        &key,
                        format!("cannot stat `{}`", entry.path().display()),
                        err,
                    ));
                }
            };
            let meta = if meta.file_type().is_symlink() {
                match fs::metadata(entry.path()) {
                    Ok(meta) => meta,
                    Err(_) => continue,
                }
            } else {
                meta
            };
            if meta.is_dir() {
                self.walk(&entry.path(), &format!("{key}/"), "", out)?;
            } else if meta.is_file() {
                out.push(ObjectMeta {
                    key,
                    size: meta.len(),
                    modified_unix: modified_unix(&meta),
                });
            }
        }
        Ok(())
    }
}

fn modified_unix(meta: &fs::Metadata) -> Option<i64> {
    let since_epoch = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    i64::try_from(since_epoch.as_secs()).ok()
}

fn not_a_file(key: &str, path: &Path) -> StoreError {
    StoreError::new(
        StoreErrorKind::NotFound,
        key,
        format!(
            "no such object: `{}` is a directory of other objects",
            path.display()
        ),
    )
}

/// An object of [`Store::put_pieces`]: a temp file in the store's root, moved into place by
/// [`PendingObject::finish`] (or removed when dropped unfinished).
struct PendingFile<'a> {
    store: &'a LocalStore,
    /// `None` once handed to `place`, which disposes of it.
    temp: Option<PathBuf>,
    file: File,
    len: u64,
    /// The caller's buffer, unused here, handed back by `finish`.
    buffer: Vec<u8>,
}

impl PendingObject for PendingFile<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file.write_all(bytes).map_err(|err| {
            let temp = self.temp.as_deref().unwrap_or(Path::new(""));
            StoreError::from_io(
                "",
                format!("cannot write temp file `{}`", temp.display()),
                err,
            )
        })?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn finish(mut self: Box<Self>, key: &str, mode: PutMode) -> Result<Vec<u8>, StoreError> {
        let path = self.store.path_of(key)?;
        let dir = path.parent().unwrap_or(&self.store.root).to_path_buf();
        self.store.ensure_dir(key, &dir)?;
        if let Err(err) = self.store.sync_file(&self.file) {
            return Err(StoreError::from_io(key, "cannot fsync the temp file", err));
        }
        match self.temp.take() {
            Some(temp) => {
                // The temp file is in the root, and the object's directory may be on another
                // file system (a `packs` directory linked elsewhere), where rename(2) fails.
                let temp = if same_file_system(&temp, &dir) {
                    temp
                } else {
                    self.store.copy_temp_into(key, temp, &dir)?
                };
                self.store
                    .place(key, &temp, &path, &dir, mode)
                    .map(|()| std::mem::take(&mut self.buffer))
            }
            None => Err(StoreError::new(
                StoreErrorKind::Other,
                key,
                "the object was already finished",
            )),
        }
    }
}

impl Drop for PendingFile<'_> {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            remove_quietly(&temp);
        }
    }
}

/// Whether `a` and `b` are on the same file system; `true` when either cannot be looked at
/// (the rename that follows then says what is wrong).
fn same_file_system(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => true,
    }
}

fn remove_quietly(path: &Path) {
    if let Err(err) = fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %err, "cannot remove temp file");
    }
}

impl Store for LocalStore {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.ensure_dir(key, &dir)?;
        let temp = self.write_temp(key, &dir, bytes)?;
        self.place(key, &temp, &path, &dir, mode)
    }

    fn put_pieces(
        &self,
        _size_hint: usize,
        buffer: Vec<u8>,
    ) -> Result<Box<dyn PendingObject + '_>, StoreError> {
        self.ensure_dir("", &self.root)?;
        let (temp, file) = self.create_temp("", &self.root)?;
        Ok(Box::new(PendingFile {
            store: self,
            temp: Some(temp),
            file,
            len: 0,
            buffer,
        }))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(key)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(err) if err.kind() == io::ErrorKind::IsADirectory => Err(not_a_file(key, &path)),
            Err(err) => Err(StoreError::from_io(
                key,
                format!("cannot read `{}`", path.display()),
                err,
            )),
        }
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(key)?;
        let (file, size) = self.open_for_range(key, &path)?;
        check_range(key, &range, size)?;
        let len = usize::try_from(range.end - range.start).map_err(|_| {
            StoreError::new(
                StoreErrorKind::InvalidRange,
                key,
                "range does not fit in memory",
            )
        })?;
        let failed = |err| {
            StoreError::from_io(
                key,
                format!(
                    "cannot read {}..{} of `{}`",
                    range.start,
                    range.end,
                    path.display()
                ),
                err,
            )
        };
        // Read into spare capacity: zeroing the buffer first was 1.5 % of a restore's CPU.
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = range.start + buf.len() as u64;
            let read = rustix::io::pread(&*file, rustix::buffer::spare_capacity(&mut buf), at)
                .map_err(|errno| failed(io::Error::from(errno)))?;
            if read == 0 {
                return Err(failed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file ended after {} bytes",
                        range.start + buf.len() as u64
                    ),
                )));
            }
        }
        // The spare capacity may exceed what was asked for, and a read may fill it.
        buf.truncate(len);
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let (dir_part, name_part) = split_prefix(prefix)?;
        let mut out = Vec::new();
        self.walk(&self.root.join(dir_part), dir_part, name_part, &mut out)?;
        Ok(out)
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let path = self.path_of(key)?;
        self.meta_of(key, &path)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        self.open_files().forget(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            // Also a missing object: the path leads through a file (`a/b` when `a` is an object).
            Err(err) if err.kind() == io::ErrorKind::NotADirectory => return Ok(()),
            Err(err) => {
                return Err(StoreError::from_io(
                    key,
                    format!("cannot remove `{}`", path.display()),
                    err,
                ));
            }
        }
        self.sync_dir(key, path.parent().unwrap_or(&self.root))
    }

    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    fn remove_temp_files(&self, min_age: std::time::Duration) -> Result<u64, StoreError> {
        LocalStore::remove_temp_files(self, min_age)
    }

    fn sequential_read_size(&self) -> u64 {
        // A ranged read is a pread from the page cache: pieces cost nothing but the syscall,
        // and reading whole packs took one pack's size of memory per thread.
        1 << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranged reads keep files open; a put or delete through the store closes the key's file,
    /// so reads never see an object's old bytes or an object that is gone.
    #[test]
    fn ranged_reads_of_kept_files_follow_puts_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("repo"));
        let keys: Vec<String> = (0..OPEN_FILES + 4)
            .map(|i| format!("packs/0{i:x}/p{i}"))
            .collect();
        for (i, key) in keys.iter().enumerate() {
            store
                .put(key, format!("object {i:03}").as_bytes(), PutMode::Create)
                .unwrap();
        }
        // More files than are kept open, twice round: evicted files are opened again.
        for _ in 0..2 {
            for (i, key) in keys.iter().enumerate() {
                let want = format!("object {i:03}");
                assert_eq!(store.get_range(key, 7..10).unwrap(), want.as_bytes()[7..10]);
            }
        }
        assert_eq!(store.open_files().files.len(), OPEN_FILES);

        let key = &keys[keys.len() - 1];
        store
            .put(key, b"replaced, and longer", PutMode::Overwrite)
            .unwrap();
        assert_eq!(store.get_range(key, 0..8).unwrap(), b"replaced");
        assert_eq!(store.get_range(key, 14..20).unwrap(), b"longer");
        let past_end = store.get_range(key, 15..21).unwrap_err();
        assert_eq!(past_end.kind(), StoreErrorKind::InvalidRange, "{past_end}");

        store.delete(key).unwrap();
        let gone = store.get_range(key, 0..1).unwrap_err();
        assert_eq!(gone.kind(), StoreErrorKind::NotFound, "{gone}");

        // A clone shares the open files, and a put through it closes them for both.
        let other = store.clone();
        other
            .put(&keys[0], b"through a clone", PutMode::Overwrite)
            .unwrap();
        assert_eq!(store.get_range(&keys[0], 0..7).unwrap(), b"through");
    }

    #[test]
    fn put_creates_directories_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("repo"));
        store
            .put("packs/ab/abcd", b"pack", PutMode::Create)
            .unwrap();
        assert_eq!(
            fs::read(dir.path().join("repo/packs/ab/abcd")).unwrap(),
            b"pack"
        );
        let err = store
            .put("packs/ab/abcd", b"other", PutMode::Create)
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::AlreadyExists);
        let names: Vec<_> = fs::read_dir(dir.path().join("repo/packs/ab"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["abcd".to_owned()]);
    }

    #[test]
    fn pieced_puts_leave_no_temp_files_whether_finished_abandoned_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("repo"));
        let temp_files = || -> Vec<String> {
            let mut found = Vec::new();
            let mut stack = vec![dir.path().join("repo")];
            while let Some(d) = stack.pop() {
                for e in fs::read_dir(d).unwrap() {
                    let e = e.unwrap();
                    if e.file_type().unwrap().is_dir() {
                        stack.push(e.path());
                    } else if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                        found.push(e.path().display().to_string());
                    }
                }
            }
            found
        };
        let mut pending = store.put_pieces(0, Vec::new()).unwrap();
        pending.write(b"pa").unwrap();
        assert_eq!(temp_files().len(), 1, "the pieces go to a temp file");
        pending.write(b"ck").unwrap();
        pending.finish("packs/ab/abcd", PutMode::Create).unwrap();
        assert_eq!(
            fs::read(dir.path().join("repo/packs/ab/abcd")).unwrap(),
            b"pack"
        );
        assert!(temp_files().is_empty());

        let mut abandoned = store.put_pieces(0, Vec::new()).unwrap();
        abandoned.write(b"torn").unwrap();
        drop(abandoned);
        assert!(temp_files().is_empty());

        let mut refused = store.put_pieces(0, Vec::new()).unwrap();
        refused.write(b"other").unwrap();
        let err = refused
            .finish("packs/ab/abcd", PutMode::Create)
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::AlreadyExists);
        assert!(temp_files().is_empty());
        let mut bad_key = store.put_pieces(0, Vec::new()).unwrap();
        bad_key.write(b"x").unwrap();
        let err = bad_key.finish("../escape", PutMode::Overwrite).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidKey);
        assert!(temp_files().is_empty());
    }

    #[test]
    fn a_pieced_put_reaches_a_directory_on_another_file_system() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        // `packs` linked to a tmpfs, as a user might put packs on another disk.
        let elsewhere = tempfile::tempdir_in("/dev/shm").unwrap();
        assert_ne!(
            fs::metadata(dir.path()).unwrap().dev(),
            fs::metadata(elsewhere.path()).unwrap().dev(),
            "the test needs /dev/shm on another file system than the temp directory"
        );
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("packs")).unwrap();
        let store = LocalStore::new(dir.path());
        let mut pending = store.put_pieces(0, Vec::new()).unwrap();
        pending.write(b"across").unwrap();
        pending.finish("packs/ab/abcd", PutMode::Create).unwrap();
        assert_eq!(store.get("packs/ab/abcd").unwrap(), b"across");
        let names = |d: &Path| -> Vec<String> {
            fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(dir.path()),
            ["packs"],
            "no temp file left in the root"
        );
        assert_eq!(names(&elsewhere.path().join("ab")), ["abcd"]);
    }

    #[test]
    fn temp_files_are_not_listed_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store.put("a/b", b"x", PutMode::Overwrite).unwrap();
        fs::write(dir.path().join("a/.tmp-0123"), b"torn").unwrap();
        let keys: Vec<_> = store.list("").unwrap().into_iter().map(|m| m.key).collect();
        assert_eq!(keys, vec!["a/b".to_owned()]);
        assert_eq!(
            store.remove_temp_files(std::time::Duration::ZERO).unwrap(),
            1
        );
        assert!(!dir.path().join("a/.tmp-0123").exists());
        let err = store
            .put("a/.tmp-0123", b"x", PutMode::Overwrite)
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidKey);
    }

    #[test]
    fn prefix_with_dot_dot_is_rejected() {
        let store = LocalStore::new("/nonexistent");
        assert_eq!(
            store.list("../").unwrap_err().kind(),
            StoreErrorKind::InvalidKey
        );
        assert_eq!(
            store.list("/etc").unwrap_err().kind(),
            StoreErrorKind::InvalidKey
        );
        assert!(store.list("a/..b").unwrap().is_empty());
    }
}
