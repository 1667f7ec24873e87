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
    /// length this sets. Returns the packs this completed: the open pack is stored before a
    /// unit that would carry it past the target (so a pack stays within the target unless a
    /// single unit is larger), and once it reaches the target.
    pub(crate) fn push(
        &mut self,
        stored: &[u8],
        entries: impl IntoIterator<Item = PackEntry>,
    ) -> Result<Vec<IndexPack>> {
        let mut done = Vec::new();
        let len = stored.len() as u64;
        if self
            .open
            .as_ref()
            .is_some_and(|p| !p.entries.is_empty() && p.pending.len() + len > self.target)
        {
            done.extend(self.finish_open()?);
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
        if open.pending.len() >= self.target {
            done.extend(self.finish_open()?);
        }
        Ok(done)
    }

    /// Stores the open pack, if there is one with blobs in it.
    pub(crate) fn finish(mut self) -> Result<Option<IndexPack>> {
        self.finish_open()
    }

    fn finish_open(&mut self) -> Result<Option<IndexPack>> {
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
        self.buffer = open
            .pending
            .finish(&format::pack_key(id), PutMode::Overwrite)?;
        Ok(Some(IndexPack {
            id,
            size,
            entries: open.entries,
        }))
    }
}
