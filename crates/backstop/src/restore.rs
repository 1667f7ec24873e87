//! Restore: a snapshot's file list back onto disk, every byte checked against its hash, then the
//! source's restore procedure.
//!
//! Safety: every path is checked to be relative and free of `..`; directories are created one
//! component at a time and each must be a real directory (never a symlink), and symlinks are
//! created only after every file, so the tree cannot write outside the target. A marker file,
//! `.backstop-restore-incomplete`, exists in the target from the first byte written until the
//! restore and its fix-ups have succeeded, so a failed restore never looks complete. Files and
//! directories are created private (0600, 0700) and get their recorded modes, and when root
//! restores their owners, once written (`apply_metadata`). Every file, directory, link and
//! mode is created or changed through [`Beneath`]: the directory that holds it is opened
//! relative to the target with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a
//! directory that another local user who can write in the target swaps for a symlink while
//! the restore runs stops the restore instead of sending it outside; a delta restore lists and
//! deletes what the backup lacks through directory descriptors the same way, and the marker is
//! written through the target's. On kernels without `openat2` (before 5.6) the directories are
//! opened one component at a time with `O_NOFOLLOW`, to the same effect. The sources' fix-ups do their own
//! file operations through directories opened one component at a time from the target with
//! `O_NOFOLLOW` (`backstop_source`'s `restored` module); the paths they hand to a database's
//! tools (`db_recover`, PostgreSQL itself) are the tools' to open.
//!
//! A delta restore ([`ExistingTarget::Delta`]) makes a non-empty target the backup: it first
//! deletes whatever the backup does not have (never following a symlink), then reads each
//! regular file the target holds at a path of the backup and hashes it chunk by chunk against
//! the backup's chunk ids, and fetches and writes, in place, only the chunks that differ. A
//! file with other hard links, or a symlink, is replaced instead, so nothing outside the target
//! is written. Nothing is trusted from sizes or times: every chunk is compared.
//!
//! A sparse restore ([`RestoreOptions::sparse`]) creates each new file at its final size and
//! leaves the chunks of zeros unwritten, so they read back as holes.
//!
//! Speed and memory: files are cut into segments of whole read runs (16 MiB of raw bytes), whose
//! offsets in the file follow from the index's raw lengths, so several workers write one large
//! file at once with positioned writes. Blobs are decoded and written one at a time, and the
//! bytes all reads hold at once (stored plus decoded) stay within a shared budget, so memory
//! does not grow with compression ratios or file sizes. A restore that ends with a sync, and
//! whose fix-ups do not read the files back, writes the whole blocks of large files with direct
//! I/O, past the page cache, from a thread beside each worker (`OpenFile::direct`); other
//! writes start their writeback as soon as a segment is written. The one `syncfs` at the end
//! remains the durability point. Small files stored close together in one pack go to one
//! worker as a group and are fetched with one ranged read (on an object store, one request
//! instead of one per file). Files reach the workers in two lanes, work for the cores and work
//! for the device (`Work`), so that while one worker decodes another writes.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crossbeam_channel::bounded;

use crate::backup::is_safe_path;
use crate::beneath::Beneath;
use crate::budget::Budget;
use crate::error::io_error;
use crate::format::{NODE_DIR, NODE_FILE, NODE_SYMLINK, Node, Snapshot};
use crate::info::RestoreInfo;
use crate::options::{ExistingTarget, RestoreOptions};
use crate::repo::{FrameCache, ReadRun, Repository, RunError};
use crate::{Error, ErrorKind, Result};

/// Name of the marker of an unfinished restore.
pub(crate) const INCOMPLETE_MARKER: &str = ".backstop-restore-incomplete";

/// What a restore refuses, with the file and the backup it concerns.
#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error("restore target `{}` is not empty; restore into an empty directory, overwrite it on purpose (`--force`), or make it the backup, writing only what differs (`--delta`)", .0.display())]
    NotEmpty(PathBuf),
    #[error(
        "backup {backup} holds the path `{path}`, which would escape the restore target; refusing to restore it"
    )]
    Escape { backup: u64, path: String },
    #[error("`{}` inside the restore target is a symlink or not a directory; refusing to write through it", .0.display())]
    NotADirectory(PathBuf),
    #[error("`{}` inside the restore target stopped being a regular file during the restore; refusing to write through it", .0.display())]
    NotAFile(PathBuf),
    #[error(
        "{0} (restoring over the files of a running database corrupts it); nothing was restored"
    )]
    ServerRunning(backstop_source::restore_profile::Running),
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
    #[error(
        "`{path}` of backup {backup} is a {kind}, not a file; restore it with `restore {backup} DIR --include '{path}'`"
    )]
    NotARegularFile {
        backup: u64,
        path: String,
        kind: &'static str,
    },
    #[error(
        "no path of backup {backup} matches `{patterns}`; `backstop info {backup} --files` lists them"
    )]
    NoMatch { backup: u64, patterns: String },
    #[error(
        "backup {backup} is of a `{kind}` database, whose files restored in part would not open consistent; restore all of it, or add --raw for the files alone"
    )]
    PartOfDatabase { backup: u64, kind: String },
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
    restore_tuned(repo, snapshot, target, options, Tuning::default())
}

fn restore_tuned(
    repo: &Repository,
    snapshot: &Snapshot,
    target: &Path,
    options: &RestoreOptions,
    tuning: Tuning,
) -> Result<RestoreInfo> {
    let started = Instant::now();
    // Everything that can refuse the restore does so before the target is touched, and a
    // target in the way before the backup's tree is read (which takes a while for a large one).
    let select = Selection::new(snapshot, options)?;
    let delta = options.existing == ExistingTarget::Delta;
    if delta && select.is_some() {
        return Err(Error::msg(
            ErrorKind::InvalidInput,
            "a delta restore makes the target the whole backup and deletes what it does not \
             hold, so it cannot restore only some paths: leave out the paths to include, or \
             restore them into an empty directory",
        ));
    }
    if refuse_non_empty(target, options.existing)? {
        refuse_a_running_server(snapshot, target)?;
    }
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
    if let Some(select) = select {
        nodes = select.apply(nodes)?;
    }
    let links = split_hard_links(&mut nodes);
    let wanted = delta.then(|| wanted_paths(nodes.iter().chain(links.iter().map(|(n, _)| n))));
    let files = nodes.iter().filter(|n| n.kind == NODE_FILE);
    options.progress.phase(
        "restore",
        files.clone().count() as u64,
        files.map(|n| n.size).sum(),
    );
    let params = backstop_source::RestoreParams {
        raw: options.raw,
        options: options.fixup_options.clone(),
    };
    // A misspelt option is refused before anything is written, not after the whole restore.
    backstop_source::restore_profile::check_options(&snapshot.restore_profile, &params).map_err(
        |e| {
            Error::msg(
                ErrorKind::InvalidInput,
                format!("{e}; nothing was restored"),
            )
        },
    )?;
    prepare_target(target, options.existing)?;
    let beneath = Beneath::open(target).map_err(|e| io_error("opening", target, e))?;
    let marker = target.join(INCOMPLETE_MARKER);
    write_marker(&beneath, &marker, snapshot.id, options.sync)?;

    let mut info = RestoreInfo {
        id: snapshot.id,
        ..RestoreInfo::default()
    };
    let procedure_failed = |source| {
        Error::new(
            ErrorKind::Source,
            RestoreError::Fixup {
                kind: snapshot.restore_profile.kind.clone(),
                source,
            },
        )
    };
    let mut prepared = Vec::new();
    if let Some(wanted) = &wanted {
        prepared = backstop_source::restore_profile::prepare_delta(
            &snapshot.restore_profile,
            target,
            &params,
        )
        .map_err(procedure_failed)?;
        info.removed = remove_unwanted(&beneath, wanted)?;
    }
    let mut dirs = SafeDirs::new(&beneath);
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
    // Direct writes go to blocks allocated up front, which would fill a sparse file's holes.
    let direct = writes_directly(snapshot, options, &params) && !options.sparse;
    let written = restore_files(repo, snapshot, &beneath, &nodes, options, tuning, direct)?;
    info.bytes = written.bytes;
    info.bytes_direct = written.direct;
    info.bytes_kept = written.kept;
    info.bytes_sparse = written.sparse;
    info.files = nodes.iter().filter(|n| n.kind == NODE_FILE).count() as u64;
    for (node, first) in &links {
        if let Some((parent, _)) = node.path.rsplit_once('/') {
            dirs.create(parent)?;
        }
        let path = target.join(&node.path);
        remove_existing(&beneath, &path)?;
        let original = target.join(first);
        if let Err(e) = beneath.hard_link(&original, &path) {
            // A filesystem without hard links (or at its link limit) gets a copy instead.
            tracing::debug!(path = %path.display(), error = %e, "no hard link; copying");
            copy_file(&beneath, &original, &path).map_err(|e| io_error("copying", &path, e))?;
        } else {
            info.hard_links += 1;
        }
        info.files += 1;
    }
    for node in nodes.iter().filter(|n| n.kind == NODE_SYMLINK) {
        if let Some((parent, _)) = node.path.rsplit_once('/') {
            dirs.create(parent)?;
        }
        let path = target.join(&node.path);
        remove_existing(&beneath, &path)?;
        let link_target = node.target.clone().unwrap_or_default();
        beneath
            .symlink(Path::new(&link_target), &path)
            .map_err(|e| io_error("creating symlink", &path, e))?;
        // A symlink's own mode means nothing; its owner matters to sticky directories.
        let _ = set_id_bits_to_drop(&beneath, &path, node);
        let _ = beneath.set_symlink_mtime(&path, node.mtime_ns);
        info.symlinks += 1;
    }
    // Deepest first, so setting a child's mtime does not disturb its parent's afterwards.
    let mut dir_nodes: Vec<&Node> = nodes.iter().filter(|n| n.kind == NODE_DIR).collect();
    dir_nodes.sort_by_key(|n| std::cmp::Reverse(n.path.matches('/').count()));
    for node in dir_nodes {
        apply_metadata(&beneath, &target.join(&node.path), node)?;
    }

    let applied =
        backstop_source::restore_profile::apply(&snapshot.restore_profile, target, &params)
            .map_err(procedure_failed)?;
    info.fixups = prepared.into_iter().chain(applied).collect();
    if options.sync {
        sync_filesystem(target)?;
    }
    std::fs::remove_file(&marker).map_err(|e| io_error("removing", &marker, e))?;
    if options.sync {
        sync_filesystem(target)?;
    }
    info.duration_ms = started.elapsed().as_millis() as u64;
    Ok(info)
}

/// The part of a backup a restore asks for ([`RestoreOptions::include`]).
struct Selection {
    backup: u64,
    patterns: Vec<String>,
    globs: globset::GlobSet,
}

