//! Plain-data outputs of the engine: backups, files, verification, restore and gc reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The always-increasing number of a backup in its repository (RocksDB's backup id).
pub type BackupId = u64;

/// Which backup an operation means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupSelector {
    /// The backup with this number.
    Id(BackupId),
    /// The newest backup.
    Latest,
}

impl From<BackupId> for BackupSelector {
    fn from(id: BackupId) -> Self {
        Self::Id(id)
    }
}

impl std::str::FromStr for BackupSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("latest") {
            return Ok(Self::Latest);
        }
        s.parse::<u64>()
            .map(Self::Id)
            .map_err(|_| format!("`{s}` is not a backup number or `latest`"))
    }
}

impl std::fmt::Display for BackupSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Latest => f.write_str("latest"),
        }
    }
}

/// One backup as `list` and `info` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The backup number.
    pub id: BackupId,
    /// When the backup started, seconds since the Unix epoch.
    pub time_unix: i64,
    /// The offset from UTC of the local time of the host that took the backup, at
    /// `time_unix`, in seconds east of Greenwich; `None` for backups of builds before
    /// 2026-12-06 and hosts whose time zone is unknown, which count as UTC. Retention's days,
    /// weeks, months and years are the host's local ones.
    #[serde(default)]
    pub utc_offset_secs: Option<i32>,
    /// How long the backup took, in milliseconds.
    pub duration_ms: u64,
    /// Host that took it.
    pub host: String,
    /// Source kind (`dir`, `sqlite`, `postgres`, …).
    pub source_kind: String,
    /// Source identity (a path or URL).
    pub source: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Free-text message.
    pub message: Option<String>,
    /// Key=value metadata.
    pub metadata: BTreeMap<String, String>,
    /// Number of files.
    pub files: u64,
    /// Number of directories.
    pub dirs: u64,
    /// Total logical size of the files, in bytes.
    pub size: u64,
    /// Bytes read from the source (files skipped as unchanged are not read).
    pub bytes_read: u64,
    /// Bytes this backup added to the repository (stored, after compression and encryption).
    pub bytes_added: u64,
    /// Uncompressed size of the blobs this backup added.
    pub bytes_added_raw: u64,
    /// Number of blobs this backup added.
    pub blobs_added: u64,
    /// The parent backup used for the unchanged-file shortcut, if any.
    pub parent: Option<BackupId>,
    /// Facts the source recorded (log positions, LSNs).
    pub source_meta: BTreeMap<String, String>,
    /// Start and end of the paused window, seconds since the epoch (fractional), if any.
    pub pause_window: Option<(f64, f64)>,
    /// Warnings the backup produced.
    pub warnings: Vec<String>,
    /// The restore procedure recorded with the backup.
    pub restore_kind: String,
}

/// One entry of a backup, for `info --files`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Path inside the backup.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Number of chunks.
    pub chunks: u64,
    /// Symlink target.
    pub target: Option<String>,
}

/// What changed between two backups ([`crate::ReadOnlyEngine::diff`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDiff {
    /// The older backup.
    pub from: BackupId,
    /// The newer backup.
    pub to: BackupId,
    /// Every path that differs, sorted by path.
    pub changes: Vec<Change>,
    /// Paths only in `to`.
    pub added: u64,
    /// Paths only in `from`.
    pub removed: u64,
    /// Paths whose content or type changed.
    pub modified: u64,
    /// Paths whose mode, owner or modification time changed, and nothing else.
    pub metadata: u64,
}

/// One path that differs between two backups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Path inside the backups.
    pub path: String,
    /// How it changed.
    pub change: ChangeKind,
    /// `file`, `dir` or `symlink` (in the newer backup, if it is there).
    pub kind: String,
    /// Size in the older backup, if the path is there.
    pub size_before: Option<u64>,
    /// Size in the newer backup, if the path is there.
    pub size_after: Option<u64>,
}

