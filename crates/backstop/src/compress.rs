//! Blob compression: zstd at a configurable level, or raw when it does not pay.
//!
//! Levels are zstd's own: 1 to 22, and below zero its fast levels (`zstd --fast=N` is level
//! -N), which trade ratio for speed; 0 turns compression off.
//!
//! Each thread keeps its own zstd contexts: creating a context and its tables costs more than
//! compressing an 8 KiB page, and page files are stored page by page.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Blobs at least this large are probed before they are compressed whole.
const PROBE_FROM: usize = 256 * 1024;
/// How much of a large blob the probe compresses.
const PROBE_LEN: usize = 64 * 1024;
/// One frame in this many of a lane is compressed both ways (see [`LevelChoice`]).
const TRY_BOTH_EVERY: u32 = 8;

/// The hash table of the quick setting: 2^16 entries, where zstd's level 1 sizes it at 2^14
/// for a 256 KiB input. Compared frame by frame on the benchmark's files it stores 0.3 % less
/// than plain level 1 at the same speed (the SQLite file 101.20 against 101.54 MB, the
/// PostgreSQL relations 18.10 against 18.15 MB).
const QUICK_HASH_LOG: u32 = 16;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static QUICK: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compresses `raw` at `level`; `None` when compression is off or would not make it smaller.
pub(crate) fn compress(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    compress_probed(raw, level, raw.len() >= PROBE_FROM)
}

/// [`compress`] without the probe, for a frame of small blobs or a metadata object. Frames hold
/// database pages and small files, which nearly always compress, and probing every 256 KiB
/// frame (a level-1 pass over its first 64 KiB, and two level switches of the context) made
/// full backups of the benchmark mix take half as much CPU again (5.2 → 7.9 s). An index
/// object starts with its ids, which do not compress, and the rest of it does.
pub(crate) fn compress_whole(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    compress_probed(raw, level, false)
}

fn compress_probed(raw: &[u8], level: i32, probe: bool) -> Option<Vec<u8>> {
    if level == 0 || raw.len() < 64 {
        return None;
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            // Changing a context's level is cheap; a new context allocates its tables again.
            Some((l, compressor)) if *l != level => {
                compressor.set_compression_level(level).ok()?;
                *l = level;
            }
            Some(_) => {}
            None => *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?)),
        }
        let (_, compressor) = slot.as_mut()?;
        // Encrypted, already compressed or random data does not shrink; zstd still spends most
        // of its time looking for matches in it. A probe of the first 64 KiB at level 1 (or
        // the fast level asked for, if lower) tells such data apart for a twentieth of the cost.
        if probe {
            let probe = raw.get(..PROBE_LEN)?;
            compressor.set_compression_level(level.min(1)).ok()?;
            let probed = compressor.compress(probe);
            compressor.set_compression_level(level).ok()?;
            if !pays(probed.ok()?.len(), probe.len()) {
                return None;
            }
        }
        let compressed = compressor.compress(raw).ok()?;
        pays(compressed.len(), raw.len()).then_some(compressed)
    })
}

/// Level 1 with a larger hash table ([`QUICK_HASH_LOG`]), for [`LevelChoice`].
fn compress_quick(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 64 {
        return None;
    }
    QUICK.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut compressor = zstd::bulk::Compressor::new(1).ok()?;
            compressor
                .set_parameter(zstd::zstd_safe::CParameter::HashLog(QUICK_HASH_LOG))
                .ok()?;
            *slot = Some(compressor);
        }
        let compressed = slot.as_mut()?.compress(raw).ok()?;
        pays(compressed.len(), raw.len()).then_some(compressed)
    })
}

