//! The backup pipeline: source phases → read → chunk → hash → dedup → compress → seal → pack →
//! store, then the index, then the snapshot (the commit point).
//!
//! The calling thread walks the session's phases in order. In an ordered phase it reads each
//! file itself; in an unordered phase (a plain directory) `threads` reader threads read files at
//! once and the calling thread puts their nodes back in order. Readers cut files into chunks and
//! hash them; chunks the repository lacks (small ones gathered into ~256 KiB frames, one open
//! frame per reader) go through a queue to `threads` worker threads that compress and seal
//! them, and on to one packer thread that writes them into packs as they come
//! ([`crate::pack_writer`]), and hands each finished pack to a storer thread (fsync and rename,
//! or the upload), so the pipeline does not wait for the disk or the network. Queues are
//! short (a job and two sealed units per worker, one pack being stored), so memory does not
//! grow with the data: per reader the chunk it is filling and one open frame, and a few chunks
//! in flight; on an object store (not a local one) also up to two packs of the target size.
//! Measured on the 1 GiB benchmark mix into a local repository: 49–57 MiB peak RSS for the
//! whole process. With queues of one item and packs stored by the packer itself, the workers
//! waited on it and two cores were idle a fifth of the time (`perf sched timehist`): a full
//! backup of the mix took 2.40 s against 2.04 s now (means of four alternating runs).
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use backstop_source::{
    ChangeModel, Content, Entry, EntryKind, Phase, Session, SessionContext, Source,
};
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::budget::{Budget, BudgetGuard};
use crate::chunk::{self, Chunking};
use crate::compress::LevelChoice;
use crate::format::{
    self, BlobId, BlobKind, IndexPack, NODE_DIR, NODE_FILE, NODE_SYMLINK, Node, PackEntry,
    Snapshot, SnapshotStats, TreeBlob,
};
use crate::info::BackupInfo;
use crate::options::BackupOptions;
use crate::pack_writer::{ClosedPack, PackWriter};
use crate::page_list;
use crate::parent::{ParentCursor, ParentNodes};
use crate::repo::{Repository, lock};
use crate::{Error, ErrorKind, Result};
use backstop_source::own_locks::OpenElsewhere;

/// The fewest queued blob ids the dispatcher prunes (of those the index has since got):
/// 2 MiB of ids.
const PENDING_PRUNE_MIN: usize = 65_536;
/// Nodes per tree blob; about 100 bytes each plus 34 per chunk id.
const TREE_NODES_PER_BLOB: usize = 2048;
/// A file modified this close before it was read may change again within the same timestamp.
const RACY_WINDOW_NS: i64 = 2_000_000_000;
/// The most bytes of blobs between the readers and the packer: queued for a seal worker, being
/// sealed, sealed and waiting for the packer. The queues' lengths bound them by count only, and
/// a unit may be a chunk of up to 4 MiB, so by count alone this could reach about 44 MiB (the
/// queues full of the largest chunks); at the average chunk of 1 MiB it is 10-12 MiB. A reader
/// takes a blob's size from this [`Budget`] before it queues the blob; the guard travels with
/// the job and its sealed unit and gives the bytes back when the packer is done with it, or
/// wherever the unit is dropped (a stopped pipeline drops its queues).
const IN_FLIGHT_BYTES: u64 = 16 << 20;

/// Work for a seal worker: one blob, or a frame of small blobs compressed and sealed together.
struct Job<'b> {
    kind: BlobKind,
    data: Vec<u8>,
    /// The blobs in `data`, in order: id and raw length.
    blobs: Vec<(BlobId, u32)>,
    /// The reader lane that made it: a frame is compressed the way [`LevelChoice`] picks for
    /// its lane.
    lane: usize,
    /// Its bytes taken from the in-flight budget ([`IN_FLIGHT_BYTES`]), once queued.
    held: Option<BudgetGuard<'b>>,
}

impl Job<'_> {
    fn framed(&self) -> bool {
        self.blobs.len() > 1
    }
}

struct Sealed<'b> {
    kind: BlobKind,
    stored: Vec<u8>,
    compressed: bool,
    blobs: Vec<(BlobId, u32)>,
    framed: bool,
    /// The job's bytes of the in-flight budget, given back when the unit is dropped.
    _held: Option<BudgetGuard<'b>>,
}

/// Hands new blobs to the seal workers, gathering small data blobs into frames. Shared by the
/// reader threads: the lock covers only the dedup check and the frame, never a send, so a
/// reader waiting for a free seal worker does not hold up the other readers. Each reader
/// thread fills a frame of its own (its lane): with one shared frame, the pages of two files
/// read at once alternated within frames, and a restore, which writes one file at a time,
/// fetched and decoded such a frame once for each file.
struct Dispatch<'b> {
    job_tx: Sender<Job<'b>>,
    state: Mutex<DispatchState<'b>>,
    in_flight: &'b Budget,
}

