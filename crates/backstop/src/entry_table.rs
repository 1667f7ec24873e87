//! The entries of one pack in an index object, as a compact table (format version 4; ids of 16
//! bytes from version 6).
//!
//! Every command loads the whole index at open, so decoding it is on the path of every backup,
//! restore and `list`. As CBOR maps (versions 1–3), each entry carried seven string keys: in
//! `perf`, ciborium decoding them was about a third of a `list` on the benchmark's repository
//! (85,000 blobs). The table is one CBOR byte string per pack, columns of fixed-width fields
//! that decode with plain slice reads, laid out so that zstd (the envelope's) finds the
//! redundancy: the blobs of a frame share their pack location, which is written once per frame,
//! and a framed blob's start is written as its distance from the end of the blob before it in
//! the same frame (zero, unless a gc has dropped blobs from the frame's index entries).
//!
//! ```text
//! n          u32            number of entries
//! ids        n × width bytes  (width 32, or 16 when the pack's index entry says so)
//! kinds      n × u8         0 data, 1 tree
//! flags      n × u8         bit 0 compressed, bit 1 in a frame, bit 2 same frame as the entry before
//! raw        n × u32        raw lengths
//! units      m × (u32, u32) offset and stored length, for each entry without bit 2
//! gaps       f × u32        for each entry with bit 1: its start in the frame, minus the end of the
//!                           entry before it when bit 2 is set (wrapping), else minus 0
//! ```
//!
//! Integers are little-endian. Entries are written in pack order (offset, then start in the
//! frame); their order carries no meaning.

use crate::format::{BlobKind, ContentId, PackEntry};

const COMPRESSED: u8 = 1;
const FRAMED: u8 = 2;
const SAME_FRAME: u8 = 4;

/// Bytes each id takes in a table of `entries`: [`ContentId::SHORT`] when every one is a short
/// id (the blobs of an encrypted repository of version 6 and later), else 32.
pub(crate) fn id_width(entries: &[PackEntry]) -> usize {
    if !entries.is_empty() && entries.iter().all(|e| e.id.is_short()) {
        ContentId::SHORT
    } else {
        32
    }
}

/// Encodes `entries` (in any order) as a table whose ids take `width` bytes
/// ([`id_width`]).
pub(crate) fn encode(entries: &[PackEntry], width: usize) -> Vec<u8> {
    let mut sorted: Vec<&PackEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| (e.offset, e.within));
    let n = sorted.len();
    // Index objects are cut at about 16,384 entries, far below u32::MAX.
    let count = u32::try_from(n).unwrap_or(u32::MAX);
    let mut ids = Vec::with_capacity(4 + n * width);
    ids.extend_from_slice(&count.to_le_bytes());
    let mut kinds = Vec::with_capacity(n);
    let mut flags = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n * 4);
    let mut units = Vec::new();
    let mut gaps = Vec::new();
    let mut previous: Option<&PackEntry> = None;
    for entry in sorted {
        ids.extend_from_slice(&entry.id.0[..width]);
        kinds.push(entry.kind as u8);
        raw.extend_from_slice(&entry.raw_length.to_le_bytes());
        let same_frame = previous.filter(|p| same_unit(p, entry));
        let mut flag = if entry.compressed { COMPRESSED } else { 0 };
        if same_frame.is_some() {
            flag |= SAME_FRAME;
        } else {
            units.extend_from_slice(&entry.offset.to_le_bytes());
            units.extend_from_slice(&entry.length.to_le_bytes());
        }
        if let Some(within) = entry.within {
            flag |= FRAMED;
            let expected = same_frame.map_or(0, frame_end);
            gaps.extend_from_slice(&within.wrapping_sub(expected).to_le_bytes());
        }
        flags.push(flag);
        previous = Some(entry);
    }
    let mut table = ids;
    for column in [kinds, flags, raw, units, gaps] {
        table.extend_from_slice(&column);
    }
    table
}

/// Whether `entry` shares the stored unit (a frame) of `previous`.
fn same_unit(previous: &PackEntry, entry: &PackEntry) -> bool {
    previous.within.is_some()
        && entry.within.is_some()
        && previous.offset == entry.offset
        && previous.length == entry.length
        && previous.compressed == entry.compressed
}

/// Where the raw bytes of a framed entry end in its frame.
fn frame_end(entry: &PackEntry) -> u32 {
    entry.within.unwrap_or(0).wrapping_add(entry.raw_length)
}