impl Selection {
    /// None for the whole backup. Refuses bad patterns, and a part of a database backup
    /// unless only its raw files are asked for.
    fn new(snapshot: &Snapshot, options: &RestoreOptions) -> Result<Option<Self>> {
        if options.include.is_empty() {
            return Ok(None);
        }
        if !options.raw && !snapshot.restore_profile.is_plain_files() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                RestoreError::PartOfDatabase {
                    backup: snapshot.id,
                    kind: snapshot.restore_profile.kind.clone(),
                },
            ));
        }
        let mut builder = globset::GlobSetBuilder::new();
        for pattern in &options.include {
            // `*` stays within one path component, as in a shell; `**` crosses them.
            let glob = globset::GlobBuilder::new(pattern.trim_matches('/'))
                .literal_separator(true)
                .build()
                .map_err(|e| {
                    Error::msg(
                        ErrorKind::InvalidInput,
                        format!("bad include pattern `{pattern}`: {e}"),
                    )
                })?;
            builder.add(glob);
        }
        let globs = builder.build().map_err(|e| {
            Error::msg(
                ErrorKind::InvalidInput,
                format!("bad include patterns: {e}"),
            )
        })?;
        Ok(Some(Self {
            backup: snapshot.id,
            patterns: options.include.clone(),
            globs,
        }))
    }

    /// The nodes under a matching path, and the directories above them (so that theirs are
    /// the backup's modes and times too).
    fn apply(&self, nodes: Vec<Node>) -> Result<Vec<Node>> {
        let matches = |path: &str| {
            self.globs.is_match(path)
                || path
                    .match_indices('/')
                    .any(|(at, _)| self.globs.is_match(&path[..at]))
        };
        let chosen: Vec<bool> = nodes.iter().map(|n| matches(&n.path)).collect();
        if !chosen.contains(&true) {
            return Err(Error::new(
                ErrorKind::NotFound,
                RestoreError::NoMatch {
                    backup: self.backup,
                    patterns: self.patterns.join("`, `"),
                },
            ));
        }
        let above: HashSet<&str> = nodes
            .iter()
            .zip(&chosen)
            .filter(|(_, c)| **c)
            .flat_map(|(n, _)| n.path.match_indices('/').map(|(at, _)| &n.path[..at]))
            .collect();
        let keep: Vec<bool> = nodes
            .iter()
            .zip(&chosen)
            .map(|(n, c)| *c || (n.kind == NODE_DIR && above.contains(n.path.as_str())))
            .collect();
        Ok(nodes
            .into_iter()
            .zip(keep)
            .filter_map(|(n, k)| k.then_some(n))
            .collect())
    }
}

/// Whether large files go past the page cache (see [`OpenFile::direct`]): only when the
/// restore syncs anyway, and no fix-up reads the files right after (they would come back from
/// the device page by page: SQLite's integrity check of a 21 MB database took 0.38 s instead of
/// 0.14 s).
fn writes_directly(
    snapshot: &Snapshot,
    options: &RestoreOptions,
    params: &backstop_source::RestoreParams,
) -> bool {
    options.sync
        && !backstop_source::restore_profile::reads_restored_files(
            &snapshot.restore_profile,
            params,
        )
}

/// Writes the incomplete-restore marker, durably when the restore syncs: direct writes of
/// file data may reach the disk before a marker left in the page cache would. Like every file
/// the restore writes, never through a symlink: one planted under the marker's name in a
/// target restored over (`--force`) would otherwise have a file outside truncated.
fn write_marker(beneath: &Beneath, marker: &Path, id: u64, sync: bool) -> Result<()> {
    use std::io::Write as _;
    let opened = match beneath.open_file(
        marker,
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::TRUNC,
    ) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            beneath.create_file(marker, 0o600, false)
        }
        opened => opened,
    };
    let mut file = opened.map_err(|e| io_error("writing", marker, e))?;
    file.write_all(format!("backup {id}\n").as_bytes())
        .map_err(|e| io_error("writing", marker, e))?;
    if sync {
        file.sync_all()
            .map_err(|e| io_error("syncing", marker, e))?;
        if let Some(dir) = marker.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("syncing the directory of", marker, e))?;
        }
    }
    Ok(())
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
    max_run: u64,
    context: &str,
) -> Result<Vec<ReadRun>> {
    let index = repo.index_read();
    let mut runs: Vec<ReadRun> = Vec::new();
    for id in chunks {
        let (pack, entry) = index
            .locate(id)
            .ok_or_else(|| crate::repo::missing_blob(id, context))?;
        if let Some(run) = runs.last_mut() {
            if run.try_push(pack, entry, max_run) {
                continue;
            }
        }
        runs.push(ReadRun::new(pack, entry));
    }
    Ok(runs)
}

/// Refuses a target that holds anything unless told to overwrite; `Ok(false)` when there is
/// no target yet.
fn refuse_non_empty(target: &Path, existing: ExistingTarget) -> Result<bool> {
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() && existing == ExistingTarget::Refuse {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    RestoreError::NotEmpty(target.to_path_buf()),
                ));
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("opening the restore target", target, e)),
    }
}

/// Refuses to restore over the files of a database server that may be running on them.
fn refuse_a_running_server(snapshot: &Snapshot, target: &Path) -> Result<()> {
    match backstop_source::restore_profile::running_server(&snapshot.restore_profile, target) {
        Some(running) => Err(Error::new(
            ErrorKind::Unsafe,
            RestoreError::ServerRunning(running),
        )),
        None => Ok(()),
    }
}

/// Checks the target again (something may have appeared since the first look) and creates it.
fn prepare_target(target: &Path, existing: ExistingTarget) -> Result<()> {
    if refuse_non_empty(target, existing)? {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|e| io_error("creating", target, e))
}

/// Every path a delta restore keeps in the target, with the kind of node the backup has there
/// (the directories above every node included, whether or not the backup lists them).
fn wanted_paths<'n>(
    nodes: impl Iterator<Item = &'n Node>,
) -> std::collections::HashMap<&'n str, u8> {
    let mut wanted = std::collections::HashMap::new();
    for node in nodes {
        wanted.insert(node.path.as_str(), node.kind);
        let mut path = node.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            if wanted.insert(parent, NODE_DIR).is_some() {
                break;
            }
            path = parent;
        }
    }
    wanted
}

/// Deletes what the target holds that the backup does not, or holds as another kind of node
/// (a delta restore), and returns how many paths went: a directory with what is in it counts
/// once. Symlinks are never followed: a symlink where the backup has a directory is deleted,
/// not walked. The marker of an unfinished restore stays, as does a `lost+found` directory at
/// the top.
fn remove_unwanted(beneath: &Beneath, wanted: &std::collections::HashMap<&str, u8>) -> Result<u64> {
    use rustix::fs::FileType;
    let mut removed = 0;
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        let dir_path = beneath.root().join(&rel);
        let (dir, entries) = beneath
            .list(&dir_path)
            .map_err(|e| io_error("reading", &dir_path, e))?;
        for entry in entries {
            // A name that is not UTF-8 cannot be a path of the backup (its paths are strings).
            let name = entry.name.to_str().ok();
            let rel_path = name.map(|name| match rel.as_str() {
                "" => name.to_owned(),
                _ => format!("{rel}/{name}"),
            });
            let is_dir = entry.kind == FileType::Directory;
            // The marker stays, and so does a filesystem's `lost+found` at the top of a target
            // that is a mount point (fsck's, not the application's).
            if rel_path.as_deref() == Some(INCOMPLETE_MARKER)
                || (rel_path.as_deref() == Some("lost+found") && is_dir)
            {
                continue;
            }
            let keep = match rel_path.as_deref().and_then(|p| wanted.get(p)) {
                Some(&NODE_DIR) => is_dir,
                Some(&NODE_FILE) => entry.kind == FileType::RegularFile,
                Some(&NODE_SYMLINK) => entry.kind == FileType::Symlink,
                _ => false,
            };
            match rel_path {
                Some(rel_path) if keep => {
                    if is_dir {
                        dirs.push(rel_path);
                    }
                }
                _ => {
                    crate::beneath::remove_entry(&dir, &entry).map_err(|e| {
                        let path =
                            dir_path.join(std::ffi::OsStr::from_bytes(entry.name.as_bytes()));
                        io_error("deleting (the backup does not have it)", &path, e)
                    })?;
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// Whether a delta restore may rewrite the file at `path` in place: a regular file (not a
/// symlink) with no other name, since writing through another link would change a file
/// outside the restore.
fn rewritable_in_place(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file() && m.nlink() == 1)
}

/// Takes out of `nodes` the files that shared an inode with an earlier file when they were
/// backed up (hard links: same device and inode, and the same content and metadata as
/// recorded), and returns each with the path of the file it is to be a link of. Those files are
/// written once and linked, as `tar` and restic restore them; a node whose inode was reused
/// between two reads (other content) is written on its own.
fn split_hard_links(nodes: &mut Vec<Node>) -> Vec<(Node, String)> {
    let mut first: std::collections::HashMap<(u64, u64), usize> = std::collections::HashMap::new();
    let mut link_to: Vec<Option<usize>> = vec![None; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        let Some(fs) = node.fs.as_ref().filter(|_| node.kind == NODE_FILE) else {
            continue;
        };
        match first.get(&(fs.dev, fs.ino)) {
            Some(&j) if same_file(&nodes[j], node) => link_to[i] = Some(j),
            Some(_) => {}
            None => {
                first.insert((fs.dev, fs.ino), i);
            }
        }
    }
    if link_to.iter().all(Option::is_none) {
        return Vec::new();
    }
    let paths: Vec<Option<String>> = link_to
        .iter()
        .map(|to| to.map(|j| nodes[j].path.clone()))
        .collect();
    let mut links = Vec::new();
    let mut kept = Vec::with_capacity(nodes.len());
    for (node, path) in std::mem::take(nodes).into_iter().zip(paths) {
        match path {
            Some(first) => links.push((node, first)),
            None => kept.push(node),
        }
    }
    *nodes = kept;
    links
}

/// Whether two file nodes recorded the same file: content and the metadata a link shares.
fn same_file(a: &Node, b: &Node) -> bool {
    a.size == b.size
        && a.chunks == b.chunks
        && a.lists == b.lists
        && a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.mtime_ns == b.mtime_ns
}

/// Creates directories below the target one component at a time, refusing symlinks.
struct SafeDirs<'a> {
    beneath: &'a Beneath,
    known: HashSet<String>,
}

impl<'a> SafeDirs<'a> {
    fn new(beneath: &'a Beneath) -> Self {
        Self {
            beneath,
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
            let path = self.beneath.root().join(&current);
            match self.beneath.lstat(&path) {
                Ok(stat)
                    if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                        == rustix::fs::FileType::Directory => {}
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::Unsafe,
                        RestoreError::NotADirectory(path),
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Private until the end, when directories get their recorded modes: a
                    // 0600 file in a 0700 directory must not be open to others meanwhile.
                    self.beneath
                        .mkdir(&path, 0o700)
                        .map_err(|e| io_error("creating", &path, e))?;
                }
                Err(e) => return Err(io_error("inspecting", &path, e)),
            }
            self.known.insert(current.clone());
        }
        Ok(())
    }
}

fn remove_existing(beneath: &Beneath, path: &Path) -> Result<()> {
    match beneath.lstat(path) {
        Ok(stat)
            if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                == rustix::fs::FileType::Directory =>
        {
            Err(Error::new(
                ErrorKind::AlreadyExists,
                RestoreError::NotADirectory(path.to_path_buf()),
            ))
        }
        Ok(_) => beneath
            .unlink(path)
            .map_err(|e| io_error("replacing", path, e)),
        Err(_) => Ok(()),
    }
}

/// Copies the file `original` to the new file `path`, both below the target (where a hard
/// link cannot be made).
fn copy_file(beneath: &Beneath, original: &Path, path: &Path) -> std::io::Result<u64> {
    let mut from = beneath.open_file(original, rustix::fs::OFlags::RDONLY)?;
    let mut to = beneath.create_file(path, 0o600, false)?;
    std::io::copy(&mut from, &mut to)
}

/// Gives a restored file or directory its owner, mode and mtime. Run as root, a restore gives
/// every node its recorded owner (as `tar` does), then its mode: chown clears the set-id bits.
/// Otherwise the files are the restoring user's, and a set-user-id or set-group-id bit is
/// kept only when the recorded owner or group is that user's: a restore must never make a
/// program run as someone who did not mark it so.
fn apply_metadata(beneath: &Beneath, path: &Path, node: &Node) -> Result<()> {
    let mode = node.mode & 0o7777 & !set_id_bits_to_drop(beneath, path, node);
    beneath
        .set_mode_and_mtime(path, mode, node.mtime_ns)
        .map_err(|e| io_error("setting the mode and mtime of", path, e))
}

/// Gives `path` its recorded owner when this process is root (without following a symlink),
/// and returns the set-id bits of the node's mode that must not be applied: those of an owner
/// or group the file did not get.
fn set_id_bits_to_drop(beneath: &Beneath, path: &Path, node: &Node) -> u32 {
    set_id_bits_to_drop_with(path, node, |uid, gid| {
        beneath.chown(path, Some(uid), Some(gid))
    })
}

/// [`set_id_bits_to_drop`], giving the owner with `chown`.
fn set_id_bits_to_drop_with(
    path: &Path,
    node: &Node,
    chown: impl FnOnce(rustix::fs::Uid, rustix::fs::Gid) -> std::io::Result<()>,
) -> u32 {
    use rustix::fs::{Gid, Uid};
    let (euid, egid) = (rustix::process::geteuid(), rustix::process::getegid());
    let owned = if euid.is_root() {
        // Ids not mapped in this user namespace fail, and are then reported below.
        let (uid, gid) = (Uid::from_raw(node.uid), Gid::from_raw(node.gid));
        match chown(uid, gid) {
            Ok(()) => return 0,
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    uid = node.uid,
                    gid = node.gid,
                    error = %e,
                    "could not give the restored file its recorded owner; it stays root's, \
                     without set-id bits"
                );
                (false, false)
            }
        }
    } else {
        (node.uid == euid.as_raw(), node.gid == egid.as_raw())
    };
    let mut drop = 0;
    if !owned.0 {
        drop |= 0o4000;
    }
    if !owned.1 {
        drop |= 0o2000;
    }
    drop
}