struct DispatchState<'b> {
    /// Blobs queued in this backup and, since the last prune, not yet found in the index.
    pending: HashSet<BlobId>,
    /// `pending` is pruned of the blobs the index has when it reaches this many.
    prune_at: usize,
    /// The open frame of each lane (at least one).
    frames: Vec<Job<'b>>,
}

impl<'b> Dispatch<'b> {
    fn new(job_tx: Sender<Job<'b>>, lanes: usize, in_flight: &'b Budget) -> Self {
        Self {
            job_tx,
            in_flight,
            state: Mutex::new(DispatchState {
                pending: HashSet::new(),
                prune_at: PENDING_PRUNE_MIN,
                frames: (0..lanes.max(1)).map(empty_frame).collect(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DispatchState<'b>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a blob unless the repository or this backup already has it; `false` when the
    /// pipeline has stopped. A small data blob goes into the frame of `lane`.
    fn offer(
        &self,
        lane: usize,
        repo: &Repository,
        id: BlobId,
        kind: BlobKind,
        data: Vec<u8>,
    ) -> bool {
        let ready = {
            let mut state = self.state();
            let index = repo.index_read();
            if index.contains(&id) || !state.pending.insert(id) {
                return true;
            }
            if state.pending.len() >= state.prune_at {
                // The blobs of stored packs are in the index now, which answers for them; only
                // those on their way to a pack need remembering here. Pruning when the set has
                // doubled keeps the cost at a lookup or two per blob.
                state.pending.retain(|id| !index.contains(id));
                state.prune_at = (state.pending.len() * 2).max(PENDING_PRUNE_MIN);
            }
            drop(index);
            if kind != BlobKind::Data || data.len() >= format::SMALL_BLOB {
                Some(Job {
                    kind,
                    blobs: vec![(id, data.len() as u32)],
                    data,
                    lane,
                    held: None,
                })
            } else {
                let lane = lane % state.frames.len();
                let frame = &mut state.frames[lane];
                frame.blobs.push((id, data.len() as u32));
                frame.data.extend_from_slice(&data);
                (frame.data.len() >= format::FRAME_TARGET)
                    .then(|| std::mem::replace(frame, empty_frame(lane)))
            }
        };
        ready.is_none_or(|job| self.send(job))
    }

    /// Sends every lane's open frame.
    fn flush_frames(&self) -> bool {
        let frames: Vec<Job<'b>> = {
            let mut state = self.state();
            state
                .frames
                .iter_mut()
                .enumerate()
                .filter(|(_, f)| !f.blobs.is_empty())
                .map(|(lane, f)| std::mem::replace(f, empty_frame(lane)))
                .collect()
        };
        frames.into_iter().all(|frame| self.send(frame))
    }

    fn send(&self, mut job: Job<'b>) -> bool {
        job.held = Some(self.in_flight.acquire(job.data.len() as u64));
        self.job_tx.send(job).is_ok()
    }
}

fn empty_frame<'b>(lane: usize) -> Job<'b> {
    Job {
        kind: BlobKind::Data,
        data: Vec::with_capacity(format::FRAME_TARGET + format::SMALL_BLOB),
        blobs: Vec::new(),
        lane,
        held: None,
    }
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
    let lock = lock::acquire_waiting(&repo.store, false, "a backup", repo.options.lock_wait)?;
    repo.reload_index()?;

    let source_kind = source.kind().to_owned();
    let source_identity = source.identity();
    let parent = find_parent(repo, &source_kind, &source_identity)?;

    let ctx = SessionContext {
        cancel: options.cancel.clone(),
        parent_meta: parent.as_ref().map(|p| p.source_meta.clone()),
        full_read: options.full_read,
    };
    let session = source.begin(&ctx)?;
    // After `begin`, so that what the session itself opened counts too.
    let open_elsewhere = OpenElsewhere::now();

    let threads = repo.options.worker_threads();
    let level = repo.options.compression_level;
    let frame_levels = LevelChoice::new(level, threads);
    // Short queues: a job is up to one maximum-size chunk, and what waits is memory. One job
    // and two sealed units per worker absorb the moments when a thread is not scheduled: with
    // one of each, workers blocked on the packer and on the readers (2.29 → 1.98 s for a full
    // backup of the benchmark mix, the same peak RSS; 4 and 8 were no faster).
    let (job_tx, job_rx) = bounded::<Job>(threads);
    let (sealed_tx, sealed_rx) = bounded::<Sealed>(2 * threads);
    let in_flight = Budget::new(IN_FLIGHT_BYTES);
    let failed = AtomicBool::new(false);
    let store_error: Mutex<Option<Error>> = Mutex::new(None);

    let outcome = std::thread::scope(|scope| {
        for _ in 0..threads {
            let rx = job_rx.clone();
            let tx = sealed_tx.clone();
            let frame_levels = &frame_levels;
            scope.spawn(move || seal_worker(rx, tx, level, frame_levels, repo.key()));
        }
        drop(job_rx);
        drop(sealed_tx);
        let packer = scope.spawn(|| packer(repo, sealed_rx, &failed, &store_error));

        let mut walker = Walker {
            files: FileStorer {
                repo,
                options,
                open_elsewhere: &open_elsewhere,
                dispatch: Dispatch::new(job_tx, threads, &in_flight),
                parent_map: None,
                failed: &failed,
                threads,
            },
            out: TreeBuilder::default(),
            chunker: chunk::Chunker::default(),
            parent: parent.as_ref(),
            parent_cursor: None,
        };
        let walked = walker.walk(session);
        let walked = walked.and_then(|outcome| walker.out.flush(&walker.files).map(|()| outcome));
        let walked = walked.and_then(|outcome| {
            if walker.files.dispatch.flush_frames() {
                Ok(outcome)
            } else {
                Err(Error::msg(ErrorKind::Io, "the backup pipeline stopped"))
            }
        });
        let Walker {
            files,
            out:
                TreeBuilder {
                    tree_ids,
                    stats,
                    warnings,
                    ..
                },
            ..
        } = walker;
        drop(files);
        let packed = packer
            .join()
            .unwrap_or_else(|_| Err(Error::msg(ErrorKind::Io, "the packer thread panicked")));
        (walked, packed, tree_ids, stats, warnings)
    });
    let (walked, packed, tree_ids, mut stats, mut warnings) = outcome;
    // The session has ended, and closed what it held: descriptors kept only for its files
    // close now rather than at the next backup.
    OpenElsewhere::close_unneeded();
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
        version: repo.write_version(),
        id: 0,
        time_unix,
        utc_offset_secs: crate::repo::utc_offset_at(time_unix),
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
    let (snapshots, damaged) = repo.load_readable_snapshots()?;
    crate::repo::warn_damaged(&damaged, "so not considered as the parent");
    let index = repo.index_read();
    for snapshot in snapshots
        .into_iter()
        .rev()
        .filter(|s| s.source_kind == kind && s.source == identity)
    {
        // A backup whose file list lost a blob (a damaged pack that `repair index` left out)
        // cannot guide this one; an older one can, or none, and then every file is read.
        match snapshot.tree.iter().find(|id| !index.contains(id)) {
            None => return Ok(Some(snapshot)),
            Some(id) => tracing::warn!(
                "backup {}: its file list is incomplete (blob {id} is in no index), so it is \
                 not used as the parent",
                snapshot.id
            ),
        }
    }
    Ok(None)
}

fn seal_worker<'b>(
    rx: Receiver<Job<'b>>,
    tx: Sender<Sealed<'b>>,
    level: i32,
    frame_levels: &LevelChoice,
    key: Option<&crate::crypto::MasterKey>,
) {
    for job in rx {
        let framed = job.framed();
        let (stored, compressed) = if framed {
            format::encode_frame(job.data, frame_levels, job.lane, key)
        } else {
            format::encode_blob(job.data, level, key)
        };
        let sealed = Sealed {
            kind: job.kind,
            stored,
            compressed,
            framed,
            blobs: job.blobs,
            _held: job.held,
        };
        if tx.send(sealed).is_err() {
            return;
        }
    }
}

/// Writes sealed units into packs and hands each finished pack to a storer thread, which
/// stores it and only then adds it to the index: a blob is never in the index before its pack
/// is durable. Both stop at the first store error (kept in `store_error`) and drain the rest.
fn packer<'r>(
    repo: &'r Repository,
    rx: Receiver<Sealed<'_>>,
    failed: &AtomicBool,
    store_error: &Mutex<Option<Error>>,
) -> Result<PackerStats> {
    let fail = |e: Error| {
        failed.store(true, Ordering::SeqCst);
        let mut slot = store_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.get_or_insert(e);
    };
    // A rendezvous: the packer hands a closed pack over only once the storer has finished the
    // one before, so at most two packs exist at once (one filling, one being stored), which
    // matters where a store gathers a pack in memory.
    let (closed_tx, closed_rx) = bounded::<ClosedPack<'r>>(0);
    let (buffer_tx, buffer_rx) = bounded::<Vec<u8>>(1);
    std::thread::scope(|scope| {
        let storer = scope.spawn(move || {
            let mut stats = PackerStats::default();
            for closed in closed_rx {
                if failed.load(Ordering::SeqCst) {
                    continue; // drain; a dropped pack leaves nothing visible
                }
                match closed.store() {
                    Ok((pack, buffer)) => {
                        repo.index_write().add_pack(&pack);
                        stats.bytes_added += pack.size;
                        stats.packs.push(pack);
                        let _ = buffer_tx.try_send(buffer);
                    }
                    Err(e) => fail(e),
                }
            }
            stats
        });

        let mut writer = PackWriter::new(repo);
        let mut blobs_added = 0u64;
        let mut bytes_added_raw = 0u64;
        let hand_over = |closed: Vec<ClosedPack<'r>>, writer: &mut PackWriter<'r>| {
            for pack in closed {
                if closed_tx.send(pack).is_err() {
                    fail(Error::msg(ErrorKind::Io, "the pack storer stopped"));
                }
            }
            if let Ok(buffer) = buffer_rx.try_recv() {
                writer.give_buffer(buffer);
            }
        };
        // Each unit's bytes go back to the in-flight budget when it is dropped at the end of
        // its turn: written into the pack, or drained.
        for sealed in rx {
            if failed.load(Ordering::SeqCst) {
                continue; // drain so the senders never block
            }
            let mut within = 0u32;
            let entries = sealed.blobs.iter().map(|&(id, raw_length)| {
                let entry = PackEntry {
                    id,
                    kind: sealed.kind,
                    offset: 0,
                    length: 0,
                    raw_length,
                    compressed: sealed.compressed,
                    within: sealed.framed.then_some(within),
                };
                within += raw_length;
                entry
            });
            match writer.push_closing(&sealed.stored, entries) {
                Ok(closed) => hand_over(closed, &mut writer),
                Err(e) => {
                    fail(e);
                    continue;
                }
            }
            for &(_, raw_length) in &sealed.blobs {
                bytes_added_raw += u64::from(raw_length);
                blobs_added += 1;
            }
        }
        if !failed.load(Ordering::SeqCst) {
            match writer.close() {
                Ok(closed) => hand_over(closed.into_iter().collect(), &mut writer),
                Err(e) => fail(e),
            }
        }
        drop(closed_tx);
        let mut stats = storer
            .join()
            .map_err(|_| Error::msg(ErrorKind::Io, "the pack storer panicked"))?;
        if failed.load(Ordering::SeqCst) {
            // What failed is in `store_error`, or with the reader that set `failed`.
            return Err(Error::msg(
                ErrorKind::Io,
                "the backup stopped before its packs were stored",
            ));
        }
        stats.blobs_added = blobs_added;
        stats.bytes_added_raw = bytes_added_raw;
        Ok(stats)
    })
}

struct Walker<'a> {
    files: FileStorer<'a>,
    out: TreeBuilder,
    chunker: chunk::Chunker,
    /// The previous backup of the source, whose nodes are read the first time a phase needs
    /// them: all at once for a listed phase, alongside for a streamed one.
    parent: Option<&'a Snapshot>,
    parent_cursor: Option<ParentCursor<'a>>,
}

/// The snapshot's file list as it grows, cut into tree blobs, with the counts.
#[derive(Default)]
struct TreeBuilder {
    /// Nodes not yet in a tree blob, each with the parent's node at its path when a streamed
    /// phase found it (a listed phase's are looked up in the parent map).
    tree: Vec<(Node, Option<Node>)>,
    tree_ids: Vec<BlobId>,
    stats: SnapshotStats,
    warnings: Vec<String>,
}

/// What storing one file needs, shared by the threads that read files of an unordered phase.
struct FileStorer<'a> {
    repo: &'a Repository,
    options: &'a BackupOptions,
    /// What this process had open when the session began: files to read without dropping its
    /// locks on them (see `own_locks`).
    open_elsewhere: &'a OpenElsewhere,
    dispatch: Dispatch<'a>,
    /// The parent's nodes, once a listed phase needed them (empty if there is no parent).
    parent_map: Option<ParentNodes>,
    failed: &'a AtomicBool,
    threads: usize,
}

