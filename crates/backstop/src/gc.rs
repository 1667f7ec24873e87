//! Garbage collection under an exclusive lock: delete packs that no backup references and the
//! leftovers of interrupted backups (packs no index lists, temp files of puts), and rewrite
//! packs that are mostly unused so that their space comes back too.
//!
//! Order, so that a crash at any point loses nothing: (1) copy the used blobs of the packs to
//! rewrite into new packs, (2) record the rewritten packs in a `superseded/` object, (3) write a
//! new index object listing the packs that stay and the new ones, (4) delete the old index
//! objects, (5) delete the unreferenced packs, and the packs of earlier records whose grace
//! period is over. A crash after (1) leaves packs no index lists (the next gc deletes them);
//! after (3) duplicate index entries (harmless); after (4) unreferenced packs that the next gc
//! deletes. A rewritten pack is not deleted by the gc that rewrote it (unless the grace period
//! is zero): a restore or verify that loaded the index before may still read it, so it waits
//! out the grace period, which starts when the new index is written. No gc deletes a pack of
//! a record within its grace period, even one an index still lists (after a crash at (3) the
//! next gc may find either copy of a blob unused). gc checks that its lock is still its own
//! before (2) and before (5). While backups use blobs no index lists (an index object was
//! lost), packs no index lists may hold them: gc keeps those, and `repair index` indexes them.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use backstop_store::PutMode;

use crate::blob_set::BlobSet;
use crate::format::{self, IndexPack, ObjectType, PackEntry, PackId, SupersededPacks};
use crate::info::GcReport;
use crate::options::GcOptions;
use crate::pack_reader::PackStream;
use crate::pack_writer::PackWriter;
use crate::repo::{Repository, damaged, hostname, lock, now_unix, random_hex};
use crate::{Error, ErrorKind, Result};

/// Temp files younger than this may belong to a put still running (of a process that has not
/// seen the gc lock yet, or that a slow link holds up): only older ones are removed.
const TEMP_FILE_MIN_AGE: Duration = Duration::from_secs(3600);

const SUPERSEDED_PREFIX: &str = "superseded/";

/// What gc decided for the packs the index lists.
#[derive(Default)]
struct Plan {
    keep: Vec<IndexPack>,
    /// Packs to rewrite, with their entries grouped into stored units (a blob, or a frame of
    /// small blobs) of which at least one blob is used.
    repack: Vec<Rewrite>,
    /// Wholly unused packs and their sizes.
    drop: Vec<(PackId, u64)>,
    /// Wholly unused packs that an earlier gc rewrote and that still wait out its grace
    /// period: the new index leaves them out, and a later gc deletes them.
    unlisted_in_grace: usize,
    /// Packs the index lists but the store does not hold: left out of the new index.
    missing: Vec<PackId>,
    /// Blobs of the missing packs that backups use.
    missing_used: u64,
    /// Blobs backups use that no index lists (before the missing packs are taken out).
    unindexed_used: u64,
}

