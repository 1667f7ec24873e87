//! The index's loaded blobs: one vector sorted by id, with a table over the ids' leading bits.
//!
//! While every id is short (the blobs of an encrypted repository of format 6 or later, named
//! by 16 bytes of their keyed hash) the vector keeps only those 16 bytes: 40 bytes a blob
//! instead of 56. The first full 32-byte id (an unencrypted repository, or one created before
//! version 6) widens the whole vector once; a repository's ids are all of one kind, so that
//! happens with the first blob loaded.

use crate::format::{BlobId, ContentId};
use crate::page_list::Found;

use super::BlobLocation;

/// How an id is kept in the vector.
trait SortKey: Copy + Ord {
    /// The key of `id`, if this kind of key can hold it.
    fn of(id: &BlobId) -> Option<Self>;
    /// The id back.
    fn id(&self) -> BlobId;
    /// Its leading bytes, for the fanout table (at least 4).
    fn lead(&self) -> &[u8];
}

/// The 16 significant bytes of a short id; its other 16 are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ShortKey([u8; ContentId::SHORT]);

impl SortKey for ShortKey {
    fn of(id: &BlobId) -> Option<Self> {
        let (head, _) = id.0.split_first_chunk::<{ ContentId::SHORT }>()?;
        id.is_short().then_some(Self(*head))
    }

    fn id(&self) -> BlobId {
        ContentId::from_short(self.0)
    }

    fn lead(&self) -> &[u8] {
        &self.0
    }
}

impl SortKey for BlobId {
    fn of(id: &BlobId) -> Option<Self> {
        Some(*id)
    }

    fn id(&self) -> BlobId {
        *self
    }

    fn lead(&self) -> &[u8] {
        &self.0
    }
}

/// The loaded blobs, sorted by id once loading is done (see the module's comment).
#[derive(Debug)]
pub(super) struct Sorted {
    ids: Ids,
    fanout: Fanout,
}

#[derive(Debug)]
enum Ids {
    Short(Vec<(ShortKey, BlobLocation)>),
    Full(Vec<(BlobId, BlobLocation)>),
}

impl Default for Sorted {
    fn default() -> Self {
        Self {
            ids: Ids::Short(Vec::new()),
            fanout: Fanout::default(),
        }
    }
}

impl Sorted {
    /// Whether only the 16 significant bytes of each id are kept.
    #[cfg(test)]
    pub(super) fn is_short(&self) -> bool {
        matches!(self.ids, Ids::Short(_))
    }

    /// Keeps every id whole from now on.
    fn widen(&mut self) {
        if let Ids::Short(v) = &self.ids {
            self.ids = Ids::Full(v.iter().map(|(k, loc)| (k.id(), *loc)).collect());
        }
    }

    /// Appends blobs while loading; [`Sorted::finish_loading`] sorts them.
    pub(super) fn extend(&mut self, blobs: impl IntoIterator<Item = (BlobId, BlobLocation)>) {
        for (id, loc) in blobs {
            if let Ids::Short(v) = &mut self.ids {
                if let Some(key) = ShortKey::of(&id) {
                    v.push((key, loc));
                    continue;
                }
                self.widen();
            }
            if let Ids::Full(v) = &mut self.ids {
                v.push((id, loc));
            }
        }
    }

    /// Sorts what was loaded; the first listing of a blob wins.
    pub(super) fn finish_loading(&mut self) {
        fn finish<K: SortKey>(v: &mut Vec<(K, BlobLocation)>) -> Fanout {
            // A stable sort keeps the first listing of a duplicate first; dedup keeps it.
            v.sort_by_key(|a| a.0);
            v.dedup_by(|later, first| later.0 == first.0);
            v.shrink_to_fit();
            Fanout::build(v)
        }
        self.fanout = match &mut self.ids {
            Ids::Short(v) => finish(v),
            Ids::Full(v) => finish(v),
        };
    }

    pub(super) fn get(&self, id: &BlobId) -> Option<&BlobLocation> {
        let at = self.position(id)?;
        match &self.ids {
            Ids::Short(v) => v.get(at).map(|(_, loc)| loc),
            Ids::Full(v) => v.get(at).map(|(_, loc)| loc),
        }
    }

