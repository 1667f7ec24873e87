//! Reading a whole pack front to back in bounded memory, for the commands that read every
//! byte of a pack (gc's rewrite, a full verify): the pack comes in pieces of the store's
//! [`sequential_read_size`](backstop_store::Store::sequential_read_size), hashed as they go
//! by, and only the unit asked for is kept.

use crate::format::{self, PackId};
use crate::progress::Progress;
use crate::repo::{Repository, damaged};
use crate::{Error, ErrorKind, Result};

/// A pack read front to back in pieces, hashed as it goes by, keeping only the bytes from the
/// unit asked for last: memory is a piece plus the largest unit, not the pack.
pub(crate) struct PackStream<'a> {
    repo: &'a Repository,
    /// Told of every piece read (`bytes`), and of the pack at the start (`file`).
    progress: &'a dyn Progress,
    id: PackId,
    pub(crate) key: String,
    size: u64,
    piece: u64,
    hasher: blake3::Hasher,
    /// The bytes `start..read` of the pack.
    kept: Vec<u8>,
    start: u64,
    read: u64,
}

impl<'a> PackStream<'a> {
    pub(crate) fn new(
        repo: &'a Repository,
        id: PackId,
        size: u64,
        progress: &'a dyn Progress,
    ) -> Self {
        let key = format::pack_key(id);
        progress.file(&key);
        Self {
            repo,
            progress,
            id,
            key,
            size,
            // Reading whole packs took one pack's size per thread (8 MiB by default; in gc 16.5
            // of its 48 MiB heap peak on the benchmark mix); the store says what a piece costs.
            piece: repo.store.sequential_read_size().max(1),
            hasher: blake3::Hasher::new(),
            kept: Vec::new(),
            start: 0,
            read: 0,
        }
    }

    /// The stored bytes `offset..offset + length`. Units must come in the order of their offsets
    /// (the same unit again is fine: the blobs of a frame share it).
    pub(crate) fn unit(&mut self, offset: u32, length: u32) -> Result<&[u8]> {
        let (offset, end) = (u64::from(offset), u64::from(offset) + u64::from(length));
        if end > self.size || offset < self.start {
            return Err(damaged(
                &self.key,
                format::FormatError::Truncated {
                    what: "pack (a unit the index lists lies outside it, or before the last)",
                    len: usize::try_from(self.size).unwrap_or(usize::MAX),
                },
            ));
        }
        // Nothing before this unit is asked for again.
        let done = usize::try_from(offset - self.start)
            .unwrap_or(usize::MAX)
            .min(self.kept.len());
        self.kept.drain(..done);
        self.start += done as u64;
        while self.read < end {
            let piece = self.next_piece()?;
            // Only with nothing kept can the unit start beyond what was read.
            let skip = usize::try_from(offset.saturating_sub(self.read - piece.len() as u64))
                .unwrap_or(usize::MAX)
                .min(piece.len());
            self.start += skip as u64;
            self.kept.extend_from_slice(&piece[skip..]);
        }
        let from = usize::try_from(offset - self.start).unwrap_or(usize::MAX);
        let to = usize::try_from(end - self.start).unwrap_or(usize::MAX);
        self.kept.get(from..to).ok_or_else(|| {
            Error::msg(
                ErrorKind::Io,
                format!(
                    "lost track of pack `{}` at offset {offset} (a bug)",
                    self.key
                ),
            )
        })
    }

