//! Writing packs: stored units go to the store as they arrive, the header that names them goes
//! last, and the pack is named by the BLAKE3 hash of all its bytes once it is complete.
//!
//! A pack is never held whole in memory where the store can take it piece by piece
//! ([`backstop_store::Store::put_pieces`]; a local store writes a temp file): a backup kept a
//! buffer of the pack size, 9 MiB of its ~60 MiB peak, and gc one per thread.

use backstop_store::{PendingObject, PutMode};

use crate::format::{self, ContentId, IndexPack, PackEntry};
use crate::repo::Repository;
use crate::{Error, ErrorKind, Result};

/// Blobs in one pack, at most (unless one stored unit holds more). A pack's entries are kept in
/// memory until it is stored and then go into one index object, whose size this bounds too (an
/// index object is cut at about as many entries, but never inside a pack). Without it, a pack
/// of a million tiny files' blobs held 68 MB of entries while it was written.
pub(crate) const MAX_PACK_ENTRIES: usize = 16_384;

/// Assembles packs of about the repository's pack size from stored units (a sealed blob, or a
/// sealed frame of small blobs) and their entries.
pub(crate) struct PackWriter<'a> {
    repo: &'a Repository,
    target: u64,
    open: Option<OpenPack<'a>>,
    /// The memory a store that gathers a pack's pieces keeps them in, handed from one pack to
    /// the next: a new 9 MiB buffer for each pack would, once freed, raise glibc's threshold
    /// for serving allocations by `mmap`, and the heap would then keep more freed memory.
    buffer: Vec<u8>,
}

/// The pack being written.
struct OpenPack<'a> {
    pending: Box<dyn PendingObject + 'a>,
    hasher: blake3::Hasher,
    entries: Vec<PackEntry>,
}

impl<'a> PackWriter<'a> {
    pub(crate) fn new(repo: &'a Repository) -> Self {
        Self {
            repo,
            target: u64::from(repo.config.pack_size),
            open: None,
            buffer: Vec::new(),
        }
    }

    /// Appends a stored unit; `entries` are the entries of the blobs in it, whose offset and
    /// length this sets. Returns the packs this completed, stored: the open pack is stored
    /// before a unit that would carry it past the target size or past [`MAX_PACK_ENTRIES`]
    /// blobs (so a pack stays within both unless a single unit is larger), and once it reaches
    /// either.
    pub(crate) fn push(
        &mut self,
        stored: &[u8],
        entries: impl IntoIterator<Item = PackEntry>,
    ) -> Result<Vec<IndexPack>> {
        let mut done = Vec::new();
        // Each pack is stored as soon as it is closed, so the next one opens with the buffer
        // the store gave back instead of a new one.
        self.push_with(stored, entries, |writer, pack| {
            done.push(writer.store(pack)?);
            Ok(())
        })?;
        Ok(done)
    }

    /// [`push`](Self::push), but the completed packs come back closed, not stored: the caller
    /// stores them ([`ClosedPack::store`]), on another thread if it likes, and may hand their
    /// buffers back ([`give_buffer`](Self::give_buffer)).
    pub(crate) fn push_closing(
        &mut self,
        stored: &[u8],
        entries: impl IntoIterator<Item = PackEntry>,
    ) -> Result<Vec<ClosedPack<'a>>> {
        let mut done = Vec::new();
        self.push_with(stored, entries, |_, pack| {
            done.push(pack);
            Ok(())
        })?;
        Ok(done)
    }

    /// Appends a stored unit, giving each pack it completes to `closed` as soon as it is closed.
    fn push_with(
        &mut self,
        stored: &[u8],
        entries: impl IntoIterator<Item = PackEntry>,
        mut closed: impl FnMut(&mut Self, ClosedPack<'a>) -> Result<()>,
    ) -> Result<()> {
        let len = stored.len() as u64;
        let entries: Vec<PackEntry> = entries.into_iter().collect();
        if self.open.as_ref().is_some_and(|p| {
            !p.entries.is_empty()
                && (p.pending.len() + len > self.target
                    || p.entries.len() + entries.len() > MAX_PACK_ENTRIES)
        }) && let Some(pack) = self.close()?
        {
            closed(self, pack)?;
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => self.open.insert(OpenPack {
                pending: self.repo.store.put_pieces(
                    self.target as usize + (1 << 20),
                    std::mem::take(&mut self.buffer),
                )?,
                hasher: blake3::Hasher::new(),
                entries: Vec::new(),
            }),
        };
        let offset = u32::try_from(open.pending.len())
            .map_err(|_| Error::msg(ErrorKind::Io, "a pack outgrew 4 GiB"))?;
        let length = u32::try_from(len)
            .map_err(|_| Error::msg(ErrorKind::Io, "a stored unit outgrew 4 GiB"))?;
        open.pending.write(stored)?;
        open.hasher.update(stored);
        open.entries.extend(entries.into_iter().map(|e| PackEntry {
            offset,
            length,
            ..e
        }));
        if (open.pending.len() >= self.target || open.entries.len() >= MAX_PACK_ENTRIES)
            && let Some(pack) = self.close()?
        {
            closed(self, pack)?;
        }
        Ok(())
    }

    /// Stores the open pack, if there is one with blobs in it.
    pub(crate) fn finish(mut self) -> Result<Option<IndexPack>> {
        self.close()?.map(|pack| self.store(pack)).transpose()
    }

    /// Closes the open pack, if there is one with blobs in it: writes its header and names it.
    /// The pack is not stored yet.
    pub(crate) fn close(&mut self) -> Result<Option<ClosedPack<'a>>> {
        let Some(mut open) = self.open.take() else {
            return Ok(None);
        };
        if open.entries.is_empty() {
            return Ok(None);
        }
        let trailer =
            format::pack_trailer(&open.entries, self.repo.key(), self.repo.write_version());
        open.pending.write(&trailer)?;
        open.hasher.update(&trailer);
        let id = ContentId(*open.hasher.finalize().as_bytes());
        let size = open.pending.len();
        Ok(Some(ClosedPack {
            pending: open.pending,
            pack: IndexPack {
                id,
                size,
                entries: open.entries,
            },
        }))
    }

    /// A buffer a stored pack gave back, for the next pack.
    pub(crate) fn give_buffer(&mut self, buffer: Vec<u8>) {
        if buffer.capacity() > self.buffer.capacity() {
            self.buffer = buffer;
        }
    }

    fn store(&mut self, pack: ClosedPack<'_>) -> Result<IndexPack> {
        let (pack, buffer) = pack.store()?;
        self.give_buffer(buffer);
        Ok(pack)
    }
}

