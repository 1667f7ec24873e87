//! EventStore (EventStoreDB / KurrentDB) database directories, backed up hot by file copy in the
//! order EventStore's documentation gives, and restored with `truncate.chk` = `chaser.chk`.
//!
//! # The procedure
//!
//! EventStore's checkpoints say how far the data is valid: `writer.chk` is the end of the
//! durable transaction log, `chaser.chk` how far it has been read back and indexed, and the
//! index's own checkpoints say how far the index covers the log. Every writer makes its data
//! durable before it advances its checkpoint. So a copy that takes each checkpoint **before** the
//! data it describes holds data at least as new as the checkpoint says, which is all EventStore
//! needs to open the copy: the phases are, strictly one after another,
//!
//! 1. **index checkpoints**: `index/**/*.chk` (the stream-existence filter's checkpoint and
//!    the like) and `index/indexmap`, the index's map, which records the log position the index
//!    covers (its prepare/commit checkpoint) and the table files it consists of;
//! 2. **index**: the rest of the index directory (table files, filter data), so a restore needs
//!    no index rebuild;
//! 3. **checkpoints**: every `*.chk` of the database directory (`writer.chk`, `chaser.chk`,
//!    `epoch.chk`, `truncate.chk`, `proposal.chk`, …);
//! 4. **chunks**: of each `chunk-X.Y` (or `chunkX.Y`) only the highest version `Y`; a scavenge
//!    writes version `Y+1` and removes `Y`, and the versions are interchangeable. Completed chunks
//!    (wholly below `writer.chk`) never change, so they are [`ChangeModel::Immutable`] with an
//!    identity of name, size, the chunk id from the header and the MD5 from the footer: a chunk
//!    already stored is never read again. The chunk being written is read as it is now
//!    ([`ChangeModel::Any`]; [`ChangeModel::AppendOnly`] up to its current size when the file is
//!    not preallocated); bytes past `writer.chk` are ignored by EventStore on restore;
//! 5. **other files**: anything else in the directory (scavenge temp files excepted).
//!
//! Index table files are opened when the index is listed, before `indexmap` is read, and the
//! listing is retried until every table `indexmap` names is held open; chunk files are opened when
//! they are listed. An index merge or a scavenge that deletes a file during the backup thus
//! cannot remove what the copy needs (the open descriptor keeps it readable). At most
//! [`EventStoreSource::with_max_open_files`] files are held this way; beyond that, chunks are
//! opened when read, and one removed by a scavenge in between fails the backup with a message
//! saying so.
//!
//! # Restore
//!
//! The files come back as stored; the fix-up then writes `truncate.chk` as a byte copy of
//! `chaser.chk`, so EventStore truncates the log to what the chaser had verified when the
//! checkpoints were copied.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{
    CancelToken, ChangeModel, Content, Entry, EntryKind, FsIdentity, Phase, RestoreParams,
    RestoreProfile, Session, SessionContext, SessionOutcome, Source, SourceError,
};

/// Size of a chunk file's header, bytes.
const CHUNK_HEADER_SIZE: u64 = 128;
/// Size of a chunk file's footer, bytes.
const CHUNK_FOOTER_SIZE: u64 = 128;
/// How often the index snapshot is retried when `indexmap` names a table that is not held.
const INDEX_ATTEMPTS: usize = 5;

/// Applies the eventstore restore fix-ups to `target`: `truncate.chk` becomes a byte copy of
/// `chaser.chk`.
pub(crate) fn restore_fixup(
    _profile: &RestoreProfile,
    target: &Path,
    _params: &RestoreParams,
) -> Result<Vec<String>, SourceError> {
    // The tree comes from the backup: neither checkpoint may be reached through a symlink.
    let bytes = crate::restored::read(target, "chaser.chk")?.ok_or_else(|| {
        SourceError::Procedure(format!(
            "the restored tree `{}` has no chaser.chk, so truncate.chk cannot be written; \
             this backup is not of an EventStore database directory (restore with --raw to \
             get the files as stored)",
            target.display()
        ))
    })?;
    let mode = crate::restored::lookup(target, "chaser.chk", crate::restored::Need::File)?
        .1
        .map_or(0o644, |md| md.mode() & 0o7777);
    let tmp = "truncate.chk.backstop-tmp";
    crate::restored::write(target, tmp, &bytes, mode)?;
    crate::restored::rename(target, tmp, "truncate.chk")?;
    crate::restored::sync_dir(target)?;
    let position = checkpoint_value(&bytes).map_or_else(
        || format!("{} bytes", bytes.len()),
        |p| format!("position {p}"),
    );
    Ok(vec![format!(
        "wrote truncate.chk as a copy of chaser.chk ({position})"
    )])
}

