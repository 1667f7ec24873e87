//! Plain-data inputs of the engine: how to create, open, back up, restore, verify and clean up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::CancelToken;
use crate::progress::{NoProgress, Progress};

/// How a new repository is laid out. Fixed at `init`, recorded in the repository's config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InitOptions {
    /// Password that wraps the master key; `None` creates an unencrypted repository.
    #[serde(skip)]
    pub password: Option<String>,
    /// Content-defined chunking: minimum, average and maximum chunk sizes in bytes.
    pub chunk_min: u32,
    /// Average chunk size.
    pub chunk_avg: u32,
    /// Maximum chunk size.
    pub chunk_max: u32,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Argon2id memory cost in KiB (for the key wrapping).
    pub kdf_memory_kib: u32,
    /// Argon2id iterations.
    pub kdf_iterations: u32,
    /// The AEAD of an encrypted repository; `None` picks [`Cipher::fastest_here`].
    pub cipher: Option<Cipher>,
}

/// How an encrypted repository seals what it stores. Chosen at `init`, recorded in the
/// repository's config; every build that reads format version 3 reads both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Cipher {
    /// XChaCha20-Poly1305: fast and constant-time on any CPU. Repositories written before
    /// format version 3 use it.
    #[default]
    #[serde(rename = "xchacha20-poly1305")]
    XChaCha20Poly1305,
    /// XAES-256-GCM (AES-256-GCM with 192-bit random nonces, c2sp.org/XAES-256-GCM): several
    /// times faster on CPUs with AES and carry-less multiplication instructions. A repository
    /// sealed with it is format version 3, which older builds refuse.
    #[serde(rename = "xaes-256-gcm")]
    Xaes256Gcm,
}

impl Cipher {
    /// XAES-256-GCM where the CPU has AES and carry-less multiplication instructions (x86-64
    /// AES-NI and PCLMULQDQ, Arm's AES and PMULL), else XChaCha20-Poly1305, which is faster
    /// than AES in software and, unlike table-based AES, constant-time.
    #[must_use]
    pub fn fastest_here() -> Self {
        #[cfg(target_arch = "x86_64")]
        let hardware_aes = std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq");
        #[cfg(target_arch = "aarch64")]
        let hardware_aes = std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull");
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let hardware_aes = false;
        if hardware_aes {
            Self::Xaes256Gcm
        } else {
            Self::XChaCha20Poly1305
        }
    }

    /// The name the config, the CLI and reports use.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::XChaCha20Poly1305 => "xchacha20-poly1305",
            Self::Xaes256Gcm => "xaes-256-gcm",
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            password: None,
            chunk_min: 256 * 1024,
            chunk_avg: 1024 * 1024,
            chunk_max: 4 * 1024 * 1024,
            pack_size: 8 * 1024 * 1024,
            // Above OWASP's Argon2id minimums (19 MiB, t=2) while keeping a backup's peak memory
            // low: the key derivation is the largest allocation of a small backup.
            kdf_memory_kib: 32 * 1024,
            kdf_iterations: 3,
            cipher: None,
        }
    }
}

impl InitOptions {
    /// Encrypts the repository with a master key wrapped by `password`.
    #[must_use]
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the target pack size in bytes.
    #[must_use]
    pub fn with_pack_size(mut self, bytes: u32) -> Self {
        self.pack_size = bytes;
        self
    }

    /// Sets the content-defined chunk sizes (minimum, average, maximum).
    #[must_use]
    pub fn with_chunk_sizes(mut self, min: u32, avg: u32, max: u32) -> Self {
        self.chunk_min = min;
        self.chunk_avg = avg;
        self.chunk_max = max;
        self
    }

    /// Seals the repository with `cipher` instead of the fastest one on this machine.
    #[must_use]
    pub fn with_cipher(mut self, cipher: Cipher) -> Self {
        self.cipher = Some(cipher);
        self
    }

    /// Sets Argon2id costs; low values are for tests only.
    #[must_use]
    pub fn with_kdf(mut self, memory_kib: u32, iterations: u32) -> Self {
        self.kdf_memory_kib = memory_kib;
        self.kdf_iterations = iterations;
        self
    }
}

