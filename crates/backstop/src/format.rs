//! The repository format (version 6): object names, the object envelope, packs, index, trees,
//! snapshots and the config. Encoding and decoding only, no I/O. `docs/format.md` describes
//! every byte.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::options::Cipher;

/// The newest repository format this build reads, and the one a repository it creates has:
/// version 6 names the blobs of an encrypted repository by 128 bits ([`SHORT_BLOB_ID_VERSION`]),
/// version 5 names the ids in chunk lists by 16 bytes (`page_list`), version 4 stores an index
/// object's entries as a compact table (`entry_table`), version 3 added XAES-256-GCM. Objects
/// of versions 1–5 are still read, and a repository created before version 6 keeps being
/// written in its own version ([`write_version`]).
pub(crate) const FORMAT_VERSION: u32 = 6;

/// The first version whose index objects hold their entries as a table.
pub(crate) const TABLE_INDEX_VERSION: u32 = 4;

/// The first version whose chunk lists name ids by their first 16 bytes.
pub(crate) const SHORT_LIST_ID_VERSION: u32 = 5;

/// The first version whose encrypted repositories name each blob by the first 16 bytes of its
/// keyed hash ([`ContentId::SHORT`]).
pub(crate) const SHORT_BLOB_ID_VERSION: u32 = 6;

/// The version of the objects written into a repository whose config says `config_version`:
/// its own, so that the builds that created it keep reading it, except that a version 1
/// repository gets version 2 objects (version 1 cannot express chunk lists).
pub(crate) fn write_version(config_version: u32) -> u32 {
    config_version.clamp(2, FORMAT_VERSION)
}

/// Magic of every enveloped object.
const OBJECT_MAGIC: &[u8; 4] = b"BKS1";
/// Magic at the very end of a pack.
const PACK_MAGIC: &[u8; 4] = b"BKP1";

/// A 32-byte content id (BLAKE3), or a 16-byte one (the blob ids of an encrypted repository of
/// version 6 and later) held as 32 bytes whose last 16 are zero and written as its 16. Ordered
/// by its bytes, like the array.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct ContentId(#[serde(with = "id_bytes")] pub(crate) [u8; 32]);

impl Ord for ContentId {
    /// The arrays' byte order, eight bytes at a time: the index's lookups compare ids, and
    /// the array comparison called `memcmp` for each (3 % of a restore's CPU, `perf`).
    #[allow(
        clippy::big_endian_bytes,
        reason = "big-endian words order as the bytes they hold"
    )]
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let word = |bytes: &[u8]| {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(bytes);
            u64::from_be_bytes(eight)
        };
        for (a, b) in self.0.chunks_exact(8).zip(other.0.chunks_exact(8)) {
            match word(a).cmp(&word(b)) {
                std::cmp::Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        std::cmp::Ordering::Equal
    }
}

impl PartialOrd for ContentId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

mod id_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::ContentId;

    pub(super) fn serialize<S: Serializer>(id: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(ContentId(*id).significant())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let bytes: serde_bytes_like::Bytes = Deserialize::deserialize(d)?;
        ContentId::from_significant(&bytes.0)
            .map(|id| id.0)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "content id is {} bytes, not 32 or 16",
                    bytes.0.len()
                ))
            })
    }

    mod serde_bytes_like {
        /// Accepts a CBOR byte string (or a sequence of bytes, for other formats).
        pub(crate) struct Bytes(pub(crate) Vec<u8>);
        impl<'de> serde::Deserialize<'de> for Bytes {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("32 bytes")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                        Ok(Bytes(v))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut seq: A,
                    ) -> Result<Bytes, A::Error> {
                        let mut out = Vec::new();
                        while let Some(b) = seq.next_element::<u8>()? {
                            out.push(b);
                        }
                        Ok(Bytes(out))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }
}

impl ContentId {
    /// Bytes of a short id: 128 bits, as kopia's content ids.
    pub(crate) const SHORT: usize = 16;

    pub(crate) fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Whether this is a short id (its last 16 bytes are zero). A 256-bit hash ends in 16
    /// zero bytes with probability 2^-128, so the form never misjudges a full id.
    pub(crate) fn is_short(&self) -> bool {
        self.0[Self::SHORT..].iter().all(|&b| b == 0)
    }

    /// The bytes that name this id: the first 16 of a short id, else all 32.
    pub(crate) fn significant(&self) -> &[u8] {
        if self.is_short() {
            &self.0[..Self::SHORT]
        } else {
            &self.0
        }
    }