/// How each reader's frames are compressed: at the level asked for, or at zstd's level 1
/// (with a larger hash table) where that stores the reader's recent frames smaller.
///
/// zstd's level 1 finds matches with one hash of 6 bytes, levels 2 to 4 with two (and shorter
/// matches); on some pages the single long hash does better, in half the time. In the
/// benchmark's SQLite file (rows of hex strings and integers) about half the 256 KiB frames
/// come out smaller at level 1, in runs: a table's frames one way, an index's the other.
/// PostgreSQL's relation files are smaller at level 3 nearly everywhere. So every eighth frame
/// of a lane (the frames of one reader thread, which follow its files) is compressed both
/// ways, the smaller kept, and the lane's next seven frames use the way that won. On the
/// SQLite file, backed up alone, this stores 1.1 MB (1.1 %) less than level 3 alone with less
/// CPU (`bench/README.md`, "Where the bytes go"). Levels of 1 and below are used as they are.
/// Either way a frame is plain zstd; nothing records which way it took.
///
/// Large blobs (chunks of 128 KiB and more) keep the level asked for: steered the same way,
/// the PostgreSQL cluster's WAL came out 0.7 MB (2 %) larger, as a lane's eighth chunk that
/// favoured level 1 (a segment's zeroed tail, say) sent the next seven to it.
pub(crate) struct LevelChoice {
    level: i32,
    lanes: Vec<Lane>,
}

#[derive(Default)]
struct Lane {
    frames: AtomicU32,
    quick_won: AtomicBool,
}

impl LevelChoice {
    /// For the frames of `lanes` readers.
    pub(crate) fn new(level: i32, lanes: usize) -> Self {
        Self {
            level,
            lanes: (0..lanes.max(1)).map(|_| Lane::default()).collect(),
        }
    }

    /// Compresses a frame of `lane`; `None` when it is stored raw.
    pub(crate) fn compress(&self, lane: usize, raw: &[u8]) -> Option<Vec<u8>> {
        if self.level <= 1 {
            return compress_whole(raw, self.level);
        }
        let state = &self.lanes[lane % self.lanes.len()];
        // Two workers may take frames of one lane at once; the count and the choice only steer.
        let seen = state.frames.fetch_add(1, Ordering::Relaxed);
        if seen % TRY_BOTH_EVERY != 0 {
            return if state.quick_won.load(Ordering::Relaxed) {
                compress_quick(raw)
            } else {
                compress_whole(raw, self.level)
            };
        }
        let asked = compress_whole(raw, self.level);
        let quick = compress_quick(raw);
        let stored = |c: &Option<Vec<u8>>| c.as_ref().map_or(raw.len(), Vec::len);
        let quick_won = stored(&quick) < stored(&asked);
        state.quick_won.store(quick_won, Ordering::Relaxed);
        if quick_won { quick } else { asked }
    }
}

/// Compressed data is kept only if it saves at least 1/32: decompressing costs time on restore.
fn pays(compressed: usize, raw: usize) -> bool {
    compressed + raw / 32 < raw
}

/// Decompresses a blob whose raw length is known.
pub(crate) fn decompress(stored: &[u8], raw_len: usize) -> io::Result<Vec<u8>> {
    let out = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress(stored, raw_len),
            None => zstd::bulk::decompress(stored, raw_len),
        }
    })?;
    if out.len() != raw_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("decompressed to {} bytes, expected {raw_len}", out.len()),
        ));
    }
    Ok(out)
}

