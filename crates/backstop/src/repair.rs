//! `repair index`: rebuilding the index from the packs themselves, for a repository whose index
//! object is lost (its packs look like leftovers, and its blobs are unknown) or damaged (every
//! command that loads the index stops at it). A pack's header says where each of its blobs is,
//! so the index can always be rebuilt; restic's `repair index` and borg's `check --repair` do
//! the same for their formats (the idea, not code, comes from them).
//!
//! Order, as in gc: packs are read (and a damaged pack's intact blobs copied into new packs)
//! before anything changes; then the new index objects are written, and only then the old ones
//! deleted. A crash in between leaves old and new objects side by side, whose duplicate entries
//! are harmless; a copied blob that no index lists yet sits in a pack the next gc deletes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::format::{self, ContentId, HeaderEntry, IndexPack, PackEntry, PackId};
use crate::gc::Repacker;
use crate::info::RepairReport;
use crate::options::RepairOptions;
use crate::pack_reader::PackStream;
use crate::repo::{Repository, lock};
use crate::{Error, ErrorKind, Result};

pub(crate) fn repair_index(repo: &Repository, options: &RepairOptions) -> Result<RepairReport> {
    let lock = lock::acquire_waiting(&repo.store, true, "repair index", repo.options.lock_wait)?;
    let mut report = RepairReport {
        dry_run: options.dry_run,
        read_all_packs: options.read_all_packs,
        ..RepairReport::default()
    };

    let mut old_objects: Vec<String> = repo
        .store
        .list("index/")?
        .into_iter()
        .map(|m| m.key)
        .collect();
    old_objects.sort();
    let mut listed: HashMap<PackId, IndexPack> = HashMap::new();
    for key in &old_objects {
        match repo.read_index_object(key) {
            Ok(Some(file)) => {
                report.index_objects_read += 1;
                for pack in file.packs {
                    listed.entry(pack.id).or_insert(pack);
                }
            }
            Ok(None) => {}
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                report.index_objects_damaged.push(format!("{key}: {e}"));
            }
            // A newer build's object, or the store failing: nothing to rebuild from safely.
            Err(e) => return Err(e),
        }
    }

    let mut keep: Vec<IndexPack> = Vec::new();
    let mut to_read: Vec<ToRead> = Vec::new();
    for meta in repo.store.list("packs/")? {
        let Some(id) = pack_id_of(&meta.key) else {
            tracing::warn!(key = %meta.key, "not a pack's name; left alone");
            continue;
        };
        report.packs_in_store += 1;
        match listed.remove(&id) {
            Some(pack) if !options.read_all_packs && pack.size == meta.size => keep.push(pack),
            known => to_read.push(ToRead {
                id,
                size: meta.size,
                listed: known.map(|p| p.entries),
            }),
        }
    }
    // What is left was listed and is gone.
    report.packs_missing = listed.len() as u64;

    options.progress.phase(
        "read",
        to_read.len() as u64,
        to_read.iter().map(|p| p.size).sum(),
    );
    let found = read_packs(repo, &to_read, options)?;
    let mut damaged: Vec<(&ToRead, Found)> = Vec::new();
    for (pack, found) in to_read.iter().zip(found) {
        report.packs_read += 1;
        let key = format::pack_key(pack.id);
        match found {
            Found::Unreadable(why) => report.packs_unreadable.push(format!("{key}: {why}")),
            Found::Read(read) if read.is_damaged() => {
                report.blobs_damaged += read.blobs_damaged;
                report.packs_damaged.push(match read.matches {
                    Some(false) => format!(
                        "{key}: does not match its name; {} blobs do not check",
                        read.blobs_damaged
                    ),
                    _ => format!("{key}: {} blobs do not check", read.blobs_damaged),
                });
                report.blobs_salvaged += read
                    .units
                    .iter()
                    .map(|u| u.entries.len() as u64)
                    .sum::<u64>();
                damaged.push((pack, Found::Read(read)));
            }
            Found::Read(read) => {
                let entries: Vec<PackEntry> =
                    read.units.into_iter().flat_map(|u| u.entries).collect();
                match &pack.listed {
                    None => report.packs_added += 1,
                    Some(listed) if !same_entries(listed, &entries) => {
                        report.packs_corrected += 1;
                    }
                    Some(_) => {}
                }
                keep.push(IndexPack {
                    id: pack.id,
                    size: pack.size,
                    entries,
                });
            }
        }
    }
    let changes = !report.index_objects_damaged.is_empty()
        || report.packs_missing > 0
        || report.packs_added > 0
        || report.packs_corrected > 0
        || !damaged.is_empty();
    if options.dry_run || !changes {
        report.blobs_indexed =
            keep.iter().map(|p| p.entries.len() as u64).sum::<u64>() + report.blobs_salvaged;
        return Ok(report);
    }
    if !damaged.is_empty() {
        keep.extend(salvage(repo, &damaged, options)?);
    }
    report.blobs_indexed = keep.iter().map(|p| p.entries.len() as u64).sum();

    lock.check_held()?;
    let new_objects = if keep.is_empty() {
        Vec::new()
    } else {
        repo.write_index(keep)?
    };
    let old: HashSet<&String> = old_objects.iter().collect();
    report.indexes_written = new_objects.iter().filter(|k| !old.contains(k)).count() as u64;
    for key in &old_objects {
        // Index keys are content hashes: an object that came out the same keeps its name.
        if !new_objects.contains(key) {
            repo.store.delete(key)?;
            report.indexes_deleted += 1;
        }
    }
    repo.reload_index()?;
    Ok(report)
}