pub(crate) fn gc(repo: &Repository, options: &GcOptions) -> Result<GcReport> {
    let lock = lock::acquire_waiting(&repo.store, true, "gc", repo.options.lock_wait)?;
    repo.reload_index()?;
    let snapshots = repo.load_all_snapshots().map_err(|e| {
        if e.kind() == ErrorKind::Corrupt {
            Error::msg(
                ErrorKind::Corrupt,
                format!(
                    "gc needs every backup's file list, to keep the data it uses: {e}. Delete \
                     that backup (`backstop delete ID`) or mend the object, then run gc again; \
                     gc changed nothing"
                ),
            )
        } else {
            e
        }
    })?;
    let used = BlobSet::used_by(repo, &snapshots, &options.cancel).map_err(|e| match e.kind() {
        ErrorKind::Cancelled => Error::msg(
            ErrorKind::Cancelled,
            "the gc was cancelled while it read the backups' file lists; it changed nothing",
        ),
        ErrorKind::Corrupt => Error::msg(
            ErrorKind::Corrupt,
            format!(
                "gc needs every backup's file list, to keep the data it uses: {e}. gc changed \
                 nothing (had it gone on, it would have taken the packs of a lost index object \
                 for leftovers)"
            ),
        ),
        _ => e,
    })?;

    let listed: BTreeMap<String, u64> = repo
        .store
        .list("packs/")?
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();
    let mut report = GcReport {
        dry_run: options.dry_run,
        ..GcReport::default()
    };

    // Packs earlier gcs rewrote wait until their record's grace period is over, whether an
    // index still lists them or not: a gc cut short after writing its new index (before it
    // deleted the old one) leaves them listed twice, and the next gc may find them unused.
    let records = load_superseded(repo)?;
    let now = now_unix();
    let grace = i64::try_from(options.superseded_grace.as_secs()).unwrap_or(i64::MAX);
    let in_grace: HashSet<PackId> = records
        .iter()
        .filter(|(_, r)| now.saturating_sub(r.time_unix) < grace)
        .flat_map(|(_, r)| r.packs.iter().copied())
        .collect();
    let expired_records: Vec<&String> = records
        .iter()
        .filter(|(_, r)| now.saturating_sub(r.time_unix) >= grace)
        .map(|(key, _)| key)
        .collect();

    let (plan, old_index_objects) = {
        let index = repo.index_read();
        if !used.fits(&index) {
            // Positions would name other blobs: refuse rather than judge packs by them.
            return Err(Error::msg(
                ErrorKind::Io,
                "the index changed while gc read the backups' file lists; run gc again",
            ));
        }
        let mut by_pack: BTreeMap<usize, Vec<(PackEntry, bool)>> = BTreeMap::new();
        for (at, (id, loc)) in index.iter().enumerate() {
            by_pack
                .entry(loc.pack as usize)
                .or_default()
                .push((loc.entry(id), used.contains(at, &id)));
        }
        let mut plan = Plan {
            // After an index object was lost, the blobs it listed are used but unknown, and the
            // packs holding them are unlisted: they must not be taken for leftovers.
            unindexed_used: used.others().filter(|id| !index.contains(id)).count() as u64,
            ..Plan::default()
        };
        for (pos, (pack, size)) in index.packs.iter().enumerate() {
            let mut entries = by_pack.remove(&pos).unwrap_or_default();
            let (units, unused_bytes) = used_units(&mut entries);
            let (id, size) = (*pack, *size);
            if !listed.contains_key(&format::pack_key(id)) {
                // Gone from the store (deleted by hand, lost by the service): the index must
                // stop naming it, so that a backup stores its blobs again.
                plan.missing.push(id);
                plan.missing_used += units
                    .iter()
                    .map(|u| u.used.iter().filter(|x| **x).count())
                    .sum::<usize>() as u64;
            } else if units.is_empty() && in_grace.contains(&id) {
                // Left out of the new index; deleted once its grace period is over.
                plan.unlisted_in_grace += 1;
            } else if units.is_empty() {
                plan.drop.push((id, size));
            } else if worth_rewriting(size, unused_bytes, options.repack_unused_percent) {
                // The units carry the entries a rewrite needs.
                plan.repack.push(Rewrite { id, size, units });
            } else {
                let entries = entries.into_iter().map(|(e, _)| e).collect();
                plan.keep.push(IndexPack { id, size, entries });
            }
        }
        (plan, index.objects.clone())
    };
    let indexed: HashSet<String> = plan
        .keep
        .iter()
        .map(|p| format::pack_key(p.id))
        .chain(plan.repack.iter().map(|p| format::pack_key(p.id)))
        .chain(plan.drop.iter().map(|(id, _)| format::pack_key(*id)))
        .chain(plan.missing.iter().map(|id| format::pack_key(*id)))
        .collect();

    // Packs no index lists: uploads of interrupted backups, and packs earlier gcs rewrote.
    let in_grace: HashSet<String> = in_grace.into_iter().map(format::pack_key).collect();
    let mut orphans: Vec<(String, u64)> = Vec::new();
    for (key, size) in listed.iter().filter(|(k, _)| !indexed.contains(*k)) {
        if in_grace.contains(key) {
            report.packs_in_grace += 1;
        } else if plan.unindexed_used > 0 {
            // They may hold the blobs the backups miss: `repair index` reads them.
            report.packs_unindexed_kept += 1;
        } else {
            orphans.push((key.clone(), *size));
        }
    }

    report.packs_kept = plan.keep.len() as u64;
    report.packs_missing = plan.missing.len() as u64;
    report.blobs_lost = plan.missing_used;
    report.blobs_unindexed = plan.unindexed_used;
    report.packs_repacked = plan.repack.len() as u64;
    report.bytes_repacked = plan
        .repack
        .iter()
        .flat_map(|p| p.units.iter().map(|u| u64::from(u.entries[0].length)))
        .sum();
    // Without a grace period nothing waits for readers: rewritten packs go in this gc.
    let delete_rewritten = options.superseded_grace.is_zero();
    if delete_rewritten {
        orphans.extend(plan.repack.iter().map(|p| (format::pack_key(p.id), p.size)));
    }
    report.packs_deleted = (plan.drop.len() + orphans.len()) as u64;
    report.bytes_freed = plan.drop.iter().map(|(_, s)| *s).sum::<u64>()
        + orphans.iter().map(|(_, s)| *s).sum::<u64>();
    // Rewrite the index when packs go, or when its objects (one per backup) would fit in fewer.
    let mut index_changes = !plan.drop.is_empty()
        || !plan.repack.is_empty()
        || plan.unlisted_in_grace > 0
        || !plan.missing.is_empty()
        || old_index_objects.len() > crate::repo::index_object_count(&plan.keep);
    if options.dry_run {
        if index_changes {
            // At most: an object whose content comes out the same keeps its name.
            report.indexes_rewritten = old_index_objects.len() as u64;
        }
        return Ok(report);
    }

    let mut keep = plan.keep;
    if !plan.repack.is_empty() {
        options.progress.phase(
            "rewrite",
            plan.repack.len() as u64,
            plan.repack.iter().map(|p| p.size).sum(),
        );
        let copying = Copying {
            from: repo,
            into: repo,
            progress: options.progress.as_ref(),
            cancel: &options.cancel,
            cancelled: "the gc was cancelled while it rewrote packs; it changed no index, and \
                        the next gc deletes the packs it wrote",
        };
        let rewritten = rewrite_packs(&copying, &plan.repack)?;
        keep.extend(rewritten);
        index_changes = true;
    }
    // Reading the file lists and rewriting packs take long on a large repository: a gc whose
    // lock went stale meanwhile may have a backup beside it that relies on what it would drop.
    still_held(&lock, "before it changed anything")?;
    if !plan.repack.is_empty() && !delete_rewritten {
        let record = SupersededPacks {
            // The grace period protects readers of the old index, which is current until the
            // new one is written just below: it starts now, not when the gc started.
            time_unix: now_unix(),
            host: hostname(),
            packs: plan.repack.iter().map(|p| p.id).collect(),
        };
        let bytes = repo.seal_object(ObjectType::Superseded, &record);
        let key = format!("{SUPERSEDED_PREFIX}{}", random_hex(16));
        repo.store.put(&key, &bytes, PutMode::Create)?;
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
    still_held(
        &lock,
        "after it wrote the new index, before it deleted any pack",
    )?;
    for (pack, _) in &plan.drop {
        repo.store.delete(&format::pack_key(*pack))?;
    }
    for (key, _) in &orphans {
        repo.store.delete(key)?;
    }
    // A record goes once its packs are gone (just above, unless still indexed).
    for key in expired_records {
        repo.store.delete(key)?;
    }
    report.temp_files_removed = repo.store.remove_temp_files(TEMP_FILE_MIN_AGE)?;
    repo.reload_index()?;
    Ok(report)
}

/// Fails when the gc's exclusive lock is no longer certainly its own, saying where it stopped.
fn still_held(lock: &lock::LockGuard, stage: &str) -> Result<()> {
    match lock.lost()? {
        None => Ok(()),
        Some(why) => Err(Error::msg(
            ErrorKind::Locked,
            format!(
                "gc stopped {stage}: its repository lock `{}` may no longer be its own ({why}), \
                 and a backup may rely on what it would delete. What it left is cleaned up by \
                 the next gc; run it again",
                lock.key()
            ),
        )),
    }
}

/// A pack to rewrite.
pub(crate) struct Rewrite {
    pub(crate) id: PackId,
    pub(crate) size: u64,
    /// Its units that hold a used blob, in the order of their offsets.
    pub(crate) units: Vec<Unit>,
}

/// A stored unit (one blob, or a frame of small blobs sharing their stored bytes) with at least
/// one used blob.
pub(crate) struct Unit {
    pub(crate) entries: Vec<PackEntry>,
    /// Per entry, whether a backup uses its blob.
    pub(crate) used: Vec<bool>,
}

impl Unit {
    /// Whether every blob of the unit is used (it is then copied as stored).
    fn all_used(&self) -> bool {
        self.used.iter().all(|u| *u)
    }
}

/// Groups a pack's entries into stored units (entries sharing an offset share a frame) and
/// returns the units with at least one used blob, and the unused stored bytes: whole unused
/// units, and of a frame the share of its raw bytes that belongs to unused blobs.
/// `entries` (each with whether a backup uses its blob) are sorted by place on the way.
pub(crate) fn used_units(entries: &mut [(PackEntry, bool)]) -> (Vec<Unit>, u64) {
    entries.sort_by_key(|(e, _)| (e.offset, e.within));
    let groups = entries.chunk_by(|(a, _), (b, _)| a.offset == b.offset);
    let mut units = Vec::new();
    let mut unused_bytes = 0u64;
    for group in groups {
        let (entries, flags): (Vec<PackEntry>, Vec<bool>) = group.iter().copied().unzip();
        let stored = u64::from(entries[0].length);
        let raw: u64 = entries.iter().map(|e| u64::from(e.raw_length)).sum();
        let dead_raw: u64 = entries
            .iter()
            .zip(&flags)
            .filter(|(_, used)| !**used)
            .map(|(e, _)| u64::from(e.raw_length))
            .sum();
        if flags.iter().all(|u| !u) {
            unused_bytes += stored;
            continue;
        }
        unused_bytes += (stored * dead_raw).checked_div(raw).unwrap_or(0);
        units.push(Unit {
            used: flags,
            entries,
        });
    }
    (units, unused_bytes)
}

/// Whether the unused units of a pack make up `percent` of it (its header counts as used:
/// rewriting cannot drop it).
fn worth_rewriting(size: u64, unused_bytes: u64, percent: u8) -> bool {
    if percent >= 100 || size == 0 {
        return false;
    }
    unused_bytes > 0 && u128::from(unused_bytes) * 100 >= u128::from(size) * u128::from(percent)
}

/// Copies the used units of `packs` into new packs of the target size, after checking each old
/// pack against its id. A wholly used unit is copied as stored (a sealed unit does not depend
/// on where it sits); the used blobs of a partly used frame are decoded, checked against their
/// ids and framed anew, so that unused pages do not live on beside used ones. Returns the new
/// packs, written and durable.
///
/// The packs are shared out among the worker threads, each writing packs of its own: framing
/// anew is mostly zstd compression (~40 % of a rewrite's CPU, measured), and one thread took
/// 3 s on the benchmark mix. Fixed halves of the list left one thread working alone for a third
/// of the rewrite (0.7 of 2.1 s, after deleting the benchmark's full backup): its half held the
/// frames to build anew. So each pack goes to the thread with the least work so far, the most
/// costly first ([`rewrite_cost`]). The shares do not depend on timing, so a rewrite writes the
/// same number of packs every time (the crash test fails each put in turn). Each thread holds
/// one old pack and one new one.
pub(crate) fn rewrite_packs(copying: &Copying<'_>, packs: &[Rewrite]) -> Result<Vec<IndexPack>> {
    let threads = copying
        .into
        .options
        .worker_threads()
        .clamp(1, packs.len().max(1));
    let mut order: Vec<(u64, &Rewrite)> = packs
        .iter()
        .map(|item| (rewrite_cost(item), item))
        .collect();
    order.sort_by_key(|(cost, pack)| std::cmp::Reverse((*cost, pack.id)));
    if threads == 1 {
        let all: Vec<&Rewrite> = order.into_iter().map(|(_, item)| item).collect();
        return rewrite_some(copying, &all);
    }
    let mut shares: Vec<(u64, Vec<&Rewrite>)> = vec![(0, Vec::new()); threads];
    for (cost, item) in order {
        if let Some(share) = shares.iter_mut().min_by_key(|(work, _)| *work) {
            share.0 += cost;
            share.1.push(item);
        }
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .iter()
            .map(|(_, part)| scope.spawn(move || rewrite_some(copying, part)))
            .collect();
        let mut written = Vec::new();
        let mut failure = None;
        for worker in workers {
            match worker.join() {
                Ok(Ok(packs)) => written.extend(packs),
                // The other threads' new packs stay unindexed: the next gc deletes them.
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert(Error::msg(
                        ErrorKind::Io,
                        "a thread rewriting packs panicked",
                    ));
                }
            }
        }
        failure.map_or(Ok(written), Err)
    })
}

