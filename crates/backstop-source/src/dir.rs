//! A plain directory tree: files, directories and symlinks, in one phase.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::recognise::{PageFormat, PageRecogniser};
use crate::{
    ChangeModel, Entry, EntryKind, EntryStream, Phase, RestoreProfile, Session, SessionContext,
    SessionOutcome, Source, SourceError,
};

/// Backs up a directory tree as it is. Files are chunked by content, database page files by
/// page; nothing is held. The tree is listed while it is stored ([`TreeWalk`]), so its size
/// does not bound the backup's memory.
#[derive(Clone, Debug)]
pub struct DirSource {
    root: PathBuf,
    excludes: Vec<String>,
    recognise_pages: bool,
    one_file_system: bool,
    exclude_caches: bool,
    warn_of_live_databases: bool,
}

impl DirSource {
    /// A source for the tree under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            excludes: Vec::new(),
            recognise_pages: true,
            one_file_system: false,
            exclude_caches: false,
            warn_of_live_databases: true,
        }
    }

    /// Whether the backup warns of each directory that a database is running on (on by
    /// default; see [`crate::in_use::live_database`]): a plain copy of its files is not a
    /// consistent backup of it. Turn it off when the backup pauses the database's writers
    /// ([`crate::hold`]), which makes the copy consistent while the database stays open.
    #[must_use]
    pub fn with_live_database_warnings(mut self, on: bool) -> Self {
        self.warn_of_live_databases = on;
        self
    }

    /// Leaves out the contents of cache directories, those holding a `CACHEDIR.TAG` with the
    /// standard signature (<https://bford.info/cachedir/>), keeping the directory and the tag
    /// (as restic's and borg's `--exclude-caches` do).
    #[must_use]
    pub fn with_exclude_caches(mut self, on: bool) -> Self {
        self.exclude_caches = on;
        self
    }

    /// Stays on the root's file system: a directory on another one (a mount point: `/proc`,
    /// another disk, a network share) is stored as an empty directory, with a warning, and not
    /// entered (restic's `--one-file-system`, tar's and borg's).
    #[must_use]
    pub fn with_one_file_system(mut self, on: bool) -> Self {
        self.one_file_system = on;
        self
    }

    /// Leaves out paths matching these glob patterns (matched against the path inside the tree,
    /// `/`-separated; a matching directory is left out with everything below it).
    #[must_use]
    pub fn with_excludes(mut self, excludes: Vec<String>) -> Self {
        self.excludes = excludes;
        self
    }

    /// Whether database files found in the tree (SQLite and Berkeley DB files by their
    /// headers, PostgreSQL relation files by their place in a cluster directory) are cut at their
    /// page size rather than by content, so that an incremental backup stores about the pages
    /// that changed. On by default; see [`crate::recognise`].
    #[must_use]
    pub fn with_page_recognition(mut self, on: bool) -> Self {
        self.recognise_pages = on;
        self
    }

    /// The tree's root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Source for DirSource {
    fn kind(&self) -> &str {
        "dir"
    }

    fn identity(&self) -> String {
        std::fs::canonicalize(&self.root)
            .unwrap_or_else(|_| self.root.clone())
            .to_string_lossy()
            .into_owned()
    }

    fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        let md = std::fs::metadata(&self.root)
            .map_err(|e| SourceError::io("opening the source directory", &self.root, e))?;
        if !md.is_dir() {
            return Err(SourceError::Procedure(format!(
                "`{}` is not a directory; a directory source backs up a directory tree",
                self.root.display()
            )));
        }
        let excludes = build_globset(&self.excludes)?;
        let mut counting = TreeWalk::new(&self.root, excludes.clone(), ctx);
        let mut walk = TreeWalk::new(&self.root, excludes, ctx);
        if self.warn_of_live_databases {
            walk = walk.warning_of_live_databases();
        }
        if self.recognise_pages {
            walk = walk.recognising_pages();
        }
        if self.one_file_system {
            use std::os::unix::fs::MetadataExt as _;
            counting = counting.on_device(md.dev());
            walk = walk.on_device(md.dev());
        }
        if self.exclude_caches {
            counting = counting.excluding_caches();
            walk = walk.excluding_caches();
        }
        let warnings = walk.warnings();
        let entries = EntryStream::new(walk).with_scan(move |found| {
            for entry in counting.map_while(Result::ok) {
                let is_file = entry.kind == EntryKind::File;
                if !found(u64::from(is_file), entry.size) {
                    break;
                }
            }
        });
        Ok(Box::new(DirSession {
            phase: Some(Phase::streamed("files", entries)),
            warnings,
        }))
    }
}