/// Decodes a table whose ids take `width` bytes (32 or [`ContentId::SHORT`]); the error says
/// what is wrong with it.
pub(crate) fn decode(table: &[u8], width: usize) -> Result<Vec<PackEntry>, String> {
    if width != 32 && width != ContentId::SHORT {
        return Err(format!("ids of {width} bytes"));
    }
    let mut reader = Reader { rest: table };
    let n = reader.u32("the entry count")? as usize;
    let ids = reader.take(n.checked_mul(width), "the ids")?;
    let kinds = reader.take(Some(n), "the kinds")?;
    let flags = reader.take(Some(n), "the flags")?;
    let raw = reader.take(n.checked_mul(4), "the raw lengths")?;
    let units = flags.iter().filter(|f| *f & SAME_FRAME == 0).count();
    let framed = flags.iter().filter(|f| *f & FRAMED != 0).count();
    let mut units = Reader {
        rest: reader.take(units.checked_mul(8), "the locations")?,
    };
    let mut gaps = Reader {
        rest: reader.take(framed.checked_mul(4), "the starts in frames")?,
    };
    if !reader.rest.is_empty() {
        return Err(format!("{} bytes after the table", reader.rest.len()));
    }
    let mut raw = Reader { rest: raw };
    let mut entries: Vec<PackEntry> = Vec::with_capacity(n);
    for (i, ((id, &kind), &flag)) in ids.chunks_exact(width).zip(kinds).zip(flags).enumerate() {
        let kind = match kind {
            0 => BlobKind::Data,
            1 => BlobKind::Tree,
            other => return Err(format!("entry {i} has the unknown kind {other}")),
        };
        if flag & !(COMPRESSED | FRAMED | SAME_FRAME) != 0 {
            return Err(format!("entry {i} has unknown flags {flag:#x}"));
        }
        let raw_length = raw.u32("a raw length")?;
        let compressed = flag & COMPRESSED != 0;
        let (offset, length, expected) = if flag & SAME_FRAME != 0 {
            let previous = entries
                .last()
                .filter(|p| p.within.is_some() && flag & FRAMED != 0 && p.compressed == compressed)
                .ok_or_else(|| format!("entry {i} continues a frame that does not precede it"))?;
            (previous.offset, previous.length, frame_end(previous))
        } else {
            (units.u32("an offset")?, units.u32("a length")?, 0)
        };
        let within = if flag & FRAMED != 0 {
            Some(expected.wrapping_add(gaps.u32("a start in a frame")?))
        } else {
            None
        };
        let mut bytes = [0u8; 32];
        bytes[..width].copy_from_slice(id);
        entries.push(PackEntry {
            id: ContentId(bytes),
            kind,
            offset,
            length,
            raw_length,
            compressed,
            within,
        });
    }
    Ok(entries)
}

/// Reads fields off the front of a slice.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: Option<usize>, what: &str) -> Result<&'a [u8], String> {
        match len {
            Some(len) if len <= self.rest.len() => {
                let (head, tail) = self.rest.split_at(len);
                self.rest = tail;
                Ok(head)
            }
            _ => Err(format!("the table ends inside {what}")),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let bytes = self.take(Some(4), what)?;
        let mut word = [0u8; 4];
        word.copy_from_slice(bytes);
        Ok(u32::from_le_bytes(word))
    }
}

/// A pack's entries as an index object holds them: a table (version 4 and later), or the
/// array of maps of versions 1–3.
pub(crate) enum StoredEntries {
    Table(Vec<u8>),
    Maps(Vec<PackEntry>),
}

impl<'de> serde::Deserialize<'de> for StoredEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, SeqAccess, Visitor};
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = StoredEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an entry table or an array of entries")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(StoredEntries::Table(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(StoredEntries::Table(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(entry) = seq.next_element()? {
                    entries.push(entry);
                }
                Ok(StoredEntries::Maps(entries))
            }
        }
        d.deserialize_any(Entries)
    }
}

/// A table written as one CBOR byte string.
pub(crate) struct TableBytes<'a>(pub(crate) &'a [u8]);

