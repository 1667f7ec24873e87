//! Restore: a snapshot's file list back onto disk, every byte checked against its hash, then the
//! source's restore procedure.
//!
//! Safety: every path is checked to be relative and free of `..`; directories are created one
//! component at a time and each must be a real directory (never a symlink), and symlinks are
//! created only after every file, so a backup cannot write outside the target. A marker file,
//! `.backstop-restore-incomplete`, exists in the target from the first byte written until the
//! restore and its fix-ups have succeeded, so a failed restore never looks complete.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::bounded;

use crate::backup::is_safe_path;
use crate::error::io_error;
use crate::format::{NODE_DIR, NODE_FILE, NODE_SYMLINK, Node, Snapshot};
use crate::info::RestoreInfo;
use crate::options::{ExistingTarget, RestoreOptions};
use crate::repo::Repository;
use crate::{Error, ErrorKind, Result};

/// Name of the marker of an unfinished restore.
pub(crate) const INCOMPLETE_MARKER: &str = ".backstop-restore-incomplete";

/// What a restore refuses, with the file and the backup it concerns.
#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error("restore target `{}` is not empty; restore into an empty directory, or overwrite it on purpose (`--force`)", .0.display())]
    NotEmpty(PathBuf),
    #[error(
        "backup {backup} holds the path `{path}`, which would escape the restore target; refusing to restore it"
    )]
    Escape { backup: u64, path: String },
    #[error("`{}` inside the restore target is a symlink or not a directory; refusing to write through it", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "file `{path}` of backup {backup} is damaged in the repository; the restore stopped and the target is incomplete"
    )]
    Damaged {
        backup: u64,
        path: String,
        #[source]
        source: Error,
    },
    #[error("backup {backup} has no file `{path}`")]
    NoSuchFile { backup: u64, path: String },
    #[error("the restore procedure `{kind}` failed; the files are restored but not fixed up")]
    Fixup {
        kind: String,
        #[source]
        source: backstop_source::SourceError,
    },
}

pub(crate) fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreInfo> {
    let started = Instant::now();
    prepare_target(target, options.existing)?;
    let marker = target.join(INCOMPLETE_MARKER);
    std::fs::write(&marker, format!("backup {}\n", snapshot.id))
        .map_err(|e| io_error("writing", &marker, e))?;

    let mut nodes = Vec::new();
    repo.for_each_node(snapshot, |n| {
        if !is_safe_path(&n.path) {
            return Err(Error::new(
                ErrorKind::Unsafe,
                RestoreError::Escape {
                    backup: snapshot.id,
                    path: n.path,
                },
            ));
        }
        nodes.push(n);
        Ok(())
    })?;

    let mut info = RestoreInfo {
        id: snapshot.id,
        ..RestoreInfo::default()
    };
    let mut dirs = SafeDirs::new(target);
    // Directories first, then files (in parallel), then symlinks, then directory metadata.
    for node in nodes.iter().filter(|n| n.kind == NODE_DIR) {
        dirs.create(&node.path)?;
        info.dirs += 1;
    }
    for node in nodes.iter().filter(|n| n.kind == NODE_FILE) {
        if let Some((parent, _)) = node.path.rsplit_once('/') {
            dirs.create(parent)?;
        }
    }
    let bytes = restore_files(repo, snapshot, target, &nodes, options)?;
    info.bytes = bytes;
    info.files = nodes.iter().filter(|n| n.kind == NODE_FILE).count() as u64;
    for node in nodes.iter().filter(|n| n.kind == NODE_SYMLINK) {
        if let Some((parent, _)) = node.path.rsplit_once('/') {
            dirs.create(parent)?;
        }
        let path = target.join(&node.path);
        remove_existing(&path)?;
        let link_target = node.target.clone().unwrap_or_default();
        std::os::unix::fs::symlink(&link_target, &path)
            .map_err(|e| io_error("creating symlink", &path, e))?;
        let mtime = filetime::FileTime::from_unix_time(
            node.mtime_ns.div_euclid(1_000_000_000),
            node.mtime_ns.rem_euclid(1_000_000_000) as u32,
        );
        let _ = filetime::set_symlink_file_times(&path, mtime, mtime);
        info.symlinks += 1;
    }
    // Deepest first, so setting a child's mtime does not disturb its parent's afterwards.
    let mut dir_nodes: Vec<&Node> = nodes.iter().filter(|n| n.kind == NODE_DIR).collect();
    dir_nodes.sort_by_key(|n| std::cmp::Reverse(n.path.matches('/').count()));
    for node in dir_nodes {
        apply_metadata(&target.join(&node.path), node)?;
    }

    let params = backstop_source::RestoreParams {
        raw: options.raw,
        options: options.fixup_options.clone(),
    };
    info.fixups =
        backstop_source::restore_profile::apply(&snapshot.restore_profile, target, &params)
            .map_err(|source| {
                Error::new(
                    ErrorKind::Source,
                    RestoreError::Fixup {
                        kind: snapshot.restore_profile.kind.clone(),
                        source,
                    },
                )
            })?;
    sync_filesystem(target)?;
    std::fs::remove_file(&marker).map_err(|e| io_error("removing", &marker, e))?;
    sync_filesystem(target)?;
    info.duration_ms = started.elapsed().as_millis() as u64;
    Ok(info)
}