fn build_globset(patterns: &[String]) -> Result<globset::GlobSet, SourceError> {
    let mut builder = globset::GlobSetBuilder::new();
    for pattern in patterns {
        let glob = globset::Glob::new(pattern)
            .map_err(|e| SourceError::Procedure(format!("bad exclude pattern `{pattern}`: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| SourceError::Procedure(format!("bad exclude patterns: {e}")))
}

/// Lists a tree depth-first, parents before children, names sorted, as entries with
/// [`ChangeModel::Any`]. Sockets, fifos and devices are skipped with a warning.
pub fn walk_tree(
    root: &Path,
    excludes: &globset::GlobSet,
    ctx: &SessionContext,
    warnings: &mut Vec<String>,
) -> Result<Vec<Entry>, SourceError> {
    let walk = TreeWalk::new(root, excludes.clone(), ctx);
    let found = walk.warnings();
    let entries = walk.collect::<Result<Vec<_>, _>>();
    warnings.append(&mut found.lock().unwrap_or_else(PoisonError::into_inner));
    entries
}

/// A tree listed one directory at a time as its entries are taken, in tree order
/// ([`crate::tree_order`]): only the directory being handed out and the names of directories
/// still to enter are held, not the whole tree.
pub struct TreeWalk {
    root: PathBuf,
    excludes: globset::GlobSet,
    cancel: crate::CancelToken,
    /// Directories still to list, the next on top.
    stack: Vec<String>,
    /// The rest of the directory listed last.
    listed: std::vec::IntoIter<Entry>,
    recogniser: Option<PageRecogniser>,
    warnings: Arc<Mutex<Vec<String>>>,
    /// The device the walk stays on, if it stays on one.
    device: Option<u64>,
    /// Whether a tagged cache directory's contents are left out.
    exclude_caches: bool,
    /// Whether a directory with a running database in it gets a warning.
    warn_of_live_databases: bool,
    /// The canonical root, and the files under it that other processes have open
    /// ([`crate::in_use::held_files`]), once a database file needed them.
    held: Option<(
        PathBuf,
        std::collections::HashMap<PathBuf, crate::in_use::Holder>,
    )>,
}

/// The name of a cache directory's tag file, and how the file must begin.
const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

impl TreeWalk {
    /// A walk of the tree under `root`, leaving out what `excludes` matches.
    pub fn new(root: &Path, excludes: globset::GlobSet, ctx: &SessionContext) -> Self {
        Self {
            root: root.to_path_buf(),
            excludes,
            cancel: ctx.cancel.clone(),
            stack: vec![String::new()],
            listed: Vec::new().into_iter(),
            recogniser: None,
            warnings: Arc::default(),
            device: None,
            exclude_caches: false,
            warn_of_live_databases: false,
            held: None,
        }
    }

    /// Warns of each directory that a database is running on ([`crate::in_use::live_database`],
    /// and, with [`Self::recognising_pages`], an SQLite or Berkeley DB database file, known by
    /// its header, that another process has open): a plain copy of its files is not a
    /// consistent backup of it.
    #[must_use]
    pub fn warning_of_live_databases(mut self) -> Self {
        self.warn_of_live_databases = true;
        self
    }

    /// Lists only the tag of a directory tagged as a cache ([`DirSource::with_exclude_caches`]).
    #[must_use]
    pub fn excluding_caches(mut self) -> Self {
        self.exclude_caches = true;
        self
    }

    /// Whether `dir` holds a `CACHEDIR.TAG` that begins with the signature.
    fn is_cache(dir: &Path) -> bool {
        use std::io::Read as _;
        let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
        std::fs::File::open(dir.join(CACHEDIR_TAG))
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok_and(|()| head == CACHEDIR_SIGNATURE)
    }

    /// Enters no directory on another device than `device` (it is listed, empty).
    #[must_use]
    pub fn on_device(mut self, device: u64) -> Self {
        self.device = Some(device);
        self
    }

    /// Whether the directory `disk` is to be entered: on the walk's device, if it keeps to one.
    fn enters(&self, rel: &str, disk: &Path) -> Result<bool, SourceError> {
        use std::os::unix::fs::MetadataExt as _;
        let Some(device) = self.device else {
            return Ok(true);
        };
        let md = match std::fs::symlink_metadata(disk) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.warn(format!("directory `{rel}` vanished while being listed"));
                return Ok(false);
            }
            Err(e) => return Err(SourceError::io("reading", disk, e)),
        };
        if md.dev() == device {
            return Ok(true);
        }
        self.warn(format!(
            "`{rel}` is on another file system: stored as an empty directory (--one-file-system)"
        ));
        Ok(false)
    }

    /// Also recognises database page files as they are listed ([`crate::recognise`]).
    #[must_use]
    pub fn recognising_pages(mut self) -> Self {
        self.recogniser = Some(PageRecogniser::keeping_locks());
        self
    }

    /// Where the walk puts its warnings (a vanished file, a skipped fifo).
    pub fn warnings(&self) -> Arc<Mutex<Vec<String>>> {
        Arc::clone(&self.warnings)
    }

    fn warn(&self, message: String) {
        self.warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
    }

    /// Lists one directory, names sorted, and puts its subdirectories on the stack.
    fn list(&mut self, rel_dir: &str) -> Result<Vec<Entry>, SourceError> {
        if self.cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        let dir = if rel_dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel_dir)
        };
        let read = match std::fs::read_dir(&dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel_dir.is_empty() => {
                self.warn(format!("directory `{rel_dir}` vanished while being listed"));
                return Ok(Vec::new());
            }
            Err(e) => return Err(SourceError::io("listing", &dir, e)),
        };
        let mut names = Vec::new();
        for item in read {
            let item = item.map_err(|e| SourceError::io("listing", &dir, e))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else {
                self.warn(format!(
                    "skipped `{}`: its name is not UTF-8",
                    item.path().display()
                ));
                continue;
            };
            names.push(name.to_owned());
        }
        names.sort();
        let mut warned = false;
        if self.warn_of_live_databases {
            if let Some(live) = crate::in_use::live_database(&dir, &names) {
                self.warn_of_live(rel_dir, &live);
                warned = true;
            }
        }
        if self.exclude_caches && names.iter().any(|n| n == CACHEDIR_TAG) && Self::is_cache(&dir) {
            names.retain(|n| n == CACHEDIR_TAG);
        }
        let mut entries = Vec::new();
        let mut subdirs = Vec::new();
        for name in names {
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            if self.excludes.is_match(&rel) {
                continue;
            }
            let disk = dir.join(&name);
            match Entry::from_path(rel.clone(), &disk, ChangeModel::Any) {
                Ok(Some(entry)) => {
                    if entry.kind == EntryKind::Dir && self.enters(&rel, &disk)? {
                        subdirs.push(rel);
                    }
                    entries.push(entry);
                }
                Ok(None) => self.warn(format!(
                    "skipped `{rel}`: sockets, fifos and device files are not backed up"
                )),
                Err(SourceError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    self.warn(format!("`{rel}` vanished while being listed"));
                }
                Err(e) => return Err(e),
            }
        }
        // Reverse so the stack pops subdirectories in name order.
        self.stack.extend(subdirs.into_iter().rev());
        if let Some(recogniser) = &mut self.recogniser {
            recogniser.observe(&entries);
            let mut databases = Vec::new();
            for entry in &mut entries {
                if let Some(format @ (PageFormat::Sqlite | PageFormat::BerkeleyDb)) =
                    recogniser.mark(entry)
                {
                    databases.push((format, entry.path.clone()));
                }
            }
            if self.warn_of_live_databases && !warned {
                self.warn_of_open_databases(rel_dir, &databases);
            }
        }
        Ok(entries)
    }

    /// Warns of a database that [`crate::in_use::live_database`] found running in `rel_dir`.
    fn warn_of_live(&self, rel_dir: &str, live: &crate::in_use::LiveDatabase) {
        let at = if rel_dir.is_empty() { "." } else { rel_dir };
        self.warn(format!(
            "`{at}` holds a running {} database ({}): a copy of its files taken while it \
             writes is not consistent, and may not open or may lose commits when restored; back \
             it up with `--source {}`, or pause its writers during the backup \
             (`--pause-command`, `--hold-command`)",
            live.name, live.evidence, live.kind
        ));
    }

    /// Warns of the first of a directory's SQLite and Berkeley DB database files (by header)
    /// that another process has open: what shows an SQLite database in rollback-journal mode
    /// in use between writes, which its names do not. The open files are found with one pass
    /// over `/proc` for the whole walk, made when the first database file turns up.
    fn warn_of_open_databases(&mut self, rel_dir: &str, databases: &[(PageFormat, String)]) {
        if databases.is_empty() {
            return;
        }
        let (root, held) = self.held.get_or_insert_with(|| {
            let root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
            let held = crate::in_use::held_files(&root);
            (root, held)
        });
        let found = databases.iter().find_map(|(format, rel)| {
            let holder = held.get(&root.join(rel))?;
            let (kind, name) = match format {
                PageFormat::Sqlite => ("sqlite", "SQLite"),
                _ => ("bdb", "Berkeley DB"),
            };
            Some(crate::in_use::LiveDatabase {
                kind,
                name,
                evidence: format!(
                    "process {} (`{}`) has `{rel}` open",
                    holder.pid, holder.name
                ),
            })
        });
        if let Some(live) = found {
            self.warn_of_live(rel_dir, &live);
        }
    }
}

