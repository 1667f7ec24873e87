//! The backup pipeline: source phases → read → chunk → hash → dedup → compress → seal → pack →
//! store, then the index, then the snapshot (the commit point).
//!
//! The calling thread walks the session's phases in order, reads each file, cuts it into chunks
//! and hashes them; chunks the repository lacks go through a bounded queue to worker threads that
//! compress and seal them, and on to one packer thread that assembles packs and uploads them.
//! Queues are bounded, so memory does not grow with the data: at most `2 × threads` chunks wait,
//! plus one pack being filled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use backstop_source::{
    ChangeModel, Content, Entry, EntryKind, Phase, Session, SessionContext, Source,
};
use backstop_store::PutMode;
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::chunk::{self, Chunking};
use crate::format::{
    self, BlobId, BlobKind, IndexPack, NODE_DIR, NODE_FILE, NODE_SYMLINK, Node, PackEntry,
    PackHeader, Snapshot, SnapshotStats, TreeBlob,
};
use crate::info::BackupInfo;
use crate::options::BackupOptions;
use crate::repo::{Repository, lock, nodes_by_path};
use crate::{Error, ErrorKind, Result};

/// Nodes per tree blob; about 100 bytes each plus 34 per chunk id.
const TREE_NODES_PER_BLOB: usize = 2048;
/// A file modified this close before it was read may change again within the same timestamp.
const RACY_WINDOW_NS: i64 = 2_000_000_000;

struct Job {
    id: BlobId,
    kind: BlobKind,
    data: Vec<u8>,
}

struct Sealed {
    id: BlobId,
    kind: BlobKind,
    stored: Vec<u8>,
    raw_length: u32,
    compressed: bool,
}

#[derive(Default)]
struct PackerStats {
    packs: Vec<IndexPack>,
    bytes_added: u64,
    bytes_added_raw: u64,
    blobs_added: u64,
}

/// Why a backup stopped: kept separately from the source's errors so the message says where.
#[derive(Debug, thiserror::Error)]
enum BackupError {
    #[error("reading `{path}` of the source")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("source path `{0}` is not a safe relative path")]
    BadPath(String),
}

pub(crate) fn create_backup(
    repo: &Repository,
    source: &mut dyn Source,
    options: &BackupOptions,
) -> Result<BackupInfo> {
    let started = Instant::now();
    let time_unix = crate::repo::now_unix();
    let lock = lock::acquire(&repo.store, false, "a backup")?;
    repo.reload_index()?;

    let source_kind = source.kind().to_owned();
    let source_identity = source.identity();
    let parent = find_parent(repo, &source_kind, &source_identity)?;
    let parent_nodes = match &parent {
        Some(p) => nodes_by_path(repo, p)?,
        None => BTreeMap::new(),
    };
    let parent_by_identity: HashMap<String, Node> = parent_nodes
        .values()
        .filter_map(|n| n.identity.clone().map(|i| (i, n.clone())))
        .collect();

    let ctx = SessionContext {
        cancel: options.cancel.clone(),
        parent_meta: parent.as_ref().map(|p| p.source_meta.clone()),
        full_read: options.full_read,
    };
    let session = source.begin(&ctx)?;

    let threads = repo.options.worker_threads();
    let level = repo.options.compression_level;
    let (job_tx, job_rx) = bounded::<Job>(threads * 2);
    let (sealed_tx, sealed_rx) = bounded::<Sealed>(threads * 2);
    let failed = AtomicBool::new(false);
    let store_error: Mutex<Option<Error>> = Mutex::new(None);

    let outcome = std::thread::scope(|scope| {
        for _ in 0..threads {
            let rx = job_rx.clone();
            let tx = sealed_tx.clone();
            scope.spawn(move || seal_worker(rx, tx, level, repo.key()));
        }
        drop(job_rx);
        drop(sealed_tx);
        let packer = scope.spawn(|| packer(repo, sealed_rx, &failed, &store_error));

        let mut walker = Walker {
            repo,
            options,
            job_tx: Some(job_tx),
            pending: HashSet::new(),
            parent_nodes: &parent_nodes,
            parent_by_identity: &parent_by_identity,
            tree: Vec::new(),
            tree_ids: Vec::new(),
            stats: SnapshotStats::default(),
            warnings: Vec::new(),
            failed: &failed,
            chunker: chunk::Chunker::default(),
        };
        let walked = walker.walk(session);
        let walked = walked.and_then(|outcome| walker.flush_tree().map(|()| outcome));
        let Walker {
            job_tx,
            tree_ids,
            stats,
            warnings,
            ..
        } = walker;
        drop(job_tx);
        let packed = packer
            .join()
            .unwrap_or_else(|_| Err(Error::msg(ErrorKind::Io, "the packer thread panicked")));
        (walked, packed, tree_ids, stats, warnings)
    });
    let (walked, packed, tree_ids, mut stats, mut warnings) = outcome;
    if let Some(err) = store_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        return Err(err);
    }
    let session_outcome = walked?;
    let packed = packed?;
    if options.cancel.is_cancelled() {
        return Err(Error::msg(
            ErrorKind::Cancelled,
            "the backup was cancelled; nothing was committed",
        ));
    }

    lock.check_held()?;
    if !packed.packs.is_empty() {
        repo.write_index(packed.packs)?;
    }
    stats.bytes_added = packed.bytes_added;
    stats.bytes_added_raw = packed.bytes_added_raw;
    stats.blobs_added = packed.blobs_added;
    warnings.extend(session_outcome.warnings);
    let pause_window = session_outcome
        .pause_window
        .map(|(a, b)| (unix_f64(a), unix_f64(b)));

    let mut snapshot = Snapshot {
        version: format::FORMAT_VERSION,
        id: 0,
        time_unix,
        duration_ms: started.elapsed().as_millis() as u64,
        host: options.host.clone().unwrap_or_else(crate::repo::hostname),
        source_kind,
        source: source_identity,
        tags: options.tags.clone(),
        message: options.message.clone(),
        metadata: options.metadata.clone(),
        tree: tree_ids,
        stats,
        parent: parent.as_ref().map(|p| p.id),
        source_meta: session_outcome.source_meta,
        pause_window,
        warnings,
        restore_profile: session_outcome.restore_profile,
    };
    lock.check_held()?;
    repo.commit_snapshot(&mut snapshot)?;
    drop(lock);
    Ok(snapshot.info())
}

