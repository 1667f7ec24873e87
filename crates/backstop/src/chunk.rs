//! Chunking: cutting a file's bytes into blobs, by content (FastCDC) or in fixed blocks.
//!
//! The source's [`backstop_source::ChangeModel`] picks the chunker: files updated in place by
//! pages are cut at page boundaries, so an unchanged page is an unchanged blob; everything else
//! is cut by content, so an insertion shifts only the chunks around it.

use std::io::{self, Read};

use backstop_source::ChangeModel;

/// How one file is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunking {
    /// FastCDC (2020) with these minimum, average and maximum sizes.
    Content { min: u32, avg: u32, max: u32 },
    /// Blocks of exactly this size (the last may be shorter).
    Fixed { size: u32 },
}

impl Chunking {
    pub(crate) fn for_change(change: &ChangeModel, cdc: (u32, u32, u32)) -> Self {
        match change {
            ChangeModel::Pages { page_size } if *page_size > 0 => Self::Fixed { size: *page_size },
            _ => Self::Content {
                min: cdc.0,
                avg: cdc.1,
                max: cdc.2,
            },
        }
    }
}

/// How much is read per system call: whole runs of pages for page files, and the step in which
/// a content-defined chunk grows.
const READ_SIZE: usize = 256 * 1024;

/// Cuts files into chunks.
///
/// Content-defined chunks are read straight into their own buffer, which goes on down the
/// pipeline, while FastCDC's scan resumes where the last read ended; only the bytes read past a
/// cut are copied, into the next chunk. So a reading thread holds no buffer of its own beyond
/// the chunk it is filling (an earlier design kept one of the maximum chunk size plus 1 MiB per
/// thread, and copied every chunk out of it). Page files are read in runs of pages into one
/// reused buffer and cut from it.
#[derive(Debug)]
pub(crate) struct Chunker {
    /// The read buffer of fixed-size chunking.
    pages: Vec<u8>,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl Default for Chunker {
    fn default() -> Self {
        // The original tables (seed 0), as `fastcdc::v2020::FastCDC::new` uses them.
        let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(0);
        Self {
            pages: Vec::new(),
            gear,
            gear_ls,
        }
    }
}

/// FastCDC (2020, normalisation level 1, as `fastcdc::v2020::FastCDC::new`) as a scan that can
/// stop where the data read so far ends and go on when more arrives: the cut it finds is the
/// one the batch function `fastcdc::v2020::cut_gear` finds on the whole chunk, because that
/// function looks at each byte pair once, in order, and at the total length only to stop.
#[derive(Debug)]
struct ContentCut {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    /// Index of the next byte pair to hash (the batch function's `index`).
    pair: usize,
    hash: u64,
}

impl ContentCut {
    fn new(min: u32, avg: u32, max: u32) -> Self {
        let bits = fastcdc::v2020::logarithm2(avg);
        // Normalisation level 1: a stricter mask before the average size, a looser one after.
        let mask = |b: u32| {
            fastcdc::v2020::MASKS
                .get(b as usize)
                .copied()
                .unwrap_or(u64::MAX)
        };
        Self {
            min: min as usize,
            avg: avg as usize,
            max: max as usize,
            mask_s: mask(bits + 1),
            mask_l: mask(bits.saturating_sub(1)),
            pair: min as usize / 2,
            hash: 0,
        }
    }

    /// Starts a new chunk.
    fn reset(&mut self) {
        self.pair = self.min / 2;
        self.hash = 0;
    }