/// An EventStore database directory (with its `index` directory inside it, the default layout).
#[derive(Clone, Debug)]
pub struct EventStoreSource {
    db_dir: PathBuf,
    max_open_files: usize,
}

impl EventStoreSource {
    /// A source for `db_dir`.
    pub fn new(db_dir: impl Into<PathBuf>) -> Self {
        Self {
            db_dir: db_dir.into(),
            max_open_files: 512,
        }
    }

    /// How many index and chunk files a session may hold open to keep them readable while an
    /// index merge or a scavenge removes them (default 512; keep it well below `ulimit -n`).
    #[must_use]
    pub fn with_max_open_files(mut self, max: usize) -> Self {
        self.max_open_files = max;
        self
    }

    /// The database directory.
    pub fn db_dir(&self) -> &Path {
        &self.db_dir
    }
}

impl Source for EventStoreSource {
    fn kind(&self) -> &str {
        "eventstore"
    }

    fn identity(&self) -> String {
        std::fs::canonicalize(&self.db_dir)
            .unwrap_or_else(|_| self.db_dir.clone())
            .to_string_lossy()
            .into_owned()
    }

    fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        let md = std::fs::metadata(&self.db_dir).map_err(|e| {
            SourceError::io("opening the EventStore database directory", &self.db_dir, e)
        })?;
        if !md.is_dir() {
            return Err(SourceError::Procedure(format!(
                "`{}` is not a directory; give the EventStore database directory (the one with \
                 writer.chk and the chunk files)",
                self.db_dir.display()
            )));
        }
        if !self.db_dir.join("writer.chk").is_file() {
            return Err(SourceError::Procedure(format!(
                "`{}` has no writer.chk, so it is not an EventStore database directory (give \
                 the `db` directory with writer.chk and the chunk files)",
                self.db_dir.display()
            )));
        }
        Ok(Box::new(EventStoreSession {
            db_dir: self.db_dir.clone(),
            max_open_files: self.max_open_files,
            cancel: ctx.cancel.clone(),
            step: 0,
            held: Vec::new(),
            open_files: 0,
            index_rest: Vec::new(),
            writer: None,
            warnings: Vec::new(),
            meta: BTreeMap::new(),
        }))
    }
}

/// A file the session reads through [`Session::open`].
enum HeldFile {
    /// Opened when listed, so it stays readable if it is deleted meanwhile.
    Open { file: Arc<File>, path: PathBuf },
    /// Opened when read (the open-file budget was used up).
    Lazy(PathBuf),
}

struct EventStoreSession {
    db_dir: PathBuf,
    max_open_files: usize,
    cancel: CancelToken,
    step: u8,
    held: Vec<HeldFile>,
    /// How many of `held` are open descriptors.
    open_files: usize,
    /// Phase 2, prepared together with phase 1 so that the tables are held before `indexmap`
    /// is read.
    index_rest: Vec<Entry>,
    /// `writer.chk` as copied in phase 3.
    writer: Option<i64>,
    warnings: Vec<String>,
    meta: BTreeMap<String, String>,
}