/// Segments of at least this many bytes have their writeback started as soon as they are
/// written.
const EARLY_WRITEBACK_FROM: u64 = 1 << 20;
/// Decoded frames each worker keeps: a page file restored after incremental backups returns to
/// the same old frames between its changed pages, and the small files of a directory share
/// frames (on an object store, one request per frame instead of one per file).
const FRAME_CACHE: usize = 4 << 20;

/// How a restore cuts its work and how much memory it lets blobs take.
#[derive(Clone, Copy, Debug)]
struct Tuning {
    /// Raw bytes of a file one worker restores at a time: larger files are cut into segments
    /// that workers write in parallel, each at its own offset.
    segment_bytes: u64,
    /// Stored bytes one ranged read fetches at most.
    max_run: u64,
    /// Stored plus decoded bytes of all reads in flight, over all workers (one read may exceed
    /// it when nothing else is in flight, so a large blob cannot stall the restore).
    memory_budget: u64,
    /// Small blobs are gathered into writes of this many bytes; larger ones are written from
    /// where they were decoded, without a copy.
    write_buffer: usize,
    /// Files of at least this many bytes are written with direct I/O when the restore ends
    /// with a sync and no fix-up reads them (see [`OpenFile::direct`]).
    direct_from: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            segment_bytes: 16 << 20,
            max_run: 8 << 20,
            memory_budget: 32 << 20,
            write_buffer: 1 << 20,
            direct_from: 1 << 20,
        }
    }
}

/// One file being restored, shared by the workers writing its segments.
struct FileJob<'a> {
    node: &'a Node,
    path: PathBuf,
    /// The target, where the file is created and opened.
    beneath: &'a Beneath,
    /// Created by whichever worker gets to the file first.
    file: Mutex<Option<Arc<OpenFile>>>,
    how: Writes,
    /// Segments not yet written; the worker that writes the last one closes the file and sets
    /// its metadata.
    remaining: AtomicUsize,
}

/// How a file's bytes are written.
#[derive(Clone, Copy, Debug, Default)]
struct Writes {
    /// Its aligned blocks with direct I/O (see [`OpenFile::direct`]).
    direct: bool,
    /// In place: a delta restore found the file in the target, so its chunks are compared with
    /// the backup's and only those that differ are written (see [`restore_in_place`]).
    in_place: bool,
    /// Chunks of zeros of a new file are left as holes ([`RestoreOptions::sparse`]).
    sparse: bool,
}

impl FileJob<'_> {
    fn open(&self) -> Result<Arc<OpenFile>> {
        let mut slot = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = slot.as_ref() {
            return Ok(Arc::clone(file));
        }
        if self.how.in_place {
            let file = match open_in_place(self.beneath, &self.path) {
                Ok(Some(file)) => file,
                Ok(None) => {
                    return Err(Error::new(
                        ErrorKind::Unsafe,
                        RestoreError::NotAFile(self.path.clone()),
                    ));
                }
                // A file its owner made read-only (or one gone since it was planned) is
                // written afresh: every chunk then differs from what the new file holds.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound
                    ) =>
                {
                    remove_existing(self.beneath, &self.path)?;
                    self.beneath
                        .create_file(&self.path, 0o600, true)
                        .map_err(|e| io_error("creating", &self.path, e))?
                }
                Err(e) => return Err(io_error("opening", &self.path, e)),
            };
            file.set_len(self.node.size)
                .map_err(|e| io_error("setting the size of", &self.path, e))?;
            let file = Arc::new(OpenFile {
                file,
                direct: None,
                refused: AtomicBool::new(false),
                // What a file mended in place holds is replaced, zeros included.
                sparse: false,
            });
            *slot = Some(Arc::clone(&file));
            return Ok(file);
        }
        remove_existing(self.beneath, &self.path)?;
        // Private until written: the recorded mode, which may let others read, comes last.
        let file = self
            .beneath
            .create_file(&self.path, 0o600, false)
            .map_err(|e| io_error("creating", &self.path, e))?;
        let direct = if self.how.direct {
            open_direct(self.beneath, &self.path, &file, self.node.size)
        } else {
            None
        };
        if direct.is_none() && (self.remaining.load(Ordering::Relaxed) > 1 || self.how.sparse) {
            // Segments may finish out of order, and a sparse file's last chunk may be a hole:
            // the file has its final size from the start.
            file.set_len(self.node.size)
                .map_err(|e| io_error("setting the size of", &self.path, e))?;
        }
        let file = Arc::new(OpenFile {
            file,
            direct,
            refused: AtomicBool::new(false),
            sparse: self.how.sparse,
        });
        *slot = Some(Arc::clone(&file));
        Ok(file)
    }

    /// Drops the shared handle: the file is closed once the last writer lets go of it.
    fn close(&self) {
        self.file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// Opens the file a delta restore rewrites in place, for reading and writing: the regular file
/// it checked when planning, never one a symlink put there since (`None` when it is no regular
/// file any more).
fn open_in_place(beneath: &Beneath, path: &Path) -> std::io::Result<Option<File>> {
    let file = beneath.open_file(path, rustix::fs::OFlags::RDWR)?;
    Ok(file.metadata()?.file_type().is_file().then_some(file))
}

/// The files of one kind of [`Work`], planned in list order, a file at a time as the lane's
/// workers need them.
struct Lane<'a> {
    files: std::vec::IntoIter<&'a Node>,
    grouper: Grouper<'a>,
    pending: std::collections::VecDeque<Vec<Segment<'a>>>,
    /// The group being handed out, waiting for room in the lane's channel.
    ready: Option<Vec<Segment<'a>>>,
}

impl<'a> Lane<'a> {
    fn new(tuning: Tuning, files: Vec<&'a Node>) -> Self {
        Self {
            files: files.into_iter(),
            grouper: Grouper::new(tuning.max_run, tuning.segment_bytes / 2),
            pending: std::collections::VecDeque::new(),
            ready: None,
        }
    }

    /// Makes the next group ready unless one is, planning files with `plan` as needed; leaves
    /// none once the lane is done.
    fn make_ready(&mut self, plan: impl Fn(&'a Node) -> Result<Vec<Segment<'a>>>) -> Result<()> {
        while self.ready.is_none() {
            if let Some(group) = self.pending.pop_front() {
                self.ready = Some(group);
            } else if let Some(node) = self.files.next() {
                let groups = self.grouper.add(plan(node)?);
                self.pending.extend(groups);
            } else {
                self.ready = self.grouper.finish();
                break;
            }
        }
        Ok(())
    }
}

/// What restoring a file mostly keeps busy, judged from how its chunks were stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// A core: a file compressed to no less than a fifth (a database's pages of numbers and
    /// text, RocksDB's tables), where zstd works hardest for each byte it puts out; or a small
    /// file, whose cost is creating it (small files share frames, and stay together in this
    /// lane, in list order, so that one worker decodes each shared frame once).
    Cpu = 0,
    /// The device: a large file stored raw (incompressible) or compressed many times over (WAL,
    /// the pages of a fresh table, logs), which decodes far faster than the device writes.
    Device = 1,
}

impl Work {
    /// Judged from three of the file's chunks (its first, middle and last), as the index
    /// describes them, before the file is planned.
    fn of(repo: &Repository, node: &Node, tuning: Tuning) -> Self {
        let n = node.chunks.len();
        if node.size < tuning.direct_from || n == 0 {
            return Self::Cpu;
        }
        let index = repo.index_read();
        let (mut stored, mut raw) = (0u64, 0u64);
        for at in [0, n / 2, n - 1] {
            let Some((_, entry)) = node.chunks.get(at).and_then(|id| index.locate(id)) else {
                continue;
            };
            stored += u64::from(entry.length);
            // A frame's entries carry its stored length; frames decode to about this much.
            raw += match entry.within {
                Some(_) => crate::format::FRAME_TARGET as u64,
                None => u64::from(entry.raw_length),
            };
        }
        let compressed_a_little =
            stored.saturating_mul(100) < raw.saturating_mul(97) && stored.saturating_mul(5) > raw;
        if compressed_a_little {
            Self::Cpu
        } else {
            Self::Device
        }
    }
}

/// A part of a file: whole runs, and where their bytes go in the file.
struct Segment<'a> {
    job: Arc<FileJob<'a>>,
    offset: u64,
    runs: Vec<ReadRun>,
}

/// What the workers of a restore wrote, and what a delta restore found in place.
struct Written {
    bytes: u64,
    /// Of `bytes`, those written with direct I/O.
    direct: u64,
    /// Bytes a delta restore found already in place and did not write.
    kept: u64,
    /// Of `bytes`, zeros a sparse restore left as holes.
    sparse: u64,
}