    /// The cut in `chunk` (the bytes of the current chunk read so far), if it is decided; `eof`
    /// says no more bytes follow.
    fn find(
        &mut self,
        chunk: &[u8],
        gear: &[u64; 256],
        gear_ls: &[u64; 256],
        eof: bool,
    ) -> Option<usize> {
        let len = chunk.len();
        if len <= self.min {
            return eof.then_some(len);
        }
        // Pairs wholly read and below the maximum size; the small mask applies below the
        // average size (the batch function lowers that bound to the length when the data ends
        // first, which changes nothing: no pair at or past the length is hashed).
        let end = len.min(self.max) / 2;
        for (bound, mask) in [(self.avg / 2, self.mask_s), (end, self.mask_l)] {
            let stop = bound.min(end);
            if self.pair >= stop {
                continue;
            }
            let pairs = chunk.get(self.pair * 2..stop * 2).unwrap_or_default();
            let mask_ls = mask << 1;
            for (i, pair) in pairs.chunks_exact(2).enumerate() {
                let &[first, second] = pair else { break };
                self.hash = (self.hash << 2).wrapping_add(gear_ls[usize::from(first)]);
                if self.hash & mask_ls == 0 {
                    return Some((self.pair + i) * 2);
                }
                self.hash = self.hash.wrapping_add(gear[usize::from(second)]);
                if self.hash & mask == 0 {
                    return Some((self.pair + i) * 2 + 1);
                }
            }
            self.pair = stop;
        }
        // No boundary: the chunk ends at the maximum size, or where the data does.
        if len >= self.max {
            Some(self.max)
        } else {
            eof.then_some(len)
        }
    }
}

/// What a chunker consults around its reads: whether to read on, and how much was read.
///
/// Kept apart from the reader rather than wrapped around it: a wrapping `Read` would hide the
/// inner reader's `read_buf` (not implementable on stable Rust), and `read_to_end` would zero
/// every chunk buffer before the read overwrites it (3.6 % of a re-read of a large file).
pub(crate) trait ReadGuard {
    /// Before a read: an error stops the chunking with it.
    fn before_read(&mut self) -> io::Result<()>;
    /// After a read that gave `bytes`.
    fn after_read(&mut self, bytes: usize);
}

/// No checks and no counts.
impl ReadGuard for () {
    fn before_read(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn after_read(&mut self, _bytes: usize) {}
}

impl Chunker {
    /// Feeds every chunk of `reader` to `sink`, in order. Stops at the first error of either.
    #[cfg(test)]
    pub(crate) fn for_each_chunk<R: Read>(
        &mut self,
        reader: R,
        chunking: Chunking,
        sink: impl FnMut(Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        self.for_each_chunk_guarded(reader, &mut (), chunking, sink)
    }

    /// [`Self::for_each_chunk`], with `guard` asked before and told after each read.
    pub(crate) fn for_each_chunk_guarded<R: Read>(
        &mut self,
        reader: R,
        guard: &mut dyn ReadGuard,
        chunking: Chunking,
        sink: impl FnMut(Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        match chunking {
            Chunking::Content { min, avg, max } => {
                self.content_chunks(reader, guard, ContentCut::new(min, avg, max), sink)
            }
            Chunking::Fixed { size } => {
                self.fixed_chunks(reader, guard, size.max(1) as usize, sink)
            }
        }
    }

    fn content_chunks<R: Read>(
        &mut self,
        mut reader: R,
        guard: &mut dyn ReadGuard,
        mut cut: ContentCut,
        mut sink: impl FnMut(Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        // Most chunks end near the average size, so most never grow.
        let first_capacity = cut.avg + READ_SIZE;
        let mut chunk: Vec<u8> = Vec::with_capacity(first_capacity);
        let mut eof = false;
        loop {
            while let Some(at) = cut.find(&chunk, &self.gear, &self.gear_ls, eof) {
                if at == 0 {
                    return Ok(());
                }
                let mut next = Vec::with_capacity(first_capacity.max(chunk.len() - at));
                next.extend_from_slice(chunk.get(at..).unwrap_or_default());
                chunk.truncate(at);
                // Give back what the chunk did not use before it travels on: several chunks
                // are in flight at once, and a grown buffer can be a megabyte too large.
                // (Shrinking in place is cheap; growing by doubling keeps copies few.)
                if chunk.capacity() - chunk.len() > 64 * 1024 {
                    chunk.shrink_to_fit();
                }
                sink(std::mem::replace(&mut chunk, next))?;
                cut.reset();
            }
            if eof {
                return Ok(());
            }
            chunk.reserve(READ_SIZE);
            // `take(..).read_to_end` reads until READ_SIZE bytes or the end of the data, and
            // fills the spare capacity without zeroing it first where the reader implements
            // `read_buf` (files do).
            guard.before_read()?;
            let read = (&mut reader)
                .take(READ_SIZE as u64)
                .read_to_end(&mut chunk)?;
            guard.after_read(read);
            eof = read < READ_SIZE;
        }
    }

    fn fixed_chunks<R: Read>(
        &mut self,
        mut reader: R,
        guard: &mut dyn ReadGuard,
        size: usize,
        mut sink: impl FnMut(Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        // Whole pages per read, and at least one.
        let capacity = size.max(READ_SIZE / size * size);
        if self.pages.len() < capacity {
            self.pages.resize(capacity, 0);
        }
        let mut end = 0usize;
        loop {
            let mut eof = false;
            while end < capacity {
                let Some(free) = self.pages.get_mut(end..capacity) else {
                    break;
                };
                guard.before_read()?;
                match reader.read(free) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        guard.after_read(n);
                        end += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let filled = self.pages.get(..end).unwrap_or_default();
            let whole = filled.len() / size * size;
            for page in filled.chunks(size) {
                if page.len() == size || eof {
                    sink(page.to_vec())?;
                }
            }
            if eof {
                return Ok(());
            }
            self.pages.copy_within(whole..end, 0);
            end -= whole;
        }
    }
}

/// Feeds every chunk of `reader` to `sink`, in order, with a fresh buffer.
#[cfg(test)]
pub(crate) fn for_each_chunk<R: Read>(
    reader: R,
    chunking: Chunking,
    sink: impl FnMut(Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    Chunker::default().for_each_chunk(reader, chunking, sink)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cut(data: &[u8], chunking: Chunking) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for_each_chunk(data, chunking, |c| {
            out.push(c);
            Ok(())
        })
        .unwrap();
        out
    }

    proptest! {
        #[test]
        fn chunks_concatenate_to_the_input(data in proptest::collection::vec(any::<u8>(), 0..200_000), fixed in 1u32..70_000) {
            for chunking in [Chunking::Content { min: 4096, avg: 16384, max: 65536 }, Chunking::Fixed { size: fixed }] {
                let chunks = cut(&data, chunking);
                prop_assert_eq!(chunks.concat(), data.clone());
                prop_assert!(chunks.iter().all(|c| !c.is_empty()));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any sizes, any read pattern: the cuts are FastCDC's on the whole input.
        #[test]
        fn resumed_scans_cut_where_fastcdc_cuts(
            seed in any::<u64>(),
            len in 0usize..400_000,
            zeros in 0usize..3,
            min in 64u32..5000,
            avg_extra in 0u32..20_000,
            max_extra in 0u32..60_000,
            step in 1usize..300_000,
        ) {
            let mut x = seed | 1;
            let data: Vec<u8> = (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Some runs of zeros, so that chunks reach the maximum.
                    if zeros > 0 && (i / 50_000) % 3 == zeros { 0 } else { x as u8 }
                })
                .collect();
            let avg = (min + avg_extra).max(256);
            let max = (avg + max_extra).max(1024);
            let reference: Vec<usize> = fastcdc::v2020::FastCDC::new(&data, min, avg, max)
                .map(|c| c.length)
                .collect();
            let mut lengths = Vec::new();
            Chunker::default()
                .for_each_chunk(Trickle { data: &data, step }, Chunking::Content { min, avg, max }, |c| {
                    lengths.push(c.len());
                    Ok(())
                })
                .unwrap();
            prop_assert_eq!(lengths, reference);
        }
    }

    #[test]
    fn content_defined_boundaries_resync_after_an_insert() {
        let mut data = vec![0u8; 1 << 20];
        let mut x = 12345u64;
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let chunking = Chunking::Content {
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        let before = cut(&data, chunking);
        let mut edited = data.clone();
        edited.splice(500_000..500_000, b"inserted bytes".iter().copied());
        let after = cut(&edited, chunking);
        let shared = after.iter().filter(|c| before.contains(c)).count();
        assert!(
            shared + 3 >= before.len(),
            "only {shared} of {} chunks survived",
            before.len()
        );
    }

    /// Counts what it is told and refuses the read after `allow` reads.
    struct Counting {
        reads: usize,
        bytes: usize,
        allow: usize,
    }

    impl ReadGuard for Counting {
        fn before_read(&mut self) -> io::Result<()> {
            if self.reads == self.allow {
                return Err(io::Error::other("stopped by the guard"));
            }
            self.reads += 1;
            Ok(())
        }
        fn after_read(&mut self, bytes: usize) {
            self.bytes += bytes;
        }
    }

    /// The guard hears of every byte read, and its refusal stops the chunking before the next
    /// read, for both ways of cutting.
    #[test]
    fn the_guard_counts_every_read_and_can_stop_the_next() {
        let data = vec![7u8; 3 * READ_SIZE + 100];
        let content = Chunking::Content {
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        for chunking in [content, Chunking::Fixed { size: 8192 }] {
            let mut guard = Counting {
                reads: 0,
                bytes: 0,
                allow: usize::MAX,
            };
            let mut chunked = 0;
            Chunker::default()
                .for_each_chunk_guarded(&data[..], &mut guard, chunking, |c| {
                    chunked += c.len();
                    Ok(())
                })
                .unwrap();
            assert_eq!(
                (guard.bytes, chunked),
                (data.len(), data.len()),
                "{chunking:?}"
            );

            let mut guard = Counting {
                reads: 0,
                bytes: 0,
                allow: 2,
            };
            let err = Chunker::default()
                .for_each_chunk_guarded(&data[..], &mut guard, chunking, |_| Ok(()))
                .unwrap_err();
            assert_eq!(err.to_string(), "stopped by the guard", "{chunking:?}");
            assert_eq!(guard.bytes, 2 * READ_SIZE, "{chunking:?}");
        }
    }

    /// Reads at most `step` bytes per call, like a pipe or a slow source.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn cuts_match_fastcdc_on_the_whole_input_whatever_the_read_sizes() {
        let mut data = vec![0u8; 3 << 20];
        let mut x = 99u64;
        for (i, b) in data.iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Long runs of zeros in places, so some chunks reach the maximum size.
            *b = if (i / 300_000) % 3 == 1 { 0 } else { x as u8 };
        }
        let (min, avg, max) = (16 * 1024, 64 * 1024, 256 * 1024);
        let reference: Vec<usize> = fastcdc::v2020::FastCDC::new(&data, min, avg, max)
            .map(|c| c.length)
            .collect();
        for step in [1 << 20, 100_000, 4097, 777, 1] {
            let mut lengths = Vec::new();
            Chunker::default()
                .for_each_chunk(
                    Trickle { data: &data, step },
                    Chunking::Content { min, avg, max },
                    |c| {
                        lengths.push(c.len());
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(lengths, reference, "reads of {step} bytes");
            let mut pages = 0usize;
            Chunker::default()
                .for_each_chunk(
                    Trickle { data: &data, step },
                    Chunking::Fixed { size: 8192 },
                    |c| {
                        assert_eq!(c.len(), 8192);
                        pages += 1;
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(pages, data.len() / 8192, "reads of {step} bytes");
        }
    }
}
