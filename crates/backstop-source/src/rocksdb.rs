//! The directory of a running RocksDB database, backed up from outside its process.
//!
//! RocksDB never modifies a table (`*.sst`) or blob (`*.blob`) file once written; it only
//! creates new ones and deletes obsolete ones. Its MANIFEST and WAL (`*.log`) files are only
//! appended to, and `CURRENT` names the MANIFEST in use. So a consistent copy needs two things:
//!
//! 1. **Deletions held off**: every live file is hard-linked into a staging directory on the same
//!    filesystem (what RocksDB's own checkpoints do), so a compaction that deletes a file after
//!    the snapshot cannot take its bytes away while the engine reads them.
//! 2. **One moment for the MANIFEST**: the MANIFEST's length is taken first, the files are linked,
//!    then `CURRENT` and the MANIFEST's length are read again. RocksDB deletes a file only after
//!    the MANIFEST edit that made it obsolete is written, so if neither changed, every file the
//!    MANIFEST (up to that length) refers to was still there when it was linked. Otherwise the
//!    snapshot is retried (bounded). WAL lengths are taken inside the same window; the MANIFEST
//!    and WAL files are stored up to exactly those lengths ([`ChangeModel::AppendOnly`]), which is
//!    the state a power cut at one moment would leave. RocksDB recovers it when it opens.
//!
//! Table and blob files are stored as immutable files with an identity made of their name, size
//! and a BLAKE3 hash of their first 4 KiB and last 8 KiB (the last 8 KiB hold the table
//! properties, among them the writer's unique session id, and the footer). A file already stored
//! under the same identity is never read again. A table or blob file without its footer magic is
//! still being written by a flush or compaction; no MANIFEST edit can refer to it yet, so it is
//! left out.
//!
//! See `docs/sources/rocksdb.md` for what this guarantees and needs.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::{
    CancelToken, ChangeModel, Content, Entry, EntryKind, FsIdentity, Phase, RestoreParams,
    RestoreProfile, Session, SessionContext, SessionOutcome, Source, SourceError,
};

/// Names of staging directories start with this; RocksDB ignores names it cannot parse.
pub const STAGING_PREFIX: &str = ".backstop-staging-";
/// Lock file inside a staging directory, held (`flock`) by the session that owns it.
const LOCK_NAME: &str = ".lock";
/// A staging directory without a lock file is a crashed run's only after this long (it may be
/// a live run's in the instant between creating the directory and its lock).
const UNLOCKED_STALE_AFTER: Duration = Duration::from_secs(600);
const DEFAULT_MAX_ATTEMPTS: u32 = 100;
const IDENTITY_HEAD: u64 = 4096;
const IDENTITY_TAIL: u64 = 8192;
/// Magic numbers at the end of a complete table file (block-based, plain and cuckoo tables,
/// legacy and current), as RocksDB's `table/format.h` and friends define them.
const TABLE_MAGICS: [u64; 5] = [
    0x88e2_41b7_85f4_cff7,
    0xdb47_7524_8b80_fb57,
    0x8242_2296_63bf_9564,
    0x4f34_18eb_7a8f_13b8,
    0x9267_89d0_c5f1_7873,
];
/// `BlobLogHeader::kMagicNumber`, at the start of a blob file's header and of its 32-byte footer.
const BLOB_MAGIC: u32 = 2_395_959;
const BLOB_FOOTER_LEN: u64 = 32;