impl serde::Serialize for TableBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{self, IndexFile, IndexPack, ObjectType};

    fn id(n: u32) -> ContentId {
        ContentId(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    /// A pack as a backup writes it: frames of `per_frame` pages, a large blob, a tree blob.
    fn pack_entries(frames: u32, per_frame: u32, page: u32) -> Vec<PackEntry> {
        let mut entries = Vec::new();
        let mut offset = 0;
        let mut n = 0;
        for _ in 0..frames {
            let length = per_frame * page / 3 + 40;
            for k in 0..per_frame {
                entries.push(PackEntry {
                    id: id(n),
                    kind: BlobKind::Data,
                    offset,
                    length,
                    raw_length: page,
                    compressed: true,
                    within: Some(k * page),
                });
                n += 1;
            }
            offset += length;
        }
        for (kind, compressed) in [(BlobKind::Data, false), (BlobKind::Tree, true)] {
            entries.push(PackEntry {
                id: id(n),
                kind,
                offset,
                length: 300_000,
                raw_length: 1 << 20,
                compressed,
                within: None,
            });
            n += 1;
            offset += 300_000;
        }
        entries
    }

    fn sorted(mut entries: Vec<PackEntry>) -> Vec<PackEntry> {
        entries.sort_by_key(|e| (e.offset, e.within));
        entries
    }

    #[test]
    fn entries_round_trip_whatever_their_order_and_values() {
        let mut entries = pack_entries(5, 32, 8192);
        // Frames a gc left with holes, a frame right after another of the same length,
        // extreme values, and a frame that starts past zero: all must come back as they were.
        entries.retain(|e| e.within != Some(3 * 8192) && e.within != Some(17 * 8192));
        entries.push(PackEntry {
            id: id(900),
            kind: BlobKind::Data,
            offset: u32::MAX,
            length: u32::MAX,
            raw_length: u32::MAX,
            compressed: false,
            within: Some(u32::MAX),
        });
        entries.push(PackEntry {
            id: id(901),
            kind: BlobKind::Data,
            offset: u32::MAX,
            length: u32::MAX,
            raw_length: 7,
            compressed: false,
            within: Some(5),
        });
        entries.reverse();
        assert_eq!(id_width(&entries), 32);
        let back = decode(&encode(&entries, 32), 32).unwrap();
        assert_eq!(back, sorted(entries.clone()));
        let short = shortened(entries);
        assert_eq!(id_width(&short), ContentId::SHORT);
        let back = decode(&encode(&short, ContentId::SHORT), ContentId::SHORT).unwrap();
        assert_eq!(back, sorted(short));
        assert_eq!(decode(&encode(&[], 32), 32).unwrap(), Vec::new());
        assert!(
            decode(&encode(&[], 32), 24)
                .unwrap_err()
                .contains("24 bytes")
        );
    }

    /// `entries` with their ids cut to 16 bytes, as in an encrypted repository of version 6.
    fn shortened(mut entries: Vec<PackEntry>) -> Vec<PackEntry> {
        for entry in &mut entries {
            entry.id.0[ContentId::SHORT..].fill(0);
        }
        entries
    }

    #[test]
    fn a_damaged_table_is_refused_not_misread() {
        let table = encode(&pack_entries(2, 4, 4096), 32);
        for len in 0..table.len() {
            assert!(
                decode(&table[..len], 32).is_err(),
                "truncated to {len} bytes"
            );
        }
        let mut longer = table.clone();
        longer.push(0);
        assert!(decode(&longer, 32).is_err());
        // Read with the wrong width, the columns do not line up.
        assert!(decode(&table, ContentId::SHORT).is_err());
        let decode = |table: &[u8]| decode(table, 32);
        let flags_at = 4 + 10 * 32 + 10;
        let mut bad = table.clone();
        bad[flags_at] |= 0x80;
        assert!(decode(&bad).unwrap_err().contains("unknown flags"));
        // The first entry claims to continue a frame, and its location is left out to match.
        let units_at = flags_at + 10 + 10 * 4;
        let mut bad = table.clone();
        bad[flags_at] |= SAME_FRAME;
        bad.drain(units_at..units_at + 8);
        assert!(decode(&bad).unwrap_err().contains("continues a frame"));
        let mut bad = table;
        bad[4 + 10 * 32] = 7;
        assert!(decode(&bad).unwrap_err().contains("unknown kind"));
    }

    /// The array of maps that format versions 1–3 wrote.
    #[derive(serde::Serialize)]
    struct OldIndexPack {
        id: format::PackId,
        size: u64,
        entries: Vec<PackEntry>,
    }

    #[derive(serde::Serialize)]
    struct OldIndexFile {
        packs: Vec<OldIndexPack>,
    }

    /// An index object of one pack (id 7, 123 bytes) as versions 1–3 wrote it.
    fn old_index(entries: &[PackEntry]) -> OldIndexFile {
        OldIndexFile {
            packs: vec![OldIndexPack {
                id: id(7),
                size: 123,
                entries: entries.to_vec(),
            }],
        }
    }

    #[test]
    fn index_objects_of_earlier_versions_still_load() {
        let entries = pack_entries(3, 16, 4096);
        let bytes = format::seal_object(ObjectType::Index, &old_index(&entries), None);
        let back: IndexFile =
            format::open_object("index", ObjectType::Index, &bytes, None).unwrap();
        assert_eq!(back.packs.len(), 1);
        assert_eq!(back.packs[0].entries, entries);
    }

    #[test]
    fn index_objects_for_earlier_versions_are_written_as_those_versions_wrote_them() {
        let entries = pack_entries(2, 8, 4096);
        let maps = format::IndexFileOfMaps {
            packs: vec![format::IndexPackOfMaps {
                id: id(7),
                size: 123,
                entries: &entries,
            }],
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ciborium::into_writer(&old_index(&entries), &mut a).unwrap();
        ciborium::into_writer(&maps, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_page_costs_little_more_than_its_id_in_an_index_object() {
        // 16,384 pages of 8 KiB in frames of 32, as a full backup of a database writes them:
        // the ids (incompressible: 32 bytes each, 16 in an encrypted repository of version 6)
        // are the floor.
        let key = crate::crypto::MasterKey::random();
        for (entries, bound) in [
            (pack_entries(512, 32, 8192), 32.5),
            (shortened(pack_entries(512, 32, 8192)), 16.5),
        ] {
            let pages = entries.len() - 2;
            let file = IndexFile {
                packs: vec![IndexPack {
                    id: id(1),
                    size: 1 << 23,
                    entries,
                }],
            };
            let bytes = format::seal_object(ObjectType::Index, &file, Some(&key));
            let per_page = bytes.len() as f64 / pages as f64;
            assert!(per_page < bound, "{per_page:.2} bytes per page");
            let back: IndexFile =
                format::open_object("index", ObjectType::Index, &bytes, Some(&key)).unwrap();
            assert_eq!(back, file_sorted(file));
        }
    }

    /// A pack whose ids are full is written without a width, byte for byte as versions 4 and 5
    /// wrote it; one of short ids says `width: 16`, which a table without it would misread.
    #[test]
    fn only_a_table_of_short_ids_names_its_width() {
        #[derive(serde::Serialize)]
        struct Version5Pack<'a> {
            id: format::PackId,
            size: u64,
            entries: TableBytes<'a>,
        }
        let entries = pack_entries(2, 8, 4096);
        let table = encode(&entries, 32);
        let pack = IndexPack {
            id: id(7),
            size: 123,
            entries: entries.clone(),
        };
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        ciborium::into_writer(&pack, &mut ours).unwrap();
        let old = Version5Pack {
            id: id(7),
            size: 123,
            entries: TableBytes(&table),
        };
        ciborium::into_writer(&old, &mut theirs).unwrap();
        assert_eq!(ours, theirs);

        let short = IndexPack {
            entries: shortened(entries),
            ..pack
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&short, &mut bytes).unwrap();
        assert!(
            bytes.len() < ours.len() - 18 * 15,
            "{} vs {}",
            bytes.len(),
            ours.len()
        );
        let back: IndexPack = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(back.entries, sorted(short.entries.clone()));
        // The same table without its width is refused, not read as 32-byte ids.
        let mut value: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
        if let ciborium::Value::Map(fields) = &mut value {
            fields.retain(|(k, _)| k.as_text() != Some("width"));
        }
        let mut without = Vec::new();
        ciborium::into_writer(&value, &mut without).unwrap();
        let err = ciborium::from_reader::<IndexPack, _>(&without[..]).unwrap_err();
        assert!(err.to_string().contains("entry table"), "{err}");
    }

    fn file_sorted(mut file: IndexFile) -> IndexFile {
        for pack in &mut file.packs {
            pack.entries = sorted(std::mem::take(&mut pack.entries));
        }
        file
    }
}