/// Whether two lists of a pack's entries say the same, in whatever order.
fn same_entries(a: &[PackEntry], b: &[PackEntry]) -> bool {
    let sorted = |entries: &[PackEntry]| {
        let mut v = entries.to_vec();
        v.sort_unstable_by_key(|e| (e.offset, e.within, e.id.0));
        v
    };
    a.len() == b.len() && sorted(a) == sorted(b)
}

/// A pack to read, and what a readable index object said about it (to fall back on when its
/// header cannot be read).
struct ToRead {
    id: PackId,
    size: u64,
    listed: Option<Vec<PackEntry>>,
}

enum Found {
    Read(ReadPack),
    /// Neither the header nor an index object says what the pack holds.
    Unreadable(String),
}

/// What a pack holds that checks: its stored units, each with the blobs in it that check.
struct ReadPack {
    units: Vec<IntactUnit>,
    blobs_damaged: u64,
    /// Whether the pack's bytes match its name; `None` when it was not read to the end.
    matches: Option<bool>,
}

impl ReadPack {
    fn is_damaged(&self) -> bool {
        self.blobs_damaged > 0 || self.matches == Some(false)
    }
}

struct IntactUnit {
    entries: Vec<PackEntry>,
    /// Whether every blob the unit holds checked, so that it can be copied as stored.
    whole: bool,
}

/// The pack id a key `packs/<2 hex>/<64 hex>` names.
fn pack_id_of(key: &str) -> Option<PackId> {
    let hex = key.strip_prefix("packs/")?.split_once('/')?.1;
    let bytes: [u8; 32] = hex::decode(hex).ok()?.try_into().ok()?;
    let id = ContentId(bytes);
    (format::pack_key(id) == key).then_some(id)
}

/// Reads the packs on the worker threads; the findings in the order of `packs`.
fn read_packs(repo: &Repository, packs: &[ToRead], options: &RepairOptions) -> Result<Vec<Found>> {
    let threads = repo.options.worker_threads().clamp(1, packs.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Found>>>> =
        Mutex::new((0..packs.len()).map(|_| None).collect());
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(pack) = packs.get(i) else { break };
            let found = if options.cancel.is_cancelled() {
                Err(cancelled())
            } else {
                read_pack(repo, pack, options)
            };
            let failed = found.is_err();
            if let Some(slot) = results
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(i)
            {
                *slot = Some(found);
            }
            if failed {
                // The others stop at their next pack.
                next.store(packs.len(), Ordering::Relaxed);
                break;
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(work);
        }
        work();
    });
    let results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = Vec::with_capacity(packs.len());
    for result in results {
        match result {
            Some(found) => out.push(found?),
            None => {
                return Err(Error::msg(
                    ErrorKind::Io,
                    "a pack was left unread after another failed (a bug)",
                ));
            }
        }
    }
    Ok(out)
}

fn cancelled() -> Error {
    Error::msg(
        ErrorKind::Cancelled,
        "the repair was cancelled while it read packs; it changed nothing (copies of damaged \
         packs' blobs made so far are left for gc)",
    )
}