    /// The short id whose 16 bytes are `head`.
    pub(crate) fn from_short(head: [u8; Self::SHORT]) -> Self {
        let mut id = [0u8; 32];
        id[..Self::SHORT].copy_from_slice(&head);
        Self(id)
    }

    /// The id written as `bytes`: 32 bytes, or the 16 of a short id.
    pub(crate) fn from_significant(bytes: &[u8]) -> Option<Self> {
        if let Ok(head) = <[u8; Self::SHORT]>::try_from(bytes) {
            return Some(Self::from_short(head));
        }
        Some(Self(bytes.try_into().ok()?))
    }

    /// Plain BLAKE3 of `bytes` (pack and object names).
    pub(crate) fn hash(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

impl std::fmt::Display for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.significant()))
    }
}

impl std::fmt::Debug for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

/// Id of a blob: BLAKE3 of its raw bytes, keyed with the id key when encrypted (and then cut
/// to 16 bytes from version 6).
pub(crate) type BlobId = ContentId;
/// Id of a pack: BLAKE3 of the pack's stored bytes.
pub(crate) type PackId = ContentId;

/// Store key of a pack.
pub(crate) fn pack_key(id: PackId) -> String {
    let hex = id.to_hex();
    format!("packs/{}/{hex}", &hex[..2])
}

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub(crate) enum BlobKind {
    /// File content.
    Data = 0,
    /// A part of a snapshot's file list.
    Tree = 1,
}

/// Types of enveloped objects (byte 4 of the envelope).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ObjectType {
    Index = 1,
    Snapshot = 2,
    Archive = 3,
    PackHeader = 4,
    Config = 5,
    Superseded = 6,
}