    /// Where `id` sits in id order (the position [`Sorted::iter`] yields it at), if it is here.
    pub(super) fn position(&self, id: &BlobId) -> Option<usize> {
        fn position<K: SortKey>(
            v: &[(K, BlobLocation)],
            fanout: &Fanout,
            id: &BlobId,
        ) -> Option<usize> {
            // A full id is never among short ones.
            let key = K::of(id)?;
            let range = fanout.range(key.lead(), v.len());
            let start = range.start;
            v.get(range)?
                .binary_search_by(|(probe, _)| probe.cmp(&key))
                .ok()
                .map(|i| start + i)
        }
        match &self.ids {
            Ids::Short(v) => position(v, &self.fanout, id),
            Ids::Full(v) => position(v, &self.fanout, id),
        }
    }

    /// How many blobs it holds.
    pub(super) fn count(&self) -> usize {
        match &self.ids {
            Ids::Short(v) => v.len(),
            Ids::Full(v) => v.len(),
        }
    }

    /// The ids that start with `prefix` (a list's short id).
    pub(super) fn with_prefix(&self, prefix: &[u8]) -> Found {
        fn with_prefix<K: SortKey>(
            v: &[(K, BlobLocation)],
            fanout: &Fanout,
            prefix: &[u8],
        ) -> Found {
            let mut lowest = [0u8; 32];
            let Some(head) = lowest.get_mut(..prefix.len()) else {
                return Found::None;
            };
            head.copy_from_slice(prefix);
            // No short id starts with a prefix longer than 16 bytes that goes on past them.
            let Some(lowest) = K::of(&ContentId(lowest)) else {
                return Found::None;
            };
            // Ids sharing the prefix share their bucket: the fanout uses at most 24 leading bits.
            let bucket = v
                .get(fanout.range(lowest.lead(), v.len()))
                .unwrap_or_default();
            let start = bucket.partition_point(|(key, _)| *key < lowest);
            let mut matching = bucket
                .iter()
                .skip(start)
                .map(|(key, _)| key.id())
                .take_while(|id| id.0.starts_with(prefix));
            match (matching.next(), matching.next()) {
                (None, _) => Found::None,
                (Some(id), None) => Found::One(id),
                (Some(a), Some(b)) => Found::Many([a, b].into_iter().chain(matching).collect()),
            }
        }
        match &self.ids {
            Ids::Short(v) => with_prefix(v, &self.fanout, prefix),
            Ids::Full(v) => with_prefix(v, &self.fanout, prefix),
        }
    }

    /// Merges `added` (blobs none of which is in the vector) into it from the back, so that a
    /// vector of millions of blobs is not sorted again for a few thousand more.
    pub(super) fn merge(&mut self, added: Vec<(BlobId, BlobLocation)>) {
        fn merge<K: SortKey>(
            v: &mut Vec<(K, BlobLocation)>,
            added: &[(K, BlobLocation)],
        ) -> Fanout {
            let old = v.len();
            v.reserve_exact(added.len());
            // Placeholders, each overwritten below.
            v.extend_from_slice(added);
            let (mut i, mut j) = (old, added.len());
            for k in (0..v.len()).rev() {
                let take_old = match (i.checked_sub(1), j.checked_sub(1)) {
                    (_, None) => break,
                    (Some(a), Some(b)) => v[a].0 > added[b].0,
                    (None, Some(_)) => false,
                };
                if take_old {
                    i -= 1;
                    v[k] = v[i];
                } else {
                    j -= 1;
                    v[k] = added[j];
                }
            }
            Fanout::build(v)
        }
        if added.is_empty() {
            return;
        }
        if added.iter().any(|(id, _)| !id.is_short()) {
            self.widen();
        }
        self.fanout = match &mut self.ids {
            Ids::Short(v) => {
                let mut keys: Vec<(ShortKey, BlobLocation)> = added
                    .iter()
                    .filter_map(|(id, loc)| Some((ShortKey::of(id)?, *loc)))
                    .collect();
                keys.sort_unstable_by_key(|a| a.0);
                merge(v, &keys)
            }
            Ids::Full(v) => {
                let mut added = added;
                added.sort_unstable_by_key(|a| a.0);
                merge(v, &added)
            }
        };
    }

    /// Every blob with its location, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (BlobId, &BlobLocation)> {
        let (short, full) = match &self.ids {
            Ids::Short(v) => (v.as_slice(), &[][..]),
            Ids::Full(v) => (&[][..], v.as_slice()),
        };
        short
            .iter()
            .map(|(key, loc)| (key.id(), loc))
            .chain(full.iter().map(|(id, loc)| (*id, loc)))
    }

    /// The widest bucket of the fanout table, in ids.
    #[cfg(test)]
    pub(super) fn widest_bucket(&self) -> Option<u32> {
        self.fanout.starts.windows(2).map(|w| w[1] - w[0]).max()
    }
}

