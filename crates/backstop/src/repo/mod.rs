//! The repository: config, keys, the in-memory blob index, snapshots and locks on a store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use backstop_store::{PutMode, Store, StoreError, StoreErrorKind};
use rand::RngCore;

use crate::crypto::{KeyFile, KeyFileError, MasterKey};
use crate::format::{
    self, BlobId, BlobKind, Config, FormatError, IndexFile, IndexPack, Node, ObjectType, PackEntry,
    PackId, Snapshot, TreeBlob,
};
use crate::info::{BackupId, BackupInfo, BackupSelector, FileInfo, KeyInfo, RepositoryInfo};
use crate::options::{Cipher, EngineOptions, InitOptions};
use crate::{Error, ErrorKind, Result};

pub(crate) mod lock;
mod sorted;

use sorted::Sorted;

pub(crate) const CONFIG_KEY: &str = "config";

/// Where a blob lives: 24 bytes beside its 32-byte id in the index map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlobLocation {
    /// Position of the pack in `Index::packs`.
    pub(crate) pack: u32,
    pub(crate) offset: u32,
    pub(crate) length: u32,
    pub(crate) raw_length: u32,
    /// [`PackEntry::within`], with `u32::MAX` for none (an `Option` would cost 4 more bytes).
    within: u32,
    pub(crate) kind: BlobKind,
    pub(crate) compressed: bool,
}

impl BlobLocation {
    fn new(pack: u32, e: &PackEntry) -> Self {
        Self {
            pack,
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
            within: e.within.unwrap_or(u32::MAX),
            kind: e.kind,
            compressed: e.compressed,
        }
    }

    /// The pack entry this location was made from.
    pub(crate) fn entry(&self, id: BlobId) -> PackEntry {
        PackEntry {
            id,
            kind: self.kind,
            offset: self.offset,
            length: self.length,
            raw_length: self.raw_length,
            compressed: self.compressed,
            within: (self.within != u32::MAX).then_some(self.within),
        }
    }
}

/// Blobs stored next to each other in one pack, read with one ranged read.
///
/// Consecutive entries of one frame (same `offset`, see [`PackEntry::within`]) share their
/// stored bytes: the run holds those bytes once and [`Repository::read_run`] decodes them once.
#[derive(Clone, Debug)]
pub(crate) struct ReadRun {
    pub(crate) pack: PackId,
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) entries: Vec<PackEntry>,
}

impl ReadRun {
    /// A run of one blob.
    pub(crate) fn new(pack: PackId, entry: PackEntry) -> Self {
        Self {
            pack,
            start: u64::from(entry.offset),
            len: u64::from(entry.length),
            entries: vec![entry],
        }
    }

    /// Appends `entry` if it continues the run (the next stored unit, or the same frame as the
    /// last entry) and the run stays within `max_len` stored bytes.
    pub(crate) fn try_push(&mut self, pack: PackId, entry: PackEntry, max_len: u64) -> bool {
        if pack != self.pack {
            return false;
        }
        let same_frame = self.entries.last().is_some_and(|last| {
            entry.within.is_some() && last.offset == entry.offset && last.length == entry.length
        });
        if same_frame {
            self.entries.push(entry);
            return true;
        }
        let end = self.start + self.len;
        if u64::from(entry.offset) == end && self.len + u64::from(entry.length) <= max_len {
            self.len += u64::from(entry.length);
            self.entries.push(entry);
            return true;
        }
        false
    }

    /// Widens this run to also cover `other` (same pack) when the span of both stays within
    /// `max_len` stored bytes and adds at most `max_gap` bytes that neither needs; `other`'s
    /// blobs then come after this run's, in the order given (a run's blobs are cut out of the
    /// fetched bytes by their offsets, so they need not be in pack order). Files backed up by
    /// several threads lie interleaved in a pack; this lets a restore fetch them together.
    pub(crate) fn try_span(&mut self, other: &ReadRun, max_len: u64, max_gap: u64) -> bool {
        if other.pack != self.pack {
            return false;
        }
        let start = self.start.min(other.start);
        let end = (self.start + self.len).max(other.start + other.len);
        let len = end - start;
        if len > max_len || len > (self.len + other.len).saturating_add(max_gap) {
            return false;
        }
        self.start = start;
        self.len = len;
        self.entries.extend_from_slice(&other.entries);
        true
    }

    /// The raw bytes the run's blobs add up to.
    pub(crate) fn raw_len(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.raw_length)).sum()
    }

    /// An upper bound of the memory reading the run takes at once: its stored bytes, plus the
    /// largest decoded unit and its decrypted copy.
    pub(crate) fn memory_bound(&self) -> u64 {
        let unit = self
            .entries
            .iter()
            .map(|e| {
                let raw = match e.within {
                    Some(_) if e.compressed => format::MAX_FRAME as u64,
                    Some(_) => u64::from(e.length),
                    None => u64::from(e.raw_length),
                };
                raw + u64::from(e.length)
            })
            .max()
            .unwrap_or(0);
        self.len + unit
    }
}

/// The most stored bytes one joined read of [`Repository::read_blobs`] spans.
const JOINED_READ_MAX: u64 = 8 << 20;
/// The most bytes no asked-for blob needs that such a read may fetch between two that are.
const JOINED_READ_GAP: u64 = 1 << 20;
/// A blob [`Repository::read_blobs`] read, and where in its answer it goes.
type Placed = (usize, Vec<u8>);
/// Raw bytes of tree blobs read together when a backup's file list is loaded.
const TREE_WINDOW_BYTES: u64 = 8 << 20;

/// Recently decoded frames, by pack and offset, up to a byte limit (0: none kept). Only checked
/// bytes go in: a frame is authenticated and decompressed before it is kept, and every blob cut
/// from it is still hashed against its id.
#[derive(Debug, Default)]
pub(crate) struct FrameCache {
    limit: usize,
    held: usize,
    frames: std::collections::VecDeque<(PackId, u32, Vec<u8>)>,
}

impl FrameCache {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    fn contains(&self, pack: PackId, offset: u32) -> bool {
        self.frames
            .iter()
            .any(|(p, o, _)| *p == pack && *o == offset)
    }

    /// Takes a kept frame out; a reader puts it back when done, as the most recently used:
    /// after an incremental backup one new frame of changed pages serves pages all across many
    /// old frames, and evicted in the order frames came in, it could be decoded again while
    /// still in use.
    fn take(&mut self, pack: PackId, offset: u32) -> Option<Vec<u8>> {
        let i = self
            .frames
            .iter()
            .position(|(p, o, _)| *p == pack && *o == offset)?;
        let (_, _, unit) = self.frames.remove(i)?;
        self.held -= unit.len();
        Some(unit)
    }

    fn put(&mut self, pack: PackId, offset: u32, unit: Vec<u8>) {
        if unit.len() > self.limit {
            return;
        }
        self.held += unit.len();
        self.frames.push_back((pack, offset, unit));
        while self.held > self.limit {
            match self.frames.pop_front() {
                Some((_, _, old)) => self.held -= old.len(),
                None => break,
            }
        }
    }
}

/// The error for a blob the index does not have; `context` says who needs it.
pub(crate) fn missing_blob(id: &BlobId, context: &str) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        RepoError::MissingBlob {
            blob: id.to_string(),
            context: context.to_owned(),
        },
    )
}

/// Why [`Repository::read_run`] stopped: the repository's bytes, or the caller's sink.
#[derive(Debug)]
pub(crate) enum RunError<E> {
    /// Reading, authenticating, decoding or checking the stored bytes failed.
    Repo(Error),
    /// The sink returned this error.
    Sink(E),
}

impl<E> From<Error> for RunError<E> {
    fn from(e: Error) -> Self {
        Self::Repo(e)
    }
}

/// Blobs the index keeps in its hash map before moving them into the sorted vector. The map
/// costs about 73 bytes a blob (load factor 7/8) and doubles when it fills, holding both tables
/// while it rehashes: a backup of the bench's 1 GiB mix added 130,000 blobs, and the map's last
/// doubling, near the end, was the backup's peak of resident memory (+8 MiB).
const RECENT_MAX: usize = 1 << 15;