/// One file's outcome: its node (`None`: it vanished and is not stored), the bytes read and
/// any warnings.
#[derive(Default)]
struct StoredFile {
    node: Option<Node>,
    /// The parent's node at the same path, found by a streamed phase's cursor.
    parent: Option<Node>,
    read: u64,
    warnings: Vec<String>,
}

/// Stops a file's reading when the backup is cancelled or the packer failed, and counts
/// progress.
struct Guard<'a> {
    cancel: &'a backstop_source::CancelToken,
    failed: &'a AtomicBool,
    progress: &'a dyn crate::Progress,
    read: u64,
}

impl chunk::ReadGuard for Guard<'_> {
    fn before_read(&mut self) -> std::io::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("cancelled"));
        }
        if self.failed.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the store failed"));
        }
        Ok(())
    }

    fn after_read(&mut self, bytes: usize) {
        self.read += bytes as u64;
        self.progress.bytes(bytes as u64);
    }
}

impl<'a> Walker<'a> {
    fn walk(
        &mut self,
        mut session: Box<dyn Session + '_>,
    ) -> Result<backstop_source::SessionOutcome> {
        while let Some(phase) = session.next_phase()? {
            self.store_phase(&*session, phase)?;
        }
        Ok(session.finish()?)
    }

    fn store_phase(&mut self, session: &dyn Session, phase: Phase) -> Result<()> {
        let Phase {
            name,
            entries,
            stream,
            parallel,
        } = phase;
        let bytes: u64 = entries.iter().map(|e| e.size).sum();
        let progress = &*self.files.options.progress;
        // A streamed phase's entries are counted as they are listed (`Progress::found`).
        progress.phase(&name, entries.len() as u64, bytes);
        tracing::debug!(phase = %name, entries = entries.len(), streamed = stream.is_some(), parallel, "storing phase");
        if let Some(entry) = entries.iter().find(|e| !is_safe_path(&e.path)) {
            return Err(bad_path(entry));
        }
        let files = entries.iter().filter(|e| e.kind == EntryKind::File).count();
        if !entries.is_empty() && self.files.parent_map.is_none() {
            self.files.parent_map = Some(match self.parent {
                Some(parent) => ParentNodes::read(self.files.repo, parent)?,
                None => ParentNodes::default(),
            });
        }
        if stream.is_some() && self.parent_cursor.is_none() {
            self.parent_cursor = self
                .parent
                .map(|parent| ParentCursor::new(self.files.repo, parent));
        }
        let unordered = parallel && self.files.threads > 1 && (files > 1 || stream.is_some());
        let mut stream = stream;
        let scan = if progress.wants_totals() {
            stream
                .as_mut()
                .and_then(backstop_source::EntryStream::take_scan)
        } else {
            None
        };
        let mut listing = Listing {
            listed: entries.into_iter(),
            stream,
            cursor: self.parent_cursor.as_mut(),
            progress,
            report_found: scan.is_none(),
        };
        let phase_over = AtomicBool::new(false);
        let (files, out, chunker) = (&self.files, &mut self.out, &mut self.chunker);
        std::thread::scope(|scope| {
            if let Some(scan) = scan {
                let phase_over = &phase_over;
                scope.spawn(move || {
                    scan(&mut |files, bytes| {
                        progress.found(files, bytes);
                        !phase_over.load(Ordering::Relaxed)
                    });
                });
            }
            let stored = if unordered {
                store_unordered(files, out, &mut listing)
            } else {
                store_in_order(files, out, chunker, session, &mut listing)
            };
            // A scan still running after a stored phase is about done (it lists what the phase
            // listed, without reading a byte) and finishes its count; after a failure it stops.
            if stored.is_err() {
                phase_over.store(true, Ordering::Relaxed);
            }
            stored
        })
    }
}