/// Why stored bytes could not be decoded.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum FormatError {
    #[error("{what} is truncated ({len} bytes)")]
    Truncated { what: &'static str, len: usize },
    #[error("{what} has a bad magic number; it is not a Backstop object or it is damaged")]
    BadMagic { what: &'static str },
    #[error(
        "{what} has format version {found}, newer than this build understands ({FORMAT_VERSION}); upgrade backstop"
    )]
    NewerVersion { what: &'static str, found: u32 },
    #[error("{what} is of type {found}, expected {expected}")]
    WrongType {
        what: &'static str,
        found: u8,
        expected: u8,
    },
    #[error("{what} fails its checksum")]
    Checksum { what: &'static str },
    #[error("{what} fails authentication: damaged, or sealed with another key")]
    Auth { what: &'static str },
    #[error("{what} is encrypted but no key is available")]
    NeedsKey { what: &'static str },
    #[error("{what} cannot be decoded: {detail}")]
    Decode { what: &'static str, detail: String },
}

const FLAG_COMPRESSED: u8 = 1;
const FLAG_ENCRYPTED: u8 = 2;

/// Wraps a serialized structure: `magic ‖ type ‖ version ‖ flags ‖ 0 ‖ payload`, where the
/// payload is zstd-compressed CBOR, sealed (AAD = the 8 header bytes) when a key is given, or
/// followed by a BLAKE3 of everything before it when not.
pub(crate) fn seal_object<T: Serialize>(
    kind: ObjectType,
    value: &T,
    key: Option<&MasterKey>,
) -> Vec<u8> {
    seal_object_as(kind, value, key, FORMAT_VERSION)
}

/// [`seal_object`] with the version byte given: objects written into a repository of an
/// earlier version carry its version ([`write_version`]).
pub(crate) fn seal_object_as<T: Serialize>(
    kind: ObjectType,
    value: &T,
    key: Option<&MasterKey>,
    version: u32,
) -> Vec<u8> {
    let mut cbor = Vec::new();
    // Serializing plain data structures into a Vec cannot fail.
    let _ = ciborium::into_writer(value, &mut cbor);
    let (body, compressed) = match crate::compress::compress_whole(&cbor, 3) {
        Some(c) => (c, true),
        None => (cbor, false),
    };
    let mut flags = if compressed { FLAG_COMPRESSED } else { 0 };
    if key.is_some() {
        flags |= FLAG_ENCRYPTED;
    }
    let header = [
        OBJECT_MAGIC[0],
        OBJECT_MAGIC[1],
        OBJECT_MAGIC[2],
        OBJECT_MAGIC[3],
        kind as u8,
        version as u8,
        flags,
        0,
    ];
    let mut out = header.to_vec();
    match key {
        Some(key) => out.extend_from_slice(&key.seal(&body, &header)),
        None => {
            out.extend_from_slice(&body);
            let sum = blake3::hash(&out);
            out.extend_from_slice(sum.as_bytes());
        }
    }
    out
}

/// Opens what [`seal_object`] wrote, checking magic, type, version and integrity.
pub(crate) fn open_object<T: serde::de::DeserializeOwned>(
    what: &'static str,
    kind: ObjectType,
    bytes: &[u8],
    key: Option<&MasterKey>,
) -> Result<T, FormatError> {
    let body = open_envelope(what, kind, bytes, key)?;
    ciborium::from_reader(body.as_slice()).map_err(|e| FormatError::Decode {
        what,
        detail: e.to_string(),
    })
}

fn open_envelope(
    what: &'static str,
    kind: ObjectType,
    bytes: &[u8],
    key: Option<&MasterKey>,
) -> Result<Vec<u8>, FormatError> {
    let Some((header, payload)) = bytes.split_first_chunk::<8>() else {
        return Err(FormatError::Truncated {
            what,
            len: bytes.len(),
        });
    };
    if &header[..4] != OBJECT_MAGIC {
        return Err(FormatError::BadMagic { what });
    }
    if u32::from(header[5]) > FORMAT_VERSION {
        return Err(FormatError::NewerVersion {
            what,
            found: u32::from(header[5]),
        });
    }
    if header[4] != kind as u8 {
        return Err(FormatError::WrongType {
            what,
            found: header[4],
            expected: kind as u8,
        });
    }
    let flags = header[6];
    let body = if flags & FLAG_ENCRYPTED != 0 {
        let key = key.ok_or(FormatError::NeedsKey { what })?;
        key.open(payload, header)
            .map_err(|_| FormatError::Auth { what })?
    } else {
        if key.is_some() {
            // An encrypted repository never writes plaintext objects: refuse a swapped-in one.
            return Err(FormatError::Auth { what });
        }
        let Some(split) = bytes.len().checked_sub(32) else {
            return Err(FormatError::Truncated {
                what,
                len: bytes.len(),
            });
        };
        let (content, sum) = bytes.split_at(split);
        if content.len() < 8 || blake3::hash(content).as_bytes() != sum {
            return Err(FormatError::Checksum { what });
        }
        content.get(8..).unwrap_or_default().to_vec()
    };
    if flags & FLAG_COMPRESSED != 0 {
        zstd::stream::decode_all(body.as_slice()).map_err(|e| FormatError::Decode {
            what,
            detail: format!("zstd: {e}"),
        })
    } else {
        Ok(body)
    }
}

/// Where one blob lives inside a pack, as the pack header and index record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PackEntry {
    pub(crate) id: BlobId,
    pub(crate) kind: BlobKind,
    /// Offset of the stored bytes in the pack.
    pub(crate) offset: u32,
    /// Stored length (after compression and sealing).
    pub(crate) length: u32,
    /// Raw length (the chunk's size).
    pub(crate) raw_length: u32,
    /// Whether the stored bytes are zstd-compressed (before sealing).
    pub(crate) compressed: bool,
    /// Set when the blob shares its stored bytes (a frame) with other small blobs: where its raw
    /// bytes start in the frame's decoded bytes. `offset`, `length` and `compressed` then describe
    /// the whole frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) within: Option<u32>,
}

/// One blob as a pack's header records it: a [`PackEntry`] whose id is left out when the blob
/// sits in a frame. A framed blob's id is the hash of its bytes, which can be cut from the
/// decoded frame, so writing it again for every page would only repeat the index: 32 of the
/// about 36 bytes a page costs in a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeaderEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<BlobId>,
    pub(crate) kind: BlobKind,
    pub(crate) offset: u32,
    pub(crate) length: u32,
    pub(crate) raw_length: u32,
    pub(crate) compressed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) within: Option<u32>,
}

impl HeaderEntry {
    fn of(entry: &PackEntry) -> Self {
        Self {
            id: entry.within.is_none().then_some(entry.id),
            kind: entry.kind,
            offset: entry.offset,
            length: entry.length,
            raw_length: entry.raw_length,
            compressed: entry.compressed,
            within: entry.within,
        }
    }

    /// An index entry's blob as a header entry that names it by id, even in a frame (what an
    /// index object says about a pack, to read it by when its header cannot be read).
    pub(crate) fn naming(entry: &PackEntry) -> Self {
        Self {
            id: Some(entry.id),
            ..Self::of(entry)
        }
    }

    /// The index entry of this blob, whose id is `id`.
    pub(crate) fn with_id(&self, id: BlobId) -> PackEntry {
        PackEntry {
            id,
            kind: self.kind,
            offset: self.offset,
            length: self.length,
            raw_length: self.raw_length,
            compressed: self.compressed,
            within: self.within,
        }
    }

    /// Whether this header entry records `entry` (an index entry) as stored here: the same
    /// place, size and kind, and the same id where the header has one.
    pub(crate) fn records(&self, entry: &PackEntry) -> bool {
        self.id.is_none_or(|id| id == entry.id)
            && (self.id.is_some() || entry.within.is_some())
            && self.kind == entry.kind
            && self.offset == entry.offset
            && self.length == entry.length
            && self.raw_length == entry.raw_length
            && self.compressed == entry.compressed
            && self.within == entry.within
    }
}

/// The header at the end of a pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PackHeader {
    pub(crate) entries: Vec<HeaderEntry>,
}

