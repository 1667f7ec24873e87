//! Long chunk lists (the pages of a database file) stored outside the tree, in list blobs that
//! the next backup reuses or patches.
//!
//! A file of 8 KiB pages has one 32-byte id per page, which compression cannot shrink: written
//! whole into every backup's tree, the ids of a 1 GiB file cost 4 MiB per backup even when a
//! few pages changed. So a node with more than [`INLINE_MAX`] chunks keeps its list in
//! segments of [`SEGMENT`] ids, each a tree-kind blob: either a *full* list, or a *patch*
//! (`base` = a full list, the new length, and the positions and ids that differ from it). A
//! later backup reuses an unchanged segment's blob as it is and patches a changed one against
//! the same base, until the patch would no longer be much smaller than a full list. A patch's
//! base is always a full list, so resolving a segment reads at most two blobs.
//!
//! From format version 5 a list names each id by its first [`SHORT_ID`] bytes, which the
//! repository's index resolves to the full id, and carries a BLAKE3 digest of the segment's
//! full ids: the index already holds every full id, and the second copy in the lists cost
//! 16 bytes a page more than needed (0.8 % of the benchmark's incremental backup). The digest
//! binds the list to its full ids as firmly as storing them would: it picks the right blob
//! should two ever share a prefix, and refuses an index that resolves a prefix to another
//! blob. A patch's digest covers the whole segment, so a patch needs only the base's ids it
//! keeps: pages the base names and a later backup replaced may be gone.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::format::{self, BlobId, Node};

/// Ids per list blob (128 KiB of ids).
pub(crate) const SEGMENT: usize = 4096;
/// Nodes with at most this many chunks keep them in the tree itself.
pub(crate) const INLINE_MAX: usize = 1024;
/// Bytes of an id in a list of format version 5 and later: 128 bits, as kopia's content ids
/// (its default hash is BLAKE2B-256-128), with the digest above for the full 256.
pub(crate) const SHORT_ID: usize = 16;
/// Bytes of an id in a list written before version 5.
const FULL_ID: usize = 32;
/// Bytes a patched position costs besides its id (CBOR of a position up to 65,535).
const POSITION_COST: usize = 3;
/// Combinations of candidate ids tried against a list's digest when prefixes are ambiguous.
/// Two ids share 128 bits by chance with a probability of 2^-128 a pair, and on purpose only
/// after about 2^64 hashes (ids are keyed in encrypted repositories): one is already absurd.
const MAX_COMBINATIONS: usize = 1024;

/// A list blob as stored (CBOR).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListBlob {
    /// For a patch: the full list it patches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base: Option<BlobId>,
    /// Ids in the segment.
    pub(crate) len: u32,
    /// The ids, `width` bytes each: all of them in a full list, the patched ones in a patch.
    #[serde(with = "format::serde_bytes_vec")]
    pub(crate) ids: Vec<u8>,
    /// For a patch: the position of each id in `ids`, ascending. Every position at or past the
    /// base's length must be here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) at: Vec<u32>,
    /// Bytes per id in `ids`: [`SHORT_ID`] (version 5 and later), absent for 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) width: Option<u8>,
    /// With short ids: the BLAKE3 hash of the full ids of the whole segment, in order (for a
    /// patch, after applying it to its base), see [`digest`].
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "format::serde_bytes_vec"
    )]
    pub(crate) sum: Vec<u8>,
}

impl ListBlob {
    /// Bytes per id in `ids`.
    fn id_bytes(&self) -> usize {
        self.width.map_or(FULL_ID, usize::from)
    }
}

/// What the index holds for a short id: the full ids that start with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    None,
    One(BlobId),
    /// Two or more (never seen in practice; see [`MAX_COMBINATIONS`]).
    Many(Vec<BlobId>),
}

/// The digest a list with short ids carries: BLAKE3 over the full ids, in order.
fn digest(ids: &[BlobId]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for id in ids {
        hasher.update(&id.0);
    }
    *hasher.finalize().as_bytes()
}

/// How one segment of a node read from the repository was stored, kept so the next backup can
/// reuse or patch it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// The segment's list blob.
    pub(crate) blob: BlobId,
    /// How many ids it holds.
    pub(crate) len: u32,
    /// For a patch: its base.
    pub(crate) base: Option<BlobId>,
    /// For a patch, when the reader asked for them: the base's ids, which the next backup
    /// patches against.
    pub(crate) base_ids: Option<Arc<[BlobId]>>,
}