/// The decompressed size a zstd frame declares in its header, if it declares one.
pub(crate) fn declared_size(stored: &[u8]) -> Option<u64> {
    zstd::zstd_safe::get_frame_content_size(stored)
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_data_round_trips_and_random_data_is_left_raw() {
        let text: Vec<u8> = b"page header, tuple, tuple, tuple; "
            .iter()
            .copied()
            .cycle()
            .take(1 << 20)
            .collect();
        let packed = compress(&text, 3).unwrap();
        assert!(packed.len() < text.len() / 10);
        assert_eq!(decompress(&packed, text.len()).unwrap(), text);
        assert_eq!(declared_size(&packed), Some(text.len() as u64));

        let mut random = vec![0u8; 1 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in &mut random {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        assert!(compress(&random, 3).is_none());
        // A random first 64 KiB before compressible bytes: the probe declines the whole blob,
        // which costs ratio on such (rare) blobs but never correctness.
        let mut mixed = random[..PROBE_LEN].to_vec();
        mixed.extend_from_slice(&text[..PROBE_FROM]);
        assert!(compress(&mixed, 3).is_none());
        // Below the probe's threshold the whole blob decides.
        let mut short = random[..PROBE_LEN].to_vec();
        short.extend_from_slice(&text[..PROBE_LEN * 2]);
        let packed = compress(&short, 3).unwrap();
        assert_eq!(decompress(&packed, short.len()).unwrap(), short);
    }

    #[test]
    fn fast_levels_compress_less_but_round_trip_and_zero_is_off() {
        let text: Vec<u8> = (0u32..200_000)
            .flat_map(|i| {
                format!(
                    "row {i}, status paid, note {:x}; ",
                    i.wrapping_mul(2_654_435_761)
                )
                .into_bytes()
            })
            .collect();
        let default = compress(&text, 3).unwrap();
        let fast = compress(&text, -5).unwrap();
        assert!(
            fast.len() < text.len() / 2,
            "{} of {}",
            fast.len(),
            text.len()
        );
        assert!(
            fast.len() > default.len(),
            "{} vs {}",
            fast.len(),
            default.len()
        );
        assert_eq!(decompress(&fast, text.len()).unwrap(), text);
        assert_eq!(compress(&text, 0), None);
    }

    /// Every eighth frame of a lane is compressed both ways and the smaller kept; the seven
    /// after it take the way that won; lanes choose apart; levels up to 1 are used as asked.
    #[test]
    fn a_lane_keeps_the_smaller_way_and_follows_it() {
        // Rows of hex strings and integers, like the benchmark's SQLite pages.
        let hex_rows = |seed: u64| -> Vec<u8> {
            (0..6_000u64)
                .flat_map(|i| {
                    let x = (i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    format!("{i:08}|{x:016x}|{}|", x % 1_000).into_bytes()
                })
                .take(256 * 1024)
                .collect()
        };
        let frames: Vec<Vec<u8>> = (0..9).map(hex_rows).collect();
        let choice = LevelChoice::new(3, 2);
        let asked = compress_whole(&frames[0], 3).unwrap();
        let quick = compress_quick(&frames[0]).unwrap();
        assert_ne!(asked.len(), quick.len(), "the two ways tie on this data");
        let quick_won = quick.len() < asked.len();
        let first = choice.compress(0, &frames[0]).unwrap();
        assert_eq!(first.len(), asked.len().min(quick.len()));
        for frame in &frames[1..8] {
            let got = choice.compress(0, frame).unwrap();
            let want = if quick_won {
                compress_quick(frame)
            } else {
                compress_whole(frame, 3)
            };
            assert_eq!(Some(&got), want.as_ref());
            assert_eq!(decompress(&got, frame.len()).unwrap(), *frame);
        }
        // The ninth tries both again; lane 1 has seen nothing yet and tries both too.
        for lane in [0, 1] {
            let got = choice.compress(lane, &frames[8]).unwrap();
            let both = [compress_whole(&frames[8], 3), compress_quick(&frames[8])];
            assert_eq!(
                got.len(),
                both.iter().flatten().map(Vec::len).min().unwrap()
            );
        }
        // Level 1 and below are used as they are.
        let fast = LevelChoice::new(-3, 2);
        assert_eq!(fast.compress(0, &frames[0]), compress_whole(&frames[0], -3));
        assert_eq!(LevelChoice::new(0, 1).compress(0, &frames[0]), None);
    }

    #[test]
    fn a_wrong_length_is_an_error() {
        let data = vec![7u8; 10_000];
        let packed = compress(&data, 3).unwrap();
        assert!(decompress(&packed, 9_999).is_err());
    }
}