/// The union of every index object: blob id → location.
///
/// Blobs loaded from index objects live in one vector sorted by id ([`Sorted`]: 40 bytes a
/// blob with short ids, 56 with full ones, no hash-table overhead: `docs/format.md` has the
/// measurement); blobs added since the last load (this process's own backup) live in a small
/// hash map until the next reload merges them.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) packs: Vec<(PackId, u64)>,
    pack_pos: HashMap<PackId, u32>,
    sorted: Sorted,
    recent: HashMap<BlobId, BlobLocation>,
    /// Keys of the index objects loaded.
    pub(crate) objects: Vec<String>,
    /// Holds what `objects` hold and nothing else: loaded, and no pack added since.
    as_loaded: bool,
}

impl Index {
    fn pack_position(&mut self, id: PackId, size: u64) -> u32 {
        match self.pack_pos.get(&id) {
            Some(pos) => *pos,
            None => {
                let pos = self.packs.len() as u32;
                self.packs.push((id, size));
                self.pack_pos.insert(id, pos);
                pos
            }
        }
    }

    /// Adds a pack written by this process (kept in the small map until the next reload, or
    /// until the map holds [`RECENT_MAX`] blobs).
    pub(crate) fn add_pack(&mut self, pack: &IndexPack) {
        self.as_loaded = false;
        let pos = self.pack_position(pack.id, pack.size);
        for e in &pack.entries {
            if self.sorted.get(&e.id).is_none() {
                self.recent.entry(e.id).or_insert(BlobLocation::new(pos, e));
            }
        }
        if self.recent.len() >= RECENT_MAX {
            self.merge_recent();
        }
    }

    /// Adds the packs of one index object while loading (call `finish_loading` after the last).
    fn load_packs(&mut self, packs: Vec<IndexPack>) {
        for pack in packs {
            let pos = self.pack_position(pack.id, pack.size);
            self.sorted.extend(
                pack.entries
                    .iter()
                    .map(|e| (e.id, BlobLocation::new(pos, e))),
            );
        }
    }

    /// Sorts what was loaded; the first listing of a blob wins.
    fn finish_loading(&mut self) {
        self.sorted.finish_loading();
    }

    fn get(&self, id: &BlobId) -> Option<&BlobLocation> {
        self.sorted.get(id).or_else(|| self.recent.get(id))
    }

    /// The ids loaded from index objects that start with `prefix` (a list's short id).
    fn sorted_with_prefix(&self, prefix: &[u8]) -> crate::page_list::Found {
        self.sorted.with_prefix(prefix)
    }

    /// Moves the blobs added by this process into the sorted vector, where lookups by short
    /// id find them too.
    fn merge_recent(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        self.sorted.merge(self.recent.drain().collect());
    }

    /// Where [`Index::iter`] yields `id`, if it is among the blobs loaded from index objects
    /// (which [`Index::iter`] yields first, at positions `0..`[`Index::loaded_count`]).
    pub(crate) fn loaded_position(&self, id: &BlobId) -> Option<usize> {
        self.sorted.position(id)
    }

    /// How many blobs were loaded from index objects (or merged with them).
    pub(crate) fn loaded_count(&self) -> usize {
        self.sorted.count()
    }

    /// Every blob with its location: those loaded from index objects in id order, then the
    /// ones this process added since.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (BlobId, &BlobLocation)> {
        self.sorted
            .iter()
            .chain(self.recent.iter().map(|(id, loc)| (*id, loc)))
    }

    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        self.get(id).is_some()
    }

    pub(crate) fn locate(&self, id: &BlobId) -> Option<(PackId, PackEntry)> {
        let loc = self.get(id)?;
        let (pack, _) = *self.packs.get(loc.pack as usize)?;
        Some((pack, loc.entry(*id)))
    }

    pub(crate) fn pack_size(&self, id: &PackId) -> Option<u64> {
        self.pack_pos
            .get(id)
            .and_then(|p| self.packs.get(*p as usize))
            .map(|(_, s)| *s)
    }
}

/// An open repository.
pub(crate) struct Repository {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Config,
    pub(crate) key: Option<MasterKey>,
    key_id: Option<String>,
    pub(crate) options: EngineOptions,
    pub(crate) index: RwLock<Index>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("store", &self.store.describe())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A repository-level failure with the object it concerns.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RepoError {
    #[error("no Backstop repository at {location}: run `backstop init` first")]
    Missing { location: String },
    #[error("a Backstop repository already exists at {location}")]
    Exists { location: String },
    #[error("object `{key}` is damaged in the repository")]
    Damaged {
        key: String,
        #[source]
        source: FormatError,
    },
    #[error(
        "object `{key}` is damaged in the repository: it holds backup {found}, but its key names backup {expected} (a snapshot copied to another key)"
    )]
    SnapshotMoved {
        key: String,
        expected: BackupId,
        found: BackupId,
    },
    #[error("object `{key}` was written by a newer Backstop")]
    TooNew {
        key: String,
        #[source]
        source: FormatError,
    },
    #[error("the repository is encrypted: give its password")]
    PasswordNeeded,
    #[error("the password opens none of the {count} keys of the repository")]
    WrongPassword { count: usize },
    #[error("backup {0} does not exist")]
    NoBackup(BackupId),
    #[error("the repository holds no backup yet")]
    NoBackups,
    #[error(
        "blob {blob} needed by {context} is in no index: an index object or a pack is missing. `backstop repair index` indexes the packs no index lists; `backstop verify --all` then says what is still missing"
    )]
    MissingBlob { blob: String, context: String },
    #[error("key `{0}`: {1}")]
    Key(String, String),
}

/// A failed read of a pack the index lists: its absence is damage, not a missing backup.
fn pack_read_error(e: StoreError) -> Error {
    if e.kind() == StoreErrorKind::NotFound {
        Error::new(ErrorKind::Corrupt, e)
    } else {
        e.into()
    }
}

/// An object that cannot be read: damage, or a format newer than this build (not damage: an
/// upgrade reads it).
pub(crate) fn damaged(key: &str, source: FormatError) -> Error {
    let key = key.to_owned();
    match source {
        FormatError::NewerVersion { .. } => {
            Error::new(ErrorKind::Incompatible, RepoError::TooNew { key, source })
        }
        _ => Error::new(ErrorKind::Corrupt, RepoError::Damaged { key, source }),
    }
}

/// A repository's metadata cache unused for this long is removed when another repository is
/// opened through the same cache directory (a deleted repository's would stay forever).
const CACHE_UNUSED: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// A damaged index object stops every command that loads the index: say what mends it.
fn with_repair_hint(e: Error) -> Error {
    if e.kind() == ErrorKind::Corrupt {
        Error::msg(
            ErrorKind::Corrupt,
            format!(
                "{e}. Every command needs the whole index; `backstop repair index` rebuilds \
                 it from the packs' own headers"
            ),
        )
    } else {
        e
    }
}

/// A backup whose snapshot cannot be read, and why.
pub(crate) type DamagedBackup = (BackupId, Error);

