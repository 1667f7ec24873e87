//! Copying backups into a second repository (an offsite copy), like restic's `copy` or a
//! pgBackRest repository beside the first.
//!
//! Blob ids are keyed hashes, so two repositories name the same bytes alike only when they
//! share their master key: the destination is created with `init --from-repo` (see
//! [`Repository::init_sharing`]). Then a stored unit of the source is a stored unit of the
//! destination, and a copy moves the units of the blobs the destination lacks as they are:
//! gc's pack rewrite, reading from one repository and writing into the other, each source pack
//! checked against its id as it goes by.
//!
//! Order, as in a backup, so that an interrupted copy leaves nothing visible: (1) the packs,
//! (2) an index object listing them, (3) the archive objects, (4) each backup's snapshot. The
//! destination's next gc deletes what (1) and (2) left without (4).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::blob_set::BlobSet;
use crate::format::{BlobId, PackEntry, Snapshot};
use crate::gc::{Copying, Rewrite, rewrite_packs, used_units};
use crate::info::{BackupId, BackupSelector, CopyReport};
use crate::options::CopyOptions;
use crate::repo::{Repository, lock};
use crate::{Error, ErrorKind, Result};

/// Copies the backups `options` selects from `from` into `into`.
pub(crate) fn copy_backups(
    into: &Repository,
    from: &Repository,
    options: &CopyOptions,
) -> Result<CopyReport> {
    check_shared_key(into, from)?;
    let lock = lock::acquire_waiting(&into.store, false, "a copy", into.options.lock_wait)?;
    // A shared lock on the source too, as a backup takes: its gc (exclusive) then waits for
    // the copy instead of deleting packs the copy is about to read, and the copy waits for a
    // running gc. A source this process may not write to (read-only credentials, a read-only
    // mount) is copied without one: a gc there can make the copy fail, never copy wrong data.
    let source_lock = match lock::acquire_waiting(
        &from.store,
        false,
        "a copy from this repository",
        into.options.lock_wait,
    ) {
        Ok(held) => Some(held),
        Err(e) if e.kind() == ErrorKind::Locked => return Err(e),
        Err(e) => {
            tracing::warn!(
                source = from.store.describe(),
                error = %e,
                "cannot lock the source repository; copying without"
            );
            None
        }
    };
    into.reload_index()?;
    from.reload_index()?;

    let wanted = selected(from, &options.backups)?;
    let (present, damaged) = into.load_readable_snapshots()?;
    crate::repo::warn_damaged(&damaged, "so not considered as an earlier copy");
    let mut report = CopyReport::default();
    let mut to_copy = Vec::new();
    for snapshot in wanted {
        match present.iter().find(|p| same_backup(p, &snapshot)) {
            Some(there) => report.already_there.push((snapshot.id, there.id)),
            None => to_copy.push(snapshot),
        }
    }

    let used = BlobSet::used_by(from, &to_copy, &options.cancel)?;
    if let Some(id) = used.others().next() {
        return Err(Error::msg(
            ErrorKind::Corrupt,
            format!(
                "the backups to copy use blob {id}, which no index of `{}` lists; run \
                 `backstop repair index` on it, then copy again (nothing was copied)",
                from.store.describe()
            ),
        ));
    }
    let rewrites = plan(into, from, &used);
    report.blobs_copied = rewrites
        .iter()
        .flat_map(|r| r.units.iter())
        .map(|u| u.used.iter().filter(|u| **u).count() as u64)
        .sum();
    options.progress.phase(
        "copy",
        rewrites.len() as u64,
        rewrites.iter().map(|r| r.size).sum(),
    );
    let copying = Copying {
        from,
        into,
        progress: options.progress.as_ref(),
        cancel: &options.cancel,
        cancelled: "the copy was cancelled while it copied packs; no backup was copied, and \
                    the destination's next gc deletes the packs it wrote",
    };
    let packs = rewrite_packs(&copying, &rewrites)?;
    if let Some(held) = &source_lock {
        held.check_held()?;
    }
    report.packs_written = packs.len() as u64;
    report.bytes_written = packs.iter().map(|p| p.size).sum();
    lock.check_held()?;
    if !packs.is_empty() {
        {
            let mut index = into.index_write();
            for pack in &packs {
                index.add_pack(pack);
            }
        }
        into.write_index(packs)?;
    }

    if options.archives {
        report.archive_objects_copied = copy_archives(into, from)?;
    }

    // Ids here and there: a copied backup's parent is named by its id in the destination.
    let mut ids: HashMap<BackupId, BackupId> = report.already_there.iter().copied().collect();
    for mut snapshot in to_copy {
        let source_id = snapshot.id;
        snapshot.parent = snapshot.parent.and_then(|p| ids.get(&p).copied());
        lock.check_held()?;
        let id = into.commit_snapshot(&mut snapshot)?;
        ids.insert(source_id, id);
        report.copied.push((source_id, id));
    }
    drop(source_lock);
    drop(lock);
    Ok(report)
}