fn unix_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn find_parent(repo: &Repository, kind: &str, identity: &str) -> Result<Option<Snapshot>> {
    let snapshots = repo.load_all_snapshots()?;
    Ok(snapshots
        .into_iter()
        .rev()
        .find(|s| s.source_kind == kind && s.source == identity))
}

fn seal_worker(
    rx: Receiver<Job>,
    tx: Sender<Sealed>,
    level: i32,
    key: Option<&crate::crypto::MasterKey>,
) {
    for job in rx {
        let (stored, compressed) = format::encode_blob(&job.data, level, key);
        let sealed = Sealed {
            id: job.id,
            kind: job.kind,
            stored,
            raw_length: job.data.len() as u32,
            compressed,
        };
        if tx.send(sealed).is_err() {
            return;
        }
    }
}

fn packer(
    repo: &Repository,
    rx: Receiver<Sealed>,
    failed: &AtomicBool,
    store_error: &Mutex<Option<Error>>,
) -> Result<PackerStats> {
    let target = repo.config.pack_size as usize;
    let mut stats = PackerStats::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut entries: Vec<PackEntry> = Vec::new();
    let flush = |buf: &mut Vec<u8>, entries: &mut Vec<PackEntry>, stats: &mut PackerStats| {
        if entries.is_empty() {
            return Ok(());
        }
        let header = PackHeader {
            entries: std::mem::take(entries),
        };
        let pack = format::finish_pack(std::mem::take(buf), &header, repo.key());
        let id = format::ContentId::hash(&pack);
        repo.store
            .put(&format::pack_key(id), &pack, PutMode::Overwrite)?;
        let index_pack = IndexPack {
            id,
            size: pack.len() as u64,
            entries: header.entries,
        };
        repo.index_write().add_pack(&index_pack);
        stats.bytes_added += pack.len() as u64;
        stats.packs.push(index_pack);
        Ok::<(), Error>(())
    };
    for sealed in rx {
        if failed.load(Ordering::SeqCst) {
            continue; // drain so the senders never block
        }
        let offset = buf.len() as u32;
        buf.extend_from_slice(&sealed.stored);
        entries.push(PackEntry {
            id: sealed.id,
            kind: sealed.kind,
            offset,
            length: sealed.stored.len() as u32,
            raw_length: sealed.raw_length,
            compressed: sealed.compressed,
        });
        stats.bytes_added_raw += u64::from(sealed.raw_length);
        stats.blobs_added += 1;
        if buf.len() >= target {
            if let Err(e) = flush(&mut buf, &mut entries, &mut stats) {
                failed.store(true, Ordering::SeqCst);
                *store_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            }
        }
    }
    if !failed.load(Ordering::SeqCst) {
        if let Err(e) = flush(&mut buf, &mut entries, &mut stats) {
            failed.store(true, Ordering::SeqCst);
            return Err(e);
        }
    }
    Ok(stats)
}