/// Flushes everything written under `target` to disk (one `syncfs` of its filesystem).
fn sync_filesystem(target: &Path) -> Result<()> {
    let dir = std::fs::File::open(target).map_err(|e| io_error("opening", target, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| io_error("syncing the filesystem of", target, e.into()))
}

/// Groups a file's chunks into runs that are adjacent in one pack, so one ranged read fetches
/// many blobs (page-sized blocks of a database file are usually stored side by side).
fn read_runs(
    repo: &Repository,
    chunks: &[crate::format::BlobId],
    context: &str,
) -> Result<Vec<crate::repo::ReadRun>> {
    const MAX_RUN: u64 = 8 << 20;
    let index = repo.index_read();
    let mut runs: Vec<crate::repo::ReadRun> = Vec::new();
    for id in chunks {
        let (pack, entry) = index.locate(id).ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                crate::repo::RepoError::MissingBlob {
                    blob: id.to_hex(),
                    context: context.to_owned(),
                },
            )
        })?;
        if let Some(run) = runs.last_mut() {
            let end = run.start + run.len;
            if run.pack == pack
                && u64::from(entry.offset) == end
                && run.len + u64::from(entry.length) <= MAX_RUN
            {
                run.len += u64::from(entry.length);
                run.entries.push(entry);
                continue;
            }
        }
        runs.push(crate::repo::ReadRun {
            pack,
            start: u64::from(entry.offset),
            len: u64::from(entry.length),
            entries: vec![entry],
        });
    }
    Ok(runs)
}

fn prepare_target(target: &Path, existing: ExistingTarget) -> Result<()> {
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() && existing == ExistingTarget::Refuse {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    RestoreError::NotEmpty(target.to_path_buf()),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(|e| io_error("creating", target, e))
        }
        Err(e) => Err(io_error("opening the restore target", target, e)),
    }
}

/// Creates directories below the target one component at a time, refusing symlinks.
struct SafeDirs<'a> {
    target: &'a Path,
    known: HashSet<String>,
}

impl<'a> SafeDirs<'a> {
    fn new(target: &'a Path) -> Self {
        Self {
            target,
            known: HashSet::new(),
        }
    }

    fn create(&mut self, rel: &str) -> Result<()> {
        if self.known.contains(rel) {
            return Ok(());
        }
        let mut current = String::new();
        for seg in rel.split('/') {
            if !current.is_empty() {
                current.push('/');
            }
            current.push_str(seg);
            if self.known.contains(&current) {
                continue;
            }
            let path = self.target.join(&current);
            match std::fs::symlink_metadata(&path) {
                Ok(md) if md.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::Unsafe,
                        RestoreError::NotADirectory(path),
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&path).map_err(|e| io_error("creating", &path, e))?;
                }
                Err(e) => return Err(io_error("inspecting", &path, e)),
            }
            self.known.insert(current.clone());
        }
        Ok(())
    }
}