/// Why a list blob cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListError {
    #[error("list blob {blob} cannot be decoded: {detail}")]
    Decode { blob: BlobId, detail: String },
    #[error("list blob {blob} patches {base}, which is itself a patch")]
    NestedPatch { blob: BlobId, base: BlobId },
    #[error("list blob {blob} is inconsistent: {detail}")]
    Inconsistent { blob: BlobId, detail: String },
    #[error(
        "list blob {blob} names {count} ids that no index object lists (the first starts \
         with {first}): an index object is missing or damaged; `backstop verify` lists what \
         else is affected"
    )]
    Unindexed {
        blob: BlobId,
        count: usize,
        first: String,
    },
}

pub(crate) fn decode(blob: BlobId, raw: &[u8]) -> Result<ListBlob, ListError> {
    let list: ListBlob = ciborium::from_reader(raw).map_err(|e| ListError::Decode {
        blob,
        detail: e.to_string(),
    })?;
    let width = list.id_bytes();
    let inconsistent = |detail: String| ListError::Inconsistent { blob, detail };
    match (width, list.sum.len()) {
        (FULL_ID, 0) | (SHORT_ID, 32) => {}
        (FULL_ID | SHORT_ID, n) => {
            return Err(inconsistent(format!(
                "{width}-byte ids with a digest of {n} bytes"
            )));
        }
        _ => return Err(inconsistent(format!("ids of {width} bytes"))),
    }
    let count = list.ids.len() / width;
    let expected = if list.base.is_some() {
        list.at.len()
    } else {
        list.len as usize
    };
    if list.ids.len() % width != 0 || count != expected {
        return Err(ListError::Inconsistent {
            blob,
            detail: format!(
                "{} bytes of ids for {expected} entries (length {})",
                list.ids.len(),
                list.len
            ),
        });
    }
    Ok(list)
}

/// A list's ids as stored, one slice each: 32 bytes (a full id) or [`SHORT_ID`] (a short one).
fn entries(list: &ListBlob) -> std::slice::ChunksExact<'_, u8> {
    list.ids.chunks_exact(list.id_bytes())
}

/// A stored id padded with zeros to 32 bytes: a full id as it is.
fn padded(entry: &[u8]) -> BlobId {
    let mut id = [0u8; 32];
    if let Some(head) = id.get_mut(..entry.len()) {
        head.copy_from_slice(entry);
    }
    format::ContentId(id)
}

/// A stored id as the index resolves it, for comparing only: the first of several candidates,
/// and for a short id no index object lists (a page a later backup replaced, which gc may
/// have deleted) the short id followed by zeros, which equals no real id.
fn resolve_leniently(entry: &[u8], lookup: &impl Fn(&[u8]) -> Found) -> BlobId {
    if entry.len() == FULL_ID {
        return padded(entry);
    }
    match lookup(entry) {
        Found::One(found) => found,
        Found::Many(candidates) => candidates.first().copied().unwrap_or(padded(entry)),
        Found::None => padded(entry),
    }
}

/// The full ids of a segment from its stored entries: full ids as they are, short ones
/// resolved with `lookup`. With short ones the result must hash to `sum`, the segment's
/// digest; ambiguous short ids are tried in turn until it does.
fn resolve_entries(
    blob: BlobId,
    entries: &[&[u8]],
    sum: &[u8],
    lookup: &impl Fn(&[u8]) -> Found,
) -> Result<Vec<BlobId>, ListError> {
    let mut ids = Vec::with_capacity(entries.len());
    let mut ambiguous = Vec::new();
    let mut missing = Vec::new();
    let mut short = false;
    for (i, &entry) in entries.iter().enumerate() {
        if entry.len() == FULL_ID {
            ids.push(padded(entry));
            continue;
        }
        short = true;
        match lookup(entry) {
            Found::One(id) => ids.push(id),
            Found::Many(candidates) => {
                ids.push(candidates.first().copied().unwrap_or(padded(entry)));
                ambiguous.push((i, candidates));
            }
            Found::None => {
                missing.push(entry);
                ids.push(padded(entry));
            }
        }
    }
    if let Some(first) = missing.first() {
        return Err(ListError::Unindexed {
            blob,
            count: missing.len(),
            first: hex::encode(first),
        });
    }
    if !short {
        return Ok(ids);
    }
    if sum.is_empty() {
        return Err(ListError::Inconsistent {
            blob,
            detail: "short ids without a digest".into(),
        });
    }
    if digest(&ids)[..] == sum[..] {
        return Ok(ids);
    }
    let combinations = ambiguous
        .iter()
        .try_fold(1usize, |n, (_, c)| n.checked_mul(c.len()))
        .filter(|&n| n <= MAX_COMBINATIONS);
    let Some(combinations) = combinations else {
        return Err(ListError::Inconsistent {
            blob,
            detail: format!(
                "{} of its short ids match several blobs, too many to try",
                ambiguous.len()
            ),
        });
    };
    // An odometer over the candidates of each ambiguous position; the first were tried above.
    let mut choice = vec![0usize; ambiguous.len()];
    for _ in 1..combinations {
        for (digit, (i, candidates)) in choice.iter_mut().zip(&ambiguous) {
            *digit = (*digit + 1) % candidates.len();
            if let (Some(slot), Some(id)) = (ids.get_mut(*i), candidates.get(*digit)) {
                *slot = *id;
            }
            if *digit != 0 {
                break;
            }
        }
        if digest(&ids)[..] == sum[..] {
            return Ok(ids);
        }
    }
    Err(ListError::Inconsistent {
        blob,
        detail: "the blobs the index holds for its short ids do not match its digest (a \
                 damaged index object, or a list of another repository)"
            .into(),
    })
}