/// How a path changed between two backups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only in the newer backup.
    Added,
    /// Only in the older backup.
    Removed,
    /// Other content (chunks, size or symlink target).
    Modified,
    /// A file became a directory, say.
    TypeChanged,
    /// Same content; other mode, owner or modification time.
    Metadata,
}

/// The outcome of `verify`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Backups checked.
    pub backups: Vec<BackupId>,
    /// Distinct blobs the backups need.
    pub blobs: u64,
    /// Packs those blobs live in.
    pub packs: u64,
    /// Packs read and hashed.
    pub packs_read: u64,
    /// Bytes read from the store.
    pub bytes_read: u64,
    /// Every problem found; empty when the backups are sound.
    pub problems: Vec<String>,
    /// Per backup, the files that use data found missing or damaged: those that cannot be
    /// restored whole (a file list that cannot be read is one of `problems` instead).
    #[serde(default)]
    pub damaged_files: Vec<DamagedFiles>,
}

/// The files of one backup that use missing or damaged data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedFiles {
    /// The backup.
    pub backup: BackupId,
    /// How many of its files.
    pub files: u64,
    /// Their paths, the first 100.
    pub paths: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing was wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The outcome of a restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreInfo {
    /// The backup restored.
    pub id: BackupId,
    /// Files restored (hard links among them).
    pub files: u64,
    /// Of those, the files restored as hard links of another: paths that shared an inode when
    /// backed up.
    #[serde(default)]
    pub hard_links: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Of those, the bytes written with direct I/O, past the page cache: whole blocks of large
    /// files, when the restore syncs and the filesystem supports it.
    #[serde(default)]
    pub bytes_direct: u64,
    /// A delta restore's bytes the target already held (read, hashed and found equal to the
    /// backup's chunks), not written.
    #[serde(default)]
    pub bytes_kept: u64,
    /// Paths a delta restore deleted because the backup does not have them (a directory and
    /// everything in it counted once).
    #[serde(default)]
    pub removed: u64,
    /// Bytes of zeros a sparse restore left unwritten, as holes ([`crate::RestoreOptions::sparse`]);
    /// counted in `bytes`.
    #[serde(default)]
    pub bytes_sparse: u64,
    /// Milliseconds taken.
    pub duration_ms: u64,
    /// What the restore fix-ups did, a line per step.
    pub fixups: Vec<String>,
}

/// The outcome of `copy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyReport {
    /// The backups copied: their id in the source and the id they got in the destination.
    pub copied: Vec<(BackupId, BackupId)>,
    /// Backups of the source the destination already had (copied before), by their ids there
    /// and here.
    pub already_there: Vec<(BackupId, BackupId)>,
    /// Blobs copied (the others the destination had already).
    pub blobs_copied: u64,
    /// Bytes of the packs written into the destination.
    pub bytes_written: u64,
    /// Packs written into the destination.
    pub packs_written: u64,
    /// Archive objects copied.
    pub archive_objects_copied: u64,
}