#[cfg(test)]
impl PackEntry {
    /// An entry for a unit test: `id` of `kind`, one byte at offset 0, in a unit of its own.
    pub(crate) fn for_test(id: BlobId, kind: BlobKind) -> Self {
        Self {
            id,
            kind,
            offset: 0,
            length: 1,
            raw_length: 1,
            compressed: false,
            within: None,
        }
    }
}

/// Assembles a pack: `blob bytes … ‖ sealed header ‖ header length (u32 LE) ‖ "BKP1"`.
#[cfg(test)]
pub(crate) fn finish_pack(
    mut blobs: Vec<u8>,
    entries: &[PackEntry],
    key: Option<&MasterKey>,
    version: u32,
) -> Vec<u8> {
    blobs.extend_from_slice(&pack_trailer(entries, key, version));
    blobs
}

/// What follows a pack's blob bytes: `sealed header ‖ header length (u32 LE) ‖ "BKP1"`.
pub(crate) fn pack_trailer(
    entries: &[PackEntry],
    key: Option<&MasterKey>,
    version: u32,
) -> Vec<u8> {
    let header = PackHeader {
        entries: entries.iter().map(HeaderEntry::of).collect(),
    };
    let mut trailer = seal_object_as(ObjectType::PackHeader, &header, key, version);
    let len = trailer.len() as u32;
    trailer.extend_from_slice(&len.to_le_bytes());
    trailer.extend_from_slice(PACK_MAGIC);
    trailer
}

/// The bytes a pack's trailer takes after its sealed header: its length and the magic.
pub(crate) const PACK_TAIL: usize = 8;

/// Reads the header of a whole pack.
pub(crate) fn read_pack_header(
    pack: &[u8],
    key: Option<&MasterKey>,
) -> Result<PackHeader, FormatError> {
    let Some((rest, tail)) = pack.split_last_chunk::<PACK_TAIL>() else {
        return Err(FormatError::Truncated {
            what: "pack header",
            len: pack.len(),
        });
    };
    let start = pack_header_start(tail, pack.len() as u64)?;
    open_pack_header(&rest[start as usize..], start, key)
}

/// Where the sealed header of a pack of `size` bytes starts, from the pack's last
/// [`PACK_TAIL`] bytes.
pub(crate) fn pack_header_start(tail: &[u8; PACK_TAIL], size: u64) -> Result<u64, FormatError> {
    let what = "pack header";
    if &tail[4..] != PACK_MAGIC {
        return Err(FormatError::BadMagic { what });
    }
    let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    size.checked_sub(PACK_TAIL as u64)
        .and_then(|before| before.checked_sub(u64::from(len)))
        .ok_or(FormatError::Truncated {
            what,
            len: usize::try_from(size).unwrap_or(usize::MAX),
        })
}

/// Opens a pack's sealed header, which starts at `start`, and checks that every blob it names
/// lies before it.
pub(crate) fn open_pack_header(
    sealed: &[u8],
    start: u64,
    key: Option<&MasterKey>,
) -> Result<PackHeader, FormatError> {
    let what = "pack header";
    let header: PackHeader = open_object(what, ObjectType::PackHeader, sealed, key)?;
    for e in &header.entries {
        if u64::from(e.offset) + u64::from(e.length) > start {
            return Err(FormatError::Decode {
                what,
                detail: format!("blob {e:?} lies outside the pack"),
            });
        }
    }
    Ok(header)
}

/// Encodes a blob for a pack: compress (if it pays), then seal; returns the stored bytes and
/// whether they are compressed.
pub(crate) fn encode_blob(
    raw: impl AsRef<[u8]> + Into<Vec<u8>>,
    level: i32,
    key: Option<&MasterKey>,
) -> (Vec<u8>, bool) {
    let compressed = crate::compress::compress(raw.as_ref(), level);
    seal_unit(raw, compressed, key)
}