impl Session for EventStoreSession {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        if self.cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        let step = self.step;
        self.step = self.step.saturating_add(1);
        let phase = match step {
            0 => Phase::new("index checkpoints", self.snapshot_index()?),
            1 => Phase::new("index", std::mem::take(&mut self.index_rest)),
            2 => Phase::new("checkpoints", self.checkpoints()?),
            3 => Phase::new("chunks", self.chunks()?),
            4 => Phase::new("other files", self.other_files()?),
            _ => return Ok(None),
        };
        tracing::debug!(phase = %phase.name, entries = phase.entries.len(), "eventstore phase");
        Ok(Some(phase))
    }

    fn open(&self, handle: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        let held = usize::try_from(handle)
            .ok()
            .and_then(|i| self.held.get(i))
            .ok_or_else(|| {
                SourceError::Procedure(format!(
                    "eventstore session has no file with handle {handle}"
                ))
            })?;
        match held {
            HeldFile::Open { file, path } => {
                tracing::trace!(path = %path.display(), "reading held file");
                Ok(Box::new(PositionalReader {
                    file: Arc::clone(file),
                    pos: 0,
                }))
            }
            HeldFile::Lazy(path) => match File::open(path) {
                Ok(file) => Ok(Box::new(file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(SourceError::Procedure(format!(
                        "`{}` was removed (by a scavenge or an index merge) while the backup ran, \
                         and it was not held open because more than {} files are held; run the \
                         backup again outside a scavenge, or raise the open-file limit",
                        path.display(),
                        self.max_open_files
                    )))
                }
                Err(e) => Err(SourceError::io("opening", path, e)),
            },
        }
    }

    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        let mut profile = RestoreProfile::new("eventstore");
        if let Some(chaser) = self.meta.get("eventstore.chaser") {
            profile = profile.with_param("chaser", chaser.clone());
        }
        Ok(SessionOutcome {
            restore_profile: profile,
            source_meta: self.meta,
            pause_window: None,
            warnings: self.warnings,
        })
    }
}

impl EventStoreSession {
    fn hold(&mut self, file: File, path: PathBuf) -> u64 {
        let held = if self.open_files < self.max_open_files {
            self.open_files += 1;
            HeldFile::Open {
                file: Arc::new(file),
                path,
            }
        } else {
            HeldFile::Lazy(path)
        };
        self.held.push(held);
        (self.held.len() - 1) as u64
    }