/// The stored entries of the segment a patch describes: its own at its positions, its
/// base's elsewhere.
pub(crate) fn apply<'a>(
    blob: BlobId,
    patch: &'a ListBlob,
    base: &'a ListBlob,
) -> Result<Vec<&'a [u8]>, ListError> {
    let base: Vec<&[u8]> = entries(base).collect();
    let len = patch.len as usize;
    let inconsistent = |detail: String| ListError::Inconsistent { blob, detail };
    // Every position past the base must be patched, so a longer length is damage; checked
    // before anything of that length is allocated.
    if len > base.len() + patch.at.len() {
        return Err(inconsistent(format!(
            "length {len} with a base of {} and {} patched positions",
            base.len(),
            patch.at.len()
        )));
    }
    let mut out: Vec<Option<&[u8]>> = (0..len).map(|i| base.get(i).copied()).collect();
    let mut last = None;
    for (&at, entry) in patch.at.iter().zip(entries(patch)) {
        if last.is_some_and(|l| at <= l) {
            return Err(inconsistent(format!("position {at} out of order")));
        }
        last = Some(at);
        let slot = out
            .get_mut(at as usize)
            .ok_or_else(|| inconsistent(format!("position {at} past its length {len}")))?;
        *slot = Some(entry);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, e)| e.ok_or_else(|| inconsistent(format!("position {i} has no id"))))
        .collect()
}

/// The ids of a patch's base, for the next backup to patch against: those the patch kept as
/// resolved in `segment`, the others resolved leniently (a replaced page may be gone).
fn base_ids_for_next(
    patch: &ListBlob,
    base: &ListBlob,
    segment: &[BlobId],
    lookup: &impl Fn(&[u8]) -> Found,
) -> Arc<[BlobId]> {
    let mut patched = patch.at.iter().peekable();
    entries(base)
        .enumerate()
        .map(|(j, entry)| {
            while patched.next_if(|&&at| (at as usize) < j).is_some() {}
            let replaced = patched.peek().is_some_and(|&&at| at as usize == j);
            match segment.get(j) {
                Some(id) if !replaced => *id,
                _ => resolve_leniently(entry, lookup),
            }
        })
        .collect()
}

/// A list blob the backup must store: its id and raw bytes.
pub(crate) struct NewList {
    pub(crate) id: BlobId,
    pub(crate) raw: Vec<u8>,
}