fn restore_files<'n>(
    repo: &Repository,
    snapshot: &Snapshot,
    beneath: &'n Beneath,
    nodes: &'n [Node],
    options: &RestoreOptions,
    tuning: Tuning,
    direct: bool,
) -> Result<Written> {
    let threads = repo.options.worker_threads();
    let (tx_cpu, rx_cpu) = bounded::<Vec<Segment<'n>>>(threads * 2);
    let (tx_device, rx_device) = bounded::<Vec<Segment<'n>>>(threads * 2);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    let record = |e: Error| {
        if let Ok(mut slot) = first_error.lock() {
            slot.get_or_insert(e);
        }
        failed.store(true, Ordering::Relaxed);
    };
    let bytes = AtomicU64::new(0);
    let bytes_direct = AtomicU64::new(0);
    let bytes_kept = AtomicU64::new(0);
    let bytes_sparse = AtomicU64::new(0);
    let budget = Budget::new(tuning.memory_budget);
    std::thread::scope(|scope| {
        // Work comes in two lanes, files that mostly keep a core busy and files that mostly
        // keep the device busy (see [`Work`]), and half the workers take from each lane first
        // (from the other when theirs is empty), so that while some decode, others write. The
        // list's order, even planned from both ends, had both workers decode the SQLite file
        // and the small files together, cores busy and the device half idle, then write the
        // WAL and the incompressible files together at the device's speed with a core idle.
        // Restores of the benchmark's mix: 14 % less time until on disk, 21 % without sync,
        // 7 % less CPU (`bench/ab.py`, 8 and 6 runs of each build).
        for worker in 0..threads {
            let (mine, other) = if worker % 2 == 0 {
                (rx_cpu.clone(), rx_device.clone())
            } else {
                (rx_device.clone(), rx_cpu.clone())
            };
            let (failed, record, bytes, budget) = (&failed, &record, &bytes, &budget);
            let (bytes_direct, bytes_kept, bytes_sparse) =
                (&bytes_direct, &bytes_kept, &bytes_sparse);
            scope.spawn(move || {
                let mut out = SegmentWriter::new(tuning.write_buffer, options.sync);
                let mut frames = FrameCache::new(FRAME_CACHE);
                while let Some(group) = next_group(&mine, &other) {
                    if failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    let restored = restore_group(
                        repo,
                        snapshot,
                        &group,
                        options,
                        budget,
                        &mut out,
                        &mut frames,
                    );
                    match restored {
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => record(e),
                    }
                }
                bytes_direct.fetch_add(out.direct_bytes(), Ordering::Relaxed);
                bytes_kept.fetch_add(out.kept_bytes, Ordering::Relaxed);
                bytes_sparse.fetch_add(out.sparse_bytes, Ordering::Relaxed);
            });
        }
        drop((rx_cpu, rx_device));
        // Each lane plans its own files in list order, a file at a time as its workers need
        // them.
        let mut lists: [Vec<&Node>; 2] = [Vec::new(), Vec::new()];
        for node in nodes.iter().filter(|n| n.kind == NODE_FILE) {
            lists[Work::of(repo, node, tuning) as usize].push(node);
        }
        let [cpu_files, device_files] = lists;
        let mut lanes = [
            (Lane::new(tuning, cpu_files), &tx_cpu),
            (Lane::new(tuning, device_files), &tx_device),
        ];
        let delta = options.existing == ExistingTarget::Delta;
        let plan = |node: &'n Node| {
            let in_place = delta && rewritable_in_place(&beneath.root().join(&node.path));
            let how = Writes {
                direct: direct && !in_place && node.size >= tuning.direct_from,
                in_place,
                sparse: options.sparse,
            };
            let segments = plan_file(repo, snapshot, beneath, node, tuning, how)?;
            options.progress.file(&node.path);
            Ok(segments)
        };
        'plan: loop {
            if options.cancel.is_cancelled() || failed.load(Ordering::Relaxed) {
                break;
            }
            for (lane, _) in &mut lanes {
                if let Err(e) = lane.make_ready(plan) {
                    record(e);
                    break 'plan;
                }
            }
            // Hand a group to whichever lane has room first.
            let mut select = crossbeam_channel::Select::new();
            let mut waiting = Vec::with_capacity(2);
            for (at, (lane, tx)) in lanes.iter().enumerate() {
                if lane.ready.is_some() {
                    select.send(tx);
                    waiting.push(at);
                }
            }
            if waiting.is_empty() {
                break;
            }
            let operation = select.select();
            let (lane, tx) = &mut lanes[waiting[operation.index()]];
            let Some(group) = lane.ready.take() else {
                break;
            };
            if operation.send(tx, group).is_err() {
                break;
            }
        }
        drop((tx_cpu, tx_device));
    });
    if let Some(e) = first_error
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        return Err(e);
    }
    if options.cancel.is_cancelled() {
        return Err(Error::msg(
            ErrorKind::Cancelled,
            "the restore was cancelled; the target is incomplete",
        ));
    }
    Ok(Written {
        bytes: bytes.into_inner(),
        direct: bytes_direct.into_inner(),
        kept: bytes_kept.into_inner(),
        sparse: bytes_sparse.into_inner(),
    })
}

/// The next group for a worker: from its own lane while that has work, else from the other;
/// `None` once both are done.
fn next_group<T>(
    mine: &crossbeam_channel::Receiver<T>,
    other: &crossbeam_channel::Receiver<T>,
) -> Option<T> {
    if let Ok(group) = mine.try_recv() {
        return Some(group);
    }
    crossbeam_channel::select_biased! {
        recv(mine) -> group => group.ok().or_else(|| other.recv().ok()),
        recv(other) -> group => group.ok().or_else(|| mine.recv().ok()),
    }
}

fn damaged_file(snapshot: &Snapshot, node: &Node, source: Error) -> Error {
    Error::new(
        source.kind(),
        RestoreError::Damaged {
            backup: snapshot.id,
            path: node.path.clone(),
            source,
        },
    )
}

/// Cuts a file into segments at run boundaries, each at the offset the index's raw lengths
/// give, after checking that those lengths add up to the file's size.
fn plan_file<'a>(
    repo: &Repository,
    snapshot: &Snapshot,
    beneath: &'a Beneath,
    node: &'a Node,
    tuning: Tuning,
    how: Writes,
) -> Result<Vec<Segment<'a>>> {
    let context = format!("`{}` of backup {}", node.path, snapshot.id);
    let runs = read_runs(repo, &node.chunks, tuning.max_run, &context)
        .map_err(|e| damaged_file(snapshot, node, e))?;
    let total: u64 = runs.iter().map(ReadRun::raw_len).sum();
    if total != node.size {
        return Err(damaged_file(
            snapshot,
            node,
            Error::msg(
                ErrorKind::Corrupt,
                format!(
                    "its chunks hold {total} bytes, the file list says {}",
                    node.size
                ),
            ),
        ));
    }
    let mut parts: Vec<(u64, Vec<ReadRun>)> = vec![(0, Vec::new())];
    let mut offset = 0u64;
    let mut in_part = 0u64;
    for run in runs {
        if in_part >= tuning.segment_bytes {
            parts.push((offset, Vec::new()));
            in_part = 0;
        }
        let raw = run.raw_len();
        offset += raw;
        in_part += raw;
        if let Some((_, part)) = parts.last_mut() {
            part.push(run);
        }
    }
    let job = Arc::new(FileJob {
        node,
        path: beneath.root().join(&node.path),
        beneath,
        file: Mutex::new(None),
        remaining: AtomicUsize::new(parts.len()),
        how,
    });
    Ok(parts
        .into_iter()
        .map(|(offset, runs)| Segment {
            job: Arc::clone(&job),
            offset,
            runs,
        })
        .collect())
}

/// The most bytes one file may add to a joined read that none of its files needs (other files'
/// blobs between theirs in the pack: a backup's reading threads interleave files). With 256
/// KiB, 150 files of 140 KB still took 37 requests to restore; with 2 MiB, under 20. The span
/// of a joined read stays within `Tuning::max_run`, so that bounds what is read for nothing.
const GROUP_GAP: u64 = 2 << 20;

/// Gathers whole files of one blob each (not in frames) whose stored bytes lie close together
/// in one pack into one work item, so a worker fetches them with one ranged read instead of one
/// per file (on an object store, a request each).
///
/// Small files whose blobs all lie in frames are gathered too, up to `framed_max` raw bytes,
/// without joining their reads: the small files of a directory share frames, and handed to
/// the workers one by one, two workers would each fetch and decode most frames (2000 files of
/// 3 KB took 48 requests instead of 25). One worker restoring them in order finds each frame
/// in its cache. Other files go alone.
struct Grouper<'a> {
    max_run: u64,
    framed_max: u64,
    group: Vec<Segment<'a>>,
    /// The group's runs joined: where the next file must continue.
    joined: Option<ReadRun>,
    /// Raw bytes of a group of framed files (0: the group, if any, is joined).
    framed: u64,
}

impl<'a> Grouper<'a> {
    fn new(max_run: u64, framed_max: u64) -> Self {
        Self {
            max_run,
            framed_max,
            group: Vec::new(),
            joined: None,
            framed: 0,
        }
    }

    /// Takes a file's segments; returns the work items that are complete.
    fn add(&mut self, mut segments: Vec<Segment<'a>>) -> Vec<Vec<Segment<'a>>> {
        let mut done = Vec::new();
        if let [segment] = segments.as_slice() {
            let raw: u64 = segment.runs.iter().map(ReadRun::raw_len).sum();
            if is_framed(segment) && raw <= self.framed_max {
                if self.joined.is_some() {
                    done.extend(self.finish());
                }
                self.framed += raw;
                self.group.append(&mut segments);
                if self.framed >= self.framed_max {
                    done.extend(self.finish());
                }
                return done;
            }
        }
        if self.framed > 0 {
            done.extend(self.finish());
        }
        // Files in frames are left to the frame cache: their frames are fetched once each
        // already, and a joined read over several frames would fetch cached ones again
        // (measured on Garage: 91 requests for a restore became 117).
        let single = match segments.as_slice() {
            [segment]
                if segment.runs.len() == 1
                    && segment
                        .runs
                        .iter()
                        .flat_map(|r| &r.entries)
                        .all(|e| e.within.is_none()) =>
            {
                segments.pop()
            }
            _ => None,
        };
        let Some(segment) = single else {
            done.extend(self.finish());
            done.extend(segments.into_iter().map(|s| vec![s]));
            return done;
        };
        let Some(run) = segment.runs.first() else {
            done.push(vec![segment]);
            return done;
        };
        let continues = self
            .joined
            .as_mut()
            .is_some_and(|joined| joined.try_span(run, self.max_run, GROUP_GAP));
        if !continues {
            done.extend(self.finish());
            self.joined = Some(run.clone());
        }
        self.group.push(segment);
        done
    }

    /// The group gathered so far, if any.
    fn finish(&mut self) -> Option<Vec<Segment<'a>>> {
        self.joined = None;
        self.framed = 0;
        (!self.group.is_empty()).then(|| std::mem::take(&mut self.group))
    }
}

/// Whether a segment has blobs and every one of them lies in a frame.
fn is_framed(segment: &Segment<'_>) -> bool {
    let mut entries = segment.runs.iter().flat_map(|r| &r.entries).peekable();
    entries.peek().is_some() && entries.all(|e| e.within.is_some())
}