/// A first-level table over the sorted ids: ids are uniformly distributed hashes, so their
/// leading bits say almost where an id sits. A lookup binary-searches only its bucket of four
/// to eight ids instead of the whole vector: a restore looks up every page of every file, and
/// with 200,000 blobs the 18 comparisons of a full binary search were 4 % of a restore's CPU
/// (perf). The table costs 4 bytes per 4 to 8 blobs.
#[derive(Debug, Default)]
struct Fanout {
    bits: u32,
    /// `starts[b]` is the position of the first id whose bucket is `b` or later; one more
    /// entry than there are buckets, the last being the vector's length.
    starts: Vec<u32>,
}

impl Fanout {
    /// At most 2^24 buckets (64 MiB of table for 64 million blobs and more).
    const MAX_BITS: u32 = 24;

    fn build<K: SortKey>(sorted: &[(K, BlobLocation)]) -> Self {
        let bits = sorted
            .len()
            .checked_ilog2()
            .map_or(0, |log| log.saturating_sub(2).min(Self::MAX_BITS));
        let buckets = 1usize << bits;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut position = 0usize;
        for bucket in 0..buckets {
            while sorted
                .get(position)
                .is_some_and(|(key, _)| Self::bucket_of(bits, key.lead()) < bucket)
            {
                position += 1;
            }
            starts.push(position as u32);
        }
        starts.push(sorted.len() as u32);
        Self { bits, starts }
    }

    fn bucket_of(bits: u32, lead: &[u8]) -> usize {
        if bits == 0 {
            return 0;
        }
        // Most significant byte first, so that buckets follow the ids' byte order.
        let lead = lead
            .iter()
            .take(4)
            .fold(0u32, |lead, byte| (lead << 8) | u32::from(*byte));
        (lead >> (32 - bits)) as usize
    }