fn remove_existing(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => Err(Error::new(
            ErrorKind::AlreadyExists,
            RestoreError::NotADirectory(path.to_path_buf()),
        )),
        Ok(_) => std::fs::remove_file(path).map_err(|e| io_error("replacing", path, e)),
        Err(_) => Ok(()),
    }
}

fn apply_metadata(path: &Path, node: &Node) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode & 0o7777))
        .map_err(|e| io_error("setting permissions of", path, e))?;
    let mtime = filetime::FileTime::from_unix_time(
        node.mtime_ns.div_euclid(1_000_000_000),
        node.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_mtime(path, mtime).map_err(|e| io_error("setting the mtime of", path, e))
}

fn restore_files(
    repo: &Repository,
    snapshot: &Snapshot,
    target: &Path,
    nodes: &[Node],
    options: &RestoreOptions,
) -> Result<u64> {
    let threads = repo.options.worker_threads();
    let (tx, rx) = bounded::<&Node>(threads * 4);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let bytes = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let rx = rx.clone();
            let first_error = &first_error;
            let bytes = &bytes;
            scope.spawn(move || {
                for node in rx {
                    if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        continue;
                    }
                    match restore_one(repo, snapshot, target, node, options) {
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                        }
                    }
                }
            });
        }
        drop(rx);
        for node in nodes.iter().filter(|n| n.kind == NODE_FILE) {
            if options.cancel.is_cancelled() {
                break;
            }
            if tx.send(node).is_err() {
                break;
            }
        }
        drop(tx);
    });
    if let Some(e) = first_error
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(e);
    }
    if options.cancel.is_cancelled() {
        return Err(Error::msg(
            ErrorKind::Cancelled,
            "the restore was cancelled; the target is incomplete",
        ));
    }
    Ok(bytes.into_inner())
}