/// Applies the rocksdb restore fix-ups to `target`: removes a `LOCK` file if one was restored
/// and checks that the MANIFEST that `CURRENT` names is there. Nothing else is needed: RocksDB
/// replays the MANIFEST and WAL files when it opens the directory.
pub(crate) fn restore_fixup(
    profile: &RestoreProfile,
    target: &Path,
    _params: &RestoreParams,
) -> Result<Vec<String>, SourceError> {
    use crate::restored::{self, Need};
    let mut steps = Vec::new();
    // Files of the restored tree, never reached through a link the backup brought.
    if restored::remove_file(target, "LOCK")? {
        steps.push("removed the restored LOCK file".to_owned());
    }
    let current_path = target.join("CURRENT");
    let current = restored::read(target, "CURRENT")?.ok_or_else(|| {
        SourceError::io(
            "reading CURRENT of the restored RocksDB directory",
            &current_path,
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    let manifest = parse_current(&current, &current_path)?;
    if let Some(expected) = profile.params.get("manifest") {
        if expected != &manifest {
            return Err(SourceError::Procedure(format!(
                "the restored CURRENT names `{manifest}` but the backup recorded `{expected}`; \
                 the restored files do not belong together, restore again into an empty directory"
            )));
        }
    }
    if restored::lookup(target, &manifest, Need::File)?.1.is_none() {
        return Err(SourceError::Procedure(format!(
            "the restored RocksDB directory `{}` has no `{manifest}`, which CURRENT names; \
             the backup is incomplete, restore another one",
            target.display()
        )));
    }
    steps.push(format!(
        "nothing else to do: RocksDB recovers from `{manifest}` and the WAL files when it opens"
    ));
    Ok(steps)
}

/// Where a session puts its staging directory of hard links. It must be on the database's
/// filesystem (hard links cannot cross filesystems).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StagingLocation {
    /// Beside the database directory; inside it when the parent directory is not writable or is
    /// on another filesystem (the database directory is a mount point).
    #[default]
    Auto,
    /// A hidden directory beside the database directory (`<db>/../.backstop-staging-<db>-…`),
    /// so the database directory holds only what RocksDB wrote.
    Beside,
    /// A hidden directory inside the database directory (`<db>/.backstop-staging-…`). RocksDB
    /// ignores it: it only considers top-level names it can parse as its own files.
    Inside,
    /// A hidden directory under this directory, which must be on the database's filesystem.
    Under(PathBuf),
}

/// The directory of a running RocksDB database, backed up from outside the process.
#[derive(Clone, Debug)]
pub struct RocksDbSource {
    db_dir: PathBuf,
    staging: StagingLocation,
    max_attempts: u32,
}

impl RocksDbSource {
    /// A source for `db_dir`.
    pub fn new(db_dir: impl Into<PathBuf>) -> Self {
        Self {
            db_dir: db_dir.into(),
            staging: StagingLocation::Auto,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Puts the staging directory of hard links there (default: [`StagingLocation::Auto`]).
    #[must_use]
    pub fn with_staging(mut self, staging: StagingLocation) -> Self {
        self.staging = staging;
        self
    }

    /// How many times to try for a snapshot during which `CURRENT` and the MANIFEST did not
    /// change (default 100; at least 1).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The database directory.
    pub fn db_dir(&self) -> &Path {
        &self.db_dir
    }

    fn begin_with_hook(
        &self,
        ctx: &SessionContext,
        hook: &mut dyn FnMut(u32, &Path),
    ) -> Result<RocksDbSession, SourceError> {
        let db = std::fs::canonicalize(&self.db_dir)
            .map_err(|e| SourceError::io("opening the RocksDB directory", &self.db_dir, e))?;
        if !db.join("CURRENT").is_file() {
            return Err(SourceError::Procedure(format!(
                "`{}` is not a RocksDB directory: it has no CURRENT file",
                db.display()
            )));
        }
        let mut warnings = Vec::new();
        let staging = Staging::create(&db, &self.staging, &mut warnings)?;
        let snap = take_snapshot(&db, staging.path(), self.max_attempts, &ctx.cancel, hook)?;
        tracing::debug!(
            db = %db.display(),
            attempts = snap.attempts,
            tables = snap.tables.len(),
            wals = snap.wals.len(),
            "rocksdb snapshot taken"
        );
        warnings.extend(snap.warnings.iter().cloned());
        Ok(RocksDbSession::new(snap, staging, warnings))
    }
}

impl Source for RocksDbSource {
    fn kind(&self) -> &str {
        "rocksdb"
    }

    fn identity(&self) -> String {
        std::fs::canonicalize(&self.db_dir)
            .unwrap_or_else(|_| self.db_dir.clone())
            .to_string_lossy()
            .into_owned()
    }

    fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        Ok(Box::new(self.begin_with_hook(ctx, &mut |_, _| {})?))
    }
}

/// What a name in a RocksDB directory is, from RocksDB's file naming (`file/filename.cc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    Table,
    Blob,
    Wal,
    Manifest,
    Options,
    Current,
    Identity,
    /// Not needed to open the database: `LOCK`, info logs, temporary files, staging dirs.
    Skip,
    /// Not a RocksDB file (a binding's own config, say): stored as it is.
    Other,
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn classify(name: &str) -> FileKind {
    let numbered = |suffix: &str| name.strip_suffix(suffix).is_some_and(is_number);
    if numbered(".sst") || numbered(".ldb") {
        FileKind::Table
    } else if numbered(".blob") {
        FileKind::Blob
    } else if numbered(".log") {
        FileKind::Wal
    } else if name.strip_prefix("MANIFEST-").is_some_and(is_number) {
        FileKind::Manifest
    } else if name.strip_prefix("OPTIONS-").is_some_and(is_number) {
        FileKind::Options
    } else if name == "CURRENT" {
        FileKind::Current
    } else if name == "IDENTITY" {
        FileKind::Identity
    } else if name == "LOCK"
        || name == "LOG"
        || name.starts_with("LOG.old.")
        || name.ends_with(".dbtmp")
        || name.ends_with(".trash")
        || name.starts_with(STAGING_PREFIX)
    {
        FileKind::Skip
    } else {
        FileKind::Other
    }
}

/// Parses `CURRENT` (`MANIFEST-000123\n`).
fn parse_current(bytes: &[u8], path: &Path) -> Result<String, SourceError> {
    let text = std::str::from_utf8(bytes).unwrap_or("");
    let name = text.strip_suffix('\n').unwrap_or(text);
    if classify(name) != FileKind::Manifest {
        return Err(SourceError::Procedure(format!(
            "`{}` does not name a MANIFEST (it holds {:?}); is this a RocksDB directory?",
            path.display(),
            String::from_utf8_lossy(bytes)
        )));
    }
    Ok(name.to_owned())
}

/// A staging directory of hard links, removed when dropped, locked while it exists.
#[derive(Debug)]
struct Staging {
    // Declared first so the lock is released only after the directory is gone.
    dir: tempfile::TempDir,
    lock: File,
}

impl Staging {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn create(
        db: &Path,
        location: &StagingLocation,
        warnings: &mut Vec<String>,
    ) -> Result<Self, SourceError> {
        let db_name = db
            .file_name()
            .map_or_else(|| "db".into(), |n| n.to_string_lossy());
        let beside_prefix = format!("{STAGING_PREFIX}{db_name}-");
        let parent = db.parent().unwrap_or(db);
        let candidates: Vec<(&Path, &str)> = match location {
            StagingLocation::Auto => vec![(parent, &beside_prefix), (db, STAGING_PREFIX)],
            StagingLocation::Beside => vec![(parent, &beside_prefix)],
            StagingLocation::Inside => vec![(db, STAGING_PREFIX)],
            StagingLocation::Under(dir) => vec![(dir.as_path(), &beside_prefix)],
        };
        // Crashed runs may have left staging directories in either place.
        remove_stale_staging(db, warnings);
        let db_dev = std::fs::metadata(db)
            .map_err(|e| SourceError::io("reading metadata of", db, e))?
            .dev();
        let mut last_error = None;
        for (parent, prefix) in candidates {
            if parent != db {
                remove_stale_staging(parent, warnings);
            }
            match Self::create_in(parent, prefix, db_dev) {
                Ok(staging) => return Ok(staging),
                Err(e) => {
                    tracing::info!(parent = %parent.display(), error = %e, "no staging directory here");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            SourceError::Procedure("no place for a staging directory was given".into())
        }))
    }

    fn create_in(parent: &Path, prefix: &str, db_dev: u64) -> Result<Self, SourceError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .map_err(|e| {
                SourceError::io(
                    "creating a staging directory (for hard links) in",
                    parent,
                    e,
                )
            })?;
        let dev = std::fs::metadata(dir.path())
            .map_err(|e| SourceError::io("reading metadata of", dir.path(), e))?
            .dev();
        if dev != db_dev {
            return Err(SourceError::Procedure(format!(
                "`{}` is on another filesystem than the database; the staging directory must be \
                 on the database's filesystem (hard links), choose another staging location",
                parent.display()
            )));
        }
        let lock_path = dir.path().join(LOCK_NAME);
        let lock = File::create(&lock_path)
            .map_err(|e| SourceError::io("creating the staging lock", &lock_path, e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| SourceError::io("locking the staging directory", &lock_path, e.into()))?;
        Ok(Self { dir, lock })
    }

    /// Removes the directory now, reporting a failure (dropping removes it silently).
    fn close(self) -> Result<(), SourceError> {
        let Self { dir, lock } = self;
        let path = dir.path().to_path_buf();
        let closed = dir
            .close()
            .map_err(|e| SourceError::io("removing the staging directory", path, e));
        drop(lock);
        closed
    }
}

/// Removes staging directories under `parent` whose owner is gone: their lock is free.
fn remove_stale_staging(parent: &Path, warnings: &mut Vec<String>) {
    let Ok(read) = std::fs::read_dir(parent) else {
        return;
    };
    for item in read.flatten() {
        let name = item.file_name();
        if !name.to_string_lossy().starts_with(STAGING_PREFIX) {
            continue;
        }
        let path = item.path();
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !md.is_dir() {
            continue;
        }
        let stale = match File::open(path.join(LOCK_NAME)) {
            Ok(lock) => {
                rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                    .is_ok()
            }
            Err(_) => md
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > UNLOCKED_STALE_AFTER),
        };
        if !stale {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => warnings.push(format!(
                "removed the staging directory `{}` left by an interrupted backup",
                path.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warnings.push(format!(
                "could not remove the stale staging directory `{}`: {e}; remove it by hand",
                path.display()
            )),
        }
    }
}

/// One linked file of a snapshot.
#[derive(Debug)]
struct Linked {
    name: String,
    link: PathBuf,
    md: Metadata,
}

/// A consistent file set, held by hard links in the staging directory.
#[derive(Debug)]
struct Snapshot {
    current: Vec<u8>,
    current_md: Metadata,
    manifest: Linked,
    /// Table and blob files with their identity.
    tables: Vec<(Linked, String)>,
    /// WAL files; `md.len()` is the length stored.
    wals: Vec<Linked>,
    options: Vec<Linked>,
    identity: Option<(Vec<u8>, Metadata)>,
    others: Vec<Linked>,
    attempts: u32,
    incomplete: Vec<String>,
    warnings: Vec<String>,
}

/// Tries up to `max_attempts` times for a snapshot during which `CURRENT` and the MANIFEST did
/// not change. `hook` runs after the files are linked and before the check (tests move the
/// database on there).
fn take_snapshot(
    db: &Path,
    staging: &Path,
    max_attempts: u32,
    cancel: &CancelToken,
    hook: &mut dyn FnMut(u32, &Path),
) -> Result<Snapshot, SourceError> {
    let mut last_reason = String::new();
    for attempt in 1..=max_attempts {
        if cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        if attempt > 1 {
            // The database is mid-edit; give it a moment before looking again.
            std::thread::sleep(Duration::from_millis(u64::from(attempt.min(20))));
        }
        match try_snapshot(db, staging, attempt, hook)? {
            Ok(snap) => return Ok(snap),
            Err(reason) => {
                tracing::debug!(attempt, %reason, "rocksdb snapshot retried");
                last_reason = reason;
            }
        }
    }
    Err(SourceError::Procedure(format!(
        "no consistent snapshot of `{}` in {max_attempts} attempts: {last_reason} every time; \
         the database rewrites its MANIFEST faster than its files can be linked, retry or raise \
         the number of attempts",
        db.display()
    )))
}

/// One attempt: `Ok(Err(reason))` asks for a retry.
fn try_snapshot(
    db: &Path,
    staging: &Path,
    attempt: u32,
    hook: &mut dyn FnMut(u32, &Path),
) -> Result<Result<Snapshot, String>, SourceError> {
    clear_staging(staging)?;
    let current_path = db.join("CURRENT");
    let current = std::fs::read(&current_path)
        .map_err(|e| SourceError::io("reading CURRENT", &current_path, e))?;
    let manifest_name = parse_current(&current, &current_path)?;
    let manifest_path = db.join(&manifest_name);
    let manifest_md = match std::fs::metadata(&manifest_path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(format!("{manifest_name} vanished (CURRENT moved on)")));
        }
        Err(e) => return Err(SourceError::io("reading metadata of", &manifest_path, e)),
    };

    let mut names = Vec::new();
    let mut warnings = Vec::new();
    let read = std::fs::read_dir(db).map_err(|e| SourceError::io("listing", db, e))?;
    for item in read {
        let item = item.map_err(|e| SourceError::io("listing", db, e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let file_type = item
            .file_type()
            .map_err(|e| SourceError::io("listing", db, e))?;
        let kind = classify(&name);
        if kind == FileKind::Skip {
            continue;
        }
        if !file_type.is_file() {
            // RocksDB keeps only its WAL archive in a subdirectory, and recovery never reads it.
            if name != "archive" {
                warnings.push(format!(
                    "skipped `{name}` in the RocksDB directory: only regular files are backed up"
                ));
            }
            continue;
        }
        names.push((name, kind));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));

    let mut linked: Vec<(Linked, FileKind)> = Vec::new();
    let mut others = Vec::new();
    let mut identity = None;
    let mut manifest_linked = false;
    for (name, kind) in names {
        let from = db.join(&name);
        match kind {
            FileKind::Table | FileKind::Blob | FileKind::Wal | FileKind::Options => {}
            FileKind::Manifest if name == manifest_name => {}
            // Older MANIFESTs wait for deletion; CURRENT is read again at the end.
            FileKind::Manifest | FileKind::Current | FileKind::Skip => continue,
            FileKind::Identity => {
                let md = std::fs::metadata(&from)
                    .map_err(|e| SourceError::io("reading metadata of", &from, e))?;
                let bytes =
                    std::fs::read(&from).map_err(|e| SourceError::io("reading", &from, e))?;
                identity = Some((bytes, md));
                continue;
            }
            FileKind::Other => {
                match std::fs::metadata(&from) {
                    Ok(md) => others.push(Linked {
                        name,
                        link: from,
                        md,
                    }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SourceError::io("reading metadata of", &from, e)),
                }
                continue;
            }
        }
        let link = staging.join(&name);
        match std::fs::hard_link(&from, &link) {
            Ok(()) => {}
            // Deleted since it was listed: obsolete, unless the MANIFEST moved on (checked below).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                return Err(SourceError::Procedure(format!(
                    "cannot hard-link `{}` into `{}`: they are on different filesystems; put the \
                     staging directory on the database's filesystem",
                    from.display(),
                    staging.display()
                )));
            }
            Err(e) => {
                return Err(SourceError::io(
                    "hard-linking into the staging directory",
                    from,
                    e,
                ));
            }
        }
        if kind == FileKind::Manifest {
            manifest_linked = true;
            continue;
        }
        let md = std::fs::symlink_metadata(&link)
            .map_err(|e| SourceError::io("reading metadata of", &link, e))?;
        linked.push((Linked { name, link, md }, kind));
    }

    hook(attempt, staging);

    // The moment of the snapshot ends here: if CURRENT or the MANIFEST changed since they were
    // first read, a file the MANIFEST refers to may have been deleted before it was linked.
    let current_again = std::fs::read(&current_path)
        .map_err(|e| SourceError::io("reading CURRENT", &current_path, e))?;
    if current_again != current {
        return Ok(Err("CURRENT changed".into()));
    }
    if !manifest_linked {
        return Ok(Err(format!(
            "{manifest_name} vanished before it was linked"
        )));
    }
    let manifest_link = staging.join(&manifest_name);
    let manifest_now = std::fs::metadata(&manifest_link)
        .map_err(|e| SourceError::io("reading metadata of", &manifest_link, e))?;
    if manifest_now.len() != manifest_md.len() || manifest_now.ino() != manifest_md.ino() {
        return Ok(Err(format!("{manifest_name} grew")));
    }
    let current_md = std::fs::metadata(&current_path)
        .map_err(|e| SourceError::io("reading metadata of", &current_path, e))?;

    let mut tables = Vec::new();
    let mut wals = Vec::new();
    let mut options = Vec::new();
    let mut incomplete = Vec::new();
    for (file, kind) in linked {
        match kind {
            FileKind::Table | FileKind::Blob => match fingerprint(&file, kind)? {
                Some(id) => tables.push((file, id)),
                None => {
                    // Being written by a flush or compaction: no MANIFEST edit refers to it.
                    std::fs::remove_file(&file.link)
                        .map_err(|e| SourceError::io("removing", &file.link, e))?;
                    incomplete.push(file.name);
                }
            },
            FileKind::Wal => wals.push(file),
            _ => options.push(file),
        }
    }
    let manifest = Linked {
        name: manifest_name,
        link: manifest_link,
        md: manifest_md,
    };
    Ok(Ok(Snapshot {
        current,
        current_md,
        manifest,
        tables,
        wals,
        options,
        identity,
        others,
        attempts: attempt,
        incomplete,
        warnings,
    }))
}

