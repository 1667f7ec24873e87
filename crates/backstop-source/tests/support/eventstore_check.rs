//! Checks an EventStore database directory (as written by `eventstore_writer.py`) against the
//! protocol's invariants, the way EventStore would find them when it opens a restored copy:
//!
//! - `truncate.chk` is a byte copy of `chaser.chk` (the restore fix-up ran);
//! - every checkpoint lies within the data that exists: `epoch <= chaser <= writer`, a chunk file
//!   exists for every chunk number up to the one `writer.chk` points into, and the index's
//!   checkpoints (`indexmap`, the existence filter's `.chk`) are at or below `chaser.chk`;
//! - every record below `writer.chk` (so every record below `chaser.chk`) is readable, framed
//!   (prefix = suffix), at the log position it names, and its MD5 is intact; every completed chunk
//!   has a footer whose MD5 matches its data;
//! - the index: `indexmap`'s own MD5 holds, every table it names exists and is intact, and the
//!   tables hold exactly the record positions below the index checkpoint; the existence filter
//!   has the bit of every record below its checkpoint.
//!
//! Shared by the source's tests and the engine's tests (included with `#[path]`).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use md5::{Digest, Md5};

const HEADER: usize = 128;
const FOOTER: usize = 128;
const FILTER_BITS: u64 = 64 * 1024 * 8;

/// What a successful check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub writer: i64,
    pub chaser: i64,
    pub records: usize,
    pub chunks: usize,
    pub tables: usize,
    pub index_checkpoint: i64,
}

fn checkpoint(dir: &Path, name: &str) -> Result<(i64, Vec<u8>), String> {
    let bytes = std::fs::read(dir.join(name)).map_err(|e| format!("reading {name}: {e}"))?;
    let value: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{name} has {} bytes, expected 8", bytes.len()))?;
    Ok((i64::from_le_bytes(value), bytes))
}

fn i32_at(bytes: &[u8], at: usize) -> Result<i32, String> {
    bytes
        .get(at..at + 4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| format!("no i32 at {at} (length {})", bytes.len()))
}

fn i64_at(bytes: &[u8], at: usize) -> Result<i64, String> {
    bytes
        .get(at..at + 8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| format!("no i64 at {at} (length {})", bytes.len()))
}

/// The newest version of each chunk: number -> (file name, contents).
fn latest_chunks(dir: &Path) -> Result<BTreeMap<u32, (String, u32)>, String> {
    let mut latest: BTreeMap<u32, (String, u32)> = BTreeMap::new();
    for item in std::fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))? {
        let name = item
            .map_err(|e| e.to_string())?
            .file_name()
            .into_string()
            .unwrap();
        let Some(rest) = name.strip_prefix("chunk-") else {
            continue;
        };
        let Some((n, v)) = rest.split_once('.') else {
            continue;
        };
        let (Ok(n), Ok(v)) = (n.parse::<u32>(), v.parse::<u32>()) else {
            continue;
        };
        if latest.get(&n).is_none_or(|(_, seen)| *seen < v) {
            latest.insert(n, (name, v));
        }
    }
    Ok(latest)
}