/// Writes a work item: one segment, several small files in frames one after another, or
/// several whole files read with joined runs.
fn restore_group(
    repo: &Repository,
    snapshot: &Snapshot,
    group: &[Segment<'_>],
    options: &RestoreOptions,
    budget: &Budget,
    out: &mut SegmentWriter,
    frames: &mut FrameCache,
) -> Result<u64> {
    if let [segment] = group {
        return restore_segment(repo, snapshot, segment, options, budget, out, frames);
    }
    if group.iter().all(is_framed) || group.iter().any(|s| s.job.how.in_place) {
        let mut written = 0;
        for segment in group {
            written += restore_segment(repo, snapshot, segment, options, budget, out, frames)?;
        }
        return Ok(written);
    }
    let mut runs: Vec<ReadRun> = Vec::new();
    for run in group.iter().flat_map(|s| &s.runs) {
        if !runs
            .last_mut()
            .is_some_and(|last| last.try_span(run, u64::MAX, u64::MAX))
        {
            runs.push(run.clone());
        }
    }
    // Blobs arrive in order; each segment takes as many as its runs hold.
    let mut segments = group.iter();
    let mut current: Option<(&Segment<'_>, Arc<OpenFile>, usize)> = None;
    let mut written = 0u64;
    for run in &runs {
        stop_if_cancelled(options)?;
        let _held = budget.acquire(run.memory_bound());
        let read = repo.read_run_cached(run, frames, |_, data| {
            loop {
                match current.as_mut() {
                    Some((_, _, left)) if *left > 0 => break,
                    Some(_) => {
                        if let Some((segment, file, _)) = current.take() {
                            written += finish_segment(snapshot, segment, file, out)?;
                        }
                    }
                    None => {}
                }
                let Some(segment) = segments.next() else {
                    return Err(Error::msg(
                        ErrorKind::Corrupt,
                        "a joined read returned more blobs than its files hold",
                    ));
                };
                let file = segment.job.open()?;
                out.start(&file, segment.offset);
                let blobs = segment.runs.iter().map(|r| r.entries.len()).sum();
                current = Some((segment, file, blobs));
            }
            if let Some((segment, file, left)) = current.as_mut() {
                out.write(file, data)
                    .map_err(|e| io_error("writing", &segment.job.path, e))?;
                *left -= 1;
            }
            options.progress.bytes(data.len() as u64);
            Ok::<(), Error>(())
        });
        match read {
            Ok(()) => {}
            Err(RunError::Repo(e)) => {
                let node = current.as_ref().map_or(group[0].job.node, |c| c.0.job.node);
                return Err(damaged_file(snapshot, node, e));
            }
            Err(RunError::Sink(e)) => return Err(e),
        }
    }
    if let Some((segment, file, _)) = current.take() {
        written += finish_segment(snapshot, segment, file, out)?;
    }
    // Files of no bytes have no blobs and are never reached by the loop above.
    for segment in segments {
        let file = segment.job.open()?;
        out.start(&file, segment.offset);
        written += finish_segment(snapshot, segment, file, out)?;
    }
    Ok(written)
}

/// Writes one segment; the last segment of a file also closes it and sets its metadata.
fn restore_segment(
    repo: &Repository,
    snapshot: &Snapshot,
    segment: &Segment<'_>,
    options: &RestoreOptions,
    budget: &Budget,
    out: &mut SegmentWriter,
    frames: &mut FrameCache,
) -> Result<u64> {
    if segment.job.how.in_place {
        return restore_in_place(repo, snapshot, segment, options, budget, out, frames);
    }
    let job = &segment.job;
    let file = job.open()?;
    out.start(&file, segment.offset);
    for run in &segment.runs {
        write_run(
            repo, snapshot, job, &file, run, options, budget, out, frames,
        )?;
    }
    finish_segment(snapshot, segment, file, out)
}

/// Fetches one run and writes its blobs where the writer stands.
#[expect(
    clippy::too_many_arguments,
    reason = "the state of one worker's restore"
)]
fn write_run(
    repo: &Repository,
    snapshot: &Snapshot,
    job: &FileJob<'_>,
    file: &Arc<OpenFile>,
    run: &ReadRun,
    options: &RestoreOptions,
    budget: &Budget,
    out: &mut SegmentWriter,
    frames: &mut FrameCache,
) -> Result<()> {
    stop_if_cancelled(options)?;
    let _held = budget.acquire(run.memory_bound());
    let read = repo.read_run_cached(run, frames, |_, data| {
        out.write(file, data)?;
        options.progress.bytes(data.len() as u64);
        Ok::<(), std::io::Error>(())
    });
    match read {
        Ok(()) => Ok(()),
        Err(RunError::Repo(e)) => Err(damaged_file(snapshot, job.node, e)),
        Err(RunError::Sink(e)) => Err(io_error("writing", &job.path, e)),
    }
}

fn stop_if_cancelled(options: &RestoreOptions) -> Result<()> {
    if options.cancel.is_cancelled() {
        return Err(Error::msg(
            ErrorKind::Cancelled,
            "the restore was cancelled",
        ));
    }
    Ok(())
}

/// Ends a segment's writes: checks their length, starts writeback, and for a file's last
/// segment closes the file and sets its metadata.
fn finish_segment(
    snapshot: &Snapshot,
    segment: &Segment<'_>,
    file: Arc<OpenFile>,
    out: &mut SegmentWriter,
) -> Result<u64> {
    let job = &segment.job;
    let node = job.node;
    out.flush(&file)
        .map_err(|e| io_error("writing", &job.path, e))?;
    let expected: u64 = segment.runs.iter().map(ReadRun::raw_len).sum();
    let written = out.position() - segment.offset;
    if written != expected {
        return Err(damaged_file(
            snapshot,
            node,
            Error::msg(
                ErrorKind::Corrupt,
                format!(
                    "its part at byte {} holds {written} bytes, the index says {expected}",
                    segment.offset
                ),
            ),
        ));
    }
    if out.early_writeback && file.direct.is_none() && written >= EARLY_WRITEBACK_FROM {
        // The kernel would hold these pages dirty until the final syncfs (background writeback
        // starts only at a share of RAM): starting their writeback now overlaps the disk with
        // the decoding of what follows. On Linux, POSIX_FADV_DONTNEED starts writeback of
        // dirty pages without waiting for it (sync_file_range needs unsafe code); it drops
        // only pages that are already clean. Advice only: the syncfs stays the durability
        // point, so an error here changes nothing.
        let _ = rustix::fs::fadvise(
            &file.file,
            segment.offset,
            std::num::NonZeroU64::new(written),
            rustix::fs::Advice::DontNeed,
        );
    }
    part_done(job, file)?;
    Ok(written)
}

/// Lets go of a finished segment's file; the last segment of a file closes it and sets its
/// metadata.
fn part_done(job: &FileJob<'_>, file: Arc<OpenFile>) -> Result<()> {
    if job.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        // Every segment is written: the file gets its owner, mode and mtime through the
        // descriptor it was written with (no second lookup of its path). Durability comes from
        // one syncfs at the end of the restore, not an fsync per file.
        let applied = apply_file_metadata(&file.file, &job.path, job.node);
        drop(file);
        job.close();
        applied?;
    }
    Ok(())
}

/// [`apply_metadata`] for a restored file, through a descriptor open on it (for writing is
/// enough: changing owner, mode and times needs ownership, not access).
fn apply_file_metadata(file: &File, path: &Path, node: &Node) -> Result<()> {
    let drop = set_id_bits_to_drop_with(path, node, |uid, gid| {
        Ok(rustix::fs::fchown(file, Some(uid), Some(gid))?)
    });
    let mode = node.mode & 0o7777 & !drop;
    crate::beneath::set_mode_and_mtime_of(file, mode, node.mtime_ns)
        .map_err(|e| io_error("setting the mode and mtime of", path, e))
}

/// A delta restore's segment of a file the target holds: each chunk of the segment is read
/// from the file and hashed, and only the chunks whose bytes differ from the backup's are
/// fetched and written, in place. The file already has the size the backup records
/// ([`open_in_place`]), so a chunk beyond its old end reads as zeros and is written unless
/// the backup's chunk is zeros too.
fn restore_in_place(
    repo: &Repository,
    snapshot: &Snapshot,
    segment: &Segment<'_>,
    options: &RestoreOptions,
    budget: &Budget,
    out: &mut SegmentWriter,
    frames: &mut FrameCache,
) -> Result<u64> {
    let job = &segment.job;
    let node = job.node;
    let file = job.open()?;
    // Runs of the chunks that differ, each with the file offset of its first byte. A run of
    // the plan is within one ranged read's bounds, so each part of it is too.
    let mut stale: Vec<(u64, ReadRun)> = Vec::new();
    let mut at = segment.offset;
    let mut kept = 0u64;
    let chunks: Vec<_> = segment
        .runs
        .iter()
        .flat_map(|run| run.entries.iter().map(|entry| (run.pack, *entry)))
        .collect();
    let span: u64 = chunks.iter().map(|(_, e)| u64::from(e.raw_length)).sum();
    // Advice only: the kernel starts reading the whole segment while the first batches are
    // hashed.
    let _ = rustix::fs::fadvise(
        &file.file,
        segment.offset,
        std::num::NonZeroU64::new(span),
        rustix::fs::Advice::WillNeed,
    );
    let mut held = Vec::new();
    let mut next = 0;
    while next < chunks.len() {
        stop_if_cancelled(options)?;
        // Chunks are read a batch at a time: one read per page of a large database file cost
        // a system call per page (a quarter of a million for a GiB of 4 KiB pages) and more
        // system time than the restore it spared.
        let mut end = next;
        let mut batch = 0usize;
        while let Some((_, entry)) = chunks.get(end) {
            let len = entry.raw_length as usize;
            if end > next && batch + len > COMPARE_BATCH {
                break;
            }
            batch += len;
            end += 1;
        }
        // Under the restore's memory budget, as every read of a restore is: beside the
        // other workers' reads, each worker's batch would otherwise come on top.
        let _counted = budget.acquire(batch as u64);
        held.resize(batch, 0);
        file.file
            .read_exact_at(&mut held, at)
            .map_err(|e| io_error("reading", &job.path, e))?;
        let mut from = 0;
        for &(pack, entry) in &chunks[next..end] {
            let len = entry.raw_length as usize;
            if crate::format::blob_id(&held[from..from + len], repo.key()) == entry.id {
                kept += len as u64;
            } else {
                let joined = stale.last_mut().is_some_and(|(start, part)| {
                    *start + part.raw_len() == at && part.try_push(pack, entry, u64::MAX)
                });
                if !joined {
                    stale.push((at, ReadRun::new(pack, entry)));
                }
            }
            from += len;
            at += len as u64;
        }
        next = end;
    }
    drop(held);
    options.progress.bytes(kept);
    out.kept_bytes += kept;
    let mut written = 0u64;
    for (offset, run) in &stale {
        out.start(&file, *offset);
        write_run(
            repo, snapshot, job, &file, run, options, budget, out, frames,
        )?;
        out.flush(&file)
            .map_err(|e| io_error("writing", &job.path, e))?;
        let part = out.position() - offset;
        if part != run.raw_len() {
            return Err(damaged_file(
                snapshot,
                node,
                Error::msg(
                    ErrorKind::Corrupt,
                    format!(
                        "its part at byte {offset} holds {part} bytes, the index says {}",
                        run.raw_len()
                    ),
                ),
            ));
        }
        written += part;
    }
    part_done(job, file)?;
    Ok(written)
}