/// Logs each damaged backup, what was done without it, and how to be rid of it.
pub(crate) fn warn_damaged(damaged: &[DamagedBackup], without: &str) {
    for (id, error) in damaged {
        tracing::warn!(
            "backup {id} cannot be read, {without}: {error}; it cannot be restored: delete it \
             (`backstop delete {id}`) unless the object can be mended from a copy"
        );
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// This host's offset from UTC at `unix`, in seconds east: its system time zone (`TZ`, else
/// `/etc/localtime`), daylight saving included; `None` when that cannot be found.
pub(crate) fn utc_offset_at(unix: i64) -> Option<i32> {
    let zone = jiff::tz::TimeZone::try_system().ok()?;
    let at = jiff::Timestamp::from_second(unix).ok()?;
    Some(zone.to_offset(at).seconds())
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

fn snapshot_key(id: BackupId, suffix: &str) -> String {
    format!("snapshots/{id:010}-{suffix}")
}

/// The most blobs one index object lists (a pack's entries are never split, so an object may
/// hold a few more). An object is encoded in memory at about 100 bytes a blob before
/// compression; a backup of a million page-sized blobs writes several objects of a few MiB
/// each instead of one that needs ~200 MiB to build (measured: the index of 84,000 blobs was
/// the largest allocation of a 1 GiB backup, 24 MB).
const INDEX_OBJECT_ENTRIES: usize = 16_384;

/// How many of `packs` go into the next index object: packs until [`INDEX_OBJECT_ENTRIES`]
/// blobs are reached, and at least one.
fn index_batch_len(packs: &[IndexPack]) -> usize {
    let mut entries = 0;
    for (n, pack) in packs.iter().enumerate() {
        entries += pack.entries.len();
        if entries >= INDEX_OBJECT_ENTRIES {
            return n + 1;
        }
    }
    packs.len()
}

/// How many index objects [`Repository::write_index`] writes for `packs`.
pub(crate) fn index_object_count(packs: &[IndexPack]) -> usize {
    let mut count = 0;
    let mut rest = packs;
    while !rest.is_empty() {
        rest = rest.get(index_batch_len(rest)..).unwrap_or_default();
        count += 1;
    }
    count
}

/// What a deleted backup leaves behind so that its id is never given out again
/// (`snapshots/<id>-<random>.deleted`, empty).
const TOMBSTONE_SUFFIX: &str = ".deleted";

/// A key under `snapshots/`: a backup, or the tombstone of a deleted one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SnapshotEntry {
    id: BackupId,
    key: String,
    tombstone: bool,
}

fn parse_snapshot_key(key: &str) -> Option<SnapshotEntry> {
    let name = key.strip_prefix("snapshots/")?;
    let (num, rest) = name.split_once('-')?;
    Some(SnapshotEntry {
        id: num.parse().ok()?,
        key: key.to_owned(),
        tombstone: rest.ends_with(TOMBSTONE_SUFFIX),
    })
}

impl Repository {
    pub(crate) fn exists(store: &dyn Store) -> Result<bool> {
        match store.head(CONFIG_KEY) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// `AlreadyExists` when the store holds a repository: `init` never overwrites one.
    fn refuse_existing(store: &dyn Store) -> Result<()> {
        if Self::exists(store)? {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                RepoError::Exists {
                    location: store.describe(),
                },
            ));
        }
        Ok(())
    }

    pub(crate) fn init(
        store: Arc<dyn Store>,
        init: &InitOptions,
        options: EngineOptions,
    ) -> Result<Self> {
        Self::refuse_existing(&*store)?;
        // FastCDC's own bounds: 64 B..1 MiB, 256 B..4 MiB, 1 KiB..16 MiB.
        let sizes_ok = (64..=1 << 20).contains(&init.chunk_min)
            && (256..=4 << 20).contains(&init.chunk_avg)
            && (1024..=16 << 20).contains(&init.chunk_max)
            && init.chunk_min <= init.chunk_avg
            && init.chunk_avg <= init.chunk_max;
        if !sizes_ok {
            return Err(Error::msg(
                ErrorKind::InvalidInput,
                format!(
                    "chunk sizes {}/{}/{} are out of range: min 64 B..1 MiB, average 256 B..4 MiB, \
                     max 1 KiB..16 MiB, and min <= average <= max",
                    init.chunk_min, init.chunk_avg, init.chunk_max
                ),
            ));
        }
        // An unencrypted repository records no cipher.
        let cipher = init
            .password
            .as_ref()
            .map(|_| init.cipher.unwrap_or_else(Cipher::fastest_here));
        let config = Config {
            version: format::FORMAT_VERSION,
            id: random_hex(16),
            encrypted: init.password.is_some(),
            chunk_min: init.chunk_min,
            chunk_avg: init.chunk_avg,
            chunk_max: init.chunk_max,
            pack_size: init.pack_size.max(1024 * 1024),
            created_unix: now_unix(),
            cipher: cipher.unwrap_or_default(),
        };
        let master = init.password.as_ref().map(|_| MasterKey::random());
        Self::create(store, config, master, init, options)
    }

    /// Creates a repository that shares `from`'s master key, format version, cipher and chunk
    /// sizes, so that a blob has the same id in both and a stored unit of one is a stored unit
    /// of the other: what `copy` needs to move backups between them without decoding and
    /// encoding every blob again (blob ids are keyed hashes). The new repository's key file
    /// wraps that key with `init.password` (which an encrypted `from` requires); pack size and
    /// key derivation cost come from `init`.
    pub(crate) fn init_sharing(
        store: Arc<dyn Store>,
        from: &Repository,
        init: &InitOptions,
        options: EngineOptions,
    ) -> Result<Self> {
        Self::refuse_existing(&*store)?;
        match (from.key.is_some(), init.password.is_some()) {
            (true, false) => {
                return Err(Error::msg(
                    ErrorKind::InvalidInput,
                    format!(
                        "`{}` is encrypted, and a repository that shares its key needs a \
                         password of its own for it; give one",
                        from.store.describe()
                    ),
                ));
            }
            (false, true) => {
                return Err(Error::msg(
                    ErrorKind::InvalidInput,
                    format!(
                        "`{}` is not encrypted, so neither is a repository that shares its \
                         key; create it without a password",
                        from.store.describe()
                    ),
                ));
            }
            _ => {}
        }
        let config = Config {
            id: random_hex(16),
            pack_size: init.pack_size.max(1024 * 1024),
            created_unix: now_unix(),
            ..from.config.clone()
        };
        Self::create(store, config, from.key.clone(), init, options)
    }

    /// Writes a new repository's key file (when it has a master key: wrapped with
    /// `init.password` and `init`'s derivation cost), then its config.
    fn create(
        store: Arc<dyn Store>,
        config: Config,
        master: Option<MasterKey>,
        init: &InitOptions,
        options: EngineOptions,
    ) -> Result<Self> {
        let (key, key_id) = match (master, &init.password) {
            (Some(master), Some(password)) => {
                let master = repository_key(master, &config)?;
                let file = KeyFile::wrap(
                    &master,
                    password,
                    &config.id,
                    init.kdf_memory_kib,
                    init.kdf_iterations,
                )
                .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
                let id = write_key_file(&*store, &file)?;
                (Some(master), Some(id))
            }
            (Some(_), None) => {
                return Err(Error::msg(
                    ErrorKind::InvalidInput,
                    "an encrypted repository needs a password to wrap its key",
                ));
            }
            (None, _) => (None, None),
        };
        // The config goes last: until it exists, the store holds no repository.
        let bytes = format::seal_object(ObjectType::Config, &config, None);
        store.put(CONFIG_KEY, &bytes, PutMode::Create)?;
        let store: Arc<dyn Store> = match &options.cache_dir {
            Some(dir) => Arc::new(backstop_store::CachingStore::new(
                store,
                dir.join(&config.id),
            )),
            None => store,
        };
        Ok(Self {
            store,
            config,
            key,
            key_id,
            options,
            index: RwLock::new(Index::default()),
        })
    }

    pub(crate) fn open(store: Arc<dyn Store>, options: EngineOptions) -> Result<Self> {
        let repo = Self::open_unindexed(store, options)?;
        repo.reload_index()?;
        Ok(repo)
    }

    /// Opens the repository (config, key) without loading its index: for `repair index`, which
    /// must work where the index cannot be loaded.
    pub(crate) fn open_unindexed(store: Arc<dyn Store>, options: EngineOptions) -> Result<Self> {
        let bytes = match store.get(CONFIG_KEY) {
            Ok(b) => b,
            Err(e) if e.kind() == StoreErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    RepoError::Missing {
                        location: store.describe(),
                    },
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let config: Config = format::open_object("config", ObjectType::Config, &bytes, None)
            .map_err(|e| damaged(CONFIG_KEY, e))?;
        if config.version > format::FORMAT_VERSION {
            return Err(damaged(
                CONFIG_KEY,
                FormatError::NewerVersion {
                    what: "repository config",
                    found: config.version,
                },
            ));
        }
        // Immutable metadata (index and snapshot objects) is served from the local cache when
        // there is one; the store stays the truth for everything else.
        let store: Arc<dyn Store> = match &options.cache_dir {
            Some(dir) => {
                let removed = backstop_store::remove_unused_caches(dir, &config.id, CACHE_UNUSED);
                if removed > 0 {
                    tracing::info!(removed, "removed caches of repositories unused for 30 days");
                }
                Arc::new(backstop_store::CachingStore::new(
                    store,
                    dir.join(&config.id),
                ))
            }
            None => store,
        };
        let (key, key_id) = if config.encrypted {
            let password = options
                .password
                .as_deref()
                .ok_or_else(|| Error::new(ErrorKind::WrongKey, RepoError::PasswordNeeded))?;
            let (k, id) = unlock(&*store, password, &config.id)?;
            (Some(repository_key(k, &config)?), Some(id))
        } else {
            (None, None)
        };
        Ok(Self {
            store,
            config,
            key,
            key_id,
            options,
            index: RwLock::new(Index::default()),
        })
    }

    /// The format version of the objects this build writes into the repository
    /// ([`format::write_version`]).
    pub(crate) fn write_version(&self) -> u32 {
        format::write_version(self.config.version)
    }

    /// Seals an object to write into the repository: with its key, in its version.
    pub(crate) fn seal_object<T: serde::Serialize>(&self, kind: ObjectType, value: &T) -> Vec<u8> {
        format::seal_object_as(kind, value, self.key(), self.write_version())
    }

    pub(crate) fn key(&self) -> Option<&MasterKey> {
        self.key.as_ref()
    }

    pub(crate) fn info(&self) -> RepositoryInfo {
        RepositoryInfo {
            location: self.store.describe(),
            version: self.config.version,
            id: self.config.id.clone(),
            encrypted: self.config.encrypted,
            cipher: self.key.as_ref().map(MasterKey::cipher),
            chunking: (
                self.config.chunk_min,
                self.config.chunk_avg,
                self.config.chunk_max,
            ),
            pack_size: self.config.pack_size,
        }
    }

    /// Reads every index object into memory (replacing what was loaded).
    pub(crate) fn reload_index(&self) -> Result<()> {
        let mut index = Index::default();
        let mut keys: Vec<_> = self
            .store
            .list("index/")?
            .into_iter()
            .map(|m| m.key)
            .collect();
        keys.sort();
        {
            let index = self.index_read();
            if index.as_loaded && index.objects == keys {
                // Index objects are named by their content: the same keys hold the same
                // entries, so a reload would build what is here already, and hold two copies of
                // a large index while it did (56 MB each for a million blobs). An index that
                // gained packs since (a backup that failed before its index object was
                // written) is reloaded, so that those packs' blobs are forgotten.
                return Ok(());
            }
        }
        // Fetching, decrypting and decoding an object is most of the work and independent of
        // the others: a window of objects at a time goes to the worker threads, and their
        // entries are loaded in key order (which decides among duplicates). The window bounds
        // the decoded objects held at once.
        let window = self.options.worker_threads().max(1);
        for batch in keys.chunks(window) {
            let files: Vec<Result<Option<IndexFile>>> = std::thread::scope(|scope| {
                let handles: Vec<_> = batch
                    .iter()
                    .map(|key| scope.spawn(move || self.read_index_object(key)))
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| {
                        handle
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect()
            });
            for (key, file) in batch.iter().zip(files) {
                if let Some(file) = file.map_err(with_repair_hint)? {
                    index.load_packs(file.packs);
                    index.objects.push(key.clone());
                }
            }
        }
        index.finish_loading();
        index.as_loaded = true;
        *self
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = index;
        Ok(())
    }

    /// One index object, decoded; `None` when it is gone (deleted by a concurrent gc after it
    /// wrote the replacement index).
    pub(crate) fn read_index_object(&self, key: &str) -> Result<Option<IndexFile>> {
        let read = self.read_metadata(key, |bytes| {
            format::open_object("index", ObjectType::Index, bytes, self.key())
                .map_err(|e| damaged(key, e))
        });
        match read {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the object under `key` and decodes it with `decode`. If the bytes are damaged
    /// (`decode` fails with [`ErrorKind::Corrupt`]) and a cache on the way held a copy
    /// ([`Store::evict`] dropped it), the object is read once more from the store: a cache
    /// keeps what it fetched, and without this a copy fetched while the repository's object
    /// was damaged would stay damaged after the object was mended (one cache entry serves
    /// every copy of a repository). Only when the store's own bytes are damaged too is the
    /// damage reported, and then no cache keeps them.
    fn read_metadata<T>(&self, key: &str, decode: impl Fn(&[u8]) -> Result<T>) -> Result<T> {
        let first = decode(&self.store.get(key)?);
        match first {
            Err(e) if e.kind() == ErrorKind::Corrupt && self.store.evict(key) => {
                tracing::warn!(
                    key,
                    error = %e,
                    "a cached copy of an object is damaged; reading the repository's copy"
                );
                let again = self
                    .store
                    .get(key)
                    .map_err(Error::from)
                    .and_then(|bytes| decode(&bytes));
                if matches!(&again, Err(e) if e.kind() == ErrorKind::Corrupt) {
                    self.store.evict(key);
                }
                again
            }
            other => other,
        }
    }

    pub(crate) fn index_read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn index_write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes index objects listing `packs`, each with at most about
    /// [`INDEX_OBJECT_ENTRIES`] blobs; returns their keys.
    pub(crate) fn write_index(&self, packs: Vec<IndexPack>) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut rest = packs;
        while !rest.is_empty() {
            let tail = rest.split_off(index_batch_len(&rest));
            keys.push(self.write_index_object(std::mem::replace(&mut rest, tail))?);
        }
        Ok(keys)
    }

    fn write_index_object(&self, packs: Vec<IndexPack>) -> Result<String> {
        let bytes = if self.write_version() >= format::TABLE_INDEX_VERSION {
            self.seal_object(ObjectType::Index, &IndexFile { packs })
        } else {
            let file = format::IndexFileOfMaps {
                packs: packs
                    .iter()
                    .map(|p| format::IndexPackOfMaps {
                        id: p.id,
                        size: p.size,
                        entries: &p.entries,
                    })
                    .collect(),
            };
            self.seal_object(ObjectType::Index, &file)
        };
        let key = format!("index/{}", format::ContentId::hash(&bytes).to_hex());
        self.store.put(&key, &bytes, PutMode::Overwrite)?;
        Ok(key)
    }

    /// Reads several blobs, each checked against its id, and returns them in the order of
    /// `ids`. Blobs lying close together in a pack are fetched with one ranged read, and up to
    /// [`EngineOptions::with_threads`] reads are in flight at once: on an object store every
    /// read is a round trip, and the list blobs of a large page file read one by one would
    /// cost one each. The caller bounds the memory by how many ids it asks for.
    pub(crate) fn read_blobs(&self, ids: &[BlobId], context: &str) -> Result<Vec<Vec<u8>>> {
        let mut located = Vec::with_capacity(ids.len());
        {
            let index = self.index_read();
            for (at, id) in ids.iter().enumerate() {
                let (pack, entry) = index.locate(id).ok_or_else(|| missing_blob(id, context))?;
                located.push((pack, entry, at));
            }
        }
        located.sort_unstable_by_key(|(pack, entry, _)| (*pack, entry.offset));
        // Each run, and where in `ids` each of its blobs belongs.
        let mut runs: Vec<(ReadRun, Vec<usize>)> = Vec::new();
        for (pack, entry, at) in located {
            let one = ReadRun::new(pack, entry);
            if let Some((run, places)) = runs.last_mut() {
                if run.try_span(&one, JOINED_READ_MAX, JOINED_READ_GAP) {
                    places.push(at);
                    continue;
                }
            }
            runs.push((one, vec![at]));
        }
        let read_one = |(run, places): &(ReadRun, Vec<usize>)| -> Result<Vec<Placed>> {
            let mut got = Vec::with_capacity(places.len());
            let read = self.read_run(run, |_, raw| {
                got.push(raw.to_vec());
                Ok::<(), std::convert::Infallible>(())
            });
            match read {
                Ok(()) => Ok(places.iter().copied().zip(got).collect()),
                Err(RunError::Repo(e)) => Err(e),
                Err(RunError::Sink(never)) => match never {},
            }
        };
        let threads = self.options.worker_threads().min(runs.len());
        let read: Vec<Result<Vec<Placed>>> = if threads <= 1 {
            runs.iter().map(read_one).collect()
        } else {
            let next = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut done = Vec::new();
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(run) = runs.get(i) else { break done };
                                done.push(read_one(run));
                            }
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        let mut out: Vec<Option<Vec<u8>>> = vec![None; ids.len()];
        for blobs in read {
            for (at, blob) in blobs? {
                out[at] = Some(blob);
            }
        }
        out.into_iter()
            .zip(ids)
            .map(|(blob, id)| {
                blob.ok_or_else(|| {
                    Error::msg(
                        ErrorKind::Corrupt,
                        format!("a joined read of {context} did not return blob {id}"),
                    )
                })
            })
            .collect()
    }

    /// Stored bytes of a pack.
    pub(crate) fn read_stored(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        self.store.get_range(key, range).map_err(pack_read_error)
    }

    /// Reads a run of adjacent blobs of one pack with one ranged read and hands each blob to
    /// `sink` in order, after it has been authenticated, decoded and checked against its id.
    ///
    /// Blobs are decoded one at a time, so the memory a run takes is its stored bytes plus one
    /// decoded unit ([`ReadRun::memory_bound`]), whatever the blobs decompress to. A frame
    /// shared by consecutive entries is decoded once.
    pub(crate) fn read_run<E>(
        &self,
        run: &ReadRun,
        sink: impl FnMut(&PackEntry, &[u8]) -> Result<(), E>,
    ) -> Result<(), RunError<E>> {
        self.read_run_cached(run, &mut FrameCache::new(0), sink)
    }

    /// [`Repository::read_run`], keeping decoded frames in `frames`: after an incremental
    /// backup a page file's blocks alternate between old and new frames, and without the cache
    /// every return to an old frame would read and decode it again.
    pub(crate) fn read_run_cached<E>(
        &self,
        run: &ReadRun,
        frames: &mut FrameCache,
        mut sink: impl FnMut(&PackEntry, &[u8]) -> Result<(), E>,
    ) -> Result<(), RunError<E>> {
        let key = format::pack_key(run.pack);
        // Only the stored units the cache lacks are read. After an incremental backup most
        // runs of a page file begin in the old frame the previous run ended in: reading the
        // whole run fetched that frame's bytes again (165 MiB read to restore the bench's
        // SQLite file from a 141 MB repository, 135 MiB now).
        let needed = run
            .entries
            .iter()
            .filter(|e| e.within.is_none() || !frames.contains(run.pack, e.offset))
            .map(|e| {
                (
                    u64::from(e.offset),
                    u64::from(e.offset) + u64::from(e.length),
                )
            })
            .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)));
        let (start, bytes) = match needed {
            Some((first, end)) => {
                let first = first.max(run.start);
                let end = end.min(run.start + run.len);
                (first, self.read_stored(&key, first..end)?)
            }
            None => (run.start, Vec::new()),
        };
        // The stored bytes of an entry: from the read above, or, for a frame that was cached
        // when the run began but has been pushed out since, read again on its own.
        let stored_of = |entry: &PackEntry| -> Result<std::borrow::Cow<'_, [u8]>> {
            let from = u64::from(entry.offset);
            let in_read = from
                .checked_sub(start)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| bytes.get(at..at.checked_add(entry.length as usize)?));
            match in_read {
                Some(stored) => Ok(std::borrow::Cow::Borrowed(stored)),
                None if from >= run.start
                    && from + u64::from(entry.length) <= run.start + run.len =>
                {
                    let stored = self.read_stored(&key, from..from + u64::from(entry.length))?;
                    Ok(std::borrow::Cow::Owned(stored))
                }
                None => Err(damaged(
                    &key,
                    FormatError::Truncated {
                        what: "pack",
                        len: bytes.len(),
                    },
                )),
            }
        };
        // The decoded frame of the previous entry, by its offset in the pack.
        let mut frame: Option<(u32, Vec<u8>)> = None;
        for entry in &run.entries {
            if entry.within.is_some() {
                if frame
                    .as_ref()
                    .is_none_or(|(offset, _)| *offset != entry.offset)
                {
                    if let Some((offset, unit)) = frame.take() {
                        frames.put(run.pack, offset, unit);
                    }
                    let unit = match frames.take(run.pack, entry.offset) {
                        Some(unit) => unit,
                        None => format::decode_unit(entry, &stored_of(entry)?, self.key())
                            .map_err(|e| damaged(&key, e))?,
                    };
                    frame = Some((entry.offset, unit));
                }
                let unit = frame.as_ref().map_or(&[][..], |(_, unit)| unit.as_slice());
                let raw = format::blob_from_unit(entry, unit, self.key())
                    .map_err(|e| damaged(&key, e))?;
                sink(entry, raw).map_err(RunError::Sink)?;
            } else if self.key().is_none() && !entry.compressed {
                // Stored as is: check the bytes where they lie instead of copying them.
                let stored = stored_of(entry)?;
                format::check_blob(entry, &stored, None).map_err(|e| damaged(&key, e))?;
                sink(entry, &stored).map_err(RunError::Sink)?;
            } else {
                let raw = format::decode_blob(entry, &stored_of(entry)?, self.key())
                    .map_err(|e| damaged(&key, e))?;
                sink(entry, &raw).map_err(RunError::Sink)?;
            }
        }
        if let Some((offset, unit)) = frame {
            frames.put(run.pack, offset, unit);
        }
        Ok(())
    }

    // ---- snapshots ------------------------------------------------------------------------

    /// Everything under `snapshots/`, backups and tombstones, sorted by backup id.
    fn snapshot_entries(&self) -> Result<Vec<SnapshotEntry>> {
        let mut entries: Vec<SnapshotEntry> = self
            .store
            .list("snapshots/")?
            .into_iter()
            .filter_map(|m| parse_snapshot_key(&m.key))
            .collect();
        entries.sort();
        Ok(entries)
    }

    /// Keys of all snapshots, sorted by backup id.
    pub(crate) fn snapshot_keys(&self) -> Result<Vec<(BackupId, String)>> {
        Ok(self
            .snapshot_entries()?
            .into_iter()
            .filter(|e| !e.tombstone)
            .map(|e| (e.id, e.key))
            .collect())
    }

    /// The snapshot of backup `id` under `key`. The id it holds must be the key's: sealing
    /// proves only that the repository's key holder wrote the object, and whoever can write to
    /// the store could otherwise copy an old snapshot to a key with a larger id, where it would
    /// pass for the latest backup (a backup that moves to a fresh id seals itself again with
    /// that id, see [`Repository::commit_snapshot`]).
    fn read_snapshot(&self, id: BackupId, key: &str) -> Result<Snapshot> {
        let snapshot = self.read_metadata(key, |bytes| {
            let snapshot: Snapshot =
                format::open_object("snapshot", ObjectType::Snapshot, bytes, self.key())
                    .map_err(|e| damaged(key, e))?;
            if snapshot.id != id {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    RepoError::SnapshotMoved {
                        key: key.to_owned(),
                        expected: id,
                        found: snapshot.id,
                    },
                ));
            }
            Ok(snapshot)
        })?;
        if snapshot.version > format::FORMAT_VERSION {
            return Err(damaged(
                key,
                FormatError::NewerVersion {
                    what: "snapshot",
                    found: snapshot.version,
                },
            ));
        }
        Ok(snapshot)
    }

    pub(crate) fn load_all_snapshots(&self) -> Result<Vec<Snapshot>> {
        self.snapshot_keys()?
            .iter()
            .map(|(id, key)| self.read_snapshot(*id, key))
            .collect()
    }

    /// The snapshots that read, and the backups whose snapshot is damaged (with why), for the
    /// work that can go on without them: listing, choosing a parent, verifying the rest. One
    /// damaged object must not stop every later backup. gc cannot (it would take a damaged
    /// backup's data for unused) and reads them all with [`Self::load_all_snapshots`].
    pub(crate) fn load_readable_snapshots(&self) -> Result<(Vec<Snapshot>, Vec<DamagedBackup>)> {
        let mut readable = Vec::new();
        let mut damaged = Vec::new();
        for (id, key) in self.snapshot_keys()? {
            match self.read_snapshot(id, &key) {
                Ok(snapshot) => readable.push(snapshot),
                Err(e) if e.kind() == ErrorKind::Corrupt => damaged.push((id, e)),
                Err(e) => return Err(e),
            }
        }
        Ok((readable, damaged))
    }

    pub(crate) fn load_snapshot(&self, which: BackupSelector) -> Result<Snapshot> {
        let keys = self.snapshot_keys()?;
        let (id, key) = match which {
            BackupSelector::Latest => return self.load_latest(&keys),
            BackupSelector::Id(id) => keys
                .iter()
                .find(|(i, _)| *i == id)
                .ok_or_else(|| Error::new(ErrorKind::NotFound, RepoError::NoBackup(id)))?,
        };
        self.read_snapshot(*id, key)
    }

    /// The newest backup whose snapshot reads. A newer one that is damaged is passed over with
    /// a warning (as `list` leaves it out; `verify` reports it), and one deleted since the
    /// listing is passed over silently; if every snapshot is damaged, the newest one's error.
    fn load_latest(&self, keys: &[(BackupId, String)]) -> Result<Snapshot> {
        let mut damaged: Vec<(BackupId, Error)> = Vec::new();
        for (id, key) in keys.iter().rev() {
            match self.read_snapshot(*id, key) {
                Ok(snapshot) => {
                    for (newer, error) in &damaged {
                        tracing::warn!(
                            "backup {newer} cannot be read ({error}); `latest` is backup {}, \
                             the newest that can: delete {newer} (`backstop delete {newer}`) \
                             unless its snapshot can be mended from a copy",
                            snapshot.id
                        );
                    }
                    return Ok(snapshot);
                }
                Err(e) if e.kind() == ErrorKind::Corrupt => damaged.push((*id, e)),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        match damaged.into_iter().next() {
            Some((_, newest)) => Err(newest),
            None => Err(Error::new(ErrorKind::NotFound, RepoError::NoBackups)),
        }
    }

    /// Every backup whose snapshot reads; a damaged one is left out with a warning.
    pub(crate) fn list_backups(&self) -> Result<Vec<BackupInfo>> {
        let (readable, damaged) = self.load_readable_snapshots()?;
        warn_damaged(&damaged, "left out of the list");
        Ok(readable.iter().map(Snapshot::info).collect())
    }

    /// Writes a snapshot as the next backup id and returns the id. The write is the commit
    /// point. Ids are never reused: the next id is 1 + the largest id of a backup or of a
    /// deleted backup's tombstone. Two writers that pick the same id both keep their
    /// snapshot, and any writer that sees another at its id moves to a fresh one (see
    /// docs/format.md, "Backup ids").
    pub(crate) fn commit_snapshot(&self, snapshot: &mut Snapshot) -> Result<BackupId> {
        // 128 random bits: two snapshots never share a key, even on a store that ignores
        // create-if-absent.
        let suffix = random_hex(16);
        let mut previous: Option<String> = None;
        for attempt in 0..16u32 {
            let next = self.snapshot_entries()?.last().map_or(1, |e| e.id + 1);
            snapshot.id = next;
            let bytes = self.seal_object(ObjectType::Snapshot, &*snapshot);
            let key = snapshot_key(next, &suffix);
            self.store.put(&key, &bytes, PutMode::Create)?;
            // The backup is now visible under `key`; only then may an earlier copy go.
            if let Some(old) = previous.take() {
                self.store.delete(&old)?;
            }
            // A tombstone at `next` counts too: a backup deleted meanwhile had this id.
            let others = self
                .store
                .list(&format!("snapshots/{next:010}-"))?
                .into_iter()
                .filter(|m| m.key != key)
                .count();
            // Of two backups that wrote the same id, the one that listed second sees the
            // other (each lists after its own put), so at least one moves; both may, and then
            // both check again at their new ids.
            if others == 0 {
                return Ok(next);
            }
            previous = Some(key);
            let jitter = rand::random::<u64>() % (20 * u64::from(attempt + 1));
            std::thread::sleep(std::time::Duration::from_millis(jitter));
        }
        Err(Error::msg(
            ErrorKind::Transient,
            "could not find a free backup id after 16 attempts (many backups committing at \
             once); the backup is stored under a duplicate id, retry or run `backstop list`",
        ))
    }

    /// Deletes a backup's snapshot, leaving a tombstone so the id is not given out again.
    ///
    /// Order matters for that: the tombstone is written before the snapshot goes, and a
    /// tombstone is removed only when a larger id was listed. Entries with an id ≥ n never
    /// all vanish once one was seen (a moving backup writes its new key before deleting
    /// the old one), so the largest id ever committed stays visible.
    pub(crate) fn delete_snapshot(&self, id: BackupId) -> Result<()> {
        let entries = self.snapshot_entries()?;
        let matching: Vec<&SnapshotEntry> = entries
            .iter()
            .filter(|e| e.id == id && !e.tombstone)
            .collect();
        if matching.is_empty() {
            return Err(Error::new(ErrorKind::NotFound, RepoError::NoBackup(id)));
        }
        let largest = entries.last().map_or(id, |e| e.id);
        if id >= largest {
            let tombstone = format!("{}{TOMBSTONE_SUFFIX}", snapshot_key(id, &random_hex(16)));
            self.store.put(&tombstone, &[], PutMode::Create)?;
        }
        for entry in matching {
            self.store.delete(&entry.key)?;
        }
        // Tombstones below the largest id listed guard nothing any more.
        for entry in entries.iter().filter(|e| e.tombstone && e.id < largest) {
            match self.store.delete(&entry.key) {
                Ok(()) => {}
                Err(e) if e.kind() == StoreErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Every node of a snapshot, in backup order, its chunk list read in full.
    pub(crate) fn for_each_node(
        &self,
        snapshot: &Snapshot,
        f: impl FnMut(Node) -> Result<()>,
    ) -> Result<()> {
        self.read_nodes(snapshot, false, f)
    }

    /// [`Repository::for_each_node`]; `keep_bases` also keeps what a backup needs to patch
    /// the nodes' chunk lists (`page_list::resolve`).
    pub(crate) fn read_nodes(
        &self,
        snapshot: &Snapshot,
        keep_bases: bool,
        mut f: impl FnMut(Node) -> Result<()>,
    ) -> Result<()> {
        let mut next = 0;
        while next < snapshot.tree.len() {
            next += self.read_node_window(snapshot, next, TREE_WINDOW_BYTES, keep_bases, &mut f)?;
        }
        Ok(())
    }

    /// The nodes of the next `window_bytes` (raw) of `snapshot`'s tree blobs from the `from`th
    /// on, as [`Repository::read_nodes`] gives them; returns how many tree blobs it read (at
    /// least one, none only when none are left).
    pub(crate) fn read_node_window(
        &self,
        snapshot: &Snapshot,
        from: usize,
        window_bytes: u64,
        keep_bases: bool,
        f: &mut impl FnMut(Node) -> Result<()>,
    ) -> Result<usize> {
        let rest = snapshot.tree.get(from..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(0);
        }
        // Tree blobs are fetched a few MiB at a time (joined reads, several in flight), not one
        // round trip each.
        let (window, _) = rest.split_at(self.tree_window(rest, window_bytes));
        let context = format!("backup {}", snapshot.id);
        let raws = self.read_blobs(window, &context)?;
        for (tree_id, raw) in window.iter().zip(raws) {
            self.read_tree_nodes(snapshot, tree_id, &raw, keep_bases, f)?;
        }
        Ok(window.len())
    }

    /// How many of `trees` (at least one) to fetch together: as many as add up to
    /// `window_bytes` of raw bytes by the index.
    fn tree_window(&self, trees: &[BlobId], window_bytes: u64) -> usize {
        let index = self.index_read();
        let mut bytes = 0u64;
        let mut count = 0;
        for id in trees {
            let Some((_, entry)) = index.locate(id) else {
                // Reading it reports it missing.
                break;
            };
            bytes += u64::from(entry.raw_length);
            if count > 0 && bytes > window_bytes {
                break;
            }
            count += 1;
        }
        count.max(1)
    }

    /// Decodes one tree blob and hands its nodes, chunk lists resolved, to `f`.
    fn read_tree_nodes(
        &self,
        snapshot: &Snapshot,
        tree_id: &BlobId,
        raw: &[u8],
        keep_bases: bool,
        f: &mut impl FnMut(Node) -> Result<()>,
    ) -> Result<()> {
        let tree: TreeBlob = ciborium::from_reader(raw).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                RepoError::Damaged {
                    key: format!("tree {tree_id}"),
                    source: FormatError::Decode {
                        what: "tree",
                        detail: e.to_string(),
                    },
                },
            )
        })?;
        for mut node in tree.nodes {
            if !node.lists.is_empty() {
                self.resolve_lists(snapshot, &mut node, keep_bases)?;
            }
            f(node)?;
        }
        Ok(())
    }

    /// The full ids the index holds for a list's short id.
    fn lookup_short_id(&self, prefix: &[u8]) -> crate::page_list::Found {
        {
            let index = self.index_read();
            let found = index.sorted_with_prefix(prefix);
            if found != crate::page_list::Found::None || index.recent.is_empty() {
                return found;
            }
        }
        // Not loaded from an index object: a blob this process added (a library user reading
        // a backup it has just written). Merged once, so later lookups find them directly.
        let mut index = self.index_write();
        index.merge_recent();
        index.sorted_with_prefix(prefix)
    }

    /// Reads the chunk list of a node that keeps it in list blobs (`page_list`).
    fn resolve_lists(&self, snapshot: &Snapshot, node: &mut Node, keep_bases: bool) -> Result<()> {
        let context = format!("backup {}, `{}`", snapshot.id, node.path);
        crate::page_list::resolve(
            node,
            keep_bases,
            |b| self.read_blobs(b, &context),
            |prefix| self.lookup_short_id(prefix),
        )
        .map_err(|e| match e {
            crate::page_list::ResolveError::Fetch(e) => e,
            crate::page_list::ResolveError::List(e) => Error::msg(
                ErrorKind::Corrupt,
                format!("the chunk list of {context}: {e}"),
            ),
        })
    }

    pub(crate) fn file_infos(&self, snapshot: &Snapshot) -> Result<Vec<FileInfo>> {
        let mut out = Vec::new();
        self.for_each_node(snapshot, |n| {
            out.push(FileInfo {
                kind: match n.kind {
                    format::NODE_DIR => "dir",
                    format::NODE_SYMLINK => "symlink",
                    _ => "file",
                }
                .into(),
                path: n.path,
                size: n.size,
                mode: n.mode,
                mtime_ns: n.mtime_ns,
                chunks: n.chunks.len() as u64,
                target: n.target,
            });
            Ok(())
        })?;
        Ok(out)
    }

    // ---- keys -----------------------------------------------------------------------------

    pub(crate) fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for meta in self.store.list("keys/")? {
            let file = read_key_file(&*self.store, &meta.key)?;
            let id = meta.key.trim_start_matches("keys/").to_owned();
            out.push(KeyInfo {
                current: self.key_id.as_deref() == Some(id.as_str()),
                id,
                created_unix: file.created_unix,
                host: file.host,
            });
        }
        out.sort_by(|a, b| a.created_unix.cmp(&b.created_unix).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn require_key(&self) -> Result<&MasterKey> {
        self.key.as_ref().ok_or_else(|| {
            Error::msg(
                ErrorKind::InvalidInput,
                "the repository is not encrypted: it has no keys",
            )
        })
    }

    pub(crate) fn add_key(&self, password: &str) -> Result<String> {
        let master = self.require_key()?;
        let file = KeyFile::wrap(master, password, &self.config.id, 32 * 1024, 3)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
        write_key_file(&*self.store, &file)
    }

    /// Removes the key whose id is `id` or starts with it (a unique prefix, as `key list`
    /// shows ids in full and people copy the start); returns the full id.
    pub(crate) fn remove_key(&self, id: &str) -> Result<String> {
        self.require_key()?;
        let keys = self.store.list("keys/")?;
        let matching: Vec<&str> = keys
            .iter()
            .filter_map(|m| m.key.strip_prefix("keys/"))
            .filter(|name| !id.is_empty() && name.starts_with(id))
            .collect();
        let id = match matching.as_slice() {
            [one] => (*one).to_owned(),
            [] => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    RepoError::Key(id.into(), "does not exist".into()),
                ));
            }
            many => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    RepoError::Key(
                        id.into(),
                        format!("is the start of {} key ids; give more of it", many.len()),
                    ),
                ));
            }
        };
        if self.key_id.as_deref() == Some(id.as_str()) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                RepoError::Key(
                    id,
                    "is the key in use; open with another password to remove it".into(),
                ),
            ));
        }
        if keys.len() <= 1 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                RepoError::Key(
                    id,
                    "is the last key; removing it would lock the data away".into(),
                ),
            ));
        }
        self.store.delete(&format!("keys/{id}"))?;
        Ok(id)
    }

    pub(crate) fn change_password(&self, password: &str) -> Result<String> {
        let new_id = self.add_key(password)?;
        if let Some(old) = &self.key_id {
            self.store.delete(&format!("keys/{old}"))?;
        }
        Ok(new_id)
    }
}