/// The work of rewriting a pack, in bytes: reading it, plus decompressing and compressing the
/// frames it builds anew (several times the cost of a byte copied as stored).
fn rewrite_cost(pack: &Rewrite) -> u64 {
    let reframed: u64 = pack
        .units
        .iter()
        .filter(|u| !u.all_used())
        .map(|u| {
            u.entries
                .iter()
                .map(|e| u64::from(e.raw_length))
                .sum::<u64>()
        })
        .sum();
    pack.size + 8 * reframed
}

/// Where [`rewrite_packs`] reads and writes: gc rewrites packs within one repository, `copy`
/// copies them into another that shares its key (so a unit sealed for one is sealed for both).
pub(crate) struct Copying<'a> {
    pub(crate) from: &'a Repository,
    pub(crate) into: &'a Repository,
    /// Told of each pack read (`file`) and of its bytes as they are read.
    pub(crate) progress: &'a dyn crate::progress::Progress,
    pub(crate) cancel: &'a crate::CancelToken,
    /// The error when `cancel` stops it: what was left, and who cleans it up.
    pub(crate) cancelled: &'static str,
}

fn rewrite_some(copying: &Copying<'_>, packs: &[&Rewrite]) -> Result<Vec<IndexPack>> {
    let repo = copying.from;
    let mut out = Repacker::new(copying.into);
    for pack in packs.iter().copied() {
        let mut old = PackStream::new(repo, pack.id, pack.size, copying.progress);
        for unit in &pack.units {
            if copying.cancel.is_cancelled() {
                // Nothing lists the packs written so far: the next gc deletes them.
                return Err(Error::msg(ErrorKind::Cancelled, copying.cancelled));
            }
            let first = unit.entries[0];
            let stored = old.unit(first.offset, first.length)?;
            if unit.all_used() {
                out.push_stored(stored, &unit.entries, None)?;
                continue;
            }
            let decoded = format::decode_unit(&first, stored, repo.key())
                .map_err(|e| damaged(&old.key, e))?;
            for (entry, _) in unit.entries.iter().zip(&unit.used).filter(|(_, u)| **u) {
                let raw = format::blob_from_unit(entry, &decoded, repo.key())
                    .map_err(|e| damaged(&old.key, e))?;
                out.push_small_blob(entry, raw)?;
            }
        }
        // Units copied as stored are only checked here, with the whole pack: until then they
        // sit in new packs that no index lists, which the next gc deletes if this one fails.
        old.finish()?;
    }
    out.finish()
}