/// A file being restored, open for writing.
struct OpenFile {
    file: File,
    /// The same file opened with `O_DIRECT`, and the alignment its offsets, lengths and
    /// buffers need. Why: a restore that ends with a sync writes every byte to disk anyway;
    /// through the page cache it also pays the kernel's copy of every byte (a fifth of a
    /// restore's CPU) and then waits for writeback, while direct writes go from the worker's
    /// buffer to the device. Only whole aligned blocks go this way: a segment's first and last
    /// partial blocks, which it may share with its neighbours, are written through `file`,
    /// and direct writes never touch a page those writes use.
    direct: Option<(File, usize)>,
    /// Set once the filesystem refused a direct write: the rest goes through the page cache.
    refused: AtomicBool,
    /// Chunks of zeros are left as holes ([`RestoreOptions::sparse`]); the file was created
    /// empty and at its final size, so what is not written reads as zeros.
    sparse: bool,
}

/// Opens `path` again with `O_DIRECT` and allocates `size` bytes, or `None` where the
/// filesystem does not support direct I/O (then the file is written through the page cache).
fn open_direct(beneath: &Beneath, path: &Path, file: &File, size: u64) -> Option<(File, usize)> {
    use rustix::fs::{AtFlags, FallocateFlags, OFlags, StatxFlags};
    let stat = rustix::fs::statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    if !StatxFlags::from_bits_retain(stat.stx_mask).contains(StatxFlags::DIOALIGN)
        || stat.stx_dio_offset_align == 0
    {
        return None;
    }
    // At least a page, so that no page holds both directly written blocks and bytes written
    // through the page cache.
    let align = rustix::param::page_size()
        .max(stat.stx_dio_offset_align as usize)
        .max(stat.stx_dio_mem_align as usize);
    if !align.is_power_of_two() || align > MAX_DIRECT_ALIGN {
        return None;
    }
    let direct = beneath
        .open_file(path, OFlags::WRONLY | OFlags::DIRECT)
        .ok()?;
    // Allocated blocks let the workers write one file's segments at once: ext4 takes the
    // file's lock exclusively for a direct write into a hole, and holds it until the write is
    // done.
    rustix::fs::fallocate(file, FallocateFlags::empty(), 0, size).ok()?;
    Some((direct, align))
}

/// Alignments above this are not worth a buffer's slack.
const MAX_DIRECT_ALIGN: usize = 64 << 10;

/// Positioned writes of a segment: small blobs are gathered into one write, large ones are
/// written from where they were decoded. For a file with direct I/O every byte goes through
/// an aligned window instead, and each full window is written by a thread of the worker's own
/// while the worker fills the next, so the worker's core is not idle while the device writes.
struct SegmentWriter {
    buf: Vec<u8>,
    capacity: usize,
    /// File offset of the first byte of `buf`; with direct I/O, of the first byte of the
    /// window, which is aligned and may come before the segment's start.
    at: u64,
    /// Whether finished segments start their writeback at once (only worth it when the
    /// restore ends with a sync, see [`RestoreOptions::sync`]).
    early_writeback: bool,
    /// The window being filled, while the current segment's file has direct I/O.
    window: Option<Window>,
    /// Windows whose writes are done, to fill next.
    spare: Vec<Window>,
    writer: Option<DirectWriter>,
    /// Bytes written directly by this thread (its writer thread counts its own).
    direct_bytes: u64,
    /// Bytes a delta restore found in place, by this thread.
    kept_bytes: u64,
    /// Bytes of zeros this thread left as holes.
    sparse_bytes: u64,
}

/// An aligned buffer for direct writes, and which file bytes it holds.
struct Window {
    /// Safe code cannot ask the allocator for alignment: the window starts where the
    /// alignment falls in a larger allocation.
    mem: Vec<u8>,
    start: usize,
    align: usize,
    /// A multiple of `align`, so that every window after a segment's first starts aligned.
    capacity: usize,
    /// Bytes in use; they map to file offsets `at ..` of the writer (or of the job).
    fill: usize,
    /// The segment's first byte: the window's bytes before it belong to the segment before.
    first: u64,
}

impl Window {
    fn new(capacity: usize, align: usize) -> Self {
        let capacity = capacity.max(1).next_multiple_of(align);
        let mem = vec![0u8; capacity + align];
        let start = mem.as_ptr().align_offset(align);
        Self {
            mem,
            start,
            align,
            capacity,
            fill: 0,
            first: 0,
        }
    }

    /// Writes the bytes from the segment's first byte on, the window's first byte being file
    /// offset `at`: whole aligned blocks directly, a partial block at either end through the
    /// page cache. Returns how many bytes went directly.
    fn write_out(&self, file: &OpenFile, at: u64) -> std::io::Result<u64> {
        let align = self.align as u64;
        let lo = at.max(self.first);
        let hi = at + self.fill as u64;
        if hi <= lo {
            return Ok(0);
        }
        let a = lo.next_multiple_of(align).min(hi);
        let b = (hi - hi % align).max(a);
        let bytes = |from: u64, to: u64| {
            let start = self.start + (from - at) as usize;
            &self.mem[start..start + (to - from) as usize]
        };
        if a > lo {
            file.file.write_all_at(bytes(lo, a), lo)?;
        }
        let mut direct_bytes = 0;
        if b > a {
            let written = match &file.direct {
                Some((direct, _)) if !file.refused.load(Ordering::Relaxed) => {
                    direct.write_all_at(bytes(a, b), a)
                }
                _ => Err(std::io::ErrorKind::InvalidInput.into()),
            };
            match written {
                Ok(()) => direct_bytes = b - a,
                // A filesystem may refuse a direct write it said it supports (or a short
                // write may leave an unaligned rest): the page cache takes it instead.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    file.refused.store(true, Ordering::Relaxed);
                    file.file.write_all_at(bytes(a, b), a)?;
                }
                Err(e) => return Err(e),
            }
        }
        if hi > b {
            file.file.write_all_at(bytes(b, hi), b)?;
        }
        Ok(direct_bytes)
    }
}

/// A window handed to the writer thread, and back with its result.
struct WriteJob {
    file: Arc<OpenFile>,
    window: Window,
    at: u64,
    result: std::io::Result<u64>,
}

/// Windows a worker may have queued for its writer thread or being written. With one, the
/// workers of a restore of the benchmark's mix waited a sixth of their time for the device; two
/// took 7 % off the restore (`bench/ab.py`, four runs each). A second writer thread per worker,
/// or 2 MiB windows, gained nothing more.
const WINDOWS_IN_FLIGHT: usize = 2;

/// A worker's writer thread, with up to [`WINDOWS_IN_FLIGHT`] windows queued or being written.
struct DirectWriter {
    jobs: Option<crossbeam_channel::Sender<WriteJob>>,
    done: crossbeam_channel::Receiver<WriteJob>,
    thread: Option<std::thread::JoinHandle<()>>,
    in_flight: usize,
    /// Bytes its windows wrote directly.
    direct_bytes: u64,
}