fn write_key_file(store: &dyn Store, file: &KeyFile) -> Result<String> {
    let bytes = serde_json::to_vec_pretty(file)
        .map_err(|e| Error::msg(ErrorKind::Io, format!("encoding a key file: {e}")))?;
    let id = format::ContentId::hash(&bytes).to_hex();
    store.put(&format!("keys/{id}"), &bytes, PutMode::Create)?;
    Ok(id)
}

fn read_key_file(store: &dyn Store, key: &str) -> Result<KeyFile> {
    let bytes = store.get(key)?;
    let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| {
        damaged(
            key,
            FormatError::Decode {
                what: "key file",
                detail: e.to_string(),
            },
        )
    })?;
    if format::ContentId::hash(&bytes).to_hex() != key.trim_start_matches("keys/") {
        return Err(damaged(key, FormatError::Checksum { what: "key file" }));
    }
    Ok(file)
}

/// The master key as the repository of `config` uses it: sealing with its cipher, and naming
/// blobs by 16 bytes from version 6.
fn repository_key(key: MasterKey, config: &Config) -> Result<MasterKey> {
    let cipher = config.cipher;
    let key = key.with_cipher(cipher).ok_or_else(|| {
        Error::msg(
            ErrorKind::Incompatible,
            format!("the crypto library of this build refused a {cipher} key"),
        )
    })?;
    Ok(key.with_short_ids(format::write_version(config.version) >= format::SHORT_BLOB_ID_VERSION))
}