/// What a rewrite writes: the packs, and the frames of blobs it takes out of old frames. Also
/// what `repair index` copies a damaged pack's intact blobs with.
pub(crate) struct Repacker<'a> {
    repo: &'a Repository,
    packs: PackWriter<'a>,
    frame: Vec<u8>,
    frame_entries: Vec<PackEntry>,
    /// The level of the frames it makes: one lane, as the survivors come in pack order.
    levels: crate::compress::LevelChoice,
    written: Vec<IndexPack>,
}

impl<'a> Repacker<'a> {
    pub(crate) fn new(repo: &'a Repository) -> Self {
        Self {
            repo,
            packs: PackWriter::new(repo),
            frame: Vec::with_capacity(format::FRAME_TARGET + format::SMALL_BLOB),
            frame_entries: Vec::new(),
            levels: crate::compress::LevelChoice::new(repo.options.compression_level, 1),
            written: Vec::new(),
        }
    }

    /// Appends a stored unit with its entries; `compressed` overrides theirs (a new frame).
    pub(crate) fn push_stored(
        &mut self,
        stored: &[u8],
        entries: &[PackEntry],
        compressed: Option<bool>,
    ) -> Result<()> {
        let entries = entries.iter().map(|e| PackEntry {
            compressed: compressed.unwrap_or(e.compressed),
            ..*e
        });
        self.written.extend(self.packs.push(stored, entries)?);
        Ok(())
    }