/// Refuses a destination that does not share the source's key (or is the source itself).
fn check_shared_key(into: &Repository, from: &Repository) -> Result<()> {
    if into.config.id == from.config.id {
        return Err(Error::msg(
            ErrorKind::InvalidInput,
            format!(
                "`{}` and `{}` are the same repository",
                from.store.describe(),
                into.store.describe()
            ),
        ));
    }
    let shared = match (into.key(), from.key()) {
        (Some(a), Some(b)) => a.same_as(b),
        (None, None) => into.write_version() == from.write_version(),
        _ => false,
    };
    if !shared {
        return Err(Error::msg(
            ErrorKind::Incompatible,
            format!(
                "`{}` does not share the key of `{}`, so the same data has other ids there; \
                 backups can be copied only into a repository created from the source with \
                 `backstop --repo DEST init --from-repo SOURCE` (nothing was copied)",
                into.store.describe(),
                from.store.describe()
            ),
        ));
    }
    if from.write_version() > into.write_version() {
        return Err(Error::msg(
            ErrorKind::Incompatible,
            format!(
                "`{}` is format version {}, newer than the destination's {}; create the \
                 destination again from it with `init --from-repo`",
                from.store.describe(),
                from.write_version(),
                into.write_version()
            ),
        ));
    }
    Ok(())
}

/// The source's backups that `which` names (all of them when it is empty), oldest first.
fn selected(from: &Repository, which: &[BackupSelector]) -> Result<Vec<Snapshot>> {
    if which.is_empty() {
        let (readable, damaged) = from.load_readable_snapshots()?;
        if let Some((id, e)) = damaged.first() {
            return Err(Error::msg(
                ErrorKind::Corrupt,
                format!(
                    "backup {id} of `{}` cannot be read ({e}); name the backups to copy, or \
                     delete that one (nothing was copied)",
                    from.store.describe()
                ),
            ));
        }
        return Ok(readable);
    }
    let mut chosen: BTreeMap<BackupId, Snapshot> = BTreeMap::new();
    for selector in which {
        let snapshot = from.load_snapshot(*selector)?;
        chosen.insert(snapshot.id, snapshot);
    }
    Ok(chosen.into_values().collect())
}

/// Whether `a` and `b` are copies of one backup: taken at the same time, of the same source,
/// on the same host, with the same file list.
fn same_backup(a: &Snapshot, b: &Snapshot) -> bool {
    a.time_unix == b.time_unix
        && a.host == b.host
        && a.source_kind == b.source_kind
        && a.source == b.source
        && a.tree == b.tree
}

/// The source's packs that hold blobs `used` names and the destination lacks, with those
/// units marked. Only those packs' entries are gathered (all of them: a frame's units are
/// grouped by offset), so that an incremental copy's plan is the size of what it copies, not
/// of the source's index. (The index lists each blob once, where it was listed first.)
fn plan(into: &Repository, from: &Repository, used: &BlobSet) -> Vec<Rewrite> {
    let have = into.index_read();
    let index = from.index_read();
    let needed = |at: usize, id: &BlobId| used.contains(at, id) && !have.contains(id);
    let mut wanted = vec![false; index.packs.len()];
    for (at, (id, loc)) in index.iter().enumerate() {
        if needed(at, &id)
            && let Some(pack) = wanted.get_mut(loc.pack as usize)
        {
            *pack = true;
        }
    }
    let mut by_pack: BTreeMap<usize, Vec<(PackEntry, bool)>> = BTreeMap::new();
    for (at, (id, loc)) in index.iter().enumerate() {
        let pos = loc.pack as usize;
        if wanted.get(pos).copied().unwrap_or(false) {
            by_pack
                .entry(pos)
                .or_default()
                .push((loc.entry(id), needed(at, &id)));
        }
    }
    let mut rewrites = Vec::new();
    for (pos, mut entries) in by_pack {
        let Some((id, size)) = index.packs.get(pos).copied() else {
            continue;
        };
        let (units, _) = used_units(&mut entries);
        rewrites.push(Rewrite { id, size, units });
    }
    rewrites
}

/// Copies every archive object the destination lacks, as stored, each checked on the way
/// (decoded and compared with its hash), and returns how many it copied. The objects are
/// shared out among the worker threads: a WAL archive holds thousands of 16 MiB segments, and
/// on an object store each is a request there and one here.
fn copy_archives(into: &Repository, from: &Repository) -> Result<u64> {
    let mut missing: Vec<(String, String)> = Vec::new();
    for archive in crate::archive::archives(from)? {
        let there: HashSet<String> = crate::archive::list(into, &archive)?.into_iter().collect();
        missing.extend(
            crate::archive::list(from, &archive)?
                .into_iter()
                .filter(|name| !there.contains(name))
                .map(|name| (archive.clone(), name)),
        );
    }
    let threads = into.options.worker_threads().clamp(1, missing.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let copied = std::sync::atomic::AtomicU64::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    use std::sync::atomic::Ordering::Relaxed;
                    while !failed.load(Relaxed) {
                        let Some((archive, name)) = missing.get(next.fetch_add(1, Relaxed)) else {
                            break;
                        };
                        match crate::archive::copy(from, into, archive, name) {
                            Ok(true) => {
                                copied.fetch_add(1, Relaxed);
                            }
                            Ok(false) => {}
                            Err(e) => {
                                failed.store(true, Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let mut failure = None;
        for worker in workers {
            let outcome = worker.join().unwrap_or_else(|_| {
                Err(Error::msg(
                    ErrorKind::Io,
                    "a thread copying archive objects panicked",
                ))
            });
            if let Err(e) = outcome {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    });
    outcome.map(|()| copied.into_inner())
}