/// Checks the database directory `dir`; `Err` names the first broken invariant.
pub fn check_db(dir: &Path) -> Result<Checked, String> {
    let (writer, _) = checkpoint(dir, "writer.chk")?;
    let (chaser, chaser_bytes) = checkpoint(dir, "chaser.chk")?;
    let (_, truncate_bytes) = checkpoint(dir, "truncate.chk")?;
    let (epoch, _) = checkpoint(dir, "epoch.chk")?;
    if truncate_bytes != chaser_bytes {
        return Err(format!(
            "truncate.chk ({truncate_bytes:?}) is not a copy of chaser.chk ({chaser_bytes:?})"
        ));
    }
    if !(0 <= epoch && epoch <= chaser && chaser <= writer) {
        return Err(format!(
            "checkpoints out of order: epoch {epoch}, chaser {chaser}, writer {writer}"
        ));
    }

    let latest = latest_chunks(dir)?;
    let (first_name, _) = latest.get(&0).ok_or("chunk 0 is missing")?;
    let first = std::fs::read(dir.join(first_name)).map_err(|e| format!("{first_name}: {e}"))?;
    let chunk_size = i64::from(i32_at(&first, 2)?);
    if chunk_size <= 0 {
        return Err(format!("{first_name}: chunk size {chunk_size}"));
    }
    let writer_chunk = u32::try_from(writer / chunk_size).map_err(|e| e.to_string())?;

    // Walk every record below writer.chk.
    let mut starts = BTreeSet::new();
    for number in 0..=writer_chunk {
        let (name, _) = latest
            .get(&number)
            .ok_or_else(|| format!("chunk {number} is missing but writer.chk is {writer}"))?;
        let body = std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        if body.len() < HEADER + FOOTER {
            return Err(format!(
                "{name} is {} bytes, shorter than header + footer",
                body.len()
            ));
        }
        if i32_at(&body, 2)? as i64 != chunk_size || i32_at(&body, 6)? != number as i32 {
            return Err(format!(
                "{name}: header does not match (chunk size or number)"
            ));
        }
        let chunk_start = i64::from(number) * chunk_size;
        let footer = &body[body.len() - FOOTER..];
        let completed = footer[0] & 1 == 1;
        let data_end = if number < writer_chunk {
            if !completed {
                return Err(format!(
                    "{name} lies below writer.chk ({writer}) but is not completed"
                ));
            }
            let physical = usize::try_from(i32_at(footer, 1)?).map_err(|e| e.to_string())?;
            let data = body
                .get(HEADER..HEADER + physical)
                .ok_or_else(|| format!("{name}: physical size {physical} beyond the file"))?;
            if Md5::digest(data).as_slice() != &footer[FOOTER - 16..] {
                return Err(format!("{name}: the footer's MD5 does not match the data"));
            }
            physical as i64
        } else {
            writer - chunk_start
        };
        let mut local = 0i64;
        while local < data_end {
            let position = chunk_start + local;
            let at = HEADER + local as usize;
            let length = i32_at(&body, at)?;
            if length <= 0 {
                return Err(format!(
                    "{name}: no record at position {position} (length {length})"
                ));
            }
            let length = length as usize;
            let payload = body
                .get(at + 4..at + 4 + length)
                .ok_or_else(|| format!("{name}: record at {position} runs past the file"))?;
            let suffix = i32_at(&body, at + 4 + length)?;
            if suffix as usize != length {
                return Err(format!(
                    "record at {position}: prefix {length} != suffix {suffix}"
                ));
            }
            if Md5::digest(&payload[..length - 16]).as_slice() != &payload[length - 16..] {
                return Err(format!("record at {position} ({name}): checksum mismatch"));
            }
            let logpos = i64_at(payload, 2)?;
            if logpos != position {
                return Err(format!("record at {position} says it is at {logpos}"));
            }
            starts.insert(position);
            local += 8 + length as i64;
        }
        if local != data_end {
            return Err(format!(
                "{name}: records end at {local}, data ends at {data_end}"
            ));
        }
    }

    // The index.
    let index = dir.join("index");
    // No indexmap yet means an empty index (EventStore builds it from the log).
    let (index_checkpoint, lines) = match std::fs::read(index.join("indexmap")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, Vec::new()),
        Err(e) => return Err(format!("index/indexmap: {e}")),
        Ok(map) => {
            let hash = hex_upper(Md5::digest(&map[32..]).as_slice());
            if map.get(..32) != Some(hash.as_bytes()) {
                return Err("index/indexmap: its MD5 does not match".into());
            }
            let text = String::from_utf8(map).map_err(|e| e.to_string())?;
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            let checkpoint: i64 = lines
                .get(2)
                .and_then(|l| l.split('/').nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or("index/indexmap: no checkpoint line")?;
            (checkpoint, lines.into_iter().skip(4).collect())
        }
    };
    if index_checkpoint > chaser {
        return Err(format!(
            "index checkpoint {index_checkpoint} is beyond chaser.chk {chaser}"
        ));
    }
    let mut indexed = BTreeSet::new();
    let mut tables = 0;
    for line in &lines {
        let name = line
            .split(',')
            .nth(2)
            .ok_or_else(|| format!("indexmap line `{line}`"))?;
        let body = std::fs::read(index.join(name))
            .map_err(|e| format!("index table {name} named by indexmap: {e}"))?;
        if body.len() < 24
            || Md5::digest(&body[..body.len() - 16]).as_slice() != &body[body.len() - 16..]
        {
            return Err(format!("index table {name} is damaged"));
        }
        let count = i32_at(&body, 4)? as usize;
        for i in 0..count {
            let position = i64_at(&body, 8 + 8 * i)?;
            if !starts.contains(&position) {
                return Err(format!(
                    "index table {name} points at {position}, which is no record"
                ));
            }
            indexed.insert(position);
        }
        tables += 1;
    }
    let expected: BTreeSet<i64> = starts.range(..index_checkpoint).copied().collect();
    if indexed != expected {
        return Err(format!(
            "the index holds {} positions, but {} records lie below its checkpoint {index_checkpoint}",
            indexed.len(),
            expected.len()
        ));
    }
    let filter_dir = index.join("stream-existence");
    let (filter_checkpoint, _) = checkpoint(&filter_dir, "streamExistenceFilter.chk")?;
    if filter_checkpoint > chaser {
        return Err(format!(
            "filter checkpoint {filter_checkpoint} is beyond chaser.chk {chaser}"
        ));
    }
    let bits =
        std::fs::read(filter_dir.join("streamExistenceFilter.dat")).map_err(|e| e.to_string())?;
    for &position in starts.range(..filter_checkpoint) {
        let bit = (position as u64).wrapping_mul(2_654_435_761) % FILTER_BITS;
        if bits
            .get((bit / 8) as usize)
            .is_none_or(|b| b & (1 << (bit % 8)) == 0)
        {
            return Err(format!(
                "the existence filter misses the record at {position}"
            ));
        }
    }

    Ok(Checked {
        writer,
        chaser,
        records: starts.len(),
        chunks: latest.len(),
        tables,
        index_checkpoint,
    })
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