/// A pack whose bytes are all written and whose name is known, not yet stored.
pub(crate) struct ClosedPack<'a> {
    pending: Box<dyn PendingObject + 'a>,
    pack: IndexPack,
}

impl ClosedPack<'_> {
    /// Stores the pack (on a local store: fsync, then rename into place; on an object store:
    /// the upload). Returns its index entry and the buffer the store gave back. Dropped
    /// instead, the pack leaves nothing visible.
    pub(crate) fn store(self) -> Result<(IndexPack, Vec<u8>)> {
        let buffer = self
            .pending
            .finish(&format::pack_key(self.pack.id), PutMode::Overwrite)?;
        Ok((self.pack, buffer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlobKind;

    #[test]
    fn a_pack_of_tiny_blobs_is_stored_once_it_holds_the_most_entries_a_pack_may() {
        let repo = crate::repo::memory_repository();
        let mut writer = PackWriter::new(&repo);
        let mut packs = Vec::new();
        let blobs = 2 * MAX_PACK_ENTRIES + 100;
        for n in 0..blobs {
            let unit = (n as u64).to_le_bytes();
            let entry = PackEntry::for_test(ContentId::hash(&unit), BlobKind::Data);
            packs.extend(writer.push(&unit, [entry]).unwrap());
        }
        packs.extend(writer.finish().unwrap());
        let sizes: Vec<usize> = packs.iter().map(|p| p.entries.len()).collect();
        // 262 KiB of units: far below the size target, so only the count cut them.
        assert_eq!(sizes, [MAX_PACK_ENTRIES, MAX_PACK_ENTRIES, 100]);
        // A unit with more entries than that (a frame of tiny blobs) still makes one pack.
        let mut writer = PackWriter::new(&repo);
        let frame: Vec<PackEntry> = (0..MAX_PACK_ENTRIES + 1)
            .map(|n| PackEntry {
                within: Some(u32::try_from(n).unwrap()),
                ..PackEntry::for_test(
                    ContentId::hash(format!("in frame {n}").as_bytes()),
                    BlobKind::Data,
                )
            })
            .collect();
        writer
            .push(b"small", packs[0].entries[..1].to_vec())
            .unwrap();
        let done = writer.push(b"frame", frame).unwrap();
        assert_eq!(
            done.iter().map(|p| p.entries.len()).collect::<Vec<_>>(),
            [1, MAX_PACK_ENTRIES + 1]
        );
        assert!(writer.finish().unwrap().is_none());
    }

    #[test]
    fn a_pack_stored_before_a_unit_gives_its_buffer_to_the_pack_that_unit_opens() {
        // The memory store gathers a pack's pieces in the buffer it is given and gives it back.
        let repo = crate::repo::memory_repository();
        let mut writer = PackWriter::new(&repo);
        let unit = vec![7u8; 5 << 20]; // more than half the 8 MiB target: one unit per pack
        let first = PackEntry::for_test(ContentId::hash(b"first"), BlobKind::Data);
        assert!(writer.push(&unit, [first]).unwrap().is_empty());
        let second = PackEntry::for_test(ContentId::hash(b"second"), BlobKind::Data);
        let done = writer.push(&unit, [second]).unwrap();
        assert_eq!(
            done.len(),
            1,
            "the first pack is stored before the second unit"
        );
        // Had the first pack been stored only after the second opened, the second would have
        // started a buffer of its own and the writer would now hold the first one's.
        assert_eq!(writer.buffer.capacity(), 0, "the open pack took the buffer");
        assert_eq!(writer.finish().unwrap().map(|p| p.entries.len()), Some(1));
    }
}