/// How an engine works with an open repository.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineOptions {
    /// Password for an encrypted repository.
    pub password: Option<String>,
    /// Worker threads for chunking, hashing, compressing and encrypting (0: one per core).
    pub threads: usize,
    /// zstd level for new data: 1 to 22, or a negative fast level (zstd's `--fast=N` is -N);
    /// 0 stores uncompressed; 3 is the default. Above 1, frames of small blobs use a level-1
    /// setting where it stores them smaller.
    pub compression_level: i32,
    /// Directory for the local metadata cache; `None` disables the cache.
    pub cache_dir: Option<std::path::PathBuf>,
    /// How long a backup or gc waits for a conflicting lock (a gc, or the backups a gc waits
    /// for) before giving up with [`crate::ErrorKind::Locked`]; zero fails at once.
    pub lock_wait: std::time::Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            password: None,
            threads: 0,
            compression_level: 3,
            cache_dir: None,
            lock_wait: std::time::Duration::ZERO,
        }
    }
}

impl EngineOptions {
    /// Sets the password.
    #[must_use]
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the number of worker threads (0: one per core).
    #[must_use]
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Sets the zstd level: 1 to 22, negative for zstd's fast levels, 0 for no compression.
    #[must_use]
    pub fn with_compression_level(mut self, level: i32) -> Self {
        self.compression_level = level;
        self
    }

    /// Uses `dir` as the local metadata cache.
    #[must_use]
    pub fn with_cache_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Waits up to `wait` for a conflicting lock to go (restic's `--retry-lock`).
    #[must_use]
    pub fn with_lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    pub(crate) fn worker_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            // Asked once: on Linux each call reads the cgroup's CPU quota from three files.
            static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
            *CORES.get_or_init(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
            })
        }
    }
}

/// What to record with a backup, and how to take it.
#[derive(Clone)]
#[non_exhaustive]
pub struct BackupOptions {
    /// Tags, for selection and retention.
    pub tags: Vec<String>,
    /// A free-text message (RocksDB's "app metadata").
    pub message: Option<String>,
    /// Key=value metadata.
    pub metadata: BTreeMap<String, String>,
    /// Read every file, even those whose identity says they did not change.
    pub full_read: bool,
    /// Progress observer.
    pub progress: Arc<dyn Progress>,
    /// Cancellation.
    pub cancel: CancelToken,
    /// Host name to record (defaults to this machine's).
    pub host: Option<String>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            message: None,
            metadata: BTreeMap::new(),
            full_read: false,
            progress: Arc::new(NoProgress),
            cancel: CancelToken::new(),
            host: None,
        }
    }
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("tags", &self.tags)
            .field("message", &self.message)
            .field("metadata", &self.metadata)
            .field("full_read", &self.full_read)
            .finish_non_exhaustive()
    }
}

impl BackupOptions {
    /// Adds a tag.
    #[must_use]
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets the free-text message.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Adds a key=value pair of metadata.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Reads every file, ignoring the unchanged-file shortcut.
    #[must_use]
    pub fn with_full_read(mut self, full_read: bool) -> Self {
        self.full_read = full_read;
        self
    }
}

/// What to do with a restore target that is not empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExistingTarget {
    /// Refuse with [`crate::ErrorKind::AlreadyExists`].
    #[default]
    Refuse,
    /// Write into it, replacing files the backup has (others are left alone).
    Overwrite,
    /// Make it what the backup holds, writing only what differs (pgBackRest's `--delta`): a
    /// regular file of a path the backup has keeps the chunks it already holds (each read and
    /// hashed, never trusted by size or time) and gets the others written in place; whatever
    /// the backup does not have (other files, directories, symlinks, a file where the backup
    /// has a directory) is deleted. For restoring a database over its own diverged or damaged
    /// copy: a large data directory of which little changed is read once and mostly not
    /// written. Restores the whole backup (not with [`RestoreOptions::include`]).
    Delta,
}