/// The outcome of gc.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Packs deleted: wholly unused ones, leftovers of interrupted backups, and packs rewritten
    /// by an earlier gc whose grace period is over.
    pub packs_deleted: u64,
    /// Bytes of the deleted packs.
    pub bytes_freed: u64,
    /// Index objects replaced by the rewritten index (in a dry run, those it would replace, at
    /// most: an object whose content comes out the same keeps its name).
    pub indexes_rewritten: u64,
    /// Packs kept as they are, because enough of their blobs are still used.
    pub packs_kept: u64,
    /// Packs the index listed that the store no longer holds, taken out of the index so that
    /// a backup of the same data (with `full_read`, since unchanged files are not read) stores
    /// their blobs again.
    #[serde(default)]
    pub packs_missing: u64,
    /// Blobs in those packs that backups use: until they are stored again (or the backups
    /// deleted), those backups do not restore whole.
    #[serde(default)]
    pub blobs_lost: u64,
    /// Blobs that backups use and no index lists, where they should be (an index object was
    /// lost, or a pack: see `packs_missing`). While there are any, gc deletes no pack that no
    /// index lists (it may hold them); [`crate::RepairEngine::repair_index`] indexes those packs.
    #[serde(default)]
    pub blobs_unindexed: u64,
    /// Packs that no index lists, kept because of `blobs_unindexed`.
    #[serde(default)]
    pub packs_unindexed_kept: u64,
    /// Temp files of interrupted puts removed (local and SFTP repositories; see
    /// [`crate::Store::remove_temp_files`]), older than an hour.
    #[serde(default)]
    pub temp_files_removed: u64,
    /// Packs rewritten because most of their bytes were unused: their used blobs were copied
    /// into new packs, and they wait out [`crate::GcOptions::superseded_grace`] before a later
    /// gc deletes them.
    #[serde(default)]
    pub packs_repacked: u64,
    /// Bytes of used blobs copied by the rewrite.
    #[serde(default)]
    pub bytes_repacked: u64,
    /// Packs rewritten by an earlier gc that are still within their grace period (kept).
    #[serde(default)]
    pub packs_in_grace: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// The outcome of `repair index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// Whether this was a dry run (nothing written or deleted).
    pub dry_run: bool,
    /// Whether every pack was read whole and every blob checked.
    pub read_all_packs: bool,
    /// Index objects read and used.
    pub index_objects_read: u64,
    /// Index objects that could not be read (`key: why`); the new index replaces them.
    pub index_objects_damaged: Vec<String>,
    /// Packs in the store.
    pub packs_in_store: u64,
    /// Packs read (their headers, and their frames or all of them).
    pub packs_read: u64,
    /// Packs no readable index object listed, now indexed.
    pub packs_added: u64,
    /// Packs an index object listed otherwise than the pack says (another size, or other
    /// blobs): indexed as the pack says.
    pub packs_corrected: u64,
    /// Packs an index object listed that the store no longer holds: left out of the index.
    pub packs_missing: u64,
    /// Packs whose header cannot be read (`key: why`): left out of the index, their blobs
    /// unknown. gc keeps them while backups miss blobs.
    pub packs_unreadable: Vec<String>,
    /// Packs read whole that are damaged (their bytes do not match their name, or a blob does
    /// not check): their intact blobs were copied into new packs, and they are left out of the
    /// index (gc deletes them once no backup misses a blob).
    pub packs_damaged: Vec<String>,
    /// Blobs that did not check (damaged packs).
    pub blobs_damaged: u64,
    /// Intact blobs of damaged packs copied into new packs.
    pub blobs_salvaged: u64,
    /// Blobs the new index lists.
    pub blobs_indexed: u64,
    /// Index objects written. None when the index was whole and sound (nothing to mend: no
    /// damaged object, no pack added, corrected, missing or damaged).
    pub indexes_written: u64,
    /// Index objects deleted (the damaged ones and those the new index replaces).
    pub indexes_deleted: u64,
}

/// A key (password slot) of an encrypted repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key object's id (its name in `keys/`).
    pub id: String,
    /// When it was added, seconds since the epoch.
    pub created_unix: i64,
    /// Host that added it.
    pub host: String,
    /// Whether the password in use opened this key.
    pub current: bool,
}

/// What `open` learned about the repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryInfo {
    /// The store, as it describes itself.
    pub location: String,
    /// Repository format version.
    pub version: u32,
    /// Repository id (random, hex).
    pub id: String,
    /// Whether data is encrypted.
    pub encrypted: bool,
    /// The AEAD that seals data (`None`: unencrypted).
    pub cipher: Option<crate::Cipher>,
    /// Content-defined chunk sizes (min, avg, max).
    pub chunking: (u32, u32, u32),
    /// Target pack size.
    pub pack_size: u32,
}

/// What [`crate::BackupEngine::archive_put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArchivePut {
    /// The object was stored.
    Stored,
    /// An object with the same name and the same bytes was already there.
    AlreadyPresent,
}