/// [`encode_blob`] for a frame of small blobs, compressed the way `levels` picks for the
/// reader `lane` that filled it.
pub(crate) fn encode_frame(
    raw: impl AsRef<[u8]> + Into<Vec<u8>>,
    levels: &crate::compress::LevelChoice,
    lane: usize,
    key: Option<&MasterKey>,
) -> (Vec<u8>, bool) {
    let compressed = levels.compress(lane, raw.as_ref());
    seal_unit(raw, compressed, key)
}

/// `raw` is taken by value where the caller can give it up: a unit stored as it is (not
/// compressible, or compression off) is then sealed straight from it, or is itself what is
/// stored, rather than copied first; for a 1 GiB backup at `--compression 0` that copy was a
/// second buffer of every chunk in flight.
fn seal_unit(
    raw: impl AsRef<[u8]> + Into<Vec<u8>>,
    compressed: Option<Vec<u8>>,
    key: Option<&MasterKey>,
) -> (Vec<u8>, bool) {
    match (compressed, key) {
        (Some(body), Some(key)) => (key.seal(&body, b"blob"), true),
        (Some(body), None) => (body, true),
        (None, Some(key)) => (key.seal(raw.as_ref(), b"blob"), false),
        (None, None) => (raw.into(), false),
    }
}

/// The most a frame may decode to; frames are cut at [`FRAME_TARGET`], so anything larger is
/// damage, not data (frames of earlier versions were cut at 128 KiB).
pub(crate) const MAX_FRAME: usize = 4 * FRAME_TARGET;
/// Data blobs smaller than this are stored in frames rather than alone.
pub(crate) const SMALL_BLOB: usize = 128 * 1024;
/// Small blobs are stored together in frames of about this many raw bytes: 8 KiB pages
/// compressed one by one come out nearly twice as large as in 128 KiB groups, and 256 KiB
/// groups are 3 % smaller again (docs/format.md).
pub(crate) const FRAME_TARGET: usize = 256 * 1024;

/// Decodes the stored unit an entry points at (the blob itself, or the frame it shares):
/// authenticated and decompressed, but not yet checked against the blob's id.
pub(crate) fn decode_unit(
    entry: &PackEntry,
    stored: &[u8],
    key: Option<&MasterKey>,
) -> Result<Vec<u8>, FormatError> {
    let what = "blob";
    let body = match key {
        Some(key) => key
            .open(stored, b"blob")
            .map_err(|_| FormatError::Auth { what })?,
        None => stored.to_vec(),
    };
    if !entry.compressed {
        return Ok(body);
    }
    let raw_len = match entry.within {
        None => entry.raw_length as usize,
        Some(_) => {
            let declared = crate::compress::declared_size(&body).ok_or(FormatError::Decode {
                what,
                detail: "the frame does not declare its size".into(),
            })?;
            usize::try_from(declared)
                .ok()
                .filter(|&n| n <= MAX_FRAME)
                .ok_or(FormatError::Decode {
                    what,
                    detail: format!("the frame declares {declared} bytes, more than {MAX_FRAME}"),
                })?
        }
    };
    crate::compress::decompress(&body, raw_len).map_err(|e| FormatError::Decode {
        what,
        detail: format!("zstd: {e}"),
    })
}

/// Cuts an entry's blob out of its decoded unit, without a copy, and checks it against its id.
pub(crate) fn blob_from_unit<'a>(
    entry: &PackEntry,
    unit: &'a [u8],
    key: Option<&MasterKey>,
) -> Result<&'a [u8], FormatError> {
    let start = entry.within.unwrap_or(0) as usize;
    let raw = start
        .checked_add(entry.raw_length as usize)
        .and_then(|end| unit.get(start..end))
        .filter(|raw| entry.within.is_some() || raw.len() == unit.len())
        .ok_or(FormatError::Checksum { what: "blob" })?;
    check_blob(entry, raw, key)?;
    Ok(raw)
}

/// Checks raw blob bytes against the entry's length and id.
pub(crate) fn check_blob(
    entry: &PackEntry,
    raw: &[u8],
    key: Option<&MasterKey>,
) -> Result<(), FormatError> {
    if raw.len() != entry.raw_length as usize || blob_id(raw, key) != entry.id {
        return Err(FormatError::Checksum { what: "blob" });
    }
    Ok(())
}