    /// The positions in the sorted vector (of `len` ids) where an id with these leading bytes
    /// can be: all of them while the table is not built.
    fn range(&self, lead: &[u8], len: usize) -> std::ops::Range<usize> {
        let bucket = Self::bucket_of(self.bits, lead);
        match (self.starts.get(bucket), self.starts.get(bucket + 1)) {
            (Some(start), Some(end)) => *start as usize..*end as usize,
            _ => 0..len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlobKind;
    use proptest::prelude::*;

    fn location(n: u32) -> BlobLocation {
        BlobLocation::new(
            n,
            &crate::format::PackEntry {
                id: ContentId([0; 32]),
                kind: BlobKind::Data,
                offset: n,
                length: 1,
                raw_length: 1,
                compressed: false,
                within: None,
            },
        )
    }

    fn short(n: u32) -> BlobId {
        let full = ContentId::hash(&n.to_le_bytes());
        ContentId::from_significant(&full.0[..ContentId::SHORT]).unwrap()
    }

    #[test]
    fn short_ids_take_40_bytes_a_blob_and_full_ones_56() {
        assert_eq!(size_of::<(ShortKey, BlobLocation)>(), 40);
        assert_eq!(size_of::<(BlobId, BlobLocation)>(), 56);
    }

    #[test]
    fn short_ids_stay_short_until_a_full_one_comes_then_all_are_found_whole() {
        let mut sorted = Sorted::default();
        sorted.extend((0..500).map(|n| (short(n), location(n))));
        sorted.finish_loading();
        assert!(sorted.is_short());
        for n in 0..500 {
            assert_eq!(sorted.get(&short(n)).map(|l| l.offset), Some(n));
        }
        // The full id a short one was cut from is a different blob.
        assert!(sorted.get(&ContentId::hash(&7u32.to_le_bytes())).is_none());
        assert!(sorted.get(&full(7)).is_none());
        assert_eq!(sorted.with_prefix(&short(7).0[..16]), Found::One(short(7)));
        assert_eq!(sorted.with_prefix(&short(7).0[..20]), Found::One(short(7)));
        let mut past = short(7).0;
        past[20] = 1;
        assert_eq!(sorted.with_prefix(&past[..21]), Found::None);

        // Merging in a full id widens the vector and keeps every short one.
        let full = ContentId::hash(b"a full id");
        sorted.merge(vec![(full, location(9999)), (short(600), location(600))]);
        assert!(!sorted.is_short());
        assert_eq!(sorted.count(), 502);
        for n in (0..500).chain([600]) {
            assert_eq!(sorted.get(&short(n)).map(|l| l.offset), Some(n));
        }
        assert_eq!(sorted.get(&full).map(|l| l.offset), Some(9999));
        let ids: Vec<BlobId> = sorted.iter().map(|(id, _)| id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in id order");
    }

    /// A full id, distinct from every `short(n)`.
    fn full(n: u32) -> BlobId {
        ContentId::hash(format!("full {n}").as_bytes())
    }

    /// Loads `loaded`, merges each batch of `merged` (numbers, and whether the id is full), and
    /// checks every lookup, prefix lookup and the iteration against a plain ordered map in
    /// which a blob's first listing wins.
    fn agrees_with_a_model(
        loaded: &[(u32, bool)],
        merged: &[Vec<(u32, bool)>],
    ) -> Result<(), TestCaseError> {
        let id = |n: u32, is_full: bool| if is_full { full(n) } else { short(n) };
        let mut model = std::collections::BTreeMap::new();
        let mut sorted = Sorted::default();
        for (at, &(n, is_full)) in loaded.iter().enumerate() {
            model.entry(id(n, is_full)).or_insert(at as u32);
        }
        sorted.extend(
            loaded
                .iter()
                .enumerate()
                .map(|(at, &(n, is_full))| (id(n, is_full), location(at as u32))),
        );
        sorted.finish_loading();
        for (round, batch) in merged.iter().enumerate() {
            // The repository merges only blobs the vector lacks, each once.
            let mut added = Vec::new();
            for &(n, is_full) in batch {
                let blob = id(n, is_full);
                let offset = 10_000 * (round as u32 + 1) + n;
                if let std::collections::btree_map::Entry::Vacant(slot) = model.entry(blob) {
                    slot.insert(offset);
                    added.push((blob, location(offset)));
                }
            }
            sorted.merge(added);
        }
        prop_assert_eq!(sorted.is_short(), model.keys().all(ContentId::is_short));
        prop_assert_eq!(sorted.count(), model.len());
        let listed: Vec<(BlobId, u32)> = sorted.iter().map(|(id, loc)| (id, loc.offset)).collect();
        let expected: Vec<(BlobId, u32)> = model.iter().map(|(id, at)| (*id, *at)).collect();
        prop_assert_eq!(listed, expected);
        for (rank, (blob, at)) in model.iter().enumerate() {
            prop_assert_eq!(sorted.get(blob).map(|l| l.offset), Some(*at));
            // The position of a blob is its rank in id order, where `iter` yields it.
            prop_assert_eq!(sorted.position(blob), Some(rank));
            let prefix = &blob.0[..16];
            let matching: Vec<BlobId> = model
                .keys()
                .filter(|k| k.0.starts_with(prefix))
                .copied()
                .collect();
            let found = match matching.as_slice() {
                [] => Found::None,
                [one] => Found::One(*one),
                many => Found::Many(many.to_vec()),
            };
            prop_assert_eq!(sorted.with_prefix(prefix), found);
        }
        for absent in 800..820 {
            prop_assert!(sorted.get(&short(absent)).is_none());
            prop_assert!(sorted.get(&full(absent)).is_none());
            prop_assert!(sorted.position(&short(absent)).is_none());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any mix of loaded and merged blobs, short or full ids, with repeats while loading.
        #[test]
        fn lookups_agree_with_an_ordered_map(
            loaded in prop::collection::vec((0u32..400, prop::bool::weighted(0.05)), 0..300),
            merged in prop::collection::vec(
                prop::collection::vec((400u32..800, prop::bool::weighted(0.05)), 0..60),
                0..4,
            ),
        ) {
            agrees_with_a_model(&loaded, &merged)?;
        }
    }

    #[test]
    fn merging_short_ids_keeps_them_short_and_in_order() {
        let mut sorted = Sorted::default();
        sorted.extend((0..3000).step_by(2).map(|n| (short(n), location(n))));
        sorted.finish_loading();
        sorted.merge(
            (1..3000)
                .step_by(2)
                .map(|n| (short(n), location(n)))
                .collect(),
        );
        assert!(sorted.is_short());
        assert_eq!(sorted.count(), 3000);
        let ids: Vec<BlobId> = sorted.iter().map(|(id, _)| id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in id order");
        for n in 0..3000 {
            assert_eq!(sorted.get(&short(n)).map(|l| l.offset), Some(n));
        }
        assert!(sorted.widest_bucket().is_some_and(|w| w <= 32));
    }
}