fn unlock(store: &dyn Store, password: &str, repo_id: &str) -> Result<(MasterKey, String)> {
    let keys = store.list("keys/")?;
    let mut damaged_keys = Vec::new();
    for meta in &keys {
        let file = match read_key_file(store, &meta.key) {
            Ok(f) => f,
            Err(e) => {
                damaged_keys.push(e);
                continue;
            }
        };
        match file.unwrap_key(password, repo_id) {
            Ok(k) => return Ok((k, meta.key.trim_start_matches("keys/").to_owned())),
            Err(KeyFileError::WrongPassword) => {}
            Err(KeyFileError::Version(v)) => {
                return Err(damaged(
                    &meta.key,
                    FormatError::NewerVersion {
                        what: "key file",
                        found: v,
                    },
                ));
            }
            Err(e @ KeyFileError::Damaged(_)) => {
                damaged_keys.push(Error::new(ErrorKind::Corrupt, e));
            }
        }
    }
    if keys.is_empty() || damaged_keys.len() == keys.len() {
        if let Some(e) = damaged_keys.into_iter().next() {
            return Err(e);
        }
        return Err(Error::msg(
            ErrorKind::Corrupt,
            "the repository has no key files (`keys/`)",
        ));
    }
    Err(Error::new(
        ErrorKind::WrongKey,
        RepoError::WrongPassword { count: keys.len() },
    ))
}