    /// The pack's header, so that blobs can be checked against it as the pack streams by. A
    /// pack that fits in one piece is read whole, here, once (one request to an object
    /// store); of a larger one the header is read apart, with two ranged reads of its end, and
    /// the stream reads it again for the hash. Asked for before any unit. The outer error is a
    /// failed read, the inner a header that is not sound.
    pub(crate) fn header(
        &mut self,
    ) -> Result<std::result::Result<format::PackHeader, format::FormatError>> {
        if self.read == 0 && self.size <= self.piece {
            self.kept = self.next_piece()?;
            return Ok(format::read_pack_header(&self.kept, self.repo.key()));
        }
        let tail_len = format::PACK_TAIL as u64;
        let Some(tail_start) = self.size.checked_sub(tail_len) else {
            return Ok(Err(format::FormatError::Truncated {
                what: "pack header",
                len: usize::try_from(self.size).unwrap_or(usize::MAX),
            }));
        };
        let tail = self.repo.read_stored(&self.key, tail_start..self.size)?;
        let Ok(tail) = <[u8; format::PACK_TAIL]>::try_from(tail.as_slice()) else {
            return Ok(Err(format::FormatError::Truncated {
                what: "pack header",
                len: usize::try_from(tail_start).unwrap_or(usize::MAX) + tail.len(),
            }));
        };
        let start = match format::pack_header_start(&tail, self.size) {
            Ok(start) => start,
            Err(e) => return Ok(Err(e)),
        };
        let sealed = self.repo.read_stored(&self.key, start..tail_start)?;
        Ok(format::open_pack_header(&sealed, start, self.repo.key()))
    }

    /// Reads and hashes the next piece.
    fn next_piece(&mut self) -> Result<Vec<u8>> {
        let to = (self.read + self.piece).min(self.size);
        let piece = self.repo.read_stored(&self.key, self.read..to)?;
        if piece.len() as u64 != to - self.read {
            return Err(damaged(
                &self.key,
                format::FormatError::Truncated {
                    what: "pack",
                    len: usize::try_from(self.read).unwrap_or(usize::MAX) + piece.len(),
                },
            ));
        }
        self.hasher.update(&piece);
        self.read = to;
        self.progress.bytes(piece.len() as u64);
        Ok(piece)
    }

    /// Reads the rest of the pack and checks all of it against its id.
    pub(crate) fn finish(self) -> Result<()> {
        let key = self.key.clone();
        if self.finish_matches()? {
            Ok(())
        } else {
            Err(damaged(
                &key,
                format::FormatError::Checksum { what: "pack" },
            ))
        }
    }

    /// Reads the rest of the pack; whether all of it matches its id.
    pub(crate) fn finish_matches(mut self) -> Result<bool> {
        self.kept = Vec::new();
        while self.read < self.size {
            self.next_piece()?;
        }
        Ok(format::ContentId(*self.hasher.finalize().as_bytes()) == self.id)
    }
}

#[cfg(test)]
mod tests {
    use backstop_store::PutMode;

    use super::*;
    use crate::format::ContentId;
    use crate::progress::NoProgress;

    /// A pack of `len` bytes in the store of an unencrypted repository in memory.
    fn stored_pack(len: usize) -> (Repository, PackId, Vec<u8>) {
        let repo = crate::repo::memory_repository();
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let id = ContentId::hash(&bytes);
        repo.store
            .put(&format::pack_key(id), &bytes, PutMode::Create)
            .unwrap();
        (repo, id, bytes)
    }

    #[test]
    fn a_pack_stream_hands_out_units_across_pieces_and_checks_the_whole_pack() {
        let (repo, id, bytes) = stored_pack(10_000);
        let mut stream = PackStream::new(&repo, id, bytes.len() as u64, &NoProgress);
        stream.piece = 1000;
        // Within the first piece, across three pieces, adjacent to the last, after a gap of
        // whole unread pieces, and ending at the last byte.
        for (offset, length) in [(10, 100), (900, 2200), (3100, 5), (7300, 1), (9990, 10)] {
            let unit = stream.unit(offset, length).unwrap();
            let range = offset as usize..(offset + length) as usize;
            assert_eq!(unit, &bytes[range], "unit at {offset}");
            // What is kept is the unit and the rest of its last piece, never the pack.
            assert!(
                stream.kept.len() < length as usize + 1000,
                "{}",
                stream.kept.len()
            );
        }
        stream.finish().unwrap();

        // The units asked for are not all the pack: the rest is read for the check.
        let mut stream = PackStream::new(&repo, id, bytes.len() as u64, &NoProgress);
        stream.piece = 1000;
        assert_eq!(stream.unit(0, 10).unwrap(), &bytes[..10]);
        stream.finish().unwrap();
    }