/// Decodes a stored blob and checks it against its id.
pub(crate) fn decode_blob(
    entry: &PackEntry,
    stored: &[u8],
    key: Option<&MasterKey>,
) -> Result<Vec<u8>, FormatError> {
    let unit = decode_unit(entry, stored, key)?;
    if entry.within.is_none() {
        // The unit is the blob: check it in place rather than copy it.
        check_blob(entry, &unit, key)?;
        return Ok(unit);
    }
    blob_from_unit(entry, &unit, key).map(<[u8]>::to_vec)
}

/// The id of raw blob bytes.
pub(crate) fn blob_id(raw: &[u8], key: Option<&MasterKey>) -> BlobId {
    match key {
        Some(key) => {
            let mut id = *blake3::keyed_hash(key.id_key(), raw).as_bytes();
            if key.short_ids() {
                // Why 128 bits are enough here and not in an unencrypted repository: only the
                // key's holder can compute these hashes, so no one can search for a collision,
                // and an accidental one among 2^40 blobs has a chance of about 2^-49.
                id[ContentId::SHORT..].fill(0);
            }
            ContentId(id)
        }
        None => ContentId::hash(raw),
    }
}

/// One pack and its blobs, as an index object lists them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "StoredIndexPack")]
pub(crate) struct IndexPack {
    pub(crate) id: PackId,
    /// The pack's stored size in bytes.
    pub(crate) size: u64,
    pub(crate) entries: Vec<PackEntry>,
}

impl Serialize for IndexPack {
    /// As a table (`entry_table`), with `width: 16` when its ids are short.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let width = crate::entry_table::id_width(&self.entries);
        let table = crate::entry_table::encode(&self.entries, width);
        WrittenIndexPack {
            id: self.id,
            size: self.size,
            entries: crate::entry_table::TableBytes(&table),
            width: u8::try_from(width).ok().filter(|&w| w != 32),
        }
        .serialize(s)
    }
}

/// An [`IndexPack`] as written: before version 6 never with a `width`, so the bytes are those
/// of the builds of versions 4 and 5.
#[derive(Serialize)]
struct WrittenIndexPack<'a> {
    id: PackId,
    size: u64,
    entries: crate::entry_table::TableBytes<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u8>,
}

/// An [`IndexPack`] as read, before its table is decoded.
#[derive(Deserialize)]
struct StoredIndexPack {
    id: PackId,
    size: u64,
    entries: crate::entry_table::StoredEntries,
    /// Bytes of each id in the table; absent for 32.
    #[serde(default)]
    width: Option<u8>,
}

impl TryFrom<StoredIndexPack> for IndexPack {
    type Error = String;

    fn try_from(stored: StoredIndexPack) -> Result<Self, String> {
        use crate::entry_table::StoredEntries;
        let entries = match (stored.entries, stored.width) {
            (StoredEntries::Table(table), width) => {
                let width = width.map_or(32, usize::from);
                crate::entry_table::decode(&table, width)
                    .map_err(|e| format!("entry table of pack {}: {e}", stored.id))?
            }
            (StoredEntries::Maps(entries), None) => entries,
            (StoredEntries::Maps(_), Some(width)) => {
                return Err(format!(
                    "pack {} lists its entries as maps but gives an id width ({width})",
                    stored.id
                ));
            }
        };
        Ok(Self {
            id: stored.id,
            size: stored.size,
            entries,
        })
    }
}

/// An index object: which blobs live where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    pub(crate) packs: Vec<IndexPack>,
}

/// An index object as versions 1–3 write it, each entry a CBOR map: what this build writes into
/// a repository of one of those versions. [`IndexFile`] reads it.
#[derive(Serialize)]
pub(crate) struct IndexFileOfMaps<'a> {
    pub(crate) packs: Vec<IndexPackOfMaps<'a>>,
}

/// One pack of an [`IndexFileOfMaps`].
#[derive(Serialize)]
pub(crate) struct IndexPackOfMaps<'a> {
    pub(crate) id: PackId,
    pub(crate) size: u64,
    pub(crate) entries: &'a [PackEntry],
}

/// Packs a gc rewrote and took out of the index, kept until a grace period is over so that
/// readers holding the older index still find them (`superseded/<32 hex>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SupersededPacks {
    /// When the gc wrote the record, seconds since the epoch (its host's clock).
    pub(crate) time_unix: i64,
    pub(crate) host: String,
    pub(crate) packs: Vec<PackId>,
}

/// The repository config, stored unencrypted (it holds no secrets) under `config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Config {
    pub(crate) version: u32,
    /// Random repository id, hex.
    pub(crate) id: String,
    pub(crate) encrypted: bool,
    pub(crate) chunk_min: u32,
    pub(crate) chunk_avg: u32,
    pub(crate) chunk_max: u32,
    pub(crate) pack_size: u32,
    pub(crate) created_unix: i64,
    /// How an encrypted repository seals; absent (XChaCha20-Poly1305) before version 3.
    #[serde(default, skip_serializing_if = "is_default_cipher")]
    pub(crate) cipher: Cipher,
}