    /// Adds a used blob of a partly used frame to the frame being built.
    pub(crate) fn push_small_blob(&mut self, entry: &PackEntry, raw: &[u8]) -> Result<()> {
        let within = u32::try_from(self.frame.len())
            .map_err(|_| Error::msg(ErrorKind::Io, "a frame outgrew 4 GiB"))?;
        self.frame.extend_from_slice(raw);
        self.frame_entries.push(PackEntry {
            within: Some(within),
            ..*entry
        });
        if self.frame.len() >= format::FRAME_TARGET {
            self.flush_frame()?;
        }
        Ok(())
    }

    fn flush_frame(&mut self) -> Result<()> {
        if self.frame_entries.is_empty() {
            return Ok(());
        }
        let (stored, compressed) =
            format::encode_frame(self.frame.as_slice(), &self.levels, 0, self.repo.key());
        let entries = std::mem::take(&mut self.frame_entries);
        self.frame.clear();
        self.push_stored(&stored, &entries, Some(compressed))
    }

    pub(crate) fn finish(mut self) -> Result<Vec<IndexPack>> {
        self.flush_frame()?;
        self.written.extend(self.packs.finish()?);
        Ok(self.written)
    }
}

/// The `superseded/` records, by key.
fn load_superseded(repo: &Repository) -> Result<Vec<(String, SupersededPacks)>> {
    let mut out = Vec::new();
    for meta in repo.store.list(SUPERSEDED_PREFIX)? {
        let bytes = repo.store.get(&meta.key)?;
        let record: SupersededPacks = format::open_object(
            "superseded packs",
            ObjectType::Superseded,
            &bytes,
            repo.key(),
        )
        .map_err(|e| damaged(&meta.key, e))?;
        out.push((meta.key, record));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{BlobKind, ContentId};

    fn entry(n: u8, offset: u32, length: u32, raw_length: u32, within: Option<u32>) -> PackEntry {
        PackEntry {
            id: ContentId([n; 32]),
            kind: BlobKind::Data,
            offset,
            length,
            raw_length,
            compressed: true,
            within,
        }
    }

    #[test]
    fn unused_bytes_count_whole_units_and_the_unused_share_of_frames() {
        // A frame of three blobs (100 stored bytes for 300 raw), then two single blobs.
        let entries = [
            entry(1, 0, 100, 100, Some(0)),
            entry(2, 0, 100, 150, Some(100)),
            entry(3, 0, 100, 50, Some(250)),
            entry(4, 100, 40, 60, None),
            entry(5, 140, 70, 70, None),
        ];
        let used: HashSet<_> = [ContentId([2; 32]), ContentId([5; 32])].into();
        let mut flagged: Vec<(PackEntry, bool)> =
            entries.iter().map(|e| (*e, used.contains(&e.id))).collect();
        let (units, unused) = used_units(&mut flagged);
        // Blobs 1 and 3 are half the frame's raw bytes: 50 of its 100 stored; blob 4 is unused.
        assert_eq!(unused, 50 + 40);
        assert_eq!(units.len(), 2);
        assert_eq!(units[0].entries.len(), 3);
        assert_eq!(units[0].used, [false, true, false]);
        assert!(!units[0].all_used());
        assert!(units[1].all_used());
        assert_eq!(units[1].entries[0].id, ContentId([5; 32]));
    }

    #[test]
    fn a_pack_is_rewritten_once_its_unused_share_reaches_the_threshold() {
        assert!(!worth_rewriting(1000, 0, 25));
        assert!(!worth_rewriting(1000, 249, 25));
        assert!(worth_rewriting(1000, 250, 25));
        assert!(worth_rewriting(1000, 999, 25));
        assert!(!worth_rewriting(1000, 999, 100), "100 never rewrites");
        assert!(worth_rewriting(1000, 1, 0), "0 rewrites any unused unit");
        assert!(
            !worth_rewriting(1000, 0, 0),
            "a pack without unused units is never rewritten"
        );
    }
}