/// How to restore.
#[derive(Clone)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// What to do when the target is not empty.
    pub existing: ExistingTarget,
    /// Skip the source's restore fix-ups (raw files only).
    pub raw: bool,
    /// Flush the restored files to disk before the restore reports success (the default).
    /// Without it the restore ends as soon as the kernel holds every byte: faster, but a crash
    /// of the machine shortly after can lose or tear restored files, and the marker of an
    /// unfinished restore may be gone while they are (its removal can reach the disk first).
    /// For scratch restores only: tests, a look at old files, a check that a backup restores.
    pub sync: bool,
    /// Options for the fix-ups (`target-time`, `target-lsn`…).
    pub fixup_options: BTreeMap<String, String>,
    /// Restore only the paths matching one of these globs (as `info --files` lists them; `*`
    /// matches within one component, `**` across `/`), with everything under them and the
    /// directories above them. Empty: the whole backup. A database backup restores in part
    /// only with [`raw`](Self::raw): its files alone would not open consistent.
    pub include: Vec<String>,
    /// Leave chunks of zeros (4 KiB and more, as the backup stored them) of newly written files
    /// unwritten, as holes, so that a sparse file (a virtual disk, a database or log file
    /// sized with `truncate`, an EventStore chunk) takes about the space it took when backed
    /// up. Off by default, as in restic, borg and rsync: a database may count on the blocks of
    /// a file it preallocated with zeros (PostgreSQL's WAL segments) being allocated. Writes
    /// go through the page cache (no direct I/O). A file a delta restore mends in place keeps
    /// the blocks it has.
    pub sparse: bool,
    /// Progress observer.
    pub progress: Arc<dyn Progress>,
    /// Cancellation.
    pub cancel: CancelToken,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            existing: ExistingTarget::Refuse,
            raw: false,
            sync: true,
            fixup_options: BTreeMap::new(),
            include: Vec::new(),
            sparse: false,
            progress: Arc::new(NoProgress),
            cancel: CancelToken::new(),
        }
    }
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("existing", &self.existing)
            .field("raw", &self.raw)
            .field("sync", &self.sync)
            .field("fixup_options", &self.fixup_options)
            .field("include", &self.include)
            .field("sparse", &self.sparse)
            .finish_non_exhaustive()
    }
}

impl RestoreOptions {
    /// Sets the treatment of a non-empty target.
    #[must_use]
    pub fn with_existing(mut self, existing: ExistingTarget) -> Self {
        self.existing = existing;
        self
    }

    /// Restores raw files, without the source's fix-ups.
    #[must_use]
    pub fn with_raw(mut self, raw: bool) -> Self {
        self.raw = raw;
        self
    }

    /// Restores only the paths matching `globs` (see [`RestoreOptions::include`]).
    #[must_use]
    pub fn with_include(mut self, globs: Vec<String>) -> Self {
        self.include = globs;
        self
    }

    /// Whether to flush the restored files to disk before reporting success (see
    /// [`RestoreOptions::sync`]); on by default.
    #[must_use]
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// Leaves chunks of zeros as holes (see [`RestoreOptions::sparse`]).
    #[must_use]
    pub fn with_sparse(mut self, sparse: bool) -> Self {
        self.sparse = sparse;
        self
    }

    /// Sets a fix-up option.
    #[must_use]
    pub fn with_fixup_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.fixup_options.insert(key.into(), value.into());
        self
    }
}

/// How thoroughly [`crate::ReadOnlyEngine::verify`] checks a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerifyLevel {
    /// Every object the backup needs exists with the right size.
    Quick,
    /// Additionally reads, decrypts and hashes a share of the packs (percent, 1..=100, at least
    /// one pack): a run of them from a random one, so that each run reads another part.
    Subset(u8),
    /// Reads, decrypts and hashes every byte.
    Full,
}

/// How a verify runs ([`crate::ReadOnlyEngine::verify_with`]): its depth, and for the levels
/// that read data, progress (a phase `verify` with the packs and bytes to read, then `bytes`
/// as they are read) and cancellation (checked between pieces of a pack).
#[derive(Clone)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// How thoroughly.
    pub level: VerifyLevel,
    /// Progress observer.
    pub progress: Arc<dyn Progress>,
    /// Cancellation.
    pub cancel: CancelToken,
}

impl VerifyOptions {
    /// A verify at `level`, without progress or cancellation.
    pub fn new(level: VerifyLevel) -> Self {
        Self {
            level,
            progress: Arc::new(NoProgress),
            cancel: CancelToken::new(),
        }
    }
}

impl std::fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// How `gc` works ([`crate::BackupEngine::gc_with`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct GcOptions {
    /// Report what would be removed and rewritten, change nothing.
    pub dry_run: bool,
    /// Rewrite a pack when at least this percentage of its bytes belongs to no backup: its
    /// used blobs are copied into new packs and the old pack goes. 100 never rewrites (only
    /// wholly unused packs go); 0 rewrites every pack with any unused byte.
    pub repack_unused_percent: u8,
    /// How long a rewritten pack stays after gc took it out of the index, so that a restore or
    /// verify that loaded the old index before goes on finding it. A later gc deletes it; with
    /// a zero grace period, the gc that rewrote it.
    pub superseded_grace: Duration,
    /// Progress of the rewrite, where there is one: a phase `rewrite` with the packs and bytes
    /// to read, each pack as a `file`, then `bytes` as they are read.
    pub progress: Arc<dyn Progress>,
    /// Cancellation, honoured while the gc reads the backups' file lists (it has changed
    /// nothing yet) and while it rewrites packs (before it changes what any index lists: the
    /// packs written so far are left for the next gc to delete); not once indexes change.
    pub cancel: CancelToken,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            repack_unused_percent: 25,
            superseded_grace: Duration::from_secs(3600),
            progress: Arc::new(NoProgress),
            cancel: CancelToken::new(),
        }
    }
}