/// Encodes `node`'s chunks as list blobs when there are more than [`INLINE_MAX`]: fills
/// `node.lists`, empties `node.chunks` (the node is then ready to be written into a tree) and
/// returns the list blobs not already in the repository. `parent` is the same path's node in
/// the parent backup; `present` says whether a blob is in the repository; `short` writes
/// short ids (format version 5 and later).
pub(crate) fn encode(
    node: &mut Node,
    parent: Option<&Node>,
    present: impl Fn(&BlobId) -> bool,
    key: Option<&crate::crypto::MasterKey>,
    short: bool,
) -> Vec<NewList> {
    node.lists.clear();
    node.list_parts.clear();
    if node.chunks.len() <= INLINE_MAX {
        return Vec::new();
    }
    let width = if short { SHORT_ID } else { FULL_ID };
    let mut new = Vec::new();
    for (i, segment) in node.chunks.chunks(SEGMENT).enumerate() {
        // The parent's segment at the same place, if it was cut the same way (a build with
        // another segment size must not compare the wrong ids).
        let before = parent.and_then(|p| {
            let part = p.list_parts.get(i)?;
            let earlier = p.list_parts.get(..i)?;
            if earlier.iter().any(|q| q.len as usize != SEGMENT) {
                return None;
            }
            let ids = p.chunks.get(i * SEGMENT..i * SEGMENT + part.len as usize)?;
            Some((part, ids))
        });
        if let Some((part, ids)) = before {
            let base_present = part.base.as_ref().is_none_or(&present);
            if ids == segment && present(&part.blob) && base_present {
                node.lists.push(part.blob);
                continue;
            }
        }
        let base = before.and_then(|(part, ids)| match (&part.base, &part.base_ids) {
            (Some(base), Some(base_ids)) => present(base).then(|| (*base, &base_ids[..])),
            (Some(_), None) => None,
            (None, _) => present(&part.blob).then_some((part.blob, ids)),
        });
        // Either way the digest is of the whole segment: a patch's base may name pages that
        // were replaced since, and gc may have deleted them.
        let sum = if short {
            digest(segment).to_vec()
        } else {
            Vec::new()
        };
        let patch = base.and_then(|(base, base_ids)| {
            let at: Vec<u32> = segment
                .iter()
                .enumerate()
                .filter(|&(j, id)| base_ids.get(j) != Some(id))
                .map(|(j, _)| j as u32)
                .collect();
            (at.len() * (width + POSITION_COST) * 2 < segment.len() * width).then(|| ListBlob {
                base: Some(base),
                len: segment.len() as u32,
                ids: stored_ids(at.iter().map(|&j| &segment[j as usize]), width),
                at,
                width: short.then_some(SHORT_ID as u8),
                sum: sum.clone(),
            })
        });
        let list = patch.unwrap_or_else(|| ListBlob {
            base: None,
            len: segment.len() as u32,
            ids: stored_ids(segment.iter(), width),
            at: Vec::new(),
            width: short.then_some(SHORT_ID as u8),
            sum: sum.clone(),
        });
        let mut raw = Vec::new();
        // Serializing plain data into a Vec cannot fail.
        let _ = ciborium::into_writer(&list, &mut raw);
        let id = format::blob_id(&raw, key);
        node.lists.push(id);
        if !present(&id) {
            new.push(NewList { id, raw });
        }
    }
    node.chunks.clear();
    new
}

/// The `ids` of a list naming `ids`, `width` bytes each.
fn stored_ids<'a>(ids: impl Iterator<Item = &'a BlobId>, width: usize) -> Vec<u8> {
    ids.flat_map(|id| id.0.get(..width).unwrap_or(&id.0).iter().copied())
        .collect()
}

/// Why resolving a node's lists failed: the blob could not be read, or it is not a valid list.
#[derive(Debug)]
pub(crate) enum ResolveError<E> {
    Fetch(E),
    List(ListError),
}

impl<E> From<ListError> for ResolveError<E> {
    fn from(e: ListError) -> Self {
        Self::List(e)
    }
}

/// List blobs fetched together when a node's lists are read: 8 MiB of ids (a million pages).
/// On an object store each fetch is a round trip, and one at a time the lists of a 1 TiB page
/// file would cost 32,768 of them; [`resolve`] asks for a window's lists in one call (which
/// the repository joins into a few ranged reads), then for their bases in a second.
const FETCH_WINDOW: usize = 64;

