//! Verification: prove that backups can be restored, cheaply (every object present, right
//! size) or thoroughly (every byte read, authenticated and hashed).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::blob_set::BlobSet;
use crate::format::{self, BlobId, PackId, Snapshot};
use crate::info::{DamagedFiles, VerifyReport};
use crate::options::{VerifyLevel, VerifyOptions};
use crate::pack_reader::PackStream;
use crate::repo::Repository;
use crate::{Error, ErrorKind, Result};

pub(crate) fn verify(
    repo: &Repository,
    snapshots: &[Snapshot],
    options: &VerifyOptions,
) -> Result<VerifyReport> {
    repo.reload_index()?;
    let mut report = VerifyReport {
        backups: snapshots.iter().map(|s| s.id).collect(),
        ..VerifyReport::default()
    };
    // Blobs each backup needs; a tree that cannot be read is a problem, not an abort.
    let mut needed = BlobSet::new(repo);
    for snapshot in snapshots {
        if let Err(e) = needed.add_snapshot(repo, snapshot, &options.cancel) {
            if e.kind() == ErrorKind::Cancelled {
                return Err(Error::msg(ErrorKind::Cancelled, "the verify was cancelled"));
            }
            report.problems.push(format!(
                "backup {}: its file list cannot be read: {e:#}",
                snapshot.id
            ));
        }
    }
    report.blobs = needed.len() as u64;

    // Blobs found missing or damaged, to name the files that use them at the end.
    let mut bad: HashSet<BlobId> = HashSet::new();
    // Which packs hold them, and which blobs of each pack are needed.
    let mut packs: BTreeMap<PackId, Vec<format::PackEntry>> = BTreeMap::new();
    {
        let index = repo.index_read();
        if !needed.fits(&index) {
            return Err(Error::msg(
                ErrorKind::Io,
                "the index changed while verify read the backups' file lists; verify again",
            ));
        }
        for (at, (id, loc)) in index.iter().enumerate() {
            if needed.contains(at, &id)
                && let Some((pack, _)) = index.packs.get(loc.pack as usize)
            {
                packs.entry(*pack).or_default().push(loc.entry(id));
            }
        }
        for id in needed.others().filter(|id| !index.contains(id)) {
            bad.insert(*id);
            report.problems.push(format!(
                "blob {id} is needed but no index lists it (an index object or a pack is missing: \
                 `backstop repair index` indexes the packs no index lists)"
            ));
        }
    }
    report.packs = packs.len() as u64;

    let listed: BTreeMap<String, u64> = repo
        .store
        .list("packs/")?
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();
    for (pack, entries) in &packs {
        let key = format::pack_key(*pack);
        let expected = repo.index_read().pack_size(pack);
        match (listed.get(&key), expected) {
            (None, _) => {
                bad.extend(entries.iter().map(|e| e.id));
                report.problems.push(format!(
                    "pack `{key}` is missing (to mend: `gc` takes it out of the index, then a \
                     backup of the same data with `--full-read` stores its blobs again)"
                ));
            }
            (Some(actual), Some(expected)) if *actual != expected => report.problems.push(format!(
                "pack `{key}` has {actual} bytes, the index says {expected}"
            )),
            _ => {}
        }
    }

    let read_share = match options.level {
        VerifyLevel::Quick => 0,
        VerifyLevel::Subset(p) => p.clamp(1, 100),
        VerifyLevel::Full => 100,
    };
    if read_share > 0 {
        read_packs(
            repo,
            packs,
            &listed,
            read_share,
            options,
            &mut report,
            &mut bad,
        )?;
    }
    report.damaged_files = damaged_files(repo, snapshots, &bad, options)?;
    Ok(report)
}