/// Stores a phase's files one after another on this thread.
fn store_in_order(
    files: &FileStorer<'_>,
    out: &mut TreeBuilder,
    chunker: &mut chunk::Chunker,
    session: &dyn Session,
    listing: &mut Listing<'_, '_>,
) -> Result<()> {
    for next in listing {
        let (entry, parent) = next?;
        files.check_running()?;
        let stored = match &entry.kind {
            EntryKind::File => files.store_file(chunker, 0, Some(session), &entry, parent)?,
            _ => StoredFile {
                node: Some(other_node(&entry)),
                ..StoredFile::default()
            },
        };
        out.add(files, stored)?;
    }
    Ok(())
}

/// A phase's entries in order, the listed ones and then the streamed ones as they are listed,
/// each streamed file with the parent's node at its path.
struct Listing<'p, 'r> {
    listed: std::vec::IntoIter<Entry>,
    stream: Option<backstop_source::EntryStream>,
    cursor: Option<&'p mut ParentCursor<'r>>,
    progress: &'p dyn crate::Progress,
    /// Whether to report streamed entries as found: not when a scan counts them ahead.
    report_found: bool,
}

impl Iterator for Listing<'_, '_> {
    type Item = Result<(Entry, Option<Node>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(entry) = self.listed.next() {
            return Some(Ok((entry, None)));
        }
        let entry = match self.stream.as_mut()?.next()? {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e.into())),
        };
        if !is_safe_path(&entry.path) {
            return Some(Err(bad_path(&entry)));
        }
        let is_file = entry.kind == EntryKind::File;
        if self.report_found {
            self.progress.found(u64::from(is_file), entry.size);
        }
        // Every entry moves the cursor on, so that it passes the parent's directories too.
        let parent = match self.cursor.as_mut().map(|c| c.find(&entry.path)) {
            Some(Ok(node)) => node.filter(|_| is_file),
            Some(Err(e)) => return Some(Err(e)),
            None => None,
        };
        Some(Ok((entry, parent)))
    }
}