fn is_default_cipher(cipher: &Cipher) -> bool {
    *cipher == Cipher::default()
}

/// One entry of a snapshot's file list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Node {
    pub(crate) path: String,
    /// 0 file, 1 directory, 2 symlink.
    pub(crate) kind: u8,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime_ns: i64,
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
    /// The file's chunks, in order. In a tree blob only when there are few of them; a longer
    /// list is stored in `lists` and filled in here when the tree is read (`page_list`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) chunks: Vec<BlobId>,
    /// List blobs holding the chunk ids of a long list, one per segment (`page_list`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) lists: Vec<BlobId>,
    /// How each of `lists` was stored, once read: what the next backup reuses or patches.
    #[serde(skip)]
    pub(crate) list_parts: Vec<crate::page_list::Part>,
    /// Filesystem identity when read (for the unchanged-file shortcut of the next backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fs: Option<backstop_source::FsIdentity>,
    /// The source's identity of an immutable file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) identity: Option<String>,
    /// The file was modified so close to when it was read that its identity cannot prove a
    /// later backup that it is unchanged ("racy", as git calls it).
    #[serde(default)]
    pub(crate) racy: bool,
}

impl Node {
    /// A node of `kind` at `path` with nothing else set (mode 0, owned by root, no content).
    pub(crate) fn new(path: String, kind: u8) -> Self {
        Self {
            path,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            target: None,
            chunks: Vec::new(),
            lists: Vec::new(),
            list_parts: Vec::new(),
            fs: None,
            identity: None,
            racy: false,
        }
    }
}

pub(crate) const NODE_FILE: u8 = 0;
pub(crate) const NODE_DIR: u8 = 1;
pub(crate) const NODE_SYMLINK: u8 = 2;

/// A tree blob: a run of nodes of a snapshot's file list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TreeBlob {
    pub(crate) nodes: Vec<Node>,
}

/// Statistics stored with a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotStats {
    pub(crate) files: u64,
    pub(crate) dirs: u64,
    pub(crate) size: u64,
    pub(crate) bytes_read: u64,
    pub(crate) bytes_added: u64,
    pub(crate) bytes_added_raw: u64,
    pub(crate) blobs_added: u64,
}

/// A snapshot: one backup, the commit point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub(crate) version: u32,
    pub(crate) id: u64,
    pub(crate) time_unix: i64,
    /// The backup host's offset from UTC at `time_unix`, in seconds (east positive); absent
    /// in snapshots written before 2026-12-06, and where the host's time zone is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) utc_offset_secs: Option<i32>,
    pub(crate) duration_ms: u64,
    pub(crate) host: String,
    pub(crate) source_kind: String,
    pub(crate) source: String,
    pub(crate) tags: Vec<String>,
    pub(crate) message: Option<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) tree: Vec<BlobId>,
    pub(crate) stats: SnapshotStats,
    pub(crate) parent: Option<u64>,
    pub(crate) source_meta: BTreeMap<String, String>,
    pub(crate) pause_window: Option<(f64, f64)>,
    pub(crate) warnings: Vec<String>,
    pub(crate) restore_profile: backstop_source::RestoreProfile,
}

/// An archive object (a WAL segment, say): compressed, sealed bytes under a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ArchiveObject {
    pub(crate) name: String,
    /// The archive it was put in; absent in objects written before 2026-12-06.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) archive: Option<String>,
    #[serde(with = "serde_bytes_vec")]
    pub(crate) data: Vec<u8>,
    /// BLAKE3 of the data, for the "same bytes again" check without decompressing twice.
    pub(crate) hash: ContentId,
}