/// Reads `read_share` percent of `packs` (all of them at 100) and checks every needed blob in
/// them, adding what it finds to `report` and the blobs that do not check to `bad`.
fn read_packs(
    repo: &Repository,
    packs: BTreeMap<PackId, Vec<format::PackEntry>>,
    listed: &BTreeMap<String, u64>,
    read_share: u8,
    options: &VerifyOptions,
    report: &mut VerifyReport,
    bad: &mut HashSet<BlobId>,
) -> Result<()> {
    // A subset is a run of packs (in id order) from a random one: another part each time, so
    // that a subset verified now and then covers every pack in the end.
    let n = packs.len().max(1);
    let count = (packs.len() * usize::from(read_share)).div_ceil(100);
    let start = (rand::random::<u64>() % n as u64) as usize;
    let chosen = |i: usize| (i + n - start) % n < count;
    let to_read: Vec<(PackId, u64, Vec<format::PackEntry>)> = packs
        .into_iter()
        .enumerate()
        .filter(|(i, _)| chosen(*i))
        .map(|(_, pack)| pack)
        // A missing pack is already reported; one of another size is read as it is.
        .filter_map(|(pack, mut entries)| {
            let size = listed.get(&format::pack_key(pack))?;
            // In the order the pack streams them by.
            entries.sort_unstable_by_key(|e| (e.offset, e.within));
            Some((pack, *size, entries))
        })
        .collect();
    options.progress.phase(
        "verify",
        to_read.len() as u64,
        to_read.iter().map(|(_, size, _)| size).sum(),
    );
    for checked in check_packs(repo, to_read, options)? {
        if let Some(bytes) = checked.bytes_read {
            report.packs_read += 1;
            report.bytes_read += bytes;
        }
        report.problems.extend(checked.problems);
        bad.extend(checked.bad);
    }
    Ok(())
}

/// At most this many paths are named per backup; the count covers all.
const DAMAGED_PATHS: usize = 100;

/// The files of each backup that use a blob of `bad`, so that the user knows what the damage
/// costs (which backups to delete, which data to back up again). One more pass over the file
/// lists, taken only when something was found.
fn damaged_files(
    repo: &Repository,
    snapshots: &[Snapshot],
    bad: &HashSet<BlobId>,
    options: &VerifyOptions,
) -> Result<Vec<DamagedFiles>> {
    let mut found = Vec::new();
    if bad.is_empty() {
        return Ok(found);
    }
    for snapshot in snapshots {
        let mut damaged = DamagedFiles {
            backup: snapshot.id,
            ..DamagedFiles::default()
        };
        // A file list that cannot be read is a problem reported already.
        let walked = repo.for_each_node(snapshot, |node| {
            if options.cancel.is_cancelled() {
                return Err(Error::msg(ErrorKind::Cancelled, "the verify was cancelled"));
            }
            let uses_bad = node
                .chunks
                .iter()
                .copied()
                .chain(crate::page_list::blobs_of(&node))
                .any(|id| bad.contains(&id));
            if uses_bad {
                damaged.files += 1;
                if damaged.paths.len() < DAMAGED_PATHS {
                    damaged.paths.push(node.path);
                }
            }
            Ok(())
        });
        if let Err(e) = walked
            && e.kind() == ErrorKind::Cancelled
        {
            return Err(e);
        }
        if damaged.files > 0 {
            found.push(damaged);
        }
    }
    Ok(found)
}

/// What reading one pack found.
#[derive(Default)]
struct PackCheck {
    /// The pack's size, if it could be read.
    bytes_read: Option<u64>,
    problems: Vec<String>,
    /// Needed blobs that are not there as the index says, or do not check.
    bad: Vec<BlobId>,
}

/// Reads and checks the packs (id, size, needed blobs) on the worker threads, one pack at a
/// time each, and returns their findings in the order of `packs`. One thread read 340 MB/s of
/// the benchmark mix's repository: hashing, decryption and decompression, all CPU.
fn check_packs(
    repo: &Repository,
    packs: Vec<(PackId, u64, Vec<format::PackEntry>)>,
    options: &VerifyOptions,
) -> Result<Vec<PackCheck>> {
    let threads = repo.options.worker_threads().clamp(1, packs.len().max(1));
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((pack, size, entries)) = packs.get(i) else {
                break;
            };
            if options.cancel.is_cancelled() {
                break;
            }
            done.push((i, check_pack(repo, *pack, *size, entries, options)));
        }
        done
    };
    let mut found: Vec<(usize, PackCheck)> = if threads == 1 {
        work()
    } else {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
            workers
                .into_iter()
                .flat_map(|w| {
                    w.join().unwrap_or_else(|_| {
                        vec![(
                            usize::MAX,
                            PackCheck {
                                bytes_read: None,
                                problems: vec!["a thread checking packs panicked".into()],
                                bad: Vec::new(),
                            },
                        )]
                    })
                })
                .collect()
        })
    };
    if options.cancel.is_cancelled() {
        return Err(Error::msg(ErrorKind::Cancelled, "the verify was cancelled"));
    }
    found.sort_by_key(|(i, _)| *i);
    Ok(found.into_iter().map(|(_, check)| check).collect())
}

