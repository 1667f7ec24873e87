//! Verification: prove that backups can be restored, cheaply (every object present, right
//! size) or thoroughly (every byte read, authenticated and hashed).

use std::collections::{BTreeMap, HashSet};

use crate::Result;
use crate::format::{self, PackId, Snapshot};
use crate::info::VerifyReport;
use crate::options::VerifyLevel;
use crate::repo::Repository;

pub(crate) fn verify(
    repo: &Repository,
    snapshots: &[Snapshot],
    level: VerifyLevel,
) -> Result<VerifyReport> {
    repo.reload_index()?;
    let mut report = VerifyReport {
        backups: snapshots.iter().map(|s| s.id).collect(),
        ..VerifyReport::default()
    };
    // Blobs each backup needs; a tree that cannot be read is a problem, not an abort.
    let mut needed = HashSet::new();
    for snapshot in snapshots {
        needed.extend(snapshot.tree.iter().copied());
        let result = repo.for_each_node(snapshot, |n| {
            needed.extend(crate::page_list::blobs_of(&n));
            needed.extend(n.chunks);
            Ok(())
        });
        if let Err(e) = result {
            report.problems.push(format!(
                "backup {}: its file list cannot be read: {e:#}",
                snapshot.id
            ));
        }
    }
    report.blobs = needed.len() as u64;

    // Which packs hold them, and which blobs of each pack are needed.
    let mut packs: BTreeMap<PackId, Vec<format::PackEntry>> = BTreeMap::new();
    {
        let index = repo.index_read();
        for id in &needed {
            match index.locate(id) {
                Some((pack, entry)) => packs.entry(pack).or_default().push(entry),
                None => report.problems.push(format!(
                    "blob {id} is needed but no index lists it (a pack or index object is missing)"
                )),
            }
        }
    }
    report.packs = packs.len() as u64;

    let listed: BTreeMap<String, u64> = repo
        .store
        .list("packs/")?
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();
    for pack in packs.keys() {
        let key = format::pack_key(*pack);
        let expected = repo.index_read().pack_size(pack);
        match (listed.get(&key), expected) {
            (None, _) => report.problems.push(format!("pack `{key}` is missing")),
            (Some(actual), Some(expected)) if *actual != expected => report.problems.push(format!(
                "pack `{key}` has {actual} bytes, the index says {expected}"
            )),
            _ => {}
        }
    }

    let read_share = match level {
        VerifyLevel::Quick => 0,
        VerifyLevel::Subset(p) => p.clamp(1, 100),
        VerifyLevel::Full => 100,
    };
    if read_share == 0 {
        return Ok(report);
    }
    for (pack, mut entries) in packs {
        // A stable choice per pack id: the same subset each run unless the share changes.
        if read_share < 100 && u32::from(pack.0[0]) * 100 / 256 >= u32::from(read_share) {
            continue;
        }
        let key = format::pack_key(pack);
        if !listed.contains_key(&key) {
            continue; // already reported
        }
        let bytes = match repo.store.get(&key) {
            Ok(b) => b,
            Err(e) => {
                report
                    .problems
                    .push(format!("pack `{key}` cannot be read: {e}"));
                continue;
            }
        };
        report.packs_read += 1;
        report.bytes_read += bytes.len() as u64;
        if format::ContentId::hash(&bytes) != pack {
            report.problems.push(format!(
                "pack `{key}` does not match its name (hash mismatch)"
            ));
        }
        let header = match format::read_pack_header(&bytes, repo.key()) {
            Ok(h) => h,
            Err(e) => {
                report.problems.push(format!("pack `{key}`: {e}"));
                continue;
            }
        };
        // Sorted by place for lookups: a pack of page-sized blobs lists tens of thousands, and
        // the header names a framed blob by where it sits, not by its id.
        let mut listed = header.entries;
        listed.sort_unstable_by_key(|e| (e.offset, e.within));
        entries.sort_unstable_by_key(|e| (e.offset, e.within));
        // Blobs of one frame share their stored bytes: decode each frame once.
        let mut unit: Option<(u32, Result<Vec<u8>, format::FormatError>)> = None;
        for entry in &entries {
            let in_header = listed
                .binary_search_by_key(&(entry.offset, entry.within), |e| (e.offset, e.within))
                .ok()
                .and_then(|i| listed.get(i))
                .is_some_and(|e| e.records(entry));
            if !in_header {
                report.problems.push(format!(
                    "pack `{key}`: its header does not list blob {} as the index does",
                    entry.id
                ));
                continue;
            }
            let range = entry.offset as usize..(entry.offset as usize + entry.length as usize);
            let Some(stored) = bytes.get(range) else {
                report
                    .problems
                    .push(format!("pack `{key}`: blob {} lies outside it", entry.id));
                continue;
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
                report
                    .problems
                    .push(format!("pack `{key}`: blob {}: {e}", entry.id));
            }
        }
    }
    Ok(report)
}