struct Walker<'a> {
    repo: &'a Repository,
    options: &'a BackupOptions,
    job_tx: Option<Sender<Job>>,
    pending: HashSet<BlobId>,
    parent_nodes: &'a BTreeMap<String, Node>,
    parent_by_identity: &'a HashMap<String, Node>,
    tree: Vec<Node>,
    tree_ids: Vec<BlobId>,
    stats: SnapshotStats,
    warnings: Vec<String>,
    failed: &'a AtomicBool,
    chunker: chunk::Chunker,
}

/// Stops a read when the backup is cancelled or the packer failed, and counts progress.
struct GuardedReader<'a, R> {
    inner: R,
    cancel: &'a backstop_source::CancelToken,
    failed: &'a AtomicBool,
    progress: &'a dyn crate::Progress,
    read: u64,
}

impl<R: Read> Read for GuardedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("cancelled"));
        }
        if self.failed.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the store failed"));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.progress.bytes(n as u64);
        Ok(n)
    }
}

impl Walker<'_> {
    fn walk(
        &mut self,
        mut session: Box<dyn Session + '_>,
    ) -> Result<backstop_source::SessionOutcome> {
        while let Some(phase) = session.next_phase()? {
            self.store_phase(&*session, phase)?;
        }
        Ok(session.finish()?)
    }

    fn check_running(&self) -> Result<()> {
        if self.options.cancel.is_cancelled() {
            return Err(Error::msg(
                ErrorKind::Cancelled,
                "the backup was cancelled; nothing was committed",
            ));
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::msg(ErrorKind::Io, "storing a pack failed"));
        }
        Ok(())
    }

    fn store_phase(&mut self, session: &dyn Session, phase: Phase) -> Result<()> {
        let bytes: u64 = phase.entries.iter().map(|e| e.size).sum();
        self.options
            .progress
            .phase(&phase.name, phase.entries.len() as u64, bytes);
        tracing::debug!(phase = %phase.name, entries = phase.entries.len(), "storing phase");
        for entry in phase.entries {
            self.check_running()?;
            if !is_safe_path(&entry.path) {
                return Err(Error::new(
                    ErrorKind::Source,
                    BackupError::BadPath(entry.path),
                ));
            }
            let node = match &entry.kind {
                EntryKind::Dir => {
                    self.stats.dirs += 1;
                    base_node(&entry, NODE_DIR)
                }
                EntryKind::Symlink { target } => {
                    let mut node = base_node(&entry, NODE_SYMLINK);
                    node.target = Some(target.clone());
                    node
                }
                EntryKind::File => match self.store_file(session, &entry)? {
                    Some(node) => {
                        self.stats.files += 1;
                        self.stats.size += node.size;
                        node
                    }
                    None => continue,
                },
            };
            self.push_node(node)?;
        }
        Ok(())
    }

    /// The parent's node for an entry, if it proves the file unchanged.
    fn unchanged_from_parent(&self, entry: &Entry) -> Option<Node> {
        let index = self.repo.index_read();
        let all_present = |n: &Node| n.chunks.iter().all(|c| index.contains(c));
        if let ChangeModel::Immutable {
            identity: Some(identity),
        } = &entry.change
        {
            if let Some(node) = self.parent_by_identity.get(identity) {
                if all_present(node) {
                    return Some(node.clone());
                }
            }
        }
        if self.options.full_read {
            return None;
        }
        let fs = entry.fs_identity?;
        let node = self.parent_nodes.get(&entry.path)?;
        let same = node.kind == NODE_FILE
            && !node.racy
            && node.fs == Some(fs)
            && node.size == entry.size
            && all_present(node);
        same.then(|| node.clone())
    }

    fn store_file(&mut self, session: &dyn Session, entry: &Entry) -> Result<Option<Node>> {
        self.options.progress.file(&entry.path);
        if let Some(parent) = self.unchanged_from_parent(entry) {
            self.options.progress.unchanged(&entry.path, parent.size);
            let mut node = base_node(entry, NODE_FILE);
            node.size = parent.size;
            node.chunks = parent.chunks;
            node.fs = entry.fs_identity.or(parent.fs);
            node.identity = identity_of(entry);
            node.racy = parent.racy;
            return Ok(Some(node));
        }
        let read_started_ns = now_ns();
        let reader: Box<dyn Read + Send> = match &entry.content {
            Content::None => Box::new(std::io::empty()),
            Content::Bytes(bytes) => Box::new(std::io::Cursor::new(bytes.clone())),
            Content::Session(handle) => session.open(*handle)?,
            Content::File(path) => match std::fs::File::open(path) {
                Ok(f) => Box::new(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let msg = format!("`{}` vanished before it was read; not stored", entry.path);
                    self.options.progress.warning(&msg);
                    self.warnings.push(msg);
                    return Ok(None);
                }
                Err(e) => return Err(crate::error::io_error("opening", path, e)),
            },
        };
        let reader: Box<dyn Read + Send> = if entry.change == ChangeModel::AppendOnly {
            Box::new(reader.take(entry.size))
        } else {
            reader
        };
        let mut guarded = GuardedReader {
            inner: reader,
            cancel: &self.options.cancel,
            failed: self.failed,
            progress: &*self.options.progress,
            read: 0,
        };
        let config = &self.repo.config;
        let cdc = (config.chunk_min, config.chunk_avg, config.chunk_max);
        let chunking = Chunking::for_change(&entry.change, cdc);
        let mut chunks = Vec::new();
        let key = self.repo.key();
        let mut send_error = false;
        let mut chunker = std::mem::take(&mut self.chunker);
        let result = chunker.for_each_chunk(&mut guarded, chunking, |data| {
            let id = format::blob_id(&data, key);
            chunks.push(id);
            if !self.repo.index_read().contains(&id) && self.pending.insert(id) {
                let sent = self.job_tx.as_ref().is_some_and(|tx| {
                    tx.send(Job {
                        id,
                        kind: BlobKind::Data,
                        data,
                    })
                    .is_ok()
                });
                if !sent {
                    send_error = true;
                    return Err(std::io::Error::other("the pipeline stopped"));
                }
            }
            Ok(())
        });
        self.chunker = chunker;
        let read = guarded.read;
        self.stats.bytes_read += read;
        if let Err(e) = result {
            self.check_running()?;
            if send_error {
                return Err(Error::msg(ErrorKind::Io, "the backup pipeline stopped"));
            }
            if e.kind() == std::io::ErrorKind::NotFound {
                let msg = format!("`{}` vanished while it was read; not stored", entry.path);
                self.warnings.push(msg);
                return Ok(None);
            }
            return Err(Error::new(
                ErrorKind::Source,
                BackupError::Read {
                    path: entry.path.clone(),
                    source: e,
                },
            ));
        }
        match entry.change {
            ChangeModel::AppendOnly if read < entry.size => {
                let msg = format!(
                    "`{}` shrank while it was read: {read} of the {} bytes expected were stored",
                    entry.path, entry.size
                );
                self.options.progress.warning(&msg);
                self.warnings.push(msg);
            }
            ChangeModel::Any if matches!(entry.content, Content::File(_)) && read != entry.size => {
                let msg = format!(
                    "`{}` changed size while it was read ({} bytes listed, {read} stored)",
                    entry.path, entry.size
                );
                self.options.progress.warning(&msg);
                self.warnings.push(msg);
            }
            _ => {}
        }
        let mut node = base_node(entry, NODE_FILE);
        node.size = read;
        node.chunks = chunks;
        node.fs = entry.fs_identity;
        node.identity = identity_of(entry);
        node.racy = entry.mtime_ns.saturating_add(RACY_WINDOW_NS) >= read_started_ns;
        Ok(Some(node))
    }

    fn push_node(&mut self, node: Node) -> Result<()> {
        self.tree.push(node);
        if self.tree.len() >= TREE_NODES_PER_BLOB {
            self.flush_tree()?;
        }
        Ok(())
    }

    fn flush_tree(&mut self) -> Result<()> {
        if self.tree.is_empty() {
            return Ok(());
        }
        let blob = TreeBlob {
            nodes: std::mem::take(&mut self.tree),
        };
        let mut raw = Vec::new();
        ciborium::into_writer(&blob, &mut raw)
            .map_err(|e| Error::msg(ErrorKind::Io, format!("encoding a tree blob: {e}")))?;
        let id = format::blob_id(&raw, self.repo.key());
        self.tree_ids.push(id);
        if !self.repo.index_read().contains(&id) && self.pending.insert(id) {
            let sent = self.job_tx.as_ref().is_some_and(|tx| {
                tx.send(Job {
                    id,
                    kind: BlobKind::Tree,
                    data: raw,
                })
                .is_ok()
            });
            if !sent {
                return Err(Error::msg(ErrorKind::Io, "the backup pipeline stopped"));
            }
        }
        Ok(())
    }
}

fn identity_of(entry: &Entry) -> Option<String> {
    match &entry.change {
        ChangeModel::Immutable { identity } => identity.clone(),
        _ => None,
    }
}

fn base_node(entry: &Entry, kind: u8) -> Node {
    Node {
        path: entry.path.clone(),
        kind,
        mode: entry.mode & 0o7777,
        uid: entry.uid,
        gid: entry.gid,
        mtime_ns: entry.mtime_ns,
        size: 0,
        target: None,
        chunks: Vec::new(),
        fs: None,
        identity: None,
        racy: false,
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A path inside a backup must be relative, `/`-separated, without `.`/`..` or empty segments.
pub(crate) fn is_safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}