    /// Phase 1, and phase 2 prepared: the index tables are opened, then the index's checkpoint
    /// files are read; retried until `indexmap` names only tables that are held.
    fn snapshot_index(&mut self) -> Result<Vec<Entry>, SourceError> {
        let index_dir = self.db_dir.join("index");
        if !index_dir.is_dir() {
            self.warnings.push(
                "the database directory has no `index` directory; EventStore will build the \
                 index when the restored database starts"
                    .into(),
            );
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        let snapshot = loop {
            attempt += 1;
            if self.cancel.is_cancelled() {
                return Err(SourceError::Cancelled);
            }
            let snapshot = IndexSnapshot::take(&index_dir)?;
            let missing = snapshot.missing_tables();
            if missing.is_empty() {
                break snapshot;
            }
            if attempt >= INDEX_ATTEMPTS {
                let warning = format!(
                    "index/indexmap names tables that were removed while the index was copied \
                     ({}), {INDEX_ATTEMPTS} times in a row; EventStore will rebuild the index \
                     when the restored database starts",
                    missing.join(", ")
                );
                tracing::warn!("{warning}");
                self.warnings.push(warning);
                break snapshot;
            }
            tracing::debug!(
                ?missing,
                attempt,
                "index changed while listed; listing again"
            );
        };
        let mut phase = snapshot.dirs;
        for (rel, bytes, md) in snapshot.checkpoints {
            phase.push(bytes_entry(rel, bytes, &md));
        }
        let mut rest = Vec::new();
        for table in snapshot.tables {
            let change = if is_table_name(&table.rel) {
                // Index tables are written once under a fresh GUID name and never modified.
                ChangeModel::Immutable {
                    identity: Some(format!("{}:{}", table.rel, table.md.len())),
                }
            } else {
                ChangeModel::Any
            };
            let mut entry = file_entry(table.rel, &table.md, change);
            entry.content = Content::Session(self.hold(table.file, table.path));
            rest.push(entry);
        }
        self.index_rest = rest;
        Ok(phase)
    }

    /// Phase 3: every `*.chk` of the database directory, read now.
    fn checkpoints(&mut self) -> Result<Vec<Entry>, SourceError> {
        let mut entries = Vec::new();
        for (name, path) in list_dir(&self.db_dir)? {
            if !name.ends_with(".chk") {
                continue;
            }
            let Some((bytes, md)) = read_if_file(&path)? else {
                continue;
            };
            if let Some(value) = checkpoint_value(&bytes) {
                let key = name.trim_end_matches(".chk");
                self.meta
                    .insert(format!("eventstore.{key}"), value.to_string());
                if name == "writer.chk" {
                    self.writer = Some(value);
                }
            }
            entries.push(bytes_entry(name, bytes, &md));
        }
        if self.writer.is_none() {
            return Err(SourceError::Procedure(format!(
                "`{}` has no readable 8-byte writer.chk; it is not an EventStore database \
                 directory, or it is damaged",
                self.db_dir.display()
            )));
        }
        Ok(entries)
    }

    /// Phase 4: the newest version of every chunk, listed (and opened) after the checkpoints
    /// were copied.
    fn chunks(&mut self) -> Result<Vec<Entry>, SourceError> {
        let writer = self.writer.unwrap_or(0);
        let mut latest = latest_chunks(&self.db_dir)?;
        let numbers: Vec<u32> = latest.keys().copied().collect();
        let mut entries = Vec::new();
        let mut old_versions = 0u64;
        for number in numbers {
            if self.cancel.is_cancelled() {
                return Err(SourceError::Cancelled);
            }
            let Some(mut chunk) = latest.remove(&number) else {
                continue;
            };
            old_versions += chunk.older;
            // A scavenge may replace the file between the listing and the open: look again.
            let mut attempt = 0;
            let file = loop {
                match File::open(&chunk.path) {
                    Ok(file) => break Some(file),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 5 => {
                        attempt += 1;
                        match latest_chunks(&self.db_dir)?.remove(&number) {
                            Some(newer) => chunk = newer,
                            None => break None,
                        }
                    }
                    Err(e) => return Err(SourceError::io("opening", &chunk.path, e)),
                }
            };
            let Some(file) = file else {
                self.warnings
                    .push(format!("chunk {number} vanished while it was listed"));
                continue;
            };
            let md = file
                .metadata()
                .map_err(|e| SourceError::io("reading metadata of", &chunk.path, e))?;
            let change = self.chunk_change(&chunk, &file, md.len(), writer)?;
            let mut entry = file_entry(chunk.name.clone(), &md, change);
            entry.content = Content::Session(self.hold(file, chunk.path));
            entries.push(entry);
        }
        self.meta
            .insert("eventstore.chunks".into(), entries.len().to_string());
        if old_versions > 0 {
            tracing::debug!(old_versions, "older chunk versions left out");
        }
        Ok(entries)
    }

    /// How a chunk file may change while read: completed chunks (wholly below `writer.chk`)
    /// are immutable; the chunk being written is not.
    fn chunk_change(
        &mut self,
        chunk: &ChunkFile,
        file: &File,
        len: u64,
        writer: i64,
    ) -> Result<ChangeModel, SourceError> {
        let mut header = [0u8; CHUNK_HEADER_SIZE as usize];
        if len < CHUNK_HEADER_SIZE + CHUNK_FOOTER_SIZE {
            // Being created right now; whatever it holds is past writer.chk.
            return Ok(ChangeModel::Any);
        }
        file.read_exact_at(&mut header, 0)
            .map_err(|e| SourceError::io("reading the header of", &chunk.path, e))?;
        let Some(header) = ChunkHeader::parse(&header) else {
            self.warnings.push(format!(
                "`{}` has a header this version does not understand; it is read in full every time",
                chunk.name
            ));
            return Ok(ChangeModel::Any);
        };
        let chunk_size = i64::from(header.chunk_size);
        let end_position = (i64::from(header.end_number) + 1).saturating_mul(chunk_size);
        if end_position > writer {
            // The chunk the writer is in (or one created ahead of it).
            let full = CHUNK_HEADER_SIZE + u64::from(header.chunk_size) + CHUNK_FOOTER_SIZE;
            return Ok(if len < full {
                ChangeModel::AppendOnly
            } else {
                ChangeModel::Any
            });
        }
        let mut footer = [0u8; CHUNK_FOOTER_SIZE as usize];
        file.read_exact_at(&mut footer, len - CHUNK_FOOTER_SIZE)
            .map_err(|e| SourceError::io("reading the footer of", &chunk.path, e))?;
        if footer[0] & 1 == 0 {
            self.warnings.push(format!(
                "`{}` lies below writer.chk but its footer does not mark it completed; it is \
                 stored as a changing file",
                chunk.name
            ));
            return Ok(ChangeModel::Any);
        }
        let md5 = footer.get(footer.len() - 16..).map(hex).unwrap_or_default();
        // The chunk id tells apart two files of the same name and size (a chunk rewritten after
        // a truncation); the footer's MD5 is EventStore's own checksum of the chunk.
        let identity = format!("{}:{}:{}:{}", chunk.name, len, hex(&header.chunk_id), md5);
        Ok(ChangeModel::Immutable {
            identity: Some(identity),
        })
    }

    /// Phase 5: anything else in the database directory.
    fn other_files(&mut self) -> Result<Vec<Entry>, SourceError> {
        let mut builder = globset::GlobSetBuilder::new();
        for pattern in [
            "*.chk",
            "index",
            "chunk-*.*",
            "chunk[0-9]*.*",
            "**/*.tmp",
            "*.backstop-tmp",
        ] {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| {
                    SourceError::Procedure(format!("bad built-in pattern `{pattern}`: {e}"))
                })?;
            builder.add(glob);
        }
        let excludes = builder
            .build()
            .map_err(|e| SourceError::Procedure(format!("bad built-in patterns: {e}")))?;
        let ctx = SessionContext {
            cancel: self.cancel.clone(),
            ..SessionContext::default()
        };
        crate::dir::walk_tree(&self.db_dir, &excludes, &ctx, &mut self.warnings)
    }
}