impl Iterator for TreeWalk {
    type Item = Result<Entry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.listed.next() {
                return Some(Ok(entry));
            }
            let rel_dir = self.stack.pop()?;
            match self.list(&rel_dir) {
                Ok(entries) => self.listed = entries.into_iter(),
                Err(e) => {
                    self.stack.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}

struct DirSession {
    phase: Option<Phase>,
    warnings: Arc<Mutex<Vec<String>>>,
}

impl Session for DirSession {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        Ok(self.phase.take())
    }

    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        let warnings =
            std::mem::take(&mut *self.warnings.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(SessionOutcome {
            restore_profile: RestoreProfile::none(),
            warnings,
            ..SessionOutcome::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parents_before_children_and_skips_fifos() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/f"), b"x").unwrap();
        std::fs::write(dir.path().join("a"), b"y").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("l")).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(dir.path().join("fifo"))
            .status()
            .unwrap();
        assert!(status.success());
        let mut src = DirSource::new(dir.path());
        let mut session = src.begin(&SessionContext::default()).unwrap();
        let phase = session.next_phase().unwrap().unwrap();
        let paths: Vec<_> = phase.into_entries().map(|e| e.unwrap().path).collect();
        assert_eq!(paths, ["a", "b", "l", "b/c", "b/c/f"]);
        assert!(session.next_phase().unwrap().is_none());
        let outcome = session.finish().unwrap();
        assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
        assert!(outcome.warnings[0].contains("fifo"));
    }

    /// A walk kept to a device lists the directories on another one but does not enter them
    /// (here every subdirectory is on "another" device: the walk is told a device the tree is
    /// not on; `one_file_system_stores_a_mount_point_as_an_empty_directory` in the CLI's tests
    /// crosses a real tmpfs).
    #[test]
    fn a_walk_kept_to_a_device_does_not_enter_directories_on_another() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
        std::fs::write(dir.path().join("sub/f"), b"x").unwrap();
        std::fs::write(dir.path().join("top"), b"y").unwrap();
        let device = std::fs::metadata(dir.path()).unwrap().dev();
        let walk = |on: u64| {
            let walk = TreeWalk::new(
                dir.path(),
                globset::GlobSet::empty(),
                &SessionContext::default(),
            )
            .on_device(on);
            let warnings = walk.warnings();
            let paths: Vec<String> = walk.map(|e| e.unwrap().path).collect();
            let warnings = warnings.lock().unwrap().clone();
            (paths, warnings)
        };
        let (same, warnings) = walk(device);
        assert_eq!(same, ["sub", "top", "sub/deeper", "sub/f"]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let (other, warnings) = walk(device.wrapping_add(1));
        assert_eq!(other, ["sub", "top"]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("`sub` is on another file system"),
            "{warnings:?}"
        );
    }

    /// A directory whose CACHEDIR.TAG has the signature keeps only its tag; one whose tag lacks
    /// it (or a walk not asked to) keeps everything.
    #[test]
    fn tagged_cache_directories_keep_only_their_tag() {
        let dir = tempfile::tempdir().unwrap();
        for (sub, tag) in [
            (
                "cache",
                &b"Signature: 8a477f597d28d172789f06886806bc55\n# made by a tool\n"[..],
            ),
            ("fake", &b"Signature: not the one\n"[..]),
        ] {
            std::fs::create_dir_all(dir.path().join(sub).join("inner")).unwrap();
            std::fs::write(dir.path().join(sub).join(CACHEDIR_TAG), tag).unwrap();
            std::fs::write(dir.path().join(sub).join("inner/f"), b"x").unwrap();
        }
        let walk = TreeWalk::new(
            dir.path(),
            globset::GlobSet::empty(),
            &SessionContext::default(),
        )
        .excluding_caches();
        let paths: Vec<String> = walk.map(|e| e.unwrap().path).collect();
        assert_eq!(
            paths,
            [
                "cache",
                "fake",
                "cache/CACHEDIR.TAG",
                "fake/CACHEDIR.TAG",
                "fake/inner",
                "fake/inner/f"
            ]
        );
        assert_eq!(paths_of(dir.path()).len(), 8);
    }

    /// The warnings of a whole walk of `root` with live-database warnings on.
    fn live_warnings(root: &Path) -> Vec<String> {
        let walk = TreeWalk::new(root, globset::GlobSet::empty(), &SessionContext::default())
            .recognising_pages()
            .warning_of_live_databases();
        let warnings = walk.warnings();
        for entry in walk {
            entry.unwrap();
        }
        warnings.lock().unwrap().clone()
    }

    /// An SQLite database in rollback-journal mode between writes has no companion file to
    /// show it in use; a process that has it open does. Its header is what says it is one.
    #[test]
    fn a_database_file_another_process_has_open_is_warned_of() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        let mut sqlite = vec![0u8; 128 * 1024];
        sqlite[..16].copy_from_slice(b"SQLite format 3\0");
        // Page size 4096, big-endian.
        sqlite[16..18].copy_from_slice(&[0x10, 0x00]);
        let db = dir.path().join("app/app.db");
        std::fs::write(&db, &sqlite).unwrap();
        // The same bytes under another name, and a large file that is no database, both open
        // too: only the database is named.
        std::fs::write(dir.path().join("app/other.db"), &sqlite).unwrap();
        std::fs::write(dir.path().join("app/log.txt"), vec![b'x'; 128 * 1024]).unwrap();
        assert_eq!(live_warnings(dir.path()), Vec::<String>::new());

        let (log, _log_out) = crate::in_use::tests::holding_open(&dir.path().join("app/log.txt"));
        assert_eq!(live_warnings(dir.path()), Vec::<String>::new());
        let (child, _out) = crate::in_use::tests::holding_open(&db);
        let warnings = live_warnings(dir.path());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(&format!(
                "`app` holds a running SQLite database (process {} (`sh`) has `app/app.db` open)",
                child.id()
            )),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("--source sqlite"), "{warnings:?}");
        crate::in_use::tests::release(child);
        crate::in_use::tests::release(log);
        assert_eq!(live_warnings(dir.path()), Vec::<String>::new());
    }