/// Reads what one pack holds: its header (or, if that cannot be read, what an index object
/// listed), and where needed its units. A framed blob's id is not in the header: its frame is
/// decoded and the blob hashed. With `read_all_packs` every unit is decoded and every blob
/// checked, and the pack is hashed to the end; otherwise a blob the header names by id is taken
/// as the header says (as gc and a quick verify take the index), and a pack with no framed blob
/// is not read beyond its header.
fn read_pack(repo: &Repository, pack: &ToRead, options: &RepairOptions) -> Result<Found> {
    let mut stream = PackStream::new(repo, pack.id, pack.size, options.progress.as_ref());
    let mut entries: Vec<HeaderEntry> = match stream.header() {
        Ok(Ok(header)) => header.entries,
        Ok(Err(e)) => match &pack.listed {
            Some(listed) => listed.iter().map(HeaderEntry::naming).collect(),
            None => return Ok(Found::Unreadable(format!("its header cannot be read: {e}"))),
        },
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            return Ok(Found::Unreadable(format!("it cannot be read: {e}")));
        }
        Err(e) => return Err(e),
    };
    entries.sort_unstable_by_key(|e| (e.offset, e.within));
    let check_all = options.read_all_packs;
    let mut read = ReadPack {
        units: Vec::new(),
        blobs_damaged: 0,
        matches: None,
    };
    let mut read_any = false;
    for unit in entries.chunk_by(|a, b| a.offset == b.offset) {
        let first = unit[0];
        if !check_all && unit.len() == 1 && first.within.is_none() {
            if let Some(id) = first.id {
                read.units.push(IntactUnit {
                    entries: vec![first.with_id(id)],
                    whole: true,
                });
                continue;
            }
        }
        if options.cancel.is_cancelled() {
            return Err(cancelled());
        }
        read_any = true;
        let stored = match stream.unit(first.offset, first.length) {
            Ok(stored) => stored,
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                read.blobs_damaged += unit.len() as u64;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(decoded) =
            format::decode_unit(&first.with_id(ContentId([0; 32])), stored, repo.key())
        else {
            read.blobs_damaged += unit.len() as u64;
            continue;
        };
        let mut intact = IntactUnit {
            entries: Vec::with_capacity(unit.len()),
            whole: true,
        };
        for entry in unit {
            match blob_in_unit(entry, &decoded, repo) {
                Some(id) => intact.entries.push(entry.with_id(id)),
                None => {
                    read.blobs_damaged += 1;
                    intact.whole = false;
                }
            }
        }
        if !intact.entries.is_empty() {
            read.units.push(intact);
        }
    }
    if check_all || read_any {
        read.matches = match stream.finish_matches() {
            Ok(matches) => Some(matches),
            Err(e) if e.kind() == ErrorKind::Corrupt => Some(false),
            Err(e) => return Err(e),
        };
    }
    Ok(Found::Read(read))
}

/// The id of the blob `entry` places in its decoded unit, if it is there and matches the id
/// the entry gives (a framed blob's entry gives none: its id is what its bytes hash to).
fn blob_in_unit(entry: &HeaderEntry, unit: &[u8], repo: &Repository) -> Option<ContentId> {
    let start = entry.within.unwrap_or(0) as usize;
    let raw = unit.get(start..start.checked_add(entry.raw_length as usize)?)?;
    if entry.within.is_none() && raw.len() != unit.len() {
        return None;
    }
    let id = format::blob_id(raw, repo.key());
    entry.id.is_none_or(|given| given == id).then_some(id)
}

/// Copies the intact units of damaged packs into new packs (as stored where every blob of the
/// unit checked, else the intact blobs framed anew) and returns the new packs, durable.
fn salvage(
    repo: &Repository,
    damaged: &[(&ToRead, Found)],
    options: &RepairOptions,
) -> Result<Vec<IndexPack>> {
    let mut out = Repacker::new(repo);
    for (pack, found) in damaged {
        let Found::Read(read) = found else { continue };
        let mut stream = PackStream::new(repo, pack.id, pack.size, options.progress.as_ref());
        let key = stream.key.clone();
        for unit in &read.units {
            if options.cancel.is_cancelled() {
                return Err(cancelled());
            }
            let first = unit.entries[0];
            let stored = stream.unit(first.offset, first.length)?;
            // Checked once more as they are copied: the pack is damaged, and a read may differ.
            let decoded = format::decode_unit(&first, stored, repo.key())
                .map_err(|e| crate::repo::damaged(&key, e))?;
            if unit.whole {
                for entry in &unit.entries {
                    format::blob_from_unit(entry, &decoded, repo.key())
                        .map_err(|e| crate::repo::damaged(&key, e))?;
                }
                out.push_stored(stored, &unit.entries, None)?;
            } else {
                for entry in &unit.entries {
                    let raw = format::blob_from_unit(entry, &decoded, repo.key())
                        .map_err(|e| crate::repo::damaged(&key, e))?;
                    out.push_small_blob(entry, raw)?;
                }
            }
        }
    }
    out.finish()
}