impl std::fmt::Debug for GcOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcOptions")
            .field("dry_run", &self.dry_run)
            .field("repack_unused_percent", &self.repack_unused_percent)
            .field("superseded_grace", &self.superseded_grace)
            .finish_non_exhaustive()
    }
}

impl GcOptions {
    /// Only report.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// See [`GcOptions::repack_unused_percent`]; values above 100 count as 100.
    pub fn with_repack_unused_percent(mut self, percent: u8) -> Self {
        self.repack_unused_percent = percent.min(100);
        self
    }

    /// See [`GcOptions::superseded_grace`].
    pub fn with_superseded_grace(mut self, grace: Duration) -> Self {
        self.superseded_grace = grace;
        self
    }
}

/// What `copy` copies ([`crate::BackupEngine::copy_from`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct CopyOptions {
    /// The source's backups to copy; empty copies them all. A backup the destination already
    /// has (copied before: the same time, host, source and file list) is skipped.
    pub backups: Vec<crate::BackupSelector>,
    /// Also copy the source's archives (a PostgreSQL WAL archive, for point-in-time recovery
    /// from the copies): every archive object the destination lacks.
    pub archives: bool,
    /// Progress of the copy: a phase `copy` with the source's packs and bytes to read, each
    /// pack as a `file`, then `bytes` as they are read.
    pub progress: Arc<dyn Progress>,
    /// Cancellation, honoured until the index of the copied packs is written: what was
    /// written by then is left for the destination's next gc.
    pub cancel: CancelToken,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            backups: Vec::new(),
            archives: true,
            progress: Arc::new(NoProgress),
            cancel: CancelToken::new(),
        }
    }
}

impl std::fmt::Debug for CopyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOptions")
            .field("backups", &self.backups)
            .field("archives", &self.archives)
            .finish_non_exhaustive()
    }
}

impl CopyOptions {
    /// Copy these backups (by default all).
    pub fn backups(mut self, backups: impl IntoIterator<Item = crate::BackupSelector>) -> Self {
        self.backups = backups.into_iter().collect();
        self
    }

    /// See [`CopyOptions::archives`].
    pub fn with_archives(mut self, archives: bool) -> Self {
        self.archives = archives;
        self
    }
}

/// How `repair index` works ([`crate::RepairEngine::repair_index`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct RepairOptions {
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Rebuild the whole index from the packs, reading every pack whole and checking every
    /// blob (only blobs that check are indexed; a damaged pack's intact blobs are copied into
    /// new packs). Without it, what readable index objects say is kept, and only the packs they
    /// do not list (or list with another size) are read: their headers, and their frames, whose
    /// blobs the header names by place, not by id.
    pub read_all_packs: bool,
    /// Progress: a phase `read` with the packs and bytes to read, each pack as a `file`, then
    /// `bytes` as they are read.
    pub progress: Arc<dyn Progress>,
    /// Cancellation, honoured while packs are read (nothing has changed yet; copies of a
    /// damaged pack's blobs made so far are left for gc).
    pub cancel: CancelToken,
}

impl Default for RepairOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            read_all_packs: false,
            progress: Arc::new(NoProgress),
            cancel: CancelToken::new(),
        }
    }
}

impl std::fmt::Debug for RepairOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepairOptions")
            .field("dry_run", &self.dry_run)
            .field("read_all_packs", &self.read_all_packs)
            .finish_non_exhaustive()
    }
}

impl RepairOptions {
    /// Only report.
    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// See [`RepairOptions::read_all_packs`].
    #[must_use]
    pub fn read_all_packs(mut self, read_all: bool) -> Self {
        self.read_all_packs = read_all;
        self
    }
}

/// `with_progress` and `with_cancel` for the options that carry a `progress` observer and a
/// `cancel` token (what each reports, and where it stops, is said at those fields).
macro_rules! progress_and_cancel {
    ($($options:ty),+) => {$(
        impl $options {
            /// Reports progress to `progress`.
            #[must_use]
            pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
                self.progress = progress;
                self
            }

            /// Stops when `cancel` is cancelled.
            #[must_use]
            pub fn with_cancel(mut self, cancel: CancelToken) -> Self {
                self.cancel = cancel;
                self
            }
        }
    )+};
}

progress_and_cancel!(
    BackupOptions,
    RestoreOptions,
    VerifyOptions,
    GcOptions,
    RepairOptions,
    CopyOptions
);