    fn paths_of(root: &Path) -> Vec<String> {
        let walk = TreeWalk::new(root, globset::GlobSet::empty(), &SessionContext::default());
        walk.map(|e| e.unwrap().path).collect()
    }

    #[test]
    fn the_walk_comes_in_tree_order() {
        let dir = tempfile::tempdir().unwrap();
        // Names whose byte order differs from tree order around the separator.
        for d in ["a/x", "a-b/y", "a.b", "ab/z/deep", "b"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        for f in [
            "a/x/1",
            "a/0",
            "a-b/y/2",
            "a.c",
            "ab/z/deep/3",
            "ab/z0",
            "b/4",
        ] {
            std::fs::write(dir.path().join(f), b"f").unwrap();
        }
        let walked = paths_of(dir.path());
        let mut sorted = walked.clone();
        sorted.sort_by(|a, b| crate::tree_order(a, b));
        assert_eq!(walked, sorted);
        // Byte order would put "a/0" before "a-b"; tree order lists the root first.
        let pos = |p: &str| walked.iter().position(|w| w == p).unwrap();
        assert!(pos("a-b") < pos("a/0"), "{walked:?}");
        assert!(pos("a/x/1") < pos("a-b/y"), "{walked:?}");
        assert!(pos("ab/z0") < pos("ab/z/deep"), "{walked:?}");
        assert_eq!(walked.len(), 16, "{walked:?}");
    }

    #[test]
    fn a_directory_is_listed_only_when_the_walk_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("top"), b"t").unwrap();
        let mut walk = TreeWalk::new(
            dir.path(),
            globset::GlobSet::empty(),
            &SessionContext::default(),
        );
        let first = walk.next().unwrap().unwrap();
        assert_eq!(first.path, "sub");
        // Made after the walk began but before it entered `sub`: a walk that listed the whole
        // tree up front would miss it.
        std::fs::write(dir.path().join("sub/late"), b"l").unwrap();
        let rest: Vec<String> = walk.map(|e| e.unwrap().path).collect();
        assert_eq!(rest, ["top", "sub/late"]);
    }

    #[test]
    fn a_listing_error_ends_the_walk_with_the_directory_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut walk = TreeWalk::new(
            &dir.path().join("missing"),
            globset::GlobSet::empty(),
            &SessionContext::default(),
        );
        let err = walk.next().unwrap().unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(walk.next().is_none());
    }
}
