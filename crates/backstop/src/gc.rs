//! Garbage collection: delete packs that no backup references and the leftovers of
//! interrupted backups (packs no index lists, temp files of puts), under an exclusive lock.
//!
//! Order, so that a crash at any point loses nothing: (1) write a new index object listing the
//! packs that stay, (2) delete the old index objects, (3) delete the unreferenced packs. A crash
//! after (1) leaves duplicate index entries (harmless); after (2) leaves unreferenced packs that
//! the next gc deletes.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::Result;
use crate::format::{self, IndexPack, PackEntry};
use crate::info::GcReport;
use crate::repo::{Repository, lock, referenced_blobs};

/// Temp files younger than this may belong to a put still running (of a process that has not
/// seen the gc lock yet, or that a slow link holds up): only older ones are removed.
const TEMP_FILE_MIN_AGE: Duration = Duration::from_secs(3600);

pub(crate) fn gc(repo: &Repository, dry_run: bool) -> Result<GcReport> {
    let _lock = lock::acquire_waiting(&repo.store, true, "gc", repo.options.lock_wait)?;
    repo.reload_index()?;
    let snapshots = repo.load_all_snapshots()?;
    let used = referenced_blobs(repo, &snapshots)?;

    let listed: BTreeMap<String, u64> = repo
        .store
        .list("packs/")?
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };

    // Packs by what the index says they hold.
    let (keep, drop_packs, old_index_objects) = {
        let index = repo.index_read();
        let mut by_pack: BTreeMap<usize, Vec<PackEntry>> = BTreeMap::new();
        for (id, loc) in index.iter() {
            by_pack
                .entry(loc.pack as usize)
                .or_default()
                .push(loc.entry(*id));
        }
        let mut keep = Vec::new();
        let mut drop_packs = Vec::new();
        for (pos, (pack, size)) in index.packs.iter().enumerate() {
            let mut entries = by_pack.remove(&pos).unwrap_or_default();
            entries.sort_by_key(|e| e.offset);
            if entries.iter().any(|e| used.contains(&e.id)) {
                keep.push(IndexPack {
                    id: *pack,
                    size: *size,
                    entries,
                });
            } else {
                drop_packs.push((*pack, *size));
            }
        }
        (keep, drop_packs, index.objects.clone())
    };
    let indexed: HashSet<String> = keep
        .iter()
        .map(|p| format::pack_key(p.id))
        .chain(drop_packs.iter().map(|(id, _)| format::pack_key(*id)))
        .collect();
    // Packs no index lists: uploads of interrupted backups.
    let orphans: Vec<(String, u64)> = listed
        .iter()
        .filter(|(k, _)| !indexed.contains(*k))
        .map(|(k, s)| (k.clone(), *s))
        .collect();

    report.packs_kept = keep.len() as u64;
    report.packs_deleted = (drop_packs.len() + orphans.len()) as u64;
    report.bytes_freed = drop_packs.iter().map(|(_, s)| *s).sum::<u64>()
        + orphans.iter().map(|(_, s)| *s).sum::<u64>();
    // Rewrite the index when packs go, or when its objects (one per backup) would fit in fewer.
    let index_changes =
        !drop_packs.is_empty() || old_index_objects.len() > crate::repo::index_object_count(&keep);
    if dry_run {
        return Ok(report);
    }
    if index_changes {
        let new_keys = if keep.is_empty() {
            Vec::new()
        } else {
            repo.write_index(keep)?
        };
        for key in &old_index_objects {
            // Index keys are content hashes: an unchanged object gets its old key back.
            if !new_keys.contains(key) {
                repo.store.delete(key)?;
                report.indexes_rewritten += 1;
            }
        }
    }
    for (pack, _) in &drop_packs {
        repo.store.delete(&format::pack_key(*pack))?;
    }
    for (key, _) in &orphans {
        repo.store.delete(key)?;
    }
    report.temp_files_removed = repo.store.remove_temp_files(TEMP_FILE_MIN_AGE)?;
    repo.reload_index()?;
    Ok(report)
}
