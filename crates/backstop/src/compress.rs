//! Blob compression: zstd at a configurable level, or raw when it does not pay.
//!
//! Levels are zstd's own: 1 to 22, and below zero its fast levels (`zstd --fast=N` is level
//! -N), which trade ratio for speed; 0 turns compression off.
//!
//! Each thread keeps its own zstd contexts: creating a context and its tables costs more than
//! compressing an 8 KiB page, and page files are stored page by page.

use std::cell::RefCell;
use std::io;

/// Blobs at least this large are probed before they are compressed whole.
const PROBE_FROM: usize = 256 * 1024;
/// How much of a large blob the probe compresses.
const PROBE_LEN: usize = 64 * 1024;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
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
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
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

    #[test]
    fn a_wrong_length_is_an_error() {
        let data = vec![7u8; 10_000];
        let packed = compress(&data, 3).unwrap();
        assert!(decompress(&packed, 9_999).is_err());
    }
}