impl DirectWriter {
    fn spawn() -> std::io::Result<Self> {
        let (jobs, queue) = bounded::<WriteJob>(WINDOWS_IN_FLIGHT);
        let (finished, done) = bounded::<WriteJob>(WINDOWS_IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("restore-writer".into())
            .spawn(move || {
                for mut job in queue {
                    job.result = job.window.write_out(&job.file, job.at);
                    if finished.send(job).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            in_flight: 0,
            direct_bytes: 0,
        })
    }

    /// Waits for every window in flight, keeping their buffers in `spare`; the first error.
    fn wait_all(&mut self, spare: &mut Vec<Window>) -> std::io::Result<()> {
        let mut result = Ok(());
        while self.in_flight > 0 {
            match self.wait() {
                Ok(window) => spare.extend(window),
                Err(e) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        result
    }

    /// Waits for the oldest window in flight, if any: its buffer, or the error writing it.
    fn wait(&mut self) -> std::io::Result<Option<Window>> {
        if self.in_flight == 0 {
            return Ok(None);
        }
        self.in_flight -= 1;
        let job = self
            .done
            .recv()
            .map_err(|_| std::io::Error::other("the restore's writer thread stopped"))?;
        self.direct_bytes += job.result?;
        Ok(Some(job.window))
    }

    fn send(&mut self, job: WriteJob) -> std::io::Result<()> {
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(job));
        match sent {
            Some(Ok(())) => {
                self.in_flight += 1;
                Ok(())
            }
            _ => Err(std::io::Error::other("the restore's writer thread stopped")),
        }
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        // Every write is done before the restore goes on to metadata and its sync.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SegmentWriter {
    fn new(capacity: usize, early_writeback: bool) -> Self {
        Self {
            buf: Vec::new(),
            capacity,
            at: 0,
            early_writeback,
            window: None,
            spare: Vec::new(),
            writer: None,
            direct_bytes: 0,
            kept_bytes: 0,
            sparse_bytes: 0,
        }
    }

    /// Bytes written with direct I/O so far (windows still in flight not counted).
    fn direct_bytes(&self) -> u64 {
        self.direct_bytes + self.writer.as_ref().map_or(0, |w| w.direct_bytes)
    }

    fn start(&mut self, file: &OpenFile, offset: u64) {
        self.buf.clear();
        self.at = offset;
        // A window still in flight belongs to a segment that failed (a finished one waited
        // for it); that failure is already recorded.
        if let Some(writer) = self.writer.as_mut() {
            let _ = writer.wait_all(&mut self.spare);
        }
        let Some((_, align)) = file.direct else {
            if let Some(window) = self.window.take() {
                self.spare.push(window);
            }
            return;
        };
        let mut window = match self.window.take().or_else(|| self.spare.pop()) {
            Some(w) if w.align == align => w,
            _ => Window::new(self.capacity, align),
        };
        window.fill = 0;
        window.first = offset;
        self.at = offset - offset % align as u64;
        self.window = Some(window);
    }

    /// The file offset after everything written so far.
    fn position(&self) -> u64 {
        match &self.window {
            Some(w) => (self.at + w.fill as u64).max(w.first),
            None => self.at + self.buf.len() as u64,
        }
    }

    fn write(&mut self, file: &Arc<OpenFile>, data: &[u8]) -> std::io::Result<()> {
        if self.window.is_some() {
            return self.write_direct(file, data);
        }
        if file.sparse && data.len() >= SPARSE_FROM && is_zeros(data) {
            self.flush(file)?;
            self.at += data.len() as u64;
            self.sparse_bytes += data.len() as u64;
            return Ok(());
        }
        let large = data.len() >= self.capacity / 4;
        // Buffered bytes come first in the file, so they go out before a large blob does.
        if large || self.buf.len() + data.len() > self.capacity {
            self.flush(file)?;
        }
        if large {
            file.file.write_all_at(data, self.at)?;
            self.at += data.len() as u64;
        } else {
            if self.buf.capacity() < self.capacity {
                self.buf.reserve_exact(self.capacity - self.buf.len());
            }
            self.buf.extend_from_slice(data);
        }
        Ok(())
    }

    fn write_direct(&mut self, file: &Arc<OpenFile>, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let Some(w) = self.window.as_mut() else {
                return Ok(());
            };
            let capacity = w.capacity;
            if w.fill == 0 && self.at < w.first {
                // The window starts before the segment: its first bytes are not ours.
                w.fill = (w.first - self.at) as usize;
            }
            let take = data.len().min(capacity - w.fill);
            let from = w.start + w.fill;
            w.mem[from..from + take].copy_from_slice(&data[..take]);
            w.fill += take;
            data = &data[take..];
            if w.fill == capacity {
                self.hand_over(file)?;
            }
        }
        Ok(())
    }

    /// Gives the full window to the writer thread and takes an empty one.
    fn hand_over(&mut self, file: &Arc<OpenFile>) -> std::io::Result<()> {
        let Some(window) = self.window.take() else {
            return Ok(());
        };
        let writer = match self.writer.as_mut() {
            Some(writer) => writer,
            None => self.writer.insert(DirectWriter::spawn()?),
        };
        let waited = if writer.in_flight >= WINDOWS_IN_FLIGHT {
            writer.wait()?
        } else {
            None
        };
        let mut next = match waited.or_else(|| self.spare.pop()) {
            Some(w) => w,
            None => Window::new(self.capacity, window.align),
        };
        let end = self.at + window.fill as u64;
        next.fill = 0;
        next.first = end;
        writer.send(WriteJob {
            file: Arc::clone(file),
            window,
            at: self.at,
            result: Ok(0),
        })?;
        self.at = end;
        self.window = Some(next);
        Ok(())
    }

    fn flush(&mut self, file: &OpenFile) -> std::io::Result<()> {
        if let Some(window) = self.window.as_mut() {
            if let Some(writer) = self.writer.as_mut() {
                writer.wait_all(&mut self.spare)?;
            }
            self.direct_bytes += window.write_out(file, self.at)?;
            let end = (self.at + window.fill as u64).max(window.first);
            self.at = end;
            window.fill = 0;
            window.first = end;
            return Ok(());
        }
        if !self.buf.is_empty() {
            file.file.write_all_at(&self.buf, self.at)?;
            self.at += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Bytes of a file a delta restore reads with one call to compare their chunks (more when one
/// chunk is larger). 1 MiB against 4 MiB, a delta of the bench's version 2 over version 1
/// (target not cached, four alternating runs each): the same time (1.08–1.21 s against
/// 1.12–1.29 s), peak RSS 50–57 MiB against 51–65.
const COMPARE_BATCH: usize = 1 << 20;

/// Chunks of zeros at least this long are left as holes by a sparse restore: a filesystem
/// block, below which a hole saves nothing.
const SPARSE_FROM: usize = 4096;

/// Whether `data` is all zeros. It stops within 64 bytes of the first other byte, so for other
/// data it costs next to nothing.
fn is_zeros(data: &[u8]) -> bool {
    data.chunks(64)
        .all(|part| part.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Reads one file of a snapshot into memory.
pub(crate) fn read_file(repo: &Repository, snapshot: &Snapshot, path: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_file(repo, snapshot, path, &mut out)?;
    Ok(out)
}

/// Raw bytes of a file's chunks read at once: a few MiB, so that a file of 4 KiB pages costs
/// a few joined reads per batch and a file of 4 MiB chunks holds at most a few chunks.
const DUMP_BATCH_BYTES: u64 = 8 << 20;

/// Writes the file at `path` of `snapshot` to `out`, a batch of chunks at a time (every chunk
/// checked against its id); returns the bytes written.
pub(crate) fn write_file(
    repo: &Repository,
    snapshot: &Snapshot,
    path: &str,
    out: &mut dyn std::io::Write,
) -> Result<u64> {
    let mut found = None;
    repo.for_each_node(snapshot, |n| {
        if n.path == path {
            found = Some(n);
        }
        Ok(())
    })?;
    let node = match found {
        Some(node) if node.kind == NODE_FILE => node,
        Some(other) => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                RestoreError::NotARegularFile {
                    backup: snapshot.id,
                    path: path.to_owned(),
                    kind: if other.kind == NODE_DIR {
                        "directory"
                    } else {
                        "symlink"
                    },
                },
            ));
        }
        None => {
            return Err(Error::new(
                ErrorKind::NotFound,
                RestoreError::NoSuchFile {
                    backup: snapshot.id,
                    path: path.to_owned(),
                },
            ));
        }
    };
    let context = format!("`{path}` of backup {}", snapshot.id);
    let mut written = 0u64;
    let mut rest = node.chunks.as_slice();
    while !rest.is_empty() {
        let mut take = 0;
        let mut bytes = 0u64;
        {
            let index = repo.index_read();
            while let Some(id) = rest.get(take)
                && (take == 0 || bytes < DUMP_BATCH_BYTES)
            {
                bytes += index
                    .locate(id)
                    .map_or(0, |(_, entry)| u64::from(entry.raw_length));
                take += 1;
            }
        }
        let (batch, later) = rest.split_at(take);
        for blob in repo.read_blobs(batch, &context)? {
            out.write_all(&blob)
                .map_err(|e| io_error("writing out", Path::new(path), e))?;
            written += blob.len() as u64;
        }
        rest = later;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::format::{self, BlobKind, IndexPack, PackEntry, TreeBlob};
    use crate::options::{EngineOptions, InitOptions};

    /// A worker takes from its own lane while that has work, then from the other, and stops
    /// once both are closed and empty.
    #[test]
    fn a_worker_prefers_its_lane_and_helps_the_other() {
        let (mine_tx, mine) = bounded::<u32>(4);
        let (other_tx, other) = bounded::<u32>(4);
        for i in 0..3 {
            mine_tx.send(i).unwrap();
            other_tx.send(10 + i).unwrap();
        }
        let taken: Vec<u32> = (0..4).filter_map(|_| next_group(&mine, &other)).collect();
        assert_eq!(taken, [0, 1, 2, 10]);
        drop(mine_tx);
        assert_eq!(next_group(&mine, &other), Some(11));
        assert_eq!(next_group(&mine, &other), Some(12));
        // Work that arrives later in the other lane is still found while ours is closed.
        let late = std::thread::spawn(move || {
            other_tx.send(20).unwrap();
            other_tx.send(21).unwrap();
        });
        assert_eq!(next_group(&mine, &other), Some(20));
        assert_eq!(next_group(&mine, &other), Some(21));
        late.join().unwrap();
        assert_eq!(next_group(&mine, &other), None);
    }

    /// Writes a snapshot whose file list is `nodes`, bypassing the backup's own path checks,
    /// as a damaged or malicious repository could.
    fn forged_snapshot(repo: &Repository, nodes: Vec<Node>) -> Snapshot {
        let mut raw = Vec::new();
        ciborium::into_writer(&TreeBlob { nodes }, &mut raw).unwrap();
        let id = format::blob_id(&raw, repo.key());
        let (stored, compressed) = format::encode_blob(raw.as_slice(), 0, repo.key());
        let entry = PackEntry {
            id,
            kind: BlobKind::Tree,
            offset: 0,
            length: stored.len() as u32,
            raw_length: raw.len() as u32,
            compressed,
            within: None,
        };
        let pack = format::finish_pack(stored, &[entry], repo.key(), repo.write_version());
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
            entries: vec![entry],
        }])
        .unwrap();
        repo.reload_index().unwrap();
        let mut snapshot = Snapshot {
            version: repo.write_version(),
            id: 0,
            time_unix: 0,
            utc_offset_secs: None,
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
            mode: 0o644,
            ..Node::new(path.into(), NODE_FILE)
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
            // The whole list of paths is checked before anything is written.
            assert!(
                !target.exists(),
                "{evil}: the refused restore made its target"
            );
        }
    }

    /// Small segments, runs and budget, so a file of a few hundred KiB takes the paths a
    /// large file takes with the defaults.
    fn small_tuning() -> Tuning {
        Tuning {
            segment_bytes: 64 * 1024,
            max_run: 32 * 1024,
            memory_budget: 48 * 1024,
            write_buffer: 8 * 1024,
            direct_from: 0,
        }
    }

    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Backs up a directory with one large file (random, then text-like) and one small file
    /// into a fresh encrypted repository with small chunks.
    fn backed_up_large_file() -> (
        Arc<backstop_store::MemoryStore>,
        crate::BackupEngine,
        Vec<u8>,
        tempfile::TempDir,
    ) {
        let source = tempfile::tempdir().unwrap();
        let mut big = noise(700 * 1024, 7);
        big.extend(
            b"insert into accounts values (1, 'balance'); "
                .iter()
                .cycle()
                .take(400 * 1024),
        );
        std::fs::write(source.path().join("big.db"), &big).unwrap();
        std::fs::write(source.path().join("small"), b"tiny").unwrap();
        let (store, engine) = backed_up(source.path(), Some((1024, 4096, 16 * 1024)));
        (store, engine, big, source)
    }

    /// `source` backed up into a fresh encrypted repository in memory, with these chunk sizes
    /// or the defaults.
    fn backed_up(
        source: &Path,
        chunks: Option<(u32, u32, u32)>,
    ) -> (Arc<backstop_store::MemoryStore>, crate::BackupEngine) {
        let store = Arc::new(backstop_store::MemoryStore::new());
        let mut init = InitOptions::default()
            .with_kdf(8 * 1024, 1)
            .with_password("pw");
        if let Some((min, avg, max)) = chunks {
            init = init.with_chunk_sizes(min, avg, max);
        }
        let engine = crate::BackupEngine::init(
            Arc::clone(&store),
            init,
            EngineOptions::default().with_password("pw"),
        )
        .unwrap();
        engine
            .create_backup(
                &mut crate::DirSource::new(source),
                &crate::BackupOptions::default(),
            )
            .unwrap();
        (store, engine)
    }

    fn big_node(repo: &Repository, snapshot: &Snapshot) -> Node {
        let mut found = None;
        repo.for_each_node(snapshot, |n| {
            if n.path == "big.db" {
                found = Some(n);
            }
            Ok(())
        })
        .unwrap();
        found.unwrap()
    }

    /// Large files stored raw or compressed many times over go to the device's lane; large
    /// files compressed a little, and small files, to the cores'.
    #[test]
    fn files_are_sorted_into_lanes_by_how_they_were_stored() {
        let source = tempfile::tempdir().unwrap();
        let size = 2 << 20;
        let random = noise(size, 11);
        let text: Vec<u8> = b"GET /index.html 200 "
            .iter()
            .copied()
            .cycle()
            .take(size)
            .collect();
        // Hex digits of noise: zstd stores them in a little over half their size.
        let rows: Vec<u8> = noise(size / 2, 5)
            .iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect();
        for (name, bytes) in [("random", &random), ("text", &text), ("rows", &rows)] {
            std::fs::write(source.path().join(name), bytes).unwrap();
        }
        std::fs::write(source.path().join("small"), b"tiny").unwrap();
        let (_store, engine) = backed_up(source.path(), None);
        let repo = &engine.repo;
        let snapshot = repo.load_snapshot(crate::BackupSelector::Latest).unwrap();
        let mut work = std::collections::BTreeMap::new();
        repo.for_each_node(&snapshot, |n| {
            if n.kind == NODE_FILE {
                work.insert(n.path.clone(), Work::of(repo, &n, Tuning::default()));
            }
            Ok(())
        })
        .unwrap();
        let want = [
            ("random", Work::Device),
            ("rows", Work::Cpu),
            ("small", Work::Cpu),
            ("text", Work::Device),
        ];
        assert_eq!(work, want.iter().map(|&(p, w)| (p.to_owned(), w)).collect());
    }

    #[test]
    fn a_file_of_many_segments_restores_byte_exact() {
        let (_store, engine, big, _source) = backed_up_large_file();
        let repo = &engine.repo;
        let snapshot = repo.load_snapshot(crate::BackupSelector::Latest).unwrap();
        let node = big_node(repo, &snapshot);
        let outer = tempfile::tempdir().unwrap();
        let beneath = Beneath::open(outer.path()).unwrap();
        let segments = plan_file(
            repo,
            &snapshot,
            &beneath,
            &node,
            small_tuning(),
            Writes::default(),
        )
        .unwrap();
        assert!(segments.len() >= 4, "{} segments", segments.len());
        let target = outer.path().join("target");
        let info = restore_tuned(
            repo,
            &snapshot,
            &target,
            &RestoreOptions::default(),
            small_tuning(),
        )
        .unwrap();
        assert_eq!(info.bytes, big.len() as u64 + 4);
        let restored = std::fs::read(target.join("big.db")).unwrap();
        let first_difference = restored.iter().zip(&big).position(|(a, b)| a != b);
        assert_eq!((restored.len(), first_difference), (big.len(), None));
        assert_eq!(std::fs::read(target.join("small")).unwrap(), b"tiny");
        assert!(!target.join(INCOMPLETE_MARKER).exists());
    }

    /// Whether the filesystem of `dir` supports direct I/O, asked the way [`open_direct`] asks.
    fn supports_direct_io(dir: &Path) -> bool {
        let probe = dir.join("probe");
        let file = File::create(&probe).unwrap();
        let beneath = Beneath::open(dir).unwrap();
        let supported = open_direct(&beneath, &probe, &file, 4096).is_some();
        std::fs::remove_file(&probe).unwrap();
        supported
    }

    #[test]
    fn a_syncing_restore_writes_whole_blocks_directly_and_the_rest_through_the_cache() {
        let (_store, engine, big, _source) = backed_up_large_file();
        let repo = &engine.repo;
        let snapshot = repo.load_snapshot(crate::BackupSelector::Latest).unwrap();
        let outer = tempfile::tempdir().unwrap();
        let beneath = Beneath::open(outer.path()).unwrap();
        let node = big_node(repo, &snapshot);
        let segments = plan_file(
            repo,
            &snapshot,
            &beneath,
            &node,
            small_tuning(),
            Writes {
                direct: true,
                ..Writes::default()
            },
        );
        let unaligned = segments
            .unwrap()
            .iter()
            .filter(|s| s.offset % 4096 != 0)
            .count();
        assert!(unaligned >= 3, "{unaligned} segments start inside a block");
        let direct = supports_direct_io(outer.path());
        for sync in [true, false] {
            let target = outer.path().join(format!("target-{sync}"));
            let options = RestoreOptions::default().with_sync(sync);
            let info = restore_tuned(repo, &snapshot, &target, &options, small_tuning()).unwrap();
            let restored = std::fs::read(target.join("big.db")).unwrap();
            let first_difference = restored.iter().zip(&big).position(|(a, b)| a != b);
            assert_eq!((restored.len(), first_difference), (big.len(), None));
            assert_eq!(std::fs::read(target.join("small")).unwrap(), b"tiny");
            if sync && direct {
                // Every segment's partial blocks at either end went through the page cache.
                assert!(
                    info.bytes_direct > big.len() as u64 / 2
                        && info.bytes_direct < big.len() as u64,
                    "{} of {} bytes written directly",
                    info.bytes_direct,
                    big.len()
                );
            } else {
                if sync {
                    eprintln!(
                        "NOTE: {} has no direct I/O; only the page cache path was tested",
                        outer.path().display()
                    );
                }
                assert_eq!(info.bytes_direct, 0);
            }
        }
    }

    #[test]
    fn files_a_fix_up_reads_stay_in_the_page_cache() {
        let mut snapshot = {
            let (_store, engine, _big, _source) = backed_up_large_file();
            engine
                .repo
                .load_snapshot(crate::BackupSelector::Latest)
                .unwrap()
        };
        let params = |raw| backstop_source::RestoreParams {
            raw,
            options: Default::default(),
        };
        let sync = RestoreOptions::default();
        let no_sync = RestoreOptions::default().with_sync(false);
        assert!(writes_directly(&snapshot, &sync, &params(false)));
        assert!(!writes_directly(&snapshot, &no_sync, &params(false)));
        snapshot.restore_profile = backstop_source::RestoreProfile::new("sqlite");
        assert!(!writes_directly(&snapshot, &sync, &params(false)));
        assert!(writes_directly(&snapshot, &sync, &params(true)));
    }

    #[test]
    fn a_refused_direct_write_goes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenFile {
            file: File::create(&path).unwrap(),
            direct: None,
            refused: AtomicBool::new(false),
            sparse: false,
        };
        let mut window = Window::new(3 * 4096, 4096);
        assert_eq!(window.capacity, 3 * 4096);
        // The window maps file offsets 4096.. and the segment starts at 5000: a head, one
        // whole block and a tail.
        let at = 4096;
        window.first = 5000;
        window.fill = 4096 + 4096 + 100;
        let data = noise(window.fill, 3);
        let start = window.start;
        window.mem[start..start + window.fill].copy_from_slice(&data);
        assert_eq!(window.write_out(&file, at).unwrap(), 0);
        assert!(file.refused.load(Ordering::Relaxed));
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), 4096 + window.fill);
        assert!(
            written[..5000].iter().all(|&b| b == 0),
            "before the segment"
        );
        assert_eq!(&written[5000..], &data[5000 - 4096..]);
    }

    #[test]
    fn a_damaged_blob_in_a_middle_segment_fails_naming_the_file() {
        let (store, engine, _big, _source) = backed_up_large_file();
        let repo = &engine.repo;
        let snapshot = repo.load_snapshot(crate::BackupSelector::Latest).unwrap();
        let node = big_node(repo, &snapshot);
        let outer = tempfile::tempdir().unwrap();
        let beneath = Beneath::open(outer.path()).unwrap();
        let segments = plan_file(
            repo,
            &snapshot,
            &beneath,
            &node,
            small_tuning(),
            Writes::default(),
        )
        .unwrap();
        // Damage a unit of a middle segment that does not also hold `small` (a reading thread
        // that reads both files puts small blobs of both into the same frames).
        let small_unit = {
            let mut small = None;
            repo.for_each_node(&snapshot, |n| {
                if n.path == "small" {
                    small = n.chunks.first().copied();
                }
                Ok(())
            })
            .unwrap();
            let (pack, entry) = repo.index_read().locate(&small.unwrap()).unwrap();
            (pack, entry.offset)
        };
        let (run, entry) = segments[segments.len() / 2..]
            .iter()
            .filter(|s| s.offset > 0)
            .flat_map(|s| &s.runs)
            .flat_map(|r| r.entries.iter().map(move |e| (r, e)))
            .find(|(r, e)| (r.pack, e.offset) != small_unit)
            .unwrap();
        let at = entry.offset as usize + entry.length as usize / 2;
        assert!(store.corrupt(&format::pack_key(run.pack), |bytes| bytes[at] ^= 0x40));

        let target = outer.path().join("target");
        let err = restore_tuned(
            repo,
            &snapshot,
            &target,
            &RestoreOptions::default(),
            small_tuning(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        let message = err.to_string();
        assert!(message.contains("`big.db`"), "{message}");
        assert!(
            message.contains(&format!("backup {}", snapshot.id)),
            "{message}"
        );
        assert!(target.join(INCOMPLETE_MARKER).exists());
    }

    #[test]
    fn chunks_that_do_not_add_up_to_the_file_size_are_refused_before_writing() {
        let (_store, engine, _big, _source) = backed_up_large_file();
        let repo = &engine.repo;
        let snapshot = repo.load_snapshot(crate::BackupSelector::Latest).unwrap();
        let mut node = big_node(repo, &snapshot);
        node.size += 1;
        let forged = forged_snapshot(repo, vec![node]);
        let target = tempfile::tempdir().unwrap().path().join("target");
        let err = restore(repo, &forged, &target, &RestoreOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        let chain = format!(
            "{err} / {}",
            std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert!(chain.contains("big.db"), "{chain}");
        assert!(
            !target.join("big.db").exists(),
            "nothing is written for such a file"
        );
        assert!(target.join(INCOMPLETE_MARKER).exists());
    }

    /// Stores `pages` as one frame, the way small blobs are packed together, and returns a
    /// snapshot whose one file is those pages in `order`.
    fn framed_snapshot(repo: &Repository, pages: &[Vec<u8>], order: &[usize]) -> Snapshot {
        let frame = pages.concat();
        let levels = crate::compress::LevelChoice::new(3, 1);
        let (stored, compressed) = format::encode_frame(frame.as_slice(), &levels, 0, repo.key());
        let mut within = 0u32;
        let entries: Vec<PackEntry> = pages
            .iter()
            .map(|page| {
                let entry = PackEntry {
                    id: format::blob_id(page, repo.key()),
                    kind: BlobKind::Data,
                    offset: 0,
                    length: stored.len() as u32,
                    raw_length: page.len() as u32,
                    compressed,
                    within: Some(within),
                };
                within += page.len() as u32;
                entry
            })
            .collect();
        let pack = format::finish_pack(stored, &entries, repo.key(), repo.write_version());
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
            entries: entries.clone(),
        }])
        .unwrap();
        repo.reload_index().unwrap();
        let mut node = file_node("pages.db");
        node.chunks = order.iter().map(|&i| entries[i].id).collect();
        node.size = order.iter().map(|&i| pages[i].len() as u64).sum();
        forged_snapshot(repo, vec![node])
    }

    #[test]
    fn blobs_sharing_a_frame_restore_in_file_order() {
        let store = Arc::new(backstop_store::MemoryStore::new());
        let init = InitOptions::default()
            .with_kdf(8 * 1024, 1)
            .with_password("pw");
        let repo =
            Repository::init(store, &init, EngineOptions::default().with_password("pw")).unwrap();
        let pages: Vec<Vec<u8>> = (0..4u8)
            .map(|i| [vec![i; 100], noise(8092, u64::from(i) + 1)].concat())
            .collect();
        // Out of frame order and with a repeat, as a file that moved and copied pages has.
        let order = [2, 0, 1, 1, 3];
        let snapshot = framed_snapshot(&repo, &pages, &order);
        let target = tempfile::tempdir().unwrap().path().join("target");
        restore(&repo, &snapshot, &target, &RestoreOptions::default()).unwrap();
        let expected: Vec<u8> = order.iter().flat_map(|&i| pages[i].clone()).collect();
        assert!(std::fs::read(target.join("pages.db")).unwrap() == expected);
    }
}
