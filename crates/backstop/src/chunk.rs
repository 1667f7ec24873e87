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
        let max_len = match chunking {
            Chunking::Content { max, .. } => max as usize,
            Chunking::Fixed { size } => size.max(1) as usize,
        };
        // One maximal chunk plus 1 MiB: a cut found inside the buffer is final (FastCDC decides
        // a boundary from the bytes before it), so more data is read only when no cut was
        // found in what is there; the unread tail moved to the front is then usually short.
        // Page files are read in large reads, not one system call per page. One buffer per
        // reading thread, so its size is resident memory.
        let capacity = max_len + (1 << 20);
        if self.buf.len() < capacity {
            self.buf.resize(capacity, 0);
        }
        let (mut start, mut end, mut eof) = (0usize, 0usize, false);
        let mut need_more = true;
        loop {
            if need_more && !eof {
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
                if eof {
                    return Ok(());
                }
                // Everything read so far was cut exactly; that is not the end of the data.
                need_more = true;
                continue;
            }
            let complete = eof || available.len() >= max_len;
            let len = match chunking {
                Chunking::Content { min, avg, max } => {
                    // Short of `avg` bytes FastCDC changes its masks, so it may only see a
                    // short slice at the end of the data.
                    if !complete && available.len() < avg as usize {
                        None
                    } else {
                        let cdc = fastcdc::v2020::FastCDC::new(available, min, avg, max);
                        let (_, cut) = cdc.cut(0, available.len());
                        match cut {
                            0 => complete.then_some(available.len()),
                            // Without a boundary FastCDC returns the slice's length: a
                            // real cut only at `max` or the end of the data.
                            n if n >= available.len() => complete.then_some(n),
                            n => Some(n),
                        }
                    }
                }
                Chunking::Fixed { .. } => {
                    (complete || available.len() >= max_len).then(|| max_len.min(available.len()))
                }
            };
            let Some(len) = len else {
                need_more = true;
                continue;
            };
            need_more = false;
            sink(available.get(..len).unwrap_or(available).to_vec())?;
            start += len;
        }
        Ok(())
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
        for step in [1 << 20, 100_000, 4097, 777] {
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