/// Reads one pack of `size` bytes and checks it against its id, its header against the index,
/// and each of `entries` (the blobs of the pack the backups need, in the order of their place)
/// against its id. The pack is read front to back in pieces ([`PackStream`]), so a thread
/// holds a piece and a unit, not the pack.
fn check_pack(
    repo: &Repository,
    pack: PackId,
    size: u64,
    entries: &[format::PackEntry],
    options: &VerifyOptions,
) -> PackCheck {
    let mut check = PackCheck::default();
    let mut stream = PackStream::new(repo, pack, size, options.progress.as_ref());
    let key = stream.key.clone();
    let problems = &mut check.problems;
    let header = match stream.header() {
        Ok(Ok(header)) => Some(header),
        Ok(Err(e)) => {
            problems.push(format!("pack `{key}`: {e}"));
            None
        }
        Err(e) => {
            problems.push(format!("pack `{key}` cannot be read: {e}"));
            check.bad.extend(entries.iter().map(|e| e.id));
            return check;
        }
    };
    if let Some(header) = header {
        // Sorted by place for lookups: a pack of page-sized blobs lists tens of thousands,
        // and the header names a framed blob by where it sits, not by its id.
        let mut listed = header.entries;
        listed.sort_unstable_by_key(|e| (e.offset, e.within));
        // Blobs of one frame share their stored bytes: decode each frame once.
        let mut unit: Option<(u32, Result<Vec<u8>, format::FormatError>)> = None;
        for (at, entry) in entries.iter().enumerate() {
            let in_header = listed
                .binary_search_by_key(&(entry.offset, entry.within), |e| (e.offset, e.within))
                .ok()
                .and_then(|i| listed.get(i))
                .is_some_and(|e| e.records(entry));
            if !in_header {
                problems.push(format!(
                    "pack `{key}`: its header does not list blob {} as the index does",
                    entry.id
                ));
                check.bad.push(entry.id);
                continue;
            }
            if options.cancel.is_cancelled() {
                return check;
            }
            // The header put every blob it lists inside the pack.
            let stored = match stream.unit(entry.offset, entry.length) {
                Ok(stored) => stored,
                Err(e) => {
                    problems.push(format!("pack `{key}` cannot be read: {e}"));
                    check
                        .bad
                        .extend(entries.get(at..).unwrap_or_default().iter().map(|e| e.id));
                    return check;
                }
            };
            let checked = if entry.within.is_none() {
                format::decode_blob(entry, stored, repo.key()).map(drop)
            } else {
                if unit
                    .as_ref()
                    .is_none_or(|(offset, _)| *offset != entry.offset)
                {
                    unit = Some((entry.offset, format::decode_unit(entry, stored, repo.key())));
                }
                match unit.as_ref().map(|(_, u)| u) {
                    Some(Ok(frame)) => format::blob_from_unit(entry, frame, repo.key()).map(drop),
                    Some(Err(e)) => Err(e.clone()),
                    None => Ok(()),
                }
            };
            if let Err(e) = checked {
                problems.push(format!("pack `{key}`: blob {}: {e}", entry.id));
                check.bad.push(entry.id);
            }
        }
    }
    match stream.finish_matches() {
        Ok(matches) => {
            check.bytes_read = Some(size);
            if !matches {
                check.problems.push(format!(
                    "pack `{key}` does not match its name (hash mismatch)"
                ));
            }
        }
        Err(e) => check
            .problems
            .push(format!("pack `{key}` cannot be read: {e}")),
    }
    check
}