fn restore_one(
    repo: &Repository,
    snapshot: &Snapshot,
    target: &Path,
    node: &Node,
    options: &RestoreOptions,
) -> Result<u64> {
    options.progress.file(&node.path);
    let path = target.join(&node.path);
    remove_existing(&path)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_error("creating", &path, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut written = 0u64;
    let context = format!("`{}` of backup {}", node.path, snapshot.id);
    let damaged = |source: Error| {
        Error::new(
            source.kind(),
            RestoreError::Damaged {
                backup: snapshot.id,
                path: node.path.clone(),
                source,
            },
        )
    };
    for run in read_runs(repo, &node.chunks, &context).map_err(damaged)? {
        if options.cancel.is_cancelled() {
            return Err(Error::msg(
                ErrorKind::Cancelled,
                "the restore was cancelled",
            ));
        }
        for data in repo.read_run(&run).map_err(damaged)? {
            out.write_all(&data)
                .map_err(|e| io_error("writing", &path, e))?;
            written += data.len() as u64;
            options.progress.bytes(data.len() as u64);
        }
    }
    if written != node.size {
        return Err(Error::new(
            ErrorKind::Corrupt,
            RestoreError::Damaged {
                backup: snapshot.id,
                path: node.path.clone(),
                source: Error::msg(
                    ErrorKind::Corrupt,
                    format!(
                        "its chunks hold {written} bytes, the file list says {}",
                        node.size
                    ),
                ),
            },
        ));
    }
    // Durability comes from one syncfs at the end of the restore, not an fsync per file.
    let file = out
        .into_inner()
        .map_err(|e| io_error("writing", &path, e.into_error()))?;
    drop(file);
    apply_metadata(&path, node)?;
    Ok(written)
}

/// Reads one file of a snapshot into memory.
pub(crate) fn read_file(repo: &Repository, snapshot: &Snapshot, path: &str) -> Result<Vec<u8>> {
    let mut found = None;
    repo.for_each_node(snapshot, |n| {
        if n.path == path && n.kind == NODE_FILE {
            found = Some(n);
        }
        Ok(())
    })?;
    let node = found.ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            RestoreError::NoSuchFile {
                backup: snapshot.id,
                path: path.to_owned(),
            },
        )
    })?;
    let mut out = Vec::with_capacity(node.size as usize);
    for chunk in &node.chunks {
        out.extend_from_slice(
            &repo.read_blob(chunk, &format!("`{path}` of backup {}", snapshot.id))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::format::{self, BlobKind, IndexPack, PackEntry, PackHeader, TreeBlob};
    use crate::options::{EngineOptions, InitOptions};

    /// Writes a snapshot whose file list is `nodes`, bypassing the backup's own path checks,
    /// as a damaged or malicious repository could.
    fn forged_snapshot(repo: &Repository, nodes: Vec<Node>) -> Snapshot {
        let mut raw = Vec::new();
        ciborium::into_writer(&TreeBlob { nodes }, &mut raw).unwrap();
        let id = format::blob_id(&raw, repo.key());
        let (stored, compressed) = format::encode_blob(&raw, 0, repo.key());
        let entry = PackEntry {
            id,
            kind: BlobKind::Tree,
            offset: 0,
            length: stored.len() as u32,
            raw_length: raw.len() as u32,
            compressed,
        };
        let header = PackHeader {
            entries: vec![entry],
        };
        let pack = format::finish_pack(stored, &header, repo.key());
        let pack_id = format::ContentId::hash(&pack);
        repo.store
            .put(
                &format::pack_key(pack_id),
                &pack,
                backstop_store::PutMode::Create,
            )
            .unwrap();
        repo.write_index(vec![IndexPack {
            id: pack_id,
            size: pack.len() as u64,
            entries: header.entries,
        }])
        .unwrap();
        repo.reload_index().unwrap();
        let mut snapshot = Snapshot {
            version: format::FORMAT_VERSION,
            id: 0,
            time_unix: 0,
            duration_ms: 0,
            host: "h".into(),
            source_kind: "dir".into(),
            source: "/x".into(),
            tags: vec![],
            message: None,
            metadata: Default::default(),
            tree: vec![id],
            stats: Default::default(),
            parent: None,
            source_meta: Default::default(),
            pause_window: None,
            warnings: vec![],
            restore_profile: backstop_source::RestoreProfile::none(),
        };
        repo.commit_snapshot(&mut snapshot).unwrap();
        snapshot
    }

    fn file_node(path: &str) -> Node {
        Node {
            path: path.into(),
            kind: NODE_FILE,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            target: None,
            chunks: vec![],
            fs: None,
            identity: None,
            racy: false,
        }
    }

    #[test]
    fn stored_paths_that_escape_the_target_are_refused() {
        let store = Arc::new(backstop_store::MemoryStore::new());
        let init = InitOptions::default()
            .with_kdf(8 * 1024, 1)
            .with_password("pw");
        let repo =
            Repository::init(store, &init, EngineOptions::default().with_password("pw")).unwrap();
        for evil in [
            "../escaped",
            "/tmp/absolute-escape",
            "a/../../escaped",
            "a//b",
            "./x",
        ] {
            let snapshot = forged_snapshot(&repo, vec![file_node(evil)]);
            let outer = tempfile::tempdir().unwrap();
            let target = outer.path().join("target");
            let err = restore(&repo, &snapshot, &target, &RestoreOptions::default()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsafe, "{evil}: {err}");
            assert!(err.to_string().contains(evil), "{err}");
            assert!(!outer.path().join("escaped").exists());
            assert!(
                target.join(INCOMPLETE_MARKER).exists(),
                "a failed restore must stay marked"
            );
        }
    }
}
