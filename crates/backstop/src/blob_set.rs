//! A set of the index's blobs in a bit each: what the backups use (gc) or need (verify).

use std::collections::HashSet;

use crate::format::{BlobId, Snapshot};
use crate::repo::Repository;
use crate::{CancelToken, Error, ErrorKind, Result};

/// A set of blobs: a bit for each blob loaded from index objects, by its position in the index
/// (a hash set of 32-byte ids took about 40 bytes a blob, a third of gc's memory for a large
/// repository), and the ids of any other blob (added by this process since, or in no index at
/// all). Positions hold while the index is not reloaded.
pub(crate) struct BlobSet {
    /// How many blobs were loaded: the positions the bits stand for.
    loaded: usize,
    bits: Vec<u64>,
    others: HashSet<BlobId>,
}

impl BlobSet {
    /// An empty set over the repository's index as loaded now.
    pub(crate) fn new(repo: &Repository) -> Self {
        let loaded = repo.index_read().loaded_count();
        Self {
            loaded,
            bits: vec![0; loaded.div_ceil(64)],
            others: HashSet::new(),
        }
    }

    /// The blobs `snapshots` reference. Stops with [`ErrorKind::Cancelled`] when `cancel` is.
    pub(crate) fn used_by(
        repo: &Repository,
        snapshots: &[Snapshot],
        cancel: &CancelToken,
    ) -> Result<Self> {
        let mut used = Self::new(repo);
        for snapshot in snapshots {
            used.add_snapshot(repo, snapshot, cancel)?;
        }
        Ok(used)
    }

    /// Adds the blobs `snapshot` references: its tree blobs, list blobs and data blobs (those
    /// of the nodes read before an error, if its tree cannot be read to the end). Reading the
    /// file lists of many large backups takes a while, so `cancel` is looked at for each node.
    pub(crate) fn add_snapshot(
        &mut self,
        repo: &Repository,
        snapshot: &Snapshot,
        cancel: &CancelToken,
    ) -> Result<()> {
        self.mark(repo, snapshot.tree.iter().copied());
        repo.for_each_node(snapshot, |node| {
            if cancel.is_cancelled() {
                return Err(Error::msg(
                    ErrorKind::Cancelled,
                    format!(
                        "cancelled while reading the file list of backup {}",
                        snapshot.id
                    ),
                ));
            }
            self.mark(
                repo,
                crate::page_list::blobs_of(&node).chain(node.chunks.iter().copied()),
            );
            Ok(())
        })
    }

    fn mark(&mut self, repo: &Repository, ids: impl Iterator<Item = BlobId>) {
        let index = repo.index_read();
        for id in ids {
            match index.loaded_position(&id) {
                Some(at) => {
                    if let Some(word) = self.bits.get_mut(at / 64) {
                        *word |= 1 << (at % 64);
                    }
                }
                None => {
                    self.others.insert(id);
                }
            }
        }
    }

    /// Whether the blob `id`, which [`crate::repo::Index::iter`] yields at `at`, is in the set.
    pub(crate) fn contains(&self, at: usize, id: &BlobId) -> bool {
        if at < self.loaded {
            self.bits
                .get(at / 64)
                .is_some_and(|word| word & (1 << (at % 64)) != 0)
        } else {
            self.others.contains(id)
        }
    }

    /// Whether its positions are still those of `index` (which has not taken in blobs since).
    pub(crate) fn fits(&self, index: &crate::repo::Index) -> bool {
        index.loaded_count() == self.loaded
    }

    /// How many blobs it holds.
    pub(crate) fn len(&self) -> usize {
        self.bits
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>()
            + self.others.len()
    }

    /// The blobs in it that are not among those loaded from index objects.
    pub(crate) fn others(&self) -> impl Iterator<Item = &BlobId> {
        self.others.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ContentId;

    #[test]
    fn a_blob_set_is_bits_for_loaded_positions_and_ids_for_the_rest() {
        let other = ContentId([9; 32]);
        // Three loaded blobs, the first and the third used; the word's other bits are padding.
        let used = BlobSet {
            loaded: 3,
            bits: vec![0b101],
            others: [other].into(),
        };
        let any = ContentId([1; 32]);
        assert_eq!(used.len(), 3);
        assert_eq!(used.others().collect::<Vec<_>>(), [&other]);
        assert!(used.contains(0, &any));
        assert!(!used.contains(1, &any));
        assert!(used.contains(2, &any));
        // Past the loaded blobs only the id counts, whatever the padding bits say.
        assert!(used.contains(3, &other));
        assert!(!used.contains(3, &any));
        assert!(used.contains(63, &other));
        assert!(!used.contains(64, &any));
    }
}