/// One read of the index directory: its tables held open, then its checkpoint files read.
struct IndexSnapshot {
    dirs: Vec<Entry>,
    tables: Vec<IndexTable>,
    checkpoints: Vec<(String, Vec<u8>, std::fs::Metadata)>,
}

struct IndexTable {
    rel: String,
    path: PathBuf,
    file: File,
    md: std::fs::Metadata,
}

impl IndexSnapshot {
    fn take(index_dir: &Path) -> Result<Self, SourceError> {
        let mut dirs = Vec::new();
        let mut checkpoint_paths = Vec::new();
        let mut tables = Vec::new();
        let mut stack = vec![(String::from("index"), index_dir.to_path_buf())];
        while let Some((rel_dir, dir)) = stack.pop() {
            if let Some(entry) = Entry::from_path(rel_dir.clone(), &dir, ChangeModel::Any)
                .ok()
                .flatten()
            {
                dirs.push(entry);
            }
            let mut subdirs = Vec::new();
            for (name, path) in list_dir(&dir)? {
                if name.ends_with(".tmp") {
                    continue;
                }
                let rel = format!("{rel_dir}/{name}");
                let Ok(md) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                if md.is_dir() {
                    subdirs.push((rel, path));
                } else if !md.is_file() {
                    continue;
                } else if name.ends_with(".chk") || rel == "index/indexmap" {
                    checkpoint_paths.push((rel, path));
                } else {
                    // Opened before the checkpoints are read: see the module docs.
                    match File::open(&path) {
                        Ok(file) => {
                            let md = file
                                .metadata()
                                .map_err(|e| SourceError::io("reading metadata of", &path, e))?;
                            tables.push(IndexTable {
                                rel,
                                path,
                                file,
                                md,
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(SourceError::io("opening", &path, e)),
                    }
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        let mut checkpoints = Vec::new();
        for (rel, path) in checkpoint_paths {
            if let Some((bytes, md)) = read_if_file(&path)? {
                checkpoints.push((rel, bytes, md));
            }
        }
        Ok(Self {
            dirs,
            tables,
            checkpoints,
        })
    }

    /// Tables `indexmap` names that are not held.
    fn missing_tables(&self) -> Vec<String> {
        let Some((_, indexmap, _)) = self
            .checkpoints
            .iter()
            .find(|(rel, _, _)| rel == "index/indexmap")
        else {
            return Vec::new();
        };
        let held: BTreeSet<&str> = self.tables.iter().map(|t| t.rel.as_str()).collect();
        indexmap_tables(&String::from_utf8_lossy(indexmap))
            .into_iter()
            .filter(|name| !held.contains(format!("index/{name}").as_str()))
            .collect()
    }
}

/// The table file names an `indexmap` lists (lines `level,position,file` after its header).
fn indexmap_tables(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(',');
            let (level, position, file) = (fields.next()?, fields.next()?, fields.next()?);
            let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            (fields.next().is_none() && numeric(level) && numeric(position) && !file.is_empty())
                .then(|| file.to_owned())
        })
        .collect()
}

/// Whether `rel` is an index table: a GUID-named file directly in `index/`.
fn is_table_name(rel: &str) -> bool {
    let Some(name) = rel.strip_prefix("index/") else {
        return false;
    };
    let hex_digits = name.bytes().filter(u8::is_ascii_hexdigit).count();
    !name.contains('/')
        && hex_digits == 32
        && name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// A chunk file name's number and version.
fn parse_chunk_name(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("chunk")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let (number, version) = rest.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(number) || !digits(version) {
        return None;
    }
    Some((number.parse().ok()?, version.parse().ok()?))
}

struct ChunkFile {
    name: String,
    path: PathBuf,
    version: u32,
    /// Older versions of the same chunk seen beside it (left out).
    older: u64,
}

/// The highest version of each chunk number in `db_dir`.
fn latest_chunks(db_dir: &Path) -> Result<BTreeMap<u32, ChunkFile>, SourceError> {
    let mut latest: BTreeMap<u32, ChunkFile> = BTreeMap::new();
    for (name, path) in list_dir(db_dir)? {
        let Some((number, version)) = parse_chunk_name(&name) else {
            continue;
        };
        match latest.get_mut(&number) {
            Some(seen) if seen.version >= version => seen.older += 1,
            Some(seen) => {
                *seen = ChunkFile {
                    name,
                    path,
                    version,
                    older: seen.older + 1,
                };
            }
            None => {
                latest.insert(
                    number,
                    ChunkFile {
                        name,
                        path,
                        version,
                        older: 0,
                    },
                );
            }
        }
    }
    Ok(latest)
}

/// The fields of a chunk header this source needs.
struct ChunkHeader {
    chunk_size: u32,
    end_number: u32,
    chunk_id: [u8; 16],
}

impl ChunkHeader {
    /// Parses EventStore's chunk header: file type, version, chunk size, start and end chunk
    /// numbers, scavenged flag, chunk id (little-endian).
    fn parse(bytes: &[u8]) -> Option<Self> {
        let i32_at = |at: usize| -> Option<i32> {
            Some(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        let chunk_size = u32::try_from(i32_at(2)?).ok().filter(|s| *s > 0)?;
        let start_number = u32::try_from(i32_at(6)?).ok()?;
        let end_number = u32::try_from(i32_at(10)?)
            .ok()
            .filter(|e| *e >= start_number)?;
        let chunk_id = bytes.get(18..34)?.try_into().ok()?;
        Some(Self {
            chunk_size,
            end_number,
            chunk_id,
        })
    }
}

/// A checkpoint file's value: an 8-byte little-endian position.
fn checkpoint_value(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names and paths in `dir`, sorted; names that are not UTF-8 are skipped.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, SourceError> {
    let read = std::fs::read_dir(dir).map_err(|e| SourceError::io("listing", dir, e))?;
    let mut items = Vec::new();
    for item in read {
        let item = item.map_err(|e| SourceError::io("listing", dir, e))?;
        if let Ok(name) = item.file_name().into_string() {
            items.push((name, item.path()));
        }
    }
    items.sort();
    Ok(items)
}

/// Reads a regular file whole, or `None` if it is gone or not a regular file.
fn read_if_file(path: &Path) -> Result<Option<(Vec<u8>, std::fs::Metadata)>, SourceError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SourceError::io("opening", path, e)),
    };
    let md = file
        .metadata()
        .map_err(|e| SourceError::io("reading metadata of", path, e))?;
    if !md.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| SourceError::io("reading", path, e))?;
    Ok(Some((bytes, md)))
}

fn mtime_ns(md: &std::fs::Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

/// An entry for a file whose metadata came from an open descriptor.
fn file_entry(path: String, md: &std::fs::Metadata, change: ChangeModel) -> Entry {
    let mtime = mtime_ns(md);
    Entry {
        path,
        kind: EntryKind::File,
        mode: md.mode() & 0o7777,
        mtime_ns: mtime,
        uid: md.uid(),
        gid: md.gid(),
        size: md.len(),
        change,
        content: Content::None,
        fs_identity: Some(FsIdentity {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: mtime,
            ctime_ns: md
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.ctime_nsec()),
        }),
    }
}

/// An entry for a checkpoint file read at a known moment.
fn bytes_entry(path: String, bytes: Vec<u8>, md: &std::fs::Metadata) -> Entry {
    let mut entry = Entry::bytes(path, bytes, md.mode() & 0o7777, mtime_ns(md));
    entry.uid = md.uid();
    entry.gid = md.gid();
    entry
}

/// Reads a shared open file from the start with positional reads, so several readers of the
/// same descriptor never disturb each other's offset.
struct PositionalReader {
    file: Arc<File>,
    pos: u64,
}

impl Read for PositionalReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_in_both_spellings() {
        assert_eq!(parse_chunk_name("chunk-000012.000003"), Some((12, 3)));
        assert_eq!(parse_chunk_name("chunk7.2"), Some((7, 2)));
        assert_eq!(parse_chunk_name("chunk-000012.000003.tmp"), None);
        assert_eq!(parse_chunk_name("chunk-.1"), None);
        assert_eq!(parse_chunk_name("writer.chk"), None);
    }

    #[test]
    fn indexmap_lists_its_tables() {
        let text =
            "0123456789ABCDEF0123456789ABCDEF\n2\n100/100\n8\n0,0,aaaa\n0,1,bbbb\n1,0,cccc\n";
        assert_eq!(indexmap_tables(text), ["aaaa", "bbbb", "cccc"]);
    }

    #[test]
    fn table_names_are_guids() {
        assert!(is_table_name("index/5e0e2a1c-8c4b-4a55-9d43-0a1f0c6d2b7e"));
        assert!(!is_table_name("index/indexmap"));
        assert!(!is_table_name(
            "index/stream-existence/5e0e2a1c8c4b4a559d430a1f0c6d2b7e"
        ));
    }

    /// A backup's tree that holds symlinks where the fix-up reads and writes checkpoints: the
    /// fix-up must refuse, and leave the files they point to alone.
    #[test]
    fn restore_fixup_never_writes_or_reads_through_a_stored_symlink() {
        let outer = tempfile::tempdir().unwrap();
        let victim = outer.path().join("victim");
        std::fs::write(&victim, b"original contents").unwrap();
        let target = outer.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("chaser.chk"), 42i64.to_le_bytes()).unwrap();
        std::os::unix::fs::symlink(&victim, target.join("truncate.chk.backstop-tmp")).unwrap();
        let params = RestoreParams::default();
        let profile = RestoreProfile::new("eventstore");
        let e = restore_fixup(&profile, &target, &params)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("symlink") && e.contains("truncate.chk.backstop-tmp"),
            "{e}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"original contents");

        // chaser.chk itself a link to a file outside: never read into truncate.chk.
        std::fs::remove_file(target.join("truncate.chk.backstop-tmp")).unwrap();
        std::fs::remove_file(target.join("chaser.chk")).unwrap();
        std::os::unix::fs::symlink(&victim, target.join("chaser.chk")).unwrap();
        let e = restore_fixup(&profile, &target, &params)
            .unwrap_err()
            .to_string();
        assert!(e.contains("symlink") && e.contains("chaser.chk"), "{e}");
        assert!(!target.join("truncate.chk").exists());

        // The ordinary case still works.
        std::fs::remove_file(target.join("chaser.chk")).unwrap();
        std::fs::write(target.join("chaser.chk"), 42i64.to_le_bytes()).unwrap();
        restore_fixup(&profile, &target, &params).unwrap();
        assert_eq!(
            std::fs::read(target.join("truncate.chk")).unwrap(),
            42i64.to_le_bytes()
        );
    }
}