fn bad_path(entry: &Entry) -> Error {
    Error::new(ErrorKind::Source, BackupError::BadPath(entry.path.clone()))
}

/// Stores a phase whose files may be read in any order, on several threads, keeping the nodes
/// in the phase's order.
fn store_unordered(
    files: &FileStorer<'_>,
    out: &mut TreeBuilder,
    listing: &mut Listing<'_, '_>,
) -> Result<()> {
    let threads = files.threads;
    let (entry_tx, entry_rx) = bounded::<(usize, Entry, Option<Node>)>(threads * 4);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(usize, Result<StoredFile>)>();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for lane in 0..threads {
            let rx = entry_rx.clone();
            let tx = done_tx.clone();
            let stop = &stop;
            scope.spawn(move || {
                let mut chunker = chunk::Chunker::default();
                for (seq, entry, parent) in rx {
                    let stored = if stop.load(Ordering::Relaxed) {
                        Ok(StoredFile::default())
                    } else {
                        files.store_file(&mut chunker, lane, None, &entry, parent)
                    };
                    if stored.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    if tx.send((seq, stored)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(entry_rx);
        drop(done_tx);
        let mut ready: BTreeMap<usize, Result<StoredFile>> = BTreeMap::new();
        let mut next = 0usize;
        let mut first_error: Option<Error> = None;
        let take_ready = |walker_add: &mut dyn FnMut(StoredFile) -> Result<()>,
                          ready: &mut BTreeMap<usize, Result<StoredFile>>,
                          next: &mut usize,
                          first_error: &mut Option<Error>| {
            while let Some(result) = ready.remove(next) {
                *next += 1;
                match result.and_then(&mut *walker_add) {
                    Ok(()) => {}
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        first_error.get_or_insert(e);
                    }
                }
            }
        };
        let mut add = |stored: StoredFile| -> Result<()> { out.add(files, stored) };
        let mut sent = 0usize;
        let mut listed_all = false;
        loop {
            if stop.load(Ordering::Relaxed) || files.check_running().is_err() {
                break;
            }
            let (entry, parent) = match listing.next() {
                None => {
                    listed_all = true;
                    break;
                }
                Some(Ok(next)) => next,
                Some(Err(e)) => {
                    stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                    break;
                }
            };
            let seq = sent;
            sent += 1;
            if entry.kind == EntryKind::File {
                if entry_tx.send((seq, entry, parent)).is_err() {
                    break;
                }
            } else {
                ready.insert(
                    seq,
                    Ok(StoredFile {
                        node: Some(other_node(&entry)),
                        ..StoredFile::default()
                    }),
                );
            }
            while let Ok((seq, result)) = done_rx.try_recv() {
                ready.insert(seq, result);
            }
            take_ready(&mut add, &mut ready, &mut next, &mut first_error);
        }
        drop(entry_tx);
        for (seq, result) in &done_rx {
            ready.insert(seq, result);
            take_ready(&mut add, &mut ready, &mut next, &mut first_error);
        }
        take_ready(&mut add, &mut ready, &mut next, &mut first_error);
        if let Some(e) = first_error {
            return Err(e);
        }
        files.check_running()?;
        if !listed_all || next != sent {
            return Err(Error::msg(
                ErrorKind::Io,
                format!("the phase stopped after {next} of the {sent} entries listed"),
            ));
        }
        Ok(())
    })
}

impl TreeBuilder {
    /// Adds a stored entry's node to the tree, in order, and counts it.
    fn add(&mut self, files: &FileStorer<'_>, stored: StoredFile) -> Result<()> {
        self.stats.bytes_read += stored.read;
        self.warnings.extend(stored.warnings);
        let Some(node) = stored.node else {
            return Ok(());
        };
        match node.kind {
            NODE_DIR => self.stats.dirs += 1,
            NODE_FILE => {
                self.stats.files += 1;
                self.stats.size += node.size;
            }
            _ => {}
        }
        self.tree.push((node, stored.parent));
        if self.tree.len() >= TREE_NODES_PER_BLOB {
            self.flush(files)?;
        }
        Ok(())
    }

    fn flush(&mut self, files: &FileStorer<'_>) -> Result<()> {
        if self.tree.is_empty() {
            return Ok(());
        }
        let mut nodes = Vec::with_capacity(self.tree.len());
        for (mut node, streamed_parent) in std::mem::take(&mut self.tree) {
            let parent = streamed_parent
                .as_ref()
                .or_else(|| files.parent_by_path(&node.path));
            let lists = {
                let index = files.repo.index_read();
                page_list::encode(
                    &mut node,
                    parent,
                    |b| index.contains(b),
                    files.repo.key(),
                    files.repo.write_version() >= format::SHORT_LIST_ID_VERSION,
                )
            };
            for list in lists {
                if !files
                    .dispatch
                    .offer(0, files.repo, list.id, BlobKind::Tree, list.raw)
                {
                    return Err(Error::msg(ErrorKind::Io, "the backup pipeline stopped"));
                }
            }
            nodes.push(node);
        }
        let blob = TreeBlob { nodes };
        let mut raw = Vec::new();
        ciborium::into_writer(&blob, &mut raw)
            .map_err(|e| Error::msg(ErrorKind::Io, format!("encoding a tree blob: {e}")))?;
        let id = format::blob_id(&raw, files.repo.key());
        self.tree_ids.push(id);
        if !files.dispatch.offer(0, files.repo, id, BlobKind::Tree, raw) {
            return Err(Error::msg(ErrorKind::Io, "the backup pipeline stopped"));
        }
        Ok(())
    }
}

impl FileStorer<'_> {
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

    /// The parent's node at `path` in the map a listed phase reads.
    fn parent_by_path(&self, path: &str) -> Option<&Node> {
        self.parent_map.as_ref()?.get(path)
    }

    /// The parent's node for an entry, if it proves the file unchanged; `by_path` is the
    /// parent's node at the entry's path if a streamed phase found it.
    fn unchanged_from_parent(&self, entry: &Entry, by_path: Option<&Node>) -> Option<Node> {
        let index = self.repo.index_read();
        let all_present = |n: &Node| n.chunks.iter().all(|c| index.contains(c));
        if let ChangeModel::Immutable {
            identity: Some(identity),
        } = &entry.change
        {
            let by_identity = self
                .parent_map
                .as_ref()
                .and_then(|m| m.with_identity(identity));
            if let Some(node) = by_identity {
                if all_present(node) {
                    return Some(node.clone());
                }
            }
        }
        if self.options.full_read {
            return None;
        }
        let fs = entry.fs_identity?;
        let node = by_path.or_else(|| self.parent_by_path(&entry.path))?;
        let same = node.kind == NODE_FILE
            && !node.racy
            && node.fs == Some(fs)
            && node.size == entry.size
            && all_present(node);
        same.then(|| node.clone())
    }

    /// Reads, cuts and queues one file; its small chunks go into the frame of `lane` (the
    /// reading thread). `session` is `None` on the threads of an unordered phase, whose
    /// entries must not need it. `parent` is the parent's node at the same path, if a streamed
    /// phase found it; it is handed on for the tree builder.
    fn store_file(
        &self,
        chunker: &mut chunk::Chunker,
        lane: usize,
        session: Option<&dyn Session>,
        entry: &Entry,
        parent: Option<Node>,
    ) -> Result<StoredFile> {
        let progress = &*self.options.progress;
        progress.file(&entry.path);
        let unchanged = self.unchanged_from_parent(entry, parent.as_ref());
        let mut out = StoredFile {
            parent,
            ..StoredFile::default()
        };
        if let Some(parent) = unchanged {
            progress.unchanged(&entry.path, parent.size);
            let mut node = base_node(entry, NODE_FILE);
            node.size = parent.size;
            node.chunks = parent.chunks;
            node.fs = entry.fs_identity.or(parent.fs);
            node.identity = identity_of(entry);
            node.racy = parent.racy;
            out.node = Some(node);
            return Ok(out);
        }
        let read_started_ns = now_ns();
        let reader: Box<dyn Read + Send> = match &entry.content {
            Content::None => Box::new(std::io::empty()),
            Content::Bytes(bytes) => Box::new(std::io::Cursor::new(bytes.clone())),
            Content::Session(handle) => match session {
                Some(session) => session.open(*handle)?,
                None => {
                    return Err(Error::msg(
                        ErrorKind::Source,
                        format!(
                            "`{}` is read through the source's session, which an unordered phase cannot do; the source must put it in an ordered phase",
                            entry.path
                        ),
                    ));
                }
            },
            Content::File(path) => match self
                .open_elsewhere
                .open(path, entry.fs_identity.map(|f| (f.dev, f.ino)))
            {
                Ok(f) => Box::new(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let msg = format!("`{}` vanished before it was read; not stored", entry.path);
                    progress.warning(&msg);
                    out.warnings.push(msg);
                    return Ok(out);
                }
                Err(e) => return Err(crate::error::io_error("opening", path, e)),
            },
        };
        let reader: Box<dyn Read + Send> = if entry.change == ChangeModel::AppendOnly {
            Box::new(reader.take(entry.size))
        } else {
            reader
        };
        let mut guard = Guard {
            cancel: &self.options.cancel,
            failed: self.failed,
            progress,
            read: 0,
        };
        let config = &self.repo.config;
        let cdc = (config.chunk_min, config.chunk_avg, config.chunk_max);
        let chunking = Chunking::for_change(&entry.change, cdc);
        let mut chunks = Vec::new();
        let repo = self.repo;
        let key = repo.key();
        let mut send_error = false;
        let result = chunker.for_each_chunk_guarded(reader, &mut guard, chunking, |data| {
            let id = format::blob_id(&data, key);
            chunks.push(id);
            if !self.dispatch.offer(lane, repo, id, BlobKind::Data, data) {
                send_error = true;
                return Err(std::io::Error::other("the pipeline stopped"));
            }
            Ok(())
        });
        let read = guard.read;
        out.read = read;
        if let Err(e) = result {
            self.check_running()?;
            if send_error {
                return Err(Error::msg(ErrorKind::Io, "the backup pipeline stopped"));
            }
            if e.kind() == std::io::ErrorKind::NotFound {
                let msg = format!("`{}` vanished while it was read; not stored", entry.path);
                out.warnings.push(msg);
                return Ok(out);
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
                progress.warning(&msg);
                out.warnings.push(msg);
            }
            ChangeModel::Any if matches!(entry.content, Content::File(_)) && read != entry.size => {
                let msg = format!(
                    "`{}` changed size while it was read ({} bytes listed, {read} stored)",
                    entry.path, entry.size
                );
                progress.warning(&msg);
                out.warnings.push(msg);
            }
            _ => {}
        }
        let mut node = base_node(entry, NODE_FILE);
        node.size = read;
        node.chunks = chunks;
        node.fs = entry.fs_identity;
        node.identity = identity_of(entry);
        node.racy = entry.mtime_ns.saturating_add(RACY_WINDOW_NS) >= read_started_ns;
        out.node = Some(node);
        Ok(out)
    }
}

/// The node of a directory or symlink entry.
fn other_node(entry: &Entry) -> Node {
    match &entry.kind {
        EntryKind::Symlink { target } => {
            let mut node = base_node(entry, NODE_SYMLINK);
            node.target = Some(target.clone());
            node
        }
        _ => base_node(entry, NODE_DIR),
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
        mode: entry.mode & 0o7777,
        uid: entry.uid,
        gid: entry.gid,
        mtime_ns: entry.mtime_ns,
        ..Node::new(entry.path.clone(), kind)
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

pub(crate) use backstop_source::is_safe_path;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The ids a backup queued are forgotten once the index has them (their packs are stored),
    /// and a blob offered again is still stored once, before and after.
    #[test]
    fn queued_ids_are_pruned_once_the_index_has_them() {
        let repo = crate::repo::memory_repository();
        let unbounded = Budget::new(u64::MAX);
        let (tx, rx) = crossbeam_channel::unbounded();
        let dispatch = Dispatch::new(tx, 1, &unbounded);
        let data = |n: usize| format!("tree blob {n}").into_bytes();
        let offer = |n: usize| {
            let raw = data(n);
            let id = format::blob_id(&raw, None);
            assert!(dispatch.offer(0, &repo, id, BlobKind::Tree, raw));
            id
        };
        let stored: Vec<BlobId> = (0..PENDING_PRUNE_MIN - 1).map(offer).collect();
        assert_eq!(rx.try_iter().count(), PENDING_PRUNE_MIN - 1);
        // Their pack is stored: the packer puts it in the index.
        repo.index_write().add_pack(&IndexPack {
            id: format::ContentId::hash(b"pack"),
            size: 1,
            entries: stored
                .iter()
                .map(|&id| PackEntry::for_test(id, BlobKind::Tree))
                .collect(),
        });
        let on_its_way = offer(PENDING_PRUNE_MIN);
        assert_eq!(rx.try_iter().count(), 1);
        {
            let state = dispatch.state();
            assert_eq!(state.pending.len(), 1, "only the blob not yet in the index");
            assert!(state.pending.contains(&on_its_way));
            assert_eq!(state.prune_at, PENDING_PRUNE_MIN);
        }
        // Offered again: the one on its way and the ones in the index are queued no more.
        offer(PENDING_PRUNE_MIN);
        offer(0);
        offer(PENDING_PRUNE_MIN / 2);
        assert_eq!(rx.try_iter().count(), 0);
    }

    /// Two readers offering small blobs in turn (an incremental's changed pages of two files
    /// read at once) fill a frame each: no frame holds blobs of both.
    #[test]
    fn each_reader_fills_frames_of_its_own() {
        let repo = crate::repo::memory_repository();
        let unbounded = Budget::new(u64::MAX);
        let (tx, rx) = crossbeam_channel::unbounded();
        let dispatch = Dispatch::new(tx, 2, &unbounded);
        let page = |lane: usize, n: usize| {
            let mut data = vec![0u8; 4096];
            data[..16].copy_from_slice(&(lane as u128 * 1_000_000 + n as u128).to_le_bytes());
            data
        };
        let mut lane_of = HashMap::new();
        for n in 0..200 {
            for lane in 0..2 {
                let data = page(lane, n);
                let id = format::blob_id(&data, None);
                lane_of.insert(id, lane);
                assert!(dispatch.offer(lane, &repo, id, BlobKind::Data, data));
            }
        }
        assert!(dispatch.flush_frames());
        drop(dispatch);
        let frames: Vec<Job> = rx.into_iter().collect();
        // 400 pages of 4 KiB in frames of 256 KiB: three full frames and a partial one per lane.
        assert_eq!(frames.len(), 8);
        for frame in &frames {
            let lanes: HashSet<usize> = frame.blobs.iter().map(|(id, _)| lane_of[id]).collect();
            assert_eq!(lanes.len(), 1, "a frame holds blobs of readers {lanes:?}");
        }
        let blobs: usize = frames.iter().map(|f| f.blobs.len()).sum();
        assert_eq!(blobs, 400);
    }
}