/// Fills `node.chunks` (and `node.list_parts`) from `node.lists`, reading the list blobs and
/// the patches' bases with `fetch`, which returns the blobs it is given in the same order, and
/// resolving short ids with `lookup`. `keep_bases` keeps the ids of each patch's base in the
/// parts, for a backup that will patch them again.
pub(crate) fn resolve<E>(
    node: &mut Node,
    keep_bases: bool,
    mut fetch: impl FnMut(&[BlobId]) -> Result<Vec<Vec<u8>>, E>,
    lookup: impl Fn(&[u8]) -> Found,
) -> Result<(), ResolveError<E>> {
    if node.lists.is_empty() {
        return Ok(());
    }
    // Grown as lists are read, not sized from the node: a damaged node could name any number.
    let mut chunks = Vec::new();
    let mut parts = Vec::with_capacity(node.lists.len());
    // A short answer would silently drop segments below: refused here, once.
    let mut fetch = |ids: &[BlobId]| -> Result<Vec<Vec<u8>>, ResolveError<E>> {
        let raws = fetch(ids).map_err(ResolveError::Fetch)?;
        if raws.len() != ids.len() {
            return Err(ListError::Inconsistent {
                blob: ids[0],
                detail: format!(
                    "{} of the {} list blobs asked for came back",
                    raws.len(),
                    ids.len()
                ),
            }
            .into());
        }
        Ok(raws)
    };
    for window in node.lists.chunks(FETCH_WINDOW) {
        let raws = fetch(window)?;
        let lists = window
            .iter()
            .zip(&raws)
            .map(|(&blob, raw)| decode(blob, raw))
            .collect::<Result<Vec<_>, _>>()?;
        drop(raws);
        let mut base_ids: Vec<BlobId> = lists.iter().filter_map(|l| l.base).collect();
        base_ids.sort_unstable();
        base_ids.dedup();
        let mut bases = std::collections::HashMap::with_capacity(base_ids.len());
        if !base_ids.is_empty() {
            let raws = fetch(&base_ids)?;
            for (&base, raw) in base_ids.iter().zip(&raws) {
                bases.insert(base, decode(base, raw)?);
            }
        }
        for (&blob, list) in window.iter().zip(lists) {
            match list.base {
                None => {
                    let entries: Vec<&[u8]> = entries(&list).collect();
                    chunks.extend(resolve_entries(blob, &entries, &list.sum, &lookup)?);
                    parts.push(Part {
                        blob,
                        len: list.len,
                        base: None,
                        base_ids: None,
                    });
                }
                Some(base) => {
                    // Every base of the window was fetched above.
                    let Some(base_list) = bases.get(&base) else {
                        return Err(ListError::Inconsistent {
                            blob,
                            detail: format!("its base {base} was not read"),
                        }
                        .into());
                    };
                    if base_list.base.is_some() {
                        return Err(ListError::NestedPatch { blob, base }.into());
                    }
                    let entries = apply(blob, &list, base_list)?;
                    let segment = resolve_entries(blob, &entries, &list.sum, &lookup)?;
                    let base_ids =
                        keep_bases.then(|| base_ids_for_next(&list, base_list, &segment, &lookup));
                    chunks.extend(segment);
                    parts.push(Part {
                        blob,
                        len: list.len,
                        base: Some(base),
                        base_ids,
                    });
                }
            }
        }
    }
    node.chunks = chunks;
    node.list_parts = parts;
    Ok(())
}

