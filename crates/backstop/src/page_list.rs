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

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::format::{self, BlobId, Node};

/// Ids per list blob (128 KiB of ids).
pub(crate) const SEGMENT: usize = 4096;
/// Nodes with at most this many chunks keep them in the tree itself.
pub(crate) const INLINE_MAX: usize = 1024;
/// Bytes one patched position costs in a patch (its id and its position), against the 32 a
/// full list spends per id.
const PATCH_COST: usize = 36;

/// A list blob as stored (CBOR).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListBlob {
    /// For a patch: the full list it patches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base: Option<BlobId>,
    /// Ids in the segment.
    pub(crate) len: u32,
    /// The ids, 32 bytes each: all of them in a full list, the patched ones in a patch.
    #[serde(with = "format::serde_bytes_vec")]
    pub(crate) ids: Vec<u8>,
    /// For a patch: the position of each id in `ids`, ascending. Every position at or past the
    /// base's length must be here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) at: Vec<u32>,
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
}

pub(crate) fn decode(blob: BlobId, raw: &[u8]) -> Result<ListBlob, ListError> {
    let list: ListBlob = ciborium::from_reader(raw).map_err(|e| ListError::Decode {
        blob,
        detail: e.to_string(),
    })?;
    let count = list.ids.len() / 32;
    let expected = if list.base.is_some() {
        list.at.len()
    } else {
        list.len as usize
    };
    if list.ids.len() % 32 != 0 || count != expected {
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

fn ids_of(bytes: &[u8]) -> impl Iterator<Item = BlobId> + '_ {
    bytes.chunks_exact(32).map(|c| {
        let mut id = [0u8; 32];
        id.copy_from_slice(c);
        format::ContentId(id)
    })
}

/// Applies a patch to its base's ids.
pub(crate) fn apply(
    blob: BlobId,
    patch: &ListBlob,
    base: &[BlobId],
) -> Result<Vec<BlobId>, ListError> {
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
    let mut out: Vec<Option<BlobId>> = (0..len).map(|i| base.get(i).copied()).collect();
    let mut last = None;
    for (&at, id) in patch.at.iter().zip(ids_of(&patch.ids)) {
        if last.is_some_and(|l| at <= l) {
            return Err(inconsistent(format!("position {at} out of order")));
        }
        last = Some(at);
        let slot = out
            .get_mut(at as usize)
            .ok_or_else(|| inconsistent(format!("position {at} past its length {len}")))?;
        *slot = Some(id);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, id)| id.ok_or_else(|| inconsistent(format!("position {i} has no id"))))
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
/// the parent backup; `present` says whether a blob is in the repository.
pub(crate) fn encode(
    node: &mut Node,
    parent: Option<&Node>,
    present: impl Fn(&BlobId) -> bool,
    key: Option<&crate::crypto::MasterKey>,
) -> Vec<NewList> {
    node.lists.clear();
    node.list_parts.clear();
    if node.chunks.len() <= INLINE_MAX {
        return Vec::new();
    }
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
        let patch = base.and_then(|(base, base_ids)| {
            let at: Vec<u32> = segment
                .iter()
                .enumerate()
                .filter(|&(j, id)| base_ids.get(j) != Some(id))
                .map(|(j, _)| j as u32)
                .collect();
            (at.len() * PATCH_COST * 2 < segment.len() * 32).then(|| ListBlob {
                base: Some(base),
                len: segment.len() as u32,
                ids: at.iter().flat_map(|&j| segment[j as usize].0).collect(),
                at,
            })
        });
        let list = patch.unwrap_or_else(|| ListBlob {
            base: None,
            len: segment.len() as u32,
            ids: segment.iter().flat_map(|id| id.0).collect(),
            at: Vec::new(),
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
/// the patches' bases with `fetch`, which returns the blobs it is given in the same order.
/// `keep_bases` keeps the ids of each patch's base in the parts, for a backup that will patch
/// them again.
pub(crate) fn resolve<E>(
    node: &mut Node,
    keep_bases: bool,
    mut fetch: impl FnMut(&[BlobId]) -> Result<Vec<Vec<u8>>, E>,
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
                let list = decode(base, raw)?;
                let ids: Arc<[BlobId]> = ids_of(&list.ids).collect();
                bases.insert(base, (list.base.is_some(), ids));
            }
        }
        for (&blob, list) in window.iter().zip(lists) {
            match list.base {
                None => {
                    chunks.extend(ids_of(&list.ids));
                    parts.push(Part {
                        blob,
                        len: list.len,
                        base: None,
                        base_ids: None,
                    });
                }
                Some(base) => {
                    // Every base of the window was fetched above.
                    let Some((nested, base_ids)) = bases.get(&base) else {
                        return Err(ListError::Inconsistent {
                            blob,
                            detail: format!("its base {base} was not read"),
                        }
                        .into());
                    };
                    if *nested {
                        return Err(ListError::NestedPatch { blob, base }.into());
                    }
                    chunks.extend(apply(blob, &list, base_ids)?);
                    parts.push(Part {
                        blob,
                        len: list.len,
                        base: Some(base),
                        base_ids: keep_bases.then(|| Arc::clone(base_ids)),
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

    /// Stores new lists in `store` and resolves a node the way a read of the tree does.
    fn round_trip(
        node: &Node,
        parent: Option<&Node>,
        store: &mut std::collections::HashMap<BlobId, Vec<u8>>,
    ) -> (Node, usize) {
        let mut encoded = node.clone();
        let new = encode(&mut encoded, parent, |b| store.contains_key(b), None);
        let written = new.len();
        for list in new {
            store.insert(list.id, list.raw);
        }
        let mut read = encoded.clone();
        let fetched = resolve(&mut read, true, |blobs| {
            blobs
                .iter()
                .map(|b| store.get(b).cloned().ok_or(*b))
                .collect::<Result<Vec<_>, _>>()
        });
        assert!(fetched.is_ok(), "{fetched:?}");
        (read, written)
    }

    #[test]
    fn short_lists_stay_inline() {
        let mut node = node_with((0..INLINE_MAX as u32).map(id).collect());
        let new = encode(&mut node, None, |_| false, None);
        assert!(new.is_empty());
        assert!(node.lists.is_empty());
        assert_eq!(node.chunks.len(), INLINE_MAX);
    }

    #[test]
    fn lists_are_reused_patched_and_rebased_across_backups() {
        let mut store = std::collections::HashMap::new();
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
        let patch = decode(v3.lists[0], &store[&v3.lists[0]]).unwrap();
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
        let mut store = std::collections::HashMap::new();
        let ids: Vec<BlobId> = (0..(SEGMENT + 1) as u32).map(id).collect();
        let (v1, _) = round_trip(&node_with(ids.clone()), None, &mut store);
        store.clear();
        let (v2, written) = round_trip(&node_with(ids.clone()), Some(&v1), &mut store);
        assert_eq!(written, 2);
        assert_eq!(v2.chunks, ids);
    }

    #[test]
    fn a_parent_from_a_version_1_tree_gives_full_lists() {
        // Version 1 trees held every id inline: such a parent has chunks but no list parts.
        let mut store = std::collections::HashMap::new();
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
        encode(&mut node, Some(&parent), |_| true, None);
        assert_eq!(node.lists.len(), 2);
        assert!(
            node.lists
                .iter()
                .all(|l| !parent.list_parts.iter().any(|p| p.blob == *l))
        );
    }

    #[test]
    fn a_fetch_that_returns_fewer_lists_than_asked_is_refused() {
        let mut store = std::collections::HashMap::new();
        let (stored, _) = round_trip(
            &node_with((0..(2 * SEGMENT) as u32).map(id).collect()),
            None,
            &mut store,
        );
        let mut read = Node {
            chunks: Vec::new(),
            ..stored
        };
        let short = resolve(&mut read, false, |blobs| {
            Ok::<_, BlobId>(
                blobs
                    .iter()
                    .skip(1)
                    .filter_map(|b| store.get(b).cloned())
                    .collect(),
            )
        });
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
        let base: Vec<BlobId> = (0..4).map(id).collect();
        let patch = |len: u32, at: Vec<u32>| ListBlob {
            base: Some(id(99)),
            len,
            ids: at.iter().flat_map(|&a| id(100 + a).0).collect(),
            at,
        };
        assert!(apply(id(1), &patch(4, vec![1, 3]), &base).is_ok());
        assert!(
            apply(id(1), &patch(5, vec![1]), &base).is_err(),
            "gap past the base"
        );
        assert!(
            apply(id(1), &patch(4, vec![3, 1]), &base).is_err(),
            "out of order"
        );
        assert!(
            apply(id(1), &patch(4, vec![4]), &base).is_err(),
            "past the length"
        );
        assert!(
            apply(id(1), &patch(u32::MAX, vec![1]), &base).is_err(),
            "a length no base and patch can fill"
        );
        let mut raw = Vec::new();
        ciborium::into_writer(
            &ListBlob {
                base: None,
                len: 3,
                ids: vec![0; 64],
                at: Vec::new(),
            },
            &mut raw,
        )
        .unwrap();
        assert!(decode(id(1), &raw).is_err(), "length and ids disagree");
    }
}