pub(crate) mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_as_their_bytes() {
        let base = ContentId::hash(b"base");
        for at in 0..32 {
            for delta in [1u8, 0x80, 0xff] {
                let mut other = base;
                other.0[at] = other.0[at].wrapping_add(delta);
                assert_eq!(base.cmp(&other), base.0.cmp(&other.0), "byte {at} +{delta}");
                assert_eq!(other.cmp(&base), other.0.cmp(&base.0), "byte {at} +{delta}");
            }
        }
        let ids: Vec<ContentId> = (0u32..200)
            .map(|n| ContentId::hash(&n.to_le_bytes()))
            .collect();
        for a in &ids {
            for b in &ids {
                assert_eq!(a.cmp(b), a.0.cmp(&b.0));
            }
        }
    }

    #[test]
    fn envelope_round_trips_plain_and_sealed() {
        let key = MasterKey::random();
        let value = IndexFile::default();
        for k in [None, Some(&key)] {
            let bytes = seal_object(ObjectType::Index, &value, k);
            let back: IndexFile = open_object("index", ObjectType::Index, &bytes, k).unwrap();
            assert_eq!(back, value);
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 1;
                assert!(
                    open_object::<IndexFile>("index", ObjectType::Index, &bad, k).is_err(),
                    "flip at {i} accepted"
                );
            }
        }
    }

    #[test]
    fn newer_version_is_refused_not_misread() {
        let mut bytes = seal_object(ObjectType::Index, &IndexFile::default(), None);
        let newer = FORMAT_VERSION + 1;
        bytes[5] = newer as u8;
        let err = open_object::<IndexFile>("index", ObjectType::Index, &bytes, None).unwrap_err();
        assert!(
            matches!(err, FormatError::NewerVersion { found, .. } if found == newer),
            "{err}"
        );
    }

    #[test]
    fn pack_header_round_trip_keeps_ids_only_of_blobs_stored_alone() {
        let key = MasterKey::random();
        let (stored, compressed) = encode_blob(&b"hello hello hello hello"[..], 3, Some(&key));
        let alone = PackEntry {
            id: blob_id(b"hello hello hello hello", Some(&key)),
            kind: BlobKind::Data,
            offset: 0,
            length: stored.len() as u32,
            raw_length: 23,
            compressed,
            within: None,
        };
        let framed = PackEntry {
            id: blob_id(b"page", Some(&key)),
            raw_length: 4,
            within: Some(19),
            ..alone
        };
        let pack = finish_pack(stored.clone(), &[alone, framed], Some(&key), FORMAT_VERSION);
        let header = read_pack_header(&pack, Some(&key)).unwrap();
        assert_eq!(header.entries.len(), 2);
        assert_eq!(header.entries[0].id, Some(alone.id));
        assert_eq!(header.entries[1].id, None);
        assert!(header.entries[0].records(&alone));
        assert!(header.entries[1].records(&framed));
        assert!(!header.entries[0].records(&framed));
        assert!(!header.entries[1].records(&alone));
        let elsewhere = PackEntry {
            id: blob_id(b"other", Some(&key)),
            ..alone
        };
        assert!(!header.entries[0].records(&elsewhere));
        assert_eq!(
            decode_blob(&alone, &stored, Some(&key)).unwrap(),
            b"hello hello hello hello"
        );
    }

    #[test]
    fn framed_blobs_decode_one_by_one_and_refuse_a_wrong_place() {
        let key = MasterKey::random();
        let pages: Vec<Vec<u8>> = (0..3u8)
            .map(|i| [b"page ".as_slice(), &[i; 8187]].concat())
            .collect();
        let frame = pages.concat();
        let levels = crate::compress::LevelChoice::new(3, 1);
        let (stored, compressed) = encode_frame(frame.as_slice(), &levels, 0, Some(&key));
        assert!(compressed);
        let entry = |i: usize| PackEntry {
            id: blob_id(&pages[i], Some(&key)),
            kind: BlobKind::Data,
            offset: 0,
            length: stored.len() as u32,
            raw_length: 8192,
            compressed,
            within: Some(i as u32 * 8192),
        };
        for (i, page) in pages.iter().enumerate() {
            assert_eq!(&decode_blob(&entry(i), &stored, Some(&key)).unwrap(), page);
        }
        let unit = decode_unit(&entry(0), &stored, Some(&key)).unwrap();
        assert_eq!(unit, frame);
        let mut wrong = entry(1);
        wrong.within = Some(8191);
        assert!(matches!(
            blob_from_unit(&wrong, &unit, Some(&key)),
            Err(FormatError::Checksum { .. })
        ));
        wrong.within = Some(3 * 8192);
        assert!(blob_from_unit(&wrong, &unit, Some(&key)).is_err());
        // A header without the field (written before frames existed) still reads.
        let mut cbor = Vec::new();
        ciborium::into_writer(&entry(0), &mut cbor).unwrap();
        let plain = PackEntry {
            within: None,
            ..entry(0)
        };
        let mut old = Vec::new();
        ciborium::into_writer(&plain, &mut old).unwrap();
        assert!(old.len() < cbor.len());
        let back: PackEntry = ciborium::from_reader(old.as_slice()).unwrap();
        assert_eq!(back, plain);
    }
}