/// The blobs a node's lists need: each list blob and each patch's base.
pub(crate) fn blobs_of(node: &Node) -> impl Iterator<Item = BlobId> + '_ {
    node.lists
        .iter()
        .copied()
        .chain(node.list_parts.iter().filter_map(|p| p.base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> BlobId {
        format::blob_id(&n.to_le_bytes(), None)
    }

    fn node_with(chunks: Vec<BlobId>) -> Node {
        Node {
            chunks,
            mode: 0o644,
            ..Node::new("f".into(), format::NODE_FILE)
        }
    }

    /// The blobs of a test repository: list blobs by id, and every id as an index holds it.
    #[derive(Default)]
    struct Store {
        lists: std::collections::HashMap<BlobId, Vec<u8>>,
        index: std::collections::BTreeSet<BlobId>,
    }

    impl Store {
        fn lookup(&self, prefix: &[u8]) -> Found {
            let mut lowest = [0u8; 32];
            lowest[..prefix.len()].copy_from_slice(prefix);
            let found: Vec<BlobId> = self
                .index
                .range(format::ContentId(lowest)..)
                .take_while(|id| id.0.starts_with(prefix))
                .copied()
                .collect();
            match found.len() {
                0 => Found::None,
                1 => Found::One(found[0]),
                _ => Found::Many(found),
            }
        }

        fn resolve(&self, node: &mut Node) -> Result<(), ResolveError<BlobId>> {
            resolve(
                node,
                true,
                |blobs| {
                    blobs
                        .iter()
                        .map(|b| self.lists.get(b).cloned().ok_or(*b))
                        .collect::<Result<Vec<_>, _>>()
                },
                |prefix| self.lookup(prefix),
            )
        }
    }

    /// Stores new lists (and the node's chunks) in `store` and resolves the node the way a
    /// read of the tree does, with short ids or full ones.
    fn round_trip_as(
        node: &Node,
        parent: Option<&Node>,
        store: &mut Store,
        short: bool,
    ) -> (Node, usize) {
        store.index.extend(node.chunks.iter().copied());
        let mut encoded = node.clone();
        let new = encode(
            &mut encoded,
            parent,
            |b| store.lists.contains_key(b),
            None,
            short,
        );
        let written = new.len();
        for list in new {
            store.index.insert(list.id);
            store.lists.insert(list.id, list.raw);
        }
        let mut read = encoded.clone();
        let fetched = store.resolve(&mut read);
        assert!(fetched.is_ok(), "{fetched:?}");
        (read, written)
    }

    fn round_trip(node: &Node, parent: Option<&Node>, store: &mut Store) -> (Node, usize) {
        round_trip_as(node, parent, store, true)
    }

    #[test]
    fn short_lists_stay_inline() {
        let mut node = node_with((0..INLINE_MAX as u32).map(id).collect());
        let new = encode(&mut node, None, |_| false, None, true);
        assert!(new.is_empty());
        assert!(node.lists.is_empty());
        assert_eq!(node.chunks.len(), INLINE_MAX);
    }

    #[test]
    fn lists_are_reused_patched_and_rebased_across_backups() {
        let mut store = Store::default();
        let first: Vec<BlobId> = (0..(2 * SEGMENT + 100) as u32).map(id).collect();
        let (v1, written) = round_trip(&node_with(first.clone()), None, &mut store);
        assert_eq!(v1.chunks, first);
        assert_eq!(written, 3);
        assert!(v1.list_parts.iter().all(|p| p.base.is_none()));

        // A few pages of the first segment change and the file grows: the second segment is
        // reused, the first and the last are patched.
        let mut second = first.clone();
        second[5] = id(1_000_000);
        second[SEGMENT - 1] = id(1_000_001);
        second.extend((0..10).map(|n| id(2_000_000 + n)));
        let (v2, written) = round_trip(&node_with(second.clone()), Some(&v1), &mut store);
        assert_eq!(v2.chunks, second);
        assert_eq!(written, 2);
        assert_eq!(v2.lists[1], v1.lists[1]);
        assert_eq!(v2.list_parts[0].base, Some(v1.lists[0]));
        assert_eq!(v2.list_parts[2].base, Some(v1.lists[2]));

        // Patching the patched segment again keeps the first base and carries the earlier
        // changes; changing most of it writes a full list again.
        let mut third = second.clone();
        third[6] = id(3_000_000);
        for (j, slot) in third[SEGMENT..2 * SEGMENT].iter_mut().enumerate() {
            *slot = id(4_000_000 + j as u32);
        }
        let (v3, written) = round_trip(&node_with(third.clone()), Some(&v2), &mut store);
        assert_eq!(v3.chunks, third);
        assert_eq!(written, 2);
        assert_eq!(v3.lists[2], v2.lists[2]);
        assert_eq!(v3.list_parts[0].base, Some(v1.lists[0]));
        assert!(v3.list_parts[1].base.is_none());
        let patch = decode(v3.lists[0], &store.lists[&v3.lists[0]]).unwrap();
        assert_eq!(patch.at, vec![5, 6, SEGMENT as u32 - 1]);

        // The file shrinks into its first segment.
        let fourth: Vec<BlobId> = third[..SEGMENT / 2].to_vec();
        let (v4, _) = round_trip(&node_with(fourth.clone()), Some(&v3), &mut store);
        assert_eq!(v4.chunks, fourth);
        let mut blobs: Vec<BlobId> = blobs_of(&v4).collect();
        blobs.sort_unstable();
        let mut expected = vec![v4.lists[0], v1.lists[0]];
        expected.sort_unstable();
        assert_eq!(blobs, expected);
    }

    #[test]
    fn a_list_missing_from_the_repository_is_not_reused() {
        let mut store = Store::default();
        let ids: Vec<BlobId> = (0..(SEGMENT + 1) as u32).map(id).collect();
        let (v1, _) = round_trip(&node_with(ids.clone()), None, &mut store);
        store.lists.clear();
        let (v2, written) = round_trip(&node_with(ids.clone()), Some(&v1), &mut store);
        assert_eq!(written, 2);
        assert_eq!(v2.chunks, ids);
    }

    #[test]
    fn a_parent_from_a_version_1_tree_gives_full_lists() {
        // Version 1 trees held every id inline: such a parent has chunks but no list parts.
        let mut store = Store::default();
        let ids: Vec<BlobId> = (0..(SEGMENT + 10) as u32).map(id).collect();
        let parent = node_with(ids.clone());
        let (read, written) = round_trip(&node_with(ids.clone()), Some(&parent), &mut store);
        assert_eq!(written, 2);
        assert_eq!(read.chunks, ids);
        assert!(read.list_parts.iter().all(|p| p.base.is_none()));
    }

    #[test]
    fn a_parent_cut_into_other_segments_is_not_reused() {
        let ids: Vec<BlobId> = (0..(2 * SEGMENT) as u32).map(id).collect();
        let mut parent = node_with(ids.clone());
        // As if a build with segments of 1000 ids had written it.
        parent.list_parts = (0..5)
            .map(|k| Part {
                blob: id(900_000 + k),
                len: 1000,
                base: None,
                base_ids: None,
            })
            .collect();
        let mut node = node_with(ids);
        encode(&mut node, Some(&parent), |_| true, None, true);
        assert_eq!(node.lists.len(), 2);
        assert!(
            node.lists
                .iter()
                .all(|l| !parent.list_parts.iter().any(|p| p.blob == *l))
        );
    }

    #[test]
    fn a_fetch_that_returns_fewer_lists_than_asked_is_refused() {
        let mut store = Store::default();
        let (stored, _) = round_trip(
            &node_with((0..(2 * SEGMENT) as u32).map(id).collect()),
            None,
            &mut store,
        );
        let mut read = Node {
            chunks: Vec::new(),
            ..stored
        };
        let short = resolve(
            &mut read,
            false,
            |blobs| {
                Ok::<_, BlobId>(
                    blobs
                        .iter()
                        .skip(1)
                        .filter_map(|b| store.lists.get(b).cloned())
                        .collect(),
                )
            },
            |prefix| store.lookup(prefix),
        );
        assert!(
            matches!(
                short,
                Err(ResolveError::List(ListError::Inconsistent { .. }))
            ),
            "{short:?}"
        );
    }

    #[test]
    fn bad_patches_are_refused() {
        let base = ListBlob {
            base: None,
            len: 4,
            ids: (0..4).flat_map(|n| id(n).0).collect(),
            at: Vec::new(),
            width: None,
            sum: Vec::new(),
        };
        let patch = |len: u32, at: Vec<u32>| ListBlob {
            base: Some(id(99)),
            len,
            ids: at.iter().flat_map(|&a| id(100 + a).0).collect(),
            at,
            width: None,
            sum: Vec::new(),
        };
        let apply = |p: ListBlob| apply(id(1), &p, &base).map(|e| e.concat());
        let mut expected = base.ids.clone();
        expected[32..64].copy_from_slice(&id(101).0);
        expected[96..].copy_from_slice(&id(103).0);
        assert_eq!(apply(patch(4, vec![1, 3])).unwrap(), expected);
        assert!(apply(patch(5, vec![1])).is_err(), "gap past the base");
        assert!(apply(patch(4, vec![3, 1])).is_err(), "out of order");
        assert!(apply(patch(4, vec![4])).is_err(), "past the length");
        assert!(
            apply(patch(u32::MAX, vec![1])).is_err(),
            "a length no base and patch can fill"
        );
        let list = |ids: usize, width: Option<u8>, sum: usize| {
            let mut raw = Vec::new();
            ciborium::into_writer(
                &ListBlob {
                    base: None,
                    len: 3,
                    ids: vec![0; ids],
                    at: Vec::new(),
                    width,
                    sum: vec![0; sum],
                },
                &mut raw,
            )
            .unwrap();
            decode(id(1), &raw)
        };
        assert!(list(96, None, 0).is_ok());
        assert!(list(48, Some(16), 32).is_ok());
        assert!(list(64, None, 0).is_err(), "length and ids disagree");
        assert!(list(48, Some(16), 0).is_err(), "short ids without a digest");
        assert!(list(48, Some(16), 31).is_err(), "a digest of 31 bytes");
        assert!(list(96, None, 32).is_err(), "full ids with a digest");
        assert!(list(24, Some(8), 32).is_err(), "ids of 8 bytes");
    }

    /// A node of `n` chunks that are all in `store`'s index.
    fn indexed_node(store: &mut Store, ids: impl Iterator<Item = u32>) -> Node {
        let node = node_with(ids.map(id).collect());
        store.index.extend(node.chunks.iter().copied());
        node
    }

    #[test]
    fn short_ids_halve_a_list_and_lists_with_full_ids_still_resolve() {
        let mut store = Store::default();
        let node = indexed_node(&mut store, 0..SEGMENT as u32);
        let (short, _) = round_trip_as(&node, None, &mut store, true);
        let (full, _) = round_trip_as(&node, None, &mut store, false);
        assert_eq!(short.chunks, node.chunks);
        assert_eq!(full.chunks, node.chunks);
        let short_bytes = store.lists[&short.lists[0]].len();
        let full_bytes = store.lists[&full.lists[0]].len();
        assert!(
            short_bytes < SEGMENT * SHORT_ID + 64 && full_bytes > SEGMENT * FULL_ID,
            "{short_bytes} and {full_bytes} bytes for {SEGMENT} ids"
        );

        // A patch of a few pages costs about 20 bytes a page.
        let mut changed = node.chunks.clone();
        for j in (0..SEGMENT).step_by(64) {
            changed[j] = id(1_000_000 + j as u32);
        }
        let (patched, written) = round_trip(&node_with(changed.clone()), Some(&short), &mut store);
        assert_eq!((patched.chunks, written), (changed, 1));
        let patch_bytes = store.lists[&patched.lists[0]].len();
        assert!(patch_bytes < SEGMENT / 64 * (SHORT_ID + POSITION_COST) + 128);
    }

    #[test]
    fn a_patch_resolves_when_pages_its_base_replaced_are_gone() {
        let mut store = Store::default();
        let node = indexed_node(&mut store, 0..(SEGMENT + 10) as u32);
        let (v1, _) = round_trip(&node, None, &mut store);
        let mut second = node.chunks.clone();
        second[5] = id(1_000_000);
        let (v2, _) = round_trip(&node_with(second.clone()), Some(&v1), &mut store);
        assert_eq!(v2.list_parts[0].base, Some(v1.lists[0]));
        // The first backup is deleted and gc drops the page only it used; the base list
        // still names it.
        store.index.remove(&node.chunks[5]);
        let mut read = v2.clone();
        store.resolve(&mut read).unwrap();
        assert_eq!(read.chunks, second);

        // The next backup patches the same base: the gone page counts as changed.
        let mut third = second.clone();
        third[6] = id(1_000_001);
        let (v3, _) = round_trip(&node_with(third.clone()), Some(&read), &mut store);
        assert_eq!(v3.chunks, third);
        assert_eq!(v3.list_parts[0].base, Some(v1.lists[0]));
        let patch = decode(v3.lists[0], &store.lists[&v3.lists[0]]).unwrap();
        assert_eq!(patch.at, vec![5, 6]);
    }

    /// `id` with its first 16 bytes replaced by `prefix`'s.
    fn sharing_prefix(prefix: BlobId, n: u32) -> BlobId {
        let mut other = id(n);
        other.0[..SHORT_ID].copy_from_slice(&prefix.0[..SHORT_ID]);
        other
    }

    #[test]
    fn the_digest_picks_the_blob_when_two_share_a_short_id() {
        let mut store = Store::default();
        let node = indexed_node(&mut store, 0..(SEGMENT + 10) as u32);
        // Twins of two pages of the first segment, in the index before and after the list.
        let early = sharing_prefix(node.chunks[7], 500_000);
        store.index.insert(early);
        let (read, _) = round_trip(&node, None, &mut store);
        store.index.insert(sharing_prefix(node.chunks[9], 500_001));
        let mut again = read.clone();
        store.resolve(&mut again).unwrap();
        assert_eq!(again.chunks, node.chunks);
        assert!(matches!(store.lookup(&early.0[..SHORT_ID]), Found::Many(ref c) if c.len() == 2));

        // A list naming the twin resolves to the twin.
        let mut twin = node.chunks.clone();
        twin[7] = early;
        let (read, _) = round_trip(&node_with(twin.clone()), None, &mut store);
        assert_eq!(read.chunks, twin);
    }

    #[test]
    fn a_short_id_the_index_lacks_or_maps_elsewhere_is_refused() {
        let mut store = Store::default();
        let node = indexed_node(&mut store, 0..(SEGMENT + 10) as u32);
        let (read, _) = round_trip(&node, None, &mut store);

        // The index lost two pages.
        let mut lost = Store {
            lists: store.lists.clone(),
            index: store.index.clone(),
        };
        lost.index.remove(&node.chunks[3]);
        lost.index.remove(&node.chunks[5]);
        let mut node_read = read.clone();
        let err = lost.resolve(&mut node_read).unwrap_err();
        let ResolveError::List(ListError::Unindexed { count, first, .. }) = err else {
            panic!("{err:?}");
        };
        assert_eq!(
            (count, first),
            (2, hex::encode(&node.chunks[3].0[..SHORT_ID]))
        );

        // The index has another blob for a page's short id.
        let mut other = lost;
        other.index.insert(node.chunks[3]);
        other.index.insert(sharing_prefix(node.chunks[5], 600_000));
        let mut node_read = read.clone();
        let err = other.resolve(&mut node_read).unwrap_err();
        assert!(
            matches!(err, ResolveError::List(ListError::Inconsistent { ref detail, .. }) if detail.contains("digest")),
            "{err:?}"
        );
    }
}