    /// Puts `bytes` into the repository's store as a pack and opens a stream on it.
    fn stream_of<'a>(repo: &'a Repository, bytes: &[u8]) -> PackStream<'a> {
        let id = ContentId::hash(bytes);
        repo.store
            .put(&format::pack_key(id), bytes, PutMode::Overwrite)
            .unwrap();
        PackStream::new(repo, id, bytes.len() as u64, &NoProgress)
    }

    /// The header of `bytes` as a pack, read both ways: whole (it fits in a piece) and apart
    /// (pieces of 16 bytes), which must agree.
    fn header_both_ways(
        repo: &Repository,
        bytes: &[u8],
    ) -> std::result::Result<format::PackHeader, format::FormatError> {
        let whole = stream_of(repo, bytes).header().unwrap();
        let mut apart = stream_of(repo, bytes);
        apart.piece = 16;
        let apart = apart.header().unwrap();
        assert_eq!(
            format!("{whole:?}"),
            format!("{apart:?}"),
            "the two ways disagree"
        );
        whole
    }

    #[test]
    fn a_pack_header_is_read_from_the_end_or_its_fault_named() {
        let repo = crate::repo::memory_repository();
        let entry = format::PackEntry {
            id: ContentId([3; 32]),
            kind: format::BlobKind::Data,
            offset: 10,
            length: 90,
            raw_length: 90,
            compressed: false,
            within: None,
        };
        let mut pack = vec![7u8; 100];
        pack.extend(format::pack_trailer(&[entry], None, format::FORMAT_VERSION));
        let header = header_both_ways(&repo, &pack).unwrap();
        assert_eq!(header.entries.len(), 1);
        assert!(header.entries[0].records(&entry));
        // Read whole, the pack's units come from what the header read kept.
        let mut whole = stream_of(&repo, &pack);
        whole.header().unwrap().unwrap();
        assert_eq!(whole.unit(10, 90).unwrap(), &pack[10..100]);
        assert!(whole.finish_matches().unwrap());

        let short = header_both_ways(&repo, b"BKP1").unwrap_err();
        assert!(
            matches!(short, format::FormatError::Truncated { .. }),
            "{short}"
        );
        let no_magic = header_both_ways(&repo, &[7u8; 100]).unwrap_err();
        assert!(
            matches!(no_magic, format::FormatError::BadMagic { .. }),
            "{no_magic}"
        );
        // A header length that points before the pack's start.
        let mut too_long = vec![7u8; 100];
        too_long.extend(1000u32.to_le_bytes());
        too_long.extend(b"BKP1");
        let err = header_both_ways(&repo, &too_long).unwrap_err();
        assert!(
            matches!(err, format::FormatError::Truncated { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_pack_stream_reports_a_damaged_pack_and_units_it_cannot_hold() {
        let (repo, id, mut bytes) = stored_pack(5000);
        let key = format::pack_key(id);
        let stream = |repo| {
            let mut s = PackStream::new(repo, id, 5000, &NoProgress);
            s.piece = 1000;
            s
        };
        let mut units_out_of_order = stream(&repo);
        units_out_of_order.unit(2000, 10).unwrap();
        let error = units_out_of_order.unit(1000, 10).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Corrupt, "{error}");
        let error = stream(&repo).unit(4990, 11).unwrap_err();
        assert!(error.to_string().contains(&key), "{error}");

        // A byte changed outside the units read is found by the whole-pack check.
        bytes[4500] ^= 1;
        repo.store.put(&key, &bytes, PutMode::Overwrite).unwrap();
        let mut damaged = stream(&repo);
        assert_eq!(damaged.unit(0, 100).unwrap(), &bytes[..100]);
        let error = damaged.finish().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Corrupt, "{error}");
        assert!(error.to_string().contains(&key), "{error}");

        // A pack shorter than the index says.
        repo.store
            .put(&key, &bytes[..4000], PutMode::Overwrite)
            .unwrap();
        let error = stream(&repo).finish().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Corrupt, "{error}");
    }
}
