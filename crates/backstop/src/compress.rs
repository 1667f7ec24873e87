//! Blob compression: zstd at a configurable level, or raw when it does not pay.

use std::io;

/// Compresses `raw` at `level`; `None` when compression is off or would not make it smaller.
pub(crate) fn compress(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    if level <= 0 || raw.len() < 64 {
        return None;
    }
    let compressed = zstd::bulk::compress(raw, level).ok()?;
    // Keep compressed data only if it saves at least 1/32: decompressing costs time on restore.
    (compressed.len() + raw.len() / 32 < raw.len()).then_some(compressed)
}

/// Decompresses a blob whose raw length is known.
pub(crate) fn decompress(stored: &[u8], raw_len: usize) -> io::Result<Vec<u8>> {
    let out = zstd::bulk::decompress(stored, raw_len)?;
    if out.len() != raw_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("decompressed to {} bytes, expected {raw_len}", out.len()),
        ));
    }
    Ok(out)
}
