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

/// Cuts files into chunks, reusing one read buffer across files (FastCDC's own streaming
/// chunker zeroes a fresh buffer per file and shifts it after every chunk; profiles showed that
/// as a fifth of a backup's CPU).
#[derive(Debug, Default)]
pub(crate) struct Chunker {
    buf: Vec<u8>,
}

impl Chunker {
    /// Feeds every chunk of `reader` to `sink`, in order. Stops at the first error of either.
    pub(crate) fn for_each_chunk<R: Read>(
        &mut self,
        mut reader: R,
        chunking: Chunking,
        mut sink: impl FnMut(Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        let Chunking::Content { min, avg, max } = chunking else {
            return for_each_chunk(reader, chunking, sink);
        };
        let max_len = max as usize;
        // Room for several chunks, so the tail is moved to the front only once per few chunks.
        let capacity = (4 * max_len).max(1 << 20);
        if self.buf.len() < capacity {
            self.buf.resize(capacity, 0);
        }
        let (mut start, mut end, mut eof) = (0usize, 0usize, false);
        loop {
            if !eof && end - start < max_len {
                self.buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                while end < capacity && !eof {
                    let Some(free) = self.buf.get_mut(end..capacity) else {
                        break;
                    };
                    match reader.read(free) {
                        Ok(0) => eof = true,
                        Ok(n) => end += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            let Some(available) = self.buf.get(start..end) else {
                break;
            };
            if available.is_empty() {
                return Ok(());
            }
            // With fewer than `max` bytes left before the end of the file, the end of the slice
            // is the end of the data, as FastCDC assumes.
            let cdc = fastcdc::v2020::FastCDC::new(available, min, avg, max);
            let (_, cut) = cdc.cut(0, available.len());
            let len = if cut == 0 { available.len() } else { cut };
            sink(available.get(..len).unwrap_or(available).to_vec())?;
            start += len;
        }
        Ok(())
    }
}

/// Feeds every chunk of `reader` to `sink`, in order. Stops at the first error of either.
pub(crate) fn for_each_chunk<R: Read>(
    reader: R,
    chunking: Chunking,
    mut sink: impl FnMut(Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    match chunking {
        Chunking::Content { .. } => Chunker::default().for_each_chunk(reader, chunking, sink),
        Chunking::Fixed { size } => {
            let mut reader = reader;
            loop {
                let mut buf = Vec::with_capacity(size as usize);
                let n = (&mut reader).take(u64::from(size)).read_to_end(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                sink(buf)?;
                if n < size as usize {
                    return Ok(());
                }
            }
        }
    }
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
}