impl Snapshot {
    pub(crate) fn info(&self) -> BackupInfo {
        BackupInfo {
            id: self.id,
            time_unix: self.time_unix,
            utc_offset_secs: self.utc_offset_secs,
            duration_ms: self.duration_ms,
            host: self.host.clone(),
            source_kind: self.source_kind.clone(),
            source: self.source.clone(),
            tags: self.tags.clone(),
            message: self.message.clone(),
            metadata: self.metadata.clone(),
            files: self.stats.files,
            dirs: self.stats.dirs,
            size: self.stats.size,
            bytes_read: self.stats.bytes_read,
            bytes_added: self.stats.bytes_added,
            bytes_added_raw: self.stats.bytes_added_raw,
            blobs_added: self.stats.blobs_added,
            parent: self.parent,
            source_meta: self.source_meta.clone(),
            pause_window: self.pause_window,
            warnings: self.warnings.clone(),
            restore_kind: self.restore_profile.kind.clone(),
        }
    }
}

/// An unencrypted repository in memory, for unit tests.
#[cfg(test)]
pub(crate) fn memory_repository() -> Repository {
    let store = std::sync::Arc::new(backstop_store::MemoryStore::new());
    Repository::init(store, &InitOptions::default(), EngineOptions::default())
        .unwrap_or_else(|e| panic!("a repository in memory: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use backstop_store::MemoryStore;

    use super::*;
    use crate::format::{BlobKind, ContentId, IndexPack, PackEntry};
    use crate::options::{EngineOptions, InitOptions};

    #[test]
    fn the_frame_cache_evicts_the_least_recently_used_frame() {
        let pack = ContentId::hash(b"pack");
        let mut frames = FrameCache::new(300);
        frames.put(pack, 0, vec![0; 100]);
        frames.put(pack, 100, vec![1; 100]);
        frames.put(pack, 200, vec![2; 100]);
        // The first frame is used again (a new frame of changed pages between old ones), so
        // the next frame pushes out the second, not the first.
        let first = frames.take(pack, 0).unwrap();
        assert_eq!(first[0], 0);
        frames.put(pack, 0, first);
        frames.put(pack, 300, vec![3; 100]);
        assert!(frames.contains(pack, 0));
        assert!(!frames.contains(pack, 100));
        assert!(frames.contains(pack, 200) && frames.contains(pack, 300));
    }

    #[test]
    fn every_loaded_blob_is_found_through_the_fanout_and_no_other() {
        for (packs, per_pack) in [(0, 0), (1, 1), (1, 3), (3, 7), (40, 250)] {
            let mut index = Index::default();
            let mut loaded = synthetic_packs(packs, per_pack);
            // Ids at both ends of the id space land in the first and the last bucket.
            if let Some(pack) = loaded.first_mut() {
                let edge = pack.entries[0];
                pack.entries.push(PackEntry {
                    id: ContentId([0; 32]),
                    ..edge
                });
                pack.entries.push(PackEntry {
                    id: ContentId([0xff; 32]),
                    ..edge
                });
            }
            let ids: Vec<BlobId> = loaded
                .iter()
                .flat_map(|p| p.entries.iter().map(|e| e.id))
                .collect();
            index.load_packs(loaded);
            index.finish_loading();
            assert_eq!(index.sorted.count(), ids.len());
            for id in &ids {
                assert!(
                    index.contains(id),
                    "{} not found among {}",
                    id.to_hex(),
                    ids.len()
                );
            }
            for absent in 0..200 {
                let id = ContentId::hash(format!("absent {absent}").as_bytes());
                assert!(!index.contains(&id));
            }
            // The table narrows a lookup to a handful of ids, not the whole vector.
            if ids.len() > 1000 {
                let widest = index.sorted.widest_bucket();
                assert!(widest.is_some_and(|w| w <= 32), "widest bucket {widest:?}");
            }
        }
    }

    /// `packs` packs of `per_pack` made-up blobs each (the packs themselves are not written).
    fn synthetic_packs(packs: usize, per_pack: usize) -> Vec<IndexPack> {
        (0..packs)
            .map(|p| IndexPack {
                id: ContentId::hash(format!("pack {p}").as_bytes()),
                size: (per_pack * 100) as u64,
                entries: (0..per_pack)
                    .map(|b| PackEntry {
                        id: ContentId::hash(format!("blob {p}/{b}").as_bytes()),
                        kind: BlobKind::Data,
                        offset: (b * 100) as u32,
                        length: 100,
                        raw_length: 100,
                        compressed: false,
                        within: None,
                    })
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn blobs_this_process_adds_stay_found_after_moving_into_the_sorted_vector() {
        let mut index = Index::default();
        let loaded = synthetic_packs(3, 1000);
        index.load_packs(loaded.clone());
        index.finish_loading();
        // Enough packs to move the map into the vector twice, and one pack repeated.
        let mut added = synthetic_packs(80, 1000);
        added.drain(..3);
        added.push(loaded[0].clone());
        for pack in &added {
            index.add_pack(pack);
            assert!(index.recent.len() < RECENT_MAX);
        }
        assert!(index.sorted.count() > 2 * RECENT_MAX);
        let every = || {
            loaded
                .iter()
                .chain(&added)
                .flat_map(|p| p.entries.iter().map(|e| (p.id, e)))
        };
        for (pack, e) in every() {
            assert_eq!(index.locate(&e.id).unwrap(), (pack, *e));
        }
        assert_eq!(index.iter().count(), 80 * 1000);
        // Lookups by short id search the vector only (the repository merges the rest first).
        index.merge_recent();
        for (_, e) in every() {
            let found = index.sorted_with_prefix(&e.id.0[..16]);
            assert_eq!(found, crate::page_list::Found::One(e.id));
        }
    }

    #[test]
    fn a_reload_reads_nothing_again_unless_the_objects_or_the_packs_in_memory_changed() {
        let store = backstop_store::CountingStore::new(MemoryStore::new());
        let counter = store.counter();
        let init = InitOptions::default()
            .with_password("pw")
            .with_kdf(8 * 1024, 1);
        let repo = Repository::init(
            Arc::new(store),
            &init,
            EngineOptions::default().with_password("pw"),
        )
        .unwrap();
        let packs = synthetic_packs(4, 100);
        repo.write_index(packs[..2].to_vec()).unwrap();
        let gets = || counter.counts().gets;
        repo.reload_index().unwrap();
        let after_load = gets();
        repo.reload_index().unwrap();
        assert_eq!(gets(), after_load, "an unchanged index was read again");
        // A new object (another process's backup) is loaded.
        repo.write_index(packs[2..3].to_vec()).unwrap();
        repo.reload_index().unwrap();
        assert!(gets() > after_load);
        let third = &packs[2].entries[0].id;
        assert!(repo.index_read().contains(third));
        // A pack this process added without an index object (its backup failed) is forgotten.
        let orphan = &packs[3];
        repo.index_write().add_pack(orphan);
        assert!(repo.index_read().contains(&orphan.entries[0].id));
        repo.reload_index().unwrap();
        assert!(!repo.index_read().contains(&orphan.entries[0].id));
        assert!(repo.index_read().contains(third));
    }

    #[test]
    fn a_large_index_is_written_as_several_objects_that_load_as_one() {
        let store = MemoryStore::new();
        let init = InitOptions::default()
            .with_password("pw")
            .with_kdf(8 * 1024, 1);
        let repo = Repository::init(
            Arc::new(store.clone()),
            &init,
            EngineOptions::default().with_password("pw"),
        )
        .unwrap();
        // 40 packs of 1,000 blobs: objects of 17, 17 and 6 packs.
        let packs = synthetic_packs(40, 1000);
        assert_eq!(index_object_count(&packs), 3);
        let keys = repo.write_index(packs.clone()).unwrap();
        assert_eq!(keys.len(), 3);
        let listed = store
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("index/"))
            .count();
        assert_eq!(listed, 3);
        repo.reload_index().unwrap();
        let index = repo.index_read();
        for pack in &packs {
            for entry in &pack.entries {
                assert!(
                    index.contains(&entry.id),
                    "blob {} is not indexed",
                    entry.id.to_hex()
                );
            }
        }
        // A pack's entries are never split, and a small list stays one object.
        assert_eq!(index_object_count(&synthetic_packs(1, 40_000)), 1);
        assert_eq!(index_object_count(&synthetic_packs(5, 10)), 1);
        assert_eq!(index_object_count(&[]), 0);
    }
}