/// Empties the staging directory but for its lock.
fn clear_staging(staging: &Path) -> Result<(), SourceError> {
    let read = std::fs::read_dir(staging).map_err(|e| SourceError::io("listing", staging, e))?;
    for item in read {
        let item = item.map_err(|e| SourceError::io("listing", staging, e))?;
        if item.file_name() != LOCK_NAME {
            let path = item.path();
            std::fs::remove_file(&path).map_err(|e| SourceError::io("removing", &path, e))?;
        }
    }
    Ok(())
}

/// The identity of a complete table or blob file (`name:size:hash of head and tail`), or `None`
/// while the file is still being written (its footer magic is not at its end yet).
fn fingerprint(file: &Linked, kind: FileKind) -> Result<Option<String>, SourceError> {
    let size = file.md.len();
    let mut f = File::open(&file.link).map_err(|e| SourceError::io("opening", &file.link, e))?;
    let mut head = vec![0u8; usize::try_from(size.min(IDENTITY_HEAD)).unwrap_or(0)];
    f.read_exact(&mut head)
        .map_err(|e| SourceError::io("reading", &file.link, e))?;
    let tail_len = size.min(IDENTITY_TAIL);
    let mut tail = vec![0u8; usize::try_from(tail_len).unwrap_or(0)];
    f.seek(SeekFrom::Start(size - tail_len))
        .and_then(|_| f.read_exact(&mut tail))
        .map_err(|e| SourceError::io("reading", &file.link, e))?;
    let complete = match kind {
        FileKind::Table => tail
            .last_chunk::<8>()
            .is_some_and(|m| TABLE_MAGICS.contains(&u64::from_le_bytes(*m))),
        _ => {
            let footer = tail
                .len()
                .checked_sub(usize::try_from(BLOB_FOOTER_LEN).unwrap_or(0));
            let magic_at = |bytes: &[u8], at: usize| {
                bytes
                    .get(at..at + 4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .is_some_and(|b| u32::from_le_bytes(b) == BLOB_MAGIC)
            };
            magic_at(&head, 0) && footer.is_some_and(|at| magic_at(&tail, at))
        }
    };
    if !complete {
        return Ok(None);
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&head);
    hasher.update(&tail);
    let hex = hasher.finalize().to_hex();
    Ok(Some(format!(
        "{}:{size}:{}",
        file.name,
        &hex.as_str()[..32]
    )))
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// An entry for a file on disk as `md` saw it, storing `md.len()` bytes.
fn file_entry(file: &Linked, change: ChangeModel) -> Entry {
    let md = &file.md;
    let mtime_ns = nanos(md.mtime(), md.mtime_nsec());
    Entry {
        path: file.name.clone(),
        kind: EntryKind::File,
        mode: md.mode() & 0o7777,
        mtime_ns,
        uid: md.uid(),
        gid: md.gid(),
        size: md.len(),
        change,
        content: Content::File(file.link.clone()),
        fs_identity: Some(FsIdentity {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns,
            ctime_ns: nanos(md.ctime(), md.ctime_nsec()),
        }),
    }
}

fn bytes_entry(name: &str, bytes: Vec<u8>, md: &Metadata) -> Entry {
    let mut entry = Entry::bytes(
        name,
        bytes,
        md.mode() & 0o7777,
        nanos(md.mtime(), md.mtime_nsec()),
    );
    entry.uid = md.uid();
    entry.gid = md.gid();
    entry
}

/// The entry for the file `name` of a RocksDB checkpoint (the embedded source): table and blob
/// files immutable with the same identity as this source gives them (so either source skips
/// what the other stored), RocksDB's other files as `Any`, and `None` for what a restore does
/// not need (`LOCK`, info logs, temporary files).
#[cfg(feature = "rocksdb-embedded")]
pub(crate) fn checkpoint_entry(name: &str, path: &Path) -> Result<Option<Entry>, SourceError> {
    let kind = classify(name);
    if kind == FileKind::Skip {
        return Ok(None);
    }
    let md = std::fs::symlink_metadata(path)
        .map_err(|e| SourceError::io("reading metadata of a checkpoint file", path, e))?;
    if !md.is_file() {
        return Ok(None);
    }
    let file = Linked {
        name: name.to_owned(),
        link: path.to_path_buf(),
        md,
    };
    if matches!(kind, FileKind::Table | FileKind::Blob) {
        let identity = fingerprint(&file, kind)?.ok_or_else(|| {
            SourceError::Procedure(format!(
                "`{}` in a RocksDB checkpoint has no footer; the checkpoint is incomplete, \
                 back up again",
                path.display()
            ))
        })?;
        return Ok(Some(file_entry(
            &file,
            ChangeModel::Immutable {
                identity: Some(identity),
            },
        )));
    }
    Ok(Some(file_entry(&file, ChangeModel::Any)))
}

/// A snapshot being stored; dropping it removes the staging directory.
#[derive(Debug)]
struct RocksDbSession {
    phases: VecDeque<Phase>,
    outcome: SessionOutcome,
    staging: Option<Staging>,
}

impl RocksDbSession {
    fn new(snap: Snapshot, staging: Staging, warnings: Vec<String>) -> Self {
        let tables: Vec<Entry> = snap
            .tables
            .iter()
            .map(|(file, id)| {
                file_entry(
                    file,
                    ChangeModel::Immutable {
                        identity: Some(id.clone()),
                    },
                )
            })
            .collect();
        let mut logs = vec![bytes_entry(
            "CURRENT",
            snap.current.clone(),
            &snap.current_md,
        )];
        logs.push(file_entry(&snap.manifest, ChangeModel::AppendOnly));
        if let Some((bytes, md)) = &snap.identity {
            logs.push(bytes_entry("IDENTITY", bytes.clone(), md));
        }
        logs.extend(snap.options.iter().map(|f| file_entry(f, ChangeModel::Any)));
        logs.extend(
            snap.wals
                .iter()
                .map(|f| file_entry(f, ChangeModel::AppendOnly)),
        );
        logs.extend(snap.others.iter().map(|f| file_entry(f, ChangeModel::Any)));

        let mut meta = BTreeMap::new();
        meta.insert("manifest".to_owned(), snap.manifest.name.clone());
        meta.insert(
            "manifest_len".to_owned(),
            snap.manifest.md.len().to_string(),
        );
        let wals: Vec<String> = snap
            .wals
            .iter()
            .map(|w| format!("{}:{}", w.name, w.md.len()))
            .collect();
        meta.insert("wal_files".to_owned(), wals.join(","));
        meta.insert("table_files".to_owned(), snap.tables.len().to_string());
        meta.insert("snapshot_attempts".to_owned(), snap.attempts.to_string());
        if !snap.incomplete.is_empty() {
            meta.insert("skipped_incomplete".to_owned(), snap.incomplete.join(","));
        }
        let outcome = SessionOutcome {
            restore_profile: RestoreProfile::new("rocksdb")
                .with_param("manifest", snap.manifest.name.clone()),
            source_meta: meta,
            pause_window: None,
            warnings,
        };
        Self {
            phases: VecDeque::from([Phase::new("sst", tables), Phase::new("manifest+wal", logs)]),
            outcome,
            staging: Some(staging),
        }
    }
}

impl Session for RocksDbSession {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        Ok(self.phases.pop_front())
    }

    fn finish(mut self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        let mut outcome = std::mem::take(&mut self.outcome);
        if let Some(staging) = self.staging.take() {
            if let Err(e) = staging.close() {
                outcome.warnings.push(format!("{e}; remove it by hand"));
            }
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::copy_session;
    use crate::testing::rocksdb_writer::{
        Filler, Layout, StressWriter, check_restored, rocksdict_available,
    };
    use std::io::Write;

    const SST_MAGIC: u64 = 0x88e2_41b7_85f4_cff7;

    fn sst_bytes(len: usize, seed: u8) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
        bytes.extend_from_slice(&SST_MAGIC.to_le_bytes());
        bytes
    }

    /// A directory laid out like RocksDB's, with one table still being written.
    fn fake_db(root: &Path) -> PathBuf {
        let db = root.join("db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("CURRENT"), "MANIFEST-000003\n").unwrap();
        std::fs::write(db.join("MANIFEST-000003"), b"manifest-v1").unwrap();
        std::fs::write(db.join("MANIFEST-000001"), b"old manifest").unwrap();
        std::fs::write(db.join("000004.sst"), sst_bytes(10_000, 7)).unwrap();
        std::fs::write(db.join("000005.sst"), b"half a table").unwrap();
        std::fs::write(db.join("000006.log"), b"wal-bytes").unwrap();
        std::fs::write(db.join("OPTIONS-000007"), b"[Version]").unwrap();
        std::fs::write(db.join("IDENTITY"), b"db-identity").unwrap();
        std::fs::write(db.join("LOCK"), b"").unwrap();
        std::fs::write(db.join("LOG"), b"info log").unwrap();
        std::fs::write(db.join("rocksdict-config.json"), b"{}").unwrap();
        db
    }

    fn staging_dirs(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(STAGING_PREFIX))
            .collect()
    }

    #[test]
    fn names_are_classified_as_rocksdb_does() {
        assert_eq!(classify("000012.sst"), FileKind::Table);
        assert_eq!(classify("000012.ldb"), FileKind::Table);
        assert_eq!(classify("000012.blob"), FileKind::Blob);
        assert_eq!(classify("000012.log"), FileKind::Wal);
        assert_eq!(classify("MANIFEST-000012"), FileKind::Manifest);
        assert_eq!(classify("OPTIONS-000012"), FileKind::Options);
        assert_eq!(classify("OPTIONS-000012.dbtmp"), FileKind::Skip);
        assert_eq!(classify("LOG.old.1700000000"), FileKind::Skip);
        assert_eq!(classify("LOCK"), FileKind::Skip);
        assert_eq!(classify(".backstop-staging-db-x1"), FileKind::Skip);
        assert_eq!(classify("x.sst"), FileKind::Other);
        assert_eq!(classify("rocksdict-config.json"), FileKind::Other);
    }

    #[test]
    fn snapshot_links_live_files_and_stores_logs_up_to_the_lengths_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let db = fake_db(tmp.path());
        let mut source = RocksDbSource::new(&db);
        let session = source.begin(&SessionContext::default()).unwrap();
        assert_eq!(
            staging_dirs(tmp.path()).len(),
            1,
            "staging beside the db by default"
        );
        // After the snapshot: the WAL and MANIFEST grow, a compaction deletes the table.
        std::fs::OpenOptions::new()
            .append(true)
            .open(db.join("000006.log"))
            .unwrap()
            .write_all(b"-later")
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(db.join("MANIFEST-000003"))
            .unwrap()
            .write_all(b"-edit")
            .unwrap();
        std::fs::remove_file(db.join("000004.sst")).unwrap();

        let target = tmp.path().join("restored");
        let copied = copy_session(session, &target).unwrap();
        assert_eq!(
            copied.phases[0],
            ("sst".to_owned(), vec!["000004.sst".to_owned()])
        );
        assert_eq!(copied.phases[1].0, "manifest+wal");
        let mut logs = copied.phases[1].1.clone();
        logs.sort();
        assert_eq!(
            logs,
            [
                "000006.log",
                "CURRENT",
                "IDENTITY",
                "MANIFEST-000003",
                "OPTIONS-000007",
                "rocksdict-config.json"
            ]
        );
        assert_eq!(
            std::fs::read(target.join("000004.sst")).unwrap(),
            sst_bytes(10_000, 7)
        );
        assert_eq!(
            std::fs::read(target.join("000006.log")).unwrap(),
            b"wal-bytes"
        );
        assert_eq!(
            std::fs::read(target.join("MANIFEST-000003")).unwrap(),
            b"manifest-v1"
        );
        assert_eq!(
            std::fs::read(target.join("CURRENT")).unwrap(),
            b"MANIFEST-000003\n"
        );
        assert!(
            !target.join("000005.sst").exists(),
            "a table being written is left out"
        );
        assert!(!target.join("LOCK").exists() && !target.join("LOG").exists());
        assert!(
            staging_dirs(tmp.path()).is_empty(),
            "finish removes the staging directory"
        );

        let meta = &copied.outcome.source_meta;
        assert_eq!(meta["manifest"], "MANIFEST-000003");
        assert_eq!(meta["manifest_len"], "11");
        assert_eq!(meta["wal_files"], "000006.log:9");
        assert_eq!(meta["skipped_incomplete"], "000005.sst");
        assert_eq!(copied.outcome.restore_profile.kind, "rocksdb");
    }

    #[test]
    fn table_identity_is_name_size_and_content_and_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let db = fake_db(tmp.path());
        let ids = |db: &Path| {
            let mut source = RocksDbSource::new(db);
            let mut session = source.begin(&SessionContext::default()).unwrap();
            let phase = session.next_phase().unwrap().unwrap();
            phase
                .entries
                .into_iter()
                .map(|e| e.change)
                .collect::<Vec<_>>()
        };
        let first = ids(&db);
        assert_eq!(
            first,
            ids(&db),
            "the same file has the same identity every time"
        );
        let ChangeModel::Immutable { identity: Some(id) } = &first[0] else {
            panic!("{first:?}")
        };
        assert!(id.starts_with("000004.sst:10008:"), "{id}");
        // Same name and size, other bytes (a database restored and written again).
        std::fs::write(db.join("000004.sst"), sst_bytes(10_000, 9)).unwrap();
        assert_ne!(first, ids(&db));
    }

    #[test]
    fn a_moving_manifest_or_current_makes_the_snapshot_retry() {
        let tmp = tempfile::tempdir().unwrap();
        let db = fake_db(tmp.path());
        let source = RocksDbSource::new(&db);
        let db2 = db.clone();
        let mut hook = move |attempt: u32, _: &Path| match attempt {
            // A MANIFEST edit lands while the files are linked.
            1 => std::fs::OpenOptions::new()
                .append(true)
                .open(db2.join("MANIFEST-000003"))
                .unwrap()
                .write_all(b"-edit")
                .unwrap(),
            // The database rolls to a new MANIFEST.
            2 => {
                std::fs::write(db2.join("MANIFEST-000008"), b"manifest-v2").unwrap();
                std::fs::write(db2.join("CURRENT"), "MANIFEST-000008\n").unwrap();
            }
            _ => {}
        };
        let session = source
            .begin_with_hook(&SessionContext::default(), &mut hook)
            .unwrap();
        let copied = copy_session(Box::new(session), &tmp.path().join("restored")).unwrap();
        let meta = &copied.outcome.source_meta;
        assert_eq!(meta["snapshot_attempts"], "3");
        assert_eq!(meta["manifest"], "MANIFEST-000008");
        assert!(copied.phases[1].1.contains(&"MANIFEST-000008".to_owned()));
        assert!(!copied.phases[1].1.contains(&"MANIFEST-000003".to_owned()));
    }

    #[test]
    fn a_manifest_that_never_settles_is_an_error_and_leaves_no_staging() {
        let tmp = tempfile::tempdir().unwrap();
        let db = fake_db(tmp.path());
        let source = RocksDbSource::new(&db).with_max_attempts(3);
        let manifest = db.join("MANIFEST-000003");
        let mut hook = move |_: u32, _: &Path| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&manifest)
                .unwrap()
                .write_all(b"-edit")
                .unwrap();
        };
        let err = source
            .begin_with_hook(&SessionContext::default(), &mut hook)
            .unwrap_err();
        assert!(err.to_string().contains("3 attempts"), "{err}");
        assert!(staging_dirs(tmp.path()).is_empty());
        assert!(staging_dirs(&db).is_empty());
    }

    #[test]
    fn cancelled_snapshot_stops() {
        let tmp = tempfile::tempdir().unwrap();
        let db = fake_db(tmp.path());
        let ctx = SessionContext::default();
        ctx.cancel.cancel();
        let err = RocksDbSource::new(&db).begin(&ctx).err().unwrap();
        assert!(matches!(err, SourceError::Cancelled), "{err}");
        assert!(staging_dirs(tmp.path()).is_empty());
    }

    #[test]
    fn staging_can_live_inside_the_db_or_under_a_chosen_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let db = fake_db(tmp.path());
        let mut inside = RocksDbSource::new(&db).with_staging(StagingLocation::Inside);
        let session = inside.begin(&SessionContext::default()).unwrap();
        assert_eq!(staging_dirs(&db).len(), 1);
        assert!(staging_dirs(tmp.path()).is_empty());
        drop(session);
        assert!(
            staging_dirs(&db).is_empty(),
            "dropping the session removes the staging"
        );

        let chosen = tmp.path().join("chosen");
        std::fs::create_dir(&chosen).unwrap();
        let mut under =
            RocksDbSource::new(&db).with_staging(StagingLocation::Under(chosen.clone()));
        let session = under.begin(&SessionContext::default()).unwrap();
        assert_eq!(staging_dirs(&chosen).len(), 1);
        drop(session);
        assert!(staging_dirs(&chosen).is_empty());

        let missing = tmp.path().join("missing");
        let err = RocksDbSource::new(&db)
            .with_staging(StagingLocation::Under(missing))
            .begin(&SessionContext::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("staging"), "{err}");
    }

    #[test]
    fn stale_staging_of_a_crashed_run_is_removed_but_a_live_one_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let db = fake_db(tmp.path());
        // A crashed run: its lock file exists but nobody holds it.
        let stale = tmp.path().join(format!("{STAGING_PREFIX}db-crashed"));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join(LOCK_NAME), b"").unwrap();
        std::fs::hard_link(db.join("000004.sst"), stale.join("000004.sst")).unwrap();
        let stale_inside = db.join(format!("{STAGING_PREFIX}crashed"));
        std::fs::create_dir(&stale_inside).unwrap();
        std::fs::write(stale_inside.join(LOCK_NAME), b"").unwrap();

        let mut first = RocksDbSource::new(&db);
        let live = first.begin(&SessionContext::default()).unwrap();
        assert!(!stale.exists() && !stale_inside.exists());
        assert_eq!(staging_dirs(tmp.path()).len(), 1);

        // A second backup while the first is running keeps the first's staging directory.
        let mut second = RocksDbSource::new(&db);
        let other = second.begin(&SessionContext::default()).unwrap();
        assert_eq!(staging_dirs(tmp.path()).len(), 2);
        let outcome = other.finish().unwrap();
        assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
        assert_eq!(staging_dirs(tmp.path()).len(), 1);
        drop(live);
        assert!(staging_dirs(tmp.path()).is_empty());
    }

    #[test]
    fn restore_fixup_removes_lock_and_checks_the_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let db = fake_db(tmp.path());
        let profile = RestoreProfile::new("rocksdb").with_param("manifest", "MANIFEST-000003");
        let steps =
            crate::restore_profile::apply(&profile, &db, &RestoreParams::default()).unwrap();
        assert!(!db.join("LOCK").exists());
        assert_eq!(steps.len(), 2, "{steps:?}");

        let other = RestoreProfile::new("rocksdb").with_param("manifest", "MANIFEST-000009");
        let err =
            crate::restore_profile::apply(&other, &db, &RestoreParams::default()).unwrap_err();
        assert!(err.to_string().contains("MANIFEST-000009"), "{err}");

        std::fs::remove_file(db.join("MANIFEST-000003")).unwrap();
        let err =
            crate::restore_profile::apply(&profile, &db, &RestoreParams::default()).unwrap_err();
        assert!(err.to_string().contains("no `MANIFEST-000003`"), "{err}");
    }

    /// `CURRENT` stored as a link to a file outside: the fix-up neither reads it (its contents
    /// would end up in the error message) nor follows it.
    #[test]
    fn restore_fixup_refuses_a_current_that_is_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let db = fake_db(tmp.path());
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, b"root:hash\n").unwrap();
        std::fs::remove_file(db.join("CURRENT")).unwrap();
        std::os::unix::fs::symlink(&secret, db.join("CURRENT")).unwrap();
        let profile = RestoreProfile::new("rocksdb");
        let err =
            crate::restore_profile::apply(&profile, &db, &RestoreParams::default()).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("symlink") && !err.contains("root:hash"),
            "{err}"
        );
    }

    // --- against a real RocksDB, written by another process ---

    #[test]
    fn live_snapshots_restore_to_a_prefix_of_the_committed_batches() {
        let test = "live_snapshots_restore_to_a_prefix_of_the_committed_batches";
        if !rocksdict_available(test) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("db");
        let mut writer = StressWriter::start(&db, &tmp.path().join("status"), 120);
        let mut committed = writer.wait_committed(20);
        let mut attempts = Vec::new();
        for i in 0..8 {
            // Let the database move on (flushes, compactions) between snapshots.
            committed = writer.wait_committed(committed + 40);
            let mut source = RocksDbSource::new(&db);
            let session = source.begin(&SessionContext::default()).unwrap();
            let target = tmp.path().join(format!("restored-{i}"));
            let copied = copy_session(session, &target).unwrap();
            attempts.push(copied.outcome.source_meta["snapshot_attempts"].clone());
            let steps = crate::restore_profile::apply(
                &copied.outcome.restore_profile,
                &target,
                &RestoreParams::default(),
            )
            .unwrap();
            assert!(!steps.is_empty());
            let last = check_restored(&target, &Layout::STRESS);
            assert!(
                last >= committed,
                "snapshot {i} lost committed batches: has {last}, {committed} committed before"
            );
        }
        eprintln!("snapshot attempts: {attempts:?}");
        drop(writer);
        assert!(staging_dirs(tmp.path()).is_empty() && staging_dirs(&db).is_empty());
    }

    fn table_names(db: &Path) -> std::collections::BTreeSet<String> {
        std::fs::read_dir(db)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| classify(n) == FileKind::Table)
            .collect()
    }

    #[test]
    fn after_one_flush_only_the_new_table_has_a_new_identity() {
        let test = "after_one_flush_only_the_new_table_has_a_new_identity";
        if !rocksdict_available(test) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("db");
        let mut filler = Filler::start(&db, 24);
        let entries = |db: &Path| {
            let mut source = RocksDbSource::new(db);
            let mut session = source.begin(&SessionContext::default()).unwrap();
            let mut phases = Vec::new();
            while let Some(phase) = session.next_phase().unwrap() {
                phases.push(phase);
            }
            phases
        };
        let before = entries(&db);
        let tables_before = table_names(&db);
        filler.flush();
        let after = entries(&db);
        let new_tables: Vec<String> = table_names(&db)
            .difference(&tables_before)
            .cloned()
            .collect();
        assert_eq!(new_tables.len(), 1, "{new_tables:?}");

        let identity = |e: &Entry| match &e.change {
            ChangeModel::Immutable { identity: Some(id) } => id.clone(),
            other => panic!("{} is {other:?}", e.path),
        };
        let known: std::collections::HashSet<String> =
            before[0].entries.iter().map(identity).collect();
        let unread: Vec<&Entry> = after[0]
            .entries
            .iter()
            .filter(|e| !known.contains(&identity(e)))
            .collect();
        assert_eq!(
            unread.iter().map(|e| e.path.clone()).collect::<Vec<_>>(),
            new_tables,
            "only the new table is unknown"
        );
        let total: u64 = after.iter().flat_map(|p| &p.entries).map(|e| e.size).sum();
        let to_read: u64 = unread.iter().map(|e| e.size).sum::<u64>()
            + after[1].entries.iter().map(|e| e.size).sum::<u64>();
        eprintln!("database {total} bytes, an incremental backup reads {to_read}");
        assert!(to_read * 20 < total, "{to_read} of {total}");
    }
}
